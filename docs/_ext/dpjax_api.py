"""The API reference of dpjax: which names are public, where each is documented, and
whether each has a docstring.

Used two ways:

* by Sphinx (``extensions = [..., "dpjax_api"]`` in ``docs/conf.py``): the directive
  ``.. dpjax-module:: dpjax.optim`` documents one module and its public names with
  autodoc; at ``builder-inited`` every public name without a docstring is a warning (an
  error under ``-W``), and so is a module that no API page documents;
* by ``tests/test_docs.py``: :func:`missing_docstrings` over the package, and over a
  synthetic package with a planted undocumented name.

A module's public names are its ``__all__`` (or, without one, the classes and functions
it defines and the constants it documents, whose names do not start with ``_``), less its
submodules. A function or class is documented once, at the shortest dotted path that
exports it (``dpjax.clipped_grad``, not ``dpjax.clipping.clipped_grad``); a reference by
another of its paths, or by a name relative to the module whose docstring holds it, is
resolved to that one. A constant or type alias is documented where it is assigned, since
its doc comment (``#:``) lives there.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import importlib
import inspect
import pkgutil
import types

PACKAGE = "dpjax"

# A constant whose repr is longer than this is shown without its value.
LONG_VALUE = 120

# Public names allowed to lack a docstring (none today). An entry is one documented path;
# tests/test_docs.py fails while an entry here has a docstring, so the list cannot go stale.
KNOWN_UNDOCUMENTED: frozenset[str] = frozenset()


@functools.cache
def discover(package: str = PACKAGE) -> tuple[str, ...]:
    """Every importable module of ``package`` (itself first), ``__main__`` modules left out."""
    root = importlib.import_module(package)
    names = [package]
    for info in pkgutil.walk_packages(getattr(root, "__path__", []), package + "."):
        if info.name.rsplit(".", 1)[-1] != "__main__":
            names.append(info.name)
    return tuple(names)


def _package(modname: str) -> str:
    return modname.split(".", 1)[0]


def _type_doc(obj: object) -> str:
    """The docstring of ``obj``'s type ('' when it has none, or a descriptor)."""
    doc = getattr(type(obj), "__doc__", None)
    return doc.strip() if isinstance(doc, str) else ""


def _is_data(obj: object) -> bool:
    """Constants and type aliases: documented by a ``#:`` comment where assigned."""
    if inspect.isclass(obj) or inspect.isroutine(obj):
        return False
    if type(obj).__module__ in ("typing", "types", "collections.abc"):  # a type alias
        return True
    return not callable(obj)


@functools.cache
def _attr_docs(modname: str) -> dict[str, str]:
    from sphinx.pycode import ModuleAnalyzer

    try:
        docs = ModuleAnalyzer.for_module(modname).find_attr_docs()
    except Exception:  # no source: nothing to find
        return {}
    return {name: "".join(lines).strip() for (scope, name), lines in docs.items() if not scope}


def public_names(module: types.ModuleType) -> list[str]:
    """The module's public names (see the module docstring), submodules left out."""
    declared = getattr(module, "__all__", None)
    if declared is None:
        documented = _attr_docs(module.__name__)
        declared = [
            name
            for name, obj in vars(module).items()
            if not name.startswith("_")
            and (
                (
                    (inspect.isclass(obj) or inspect.isfunction(obj))
                    and getattr(obj, "__module__", None) == module.__name__
                )
                or (name in documented and _is_data(obj))
            )
        ]
    return [name for name in declared if not isinstance(getattr(module, name), types.ModuleType)]


@functools.cache
def _source_tree(modname: str) -> ast.Module | None:
    try:
        return ast.parse(inspect.getsource(importlib.import_module(modname)))
    except (OSError, TypeError):
        return None


def _assigns(modname: str, name: str) -> bool:
    tree = _source_tree(modname)
    for node in tree.body if tree else ():
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign):
            targets = [node.target]
        else:
            continue
        for target in targets:
            elts = target.elts if isinstance(target, ast.Tuple) else [target]
            if any(isinstance(e, ast.Name) and e.id == name for e in elts):
                return True
    return False


@functools.cache
def assigned_in(modname: str, name: str) -> str:
    """The module that assigns the constant ``modname.name``: following ``from`` imports,
    or, for a name a package loads lazily, the module that assigns that very object."""
    tree = _source_tree(modname)
    for node in tree.body if tree else ():
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                if (alias.asname or alias.name) == name:
                    return assigned_in(node.module, alias.name)
    if _assigns(modname, name):
        return modname
    value = getattr(importlib.import_module(modname), name)
    for other in discover(_package(modname)):
        if other != modname and getattr(importlib.import_module(other), name, None) is value:
            home = assigned_in(other, name)
            if _assigns(home, name):
                return home
    return modname


def docstring(module: types.ModuleType, name: str) -> str:
    """The text autodoc shows for ``module.name`` ('' when there is none)."""
    obj = getattr(module, name)
    if _is_data(obj):
        return _attr_docs(assigned_in(module.__name__, name)).get(name, "")
    if inspect.isclass(obj):
        doc = obj.__dict__.get("__doc__") or ""
        generated = dataclasses.is_dataclass(obj) or issubclass(obj, tuple)
        if generated and doc.startswith(f"{obj.__name__}("):  # made from the fields
            return ""
        return doc.strip()
    doc = getattr(obj, "__doc__", None)
    doc = doc.strip() if isinstance(doc, str) else ""
    if not inspect.isroutine(obj) and doc == _type_doc(obj):  # its type's, not its own
        return ""
    return doc


@functools.cache
def homes(package: str = PACKAGE) -> dict[tuple[str, str], str]:
    """``(module, name)`` of every public name -> the dotted path it is documented at."""
    by_object: dict[int, list[str]] = {}
    placed: dict[tuple[str, str], str] = {}
    for modname in discover(package):
        module = importlib.import_module(modname)
        for name in public_names(module):
            obj = getattr(module, name)
            if _is_data(obj):
                placed[modname, name] = f"{assigned_in(modname, name)}.{name}"
            else:
                by_object.setdefault(id(obj), []).append(f"{modname}.{name}")
    for paths in by_object.values():
        home = min(paths, key=lambda p: (p.count("."), p))
        for path in paths:
            modname, name = path.rsplit(".", 1)
            placed[modname, name] = home
    return placed


def missing_docstrings(package: str = PACKAGE) -> list[str]:
    """Every module of ``package`` without a docstring, and every public name without one
    (at the path it is documented at, once)."""
    missing = []
    for modname in discover(package):
        module = importlib.import_module(modname)
        if not (module.__doc__ or "").strip():
            missing.append(modname)
        for name in public_names(module):
            path = homes(package)[modname, name]
            if not docstring(module, name) and path not in missing:
                missing.append(path)
    return missing


@functools.cache
def _object_homes(package: str = PACKAGE) -> dict[int, str]:
    by_id = {}
    for (modname, name), home in homes(package).items():
        obj = getattr(importlib.import_module(modname), name)
        if not _is_data(obj):
            by_id[id(obj)] = home
    return by_id


def documented_path(path: str) -> str | None:
    """Where the object named by the dotted ``path`` is documented (``None``: unknown).

    ``dpjax.clipping.clipped_grad`` -> ``dpjax.clipped_grad``;
    ``dpjax.training.loop.Trainer.run`` -> ``dpjax.training.Trainer.run``.
    """
    parts = path.split(".")
    package = parts[0]
    if package != PACKAGE:
        return None
    modules = set(discover(package))
    for cut in range(len(parts), 0, -1):
        modname = ".".join(parts[:cut])
        if modname in modules:
            break
    else:
        return None
    rest = parts[cut:]
    if not rest:
        return modname
    obj = getattr(importlib.import_module(modname), rest[0], None)
    if (modname, rest[0]) in homes(package):
        base = homes(package)[modname, rest[0]]
    elif obj is not None and _is_data(obj):  # a constant imported from where it is assigned
        base = homes(package).get((assigned_in(modname, rest[0]), rest[0]))
    elif obj is not None:
        base = _object_homes(package).get(id(obj))
    else:
        base = None
    return None if base is None else ".".join([base, *rest[1:]])


def _source_module(source: str) -> str | None:
    """``.../dpjax/engines/base.py:docstring of ...`` -> ``dpjax.engines.base``."""
    path = source.split(":", 1)[0].replace("\\", "/")
    if f"/{PACKAGE}/" not in path or not path.endswith(".py"):
        return None
    dotted = PACKAGE + "/" + path.rsplit(f"/{PACKAGE}/", 1)[1][: -len(".py")]
    return dotted.replace("/", ".").removesuffix(".__init__")


def _attributes_section(lines: list[str]) -> list[str]:
    """The names in a Google-style docstring's ``Attributes:`` section."""
    names, inside, indent = [], False, None
    for line in lines:
        if line.strip() == "Attributes:":
            inside, indent = True, None
            continue
        if not inside or not line.strip():
            continue
        width = len(line) - len(line.lstrip())
        if indent is None:
            indent = width
        if width < indent or width == 0:
            inside = False
        elif width == indent:
            head = line.strip().split(":", 1)[0].split(" (", 1)[0]
            names += [n.strip("`* ") for n in head.split(",")]
    return names


def module_rst(modname: str) -> list[str]:
    """The reST that documents ``modname`` and the public names that live there."""
    module = importlib.import_module(modname)
    package = _package(modname)
    here, elsewhere = [], []
    for name in public_names(module):
        home = homes(package)[modname, name]
        (here if home == f"{modname}.{name}" else elsewhere).append((name, home))
    lines = [f".. automodule:: {modname}", "   :no-members:"]
    if modname in homes(package).values():  # a function of this path (dpjax.audit.replay)
        lines += ["   :no-index:"]
    lines += [""]
    if here:
        lines += [f".. currentmodule:: {modname}", "", ".. autosummary::", ""]
        lines += [f"   {name}" for name, _ in here] + [""]
        for name, _ in here:
            obj = getattr(module, name)
            if _is_data(obj):
                lines += [f".. autodata:: {name}"]
                if len(repr(obj)) > LONG_VALUE:
                    lines += ["   :no-value:"]
            elif inspect.isclass(obj):
                lines += [f".. autoclass:: {name}", "   :members:", "   :show-inheritance:"]
            else:
                lines += [f".. autofunction:: {name}"]
            lines += [""]
    if elsewhere:
        refs = ", ".join(f":py:obj:`{name} <{home}>`" for name, home in elsewhere)
        lines += [f"Also exported here, documented at their public path: {refs}.", ""]
    return lines


def setup(app):
    """Sphinx entry point: the directive, the checks and the reference resolver."""
    from docutils import nodes
    from docutils.statemachine import StringList
    from sphinx.util import logging
    from sphinx.util.docutils import SphinxDirective
    from sphinx.util.nodes import nested_parse_with_titles

    logger = logging.getLogger(__name__)
    app.add_config_value("dpjax_api_package", PACKAGE, "env")

    class ModuleDirective(SphinxDirective):
        """``.. dpjax-module:: NAME``: the module's docstring and its public names."""

        required_arguments = 1

        def modules(self) -> list[str]:
            return [self.arguments[0]]

        def rst(self, modname: str) -> list[str]:
            return module_rst(modname)

        def run(self):
            lines = []
            documented = getattr(self.env, "dpjax_api_modules", set())
            for modname in self.modules():
                documented.add(modname)
                lines += self.rst(modname)
            self.env.dpjax_api_modules = documented
            text = StringList(lines, source=self.get_source_info()[0])
            node = nodes.section()
            nested_parse_with_titles(self.state, text, node)
            return node.children

    class PackageDirective(ModuleDirective):
        """``.. dpjax-package:: NAME``: the package and every module under it, each in a
        section of its own (a new module appears without editing the page)."""

        def modules(self) -> list[str]:
            package = self.arguments[0]
            return [
                m
                for m in discover(_package(package))
                if m == package or m.startswith(package + ".")
            ]

        def rst(self, modname: str) -> list[str]:
            title = f"``{modname}``"
            return [title, "-" * len(title), "", *module_rst(modname)]

    def check_docstrings(app):
        package = app.config.dpjax_api_package
        for path in missing_docstrings(package):
            if path not in KNOWN_UNDOCUMENTED:
                logger.warning("public name without a docstring: %s", path, type="dpjax")

    def check_modules(app, env):
        documented = getattr(env, "dpjax_api_modules", set())
        for modname in discover(app.config.dpjax_api_package):
            if modname not in documented:
                logger.warning("module on no API page: %s", modname, type="dpjax")

    def merge_modules(app, env, docnames, other):
        env.dpjax_api_modules = getattr(env, "dpjax_api_modules", set()) | getattr(
            other, "dpjax_api_modules", set()
        )

    described: set[str] = set()  # the "Attributes:" of the class being documented

    def note_attributes(app, what, name, obj, options, lines):
        if what == "class":
            described.clear()
            described.update(_attributes_section(lines))

    def skip_described(app, what, name, obj, skip, options):
        # A class's "Attributes:" section documents those members already (NamedTuple
        # fields, flax module fields): autodoc does not add them a second time.
        if what != "class":
            return None
        doc = getattr(obj, "__doc__", None)
        generated = isinstance(doc, str) and doc.startswith("Create new instance of")
        return True if name in described or (name == "__new__" and generated) else None

    originals: dict[tuple[str, str], list[str]] = {}

    def keep_prose(app, what, name, obj, options, lines):
        # Napoleon reads the first line of a constant's or attribute's doc as
        # "type: description"; dpjax writes prose there, so napoleon leaves it alone.
        if what in ("data", "attribute", "property"):
            originals[what, name] = list(lines)

    def restore_prose(app, what, name, obj, options, lines):
        if (what, name) in originals:
            lines[:] = originals.pop((what, name))
        text = "\n".join(lines).strip()
        if what in ("data", "attribute") and _is_data(obj) and text == _type_doc(obj):
            lines[:] = []  # the docstring of its type, not its own
        if what in ("attribute", "property") and text.startswith("Alias for field number"):
            lines[:] = []  # a NamedTuple field that its class does not describe

    def resolve_alias(app, env, node, contnode):
        # A reference by a path that is not the documented one (dpjax.check.check_engine
        # for dpjax.check_engine), or relative to the module whose docstring holds it.
        if node.get("refdomain") != "py":
            return None
        target = node["reftarget"].lstrip("~.")
        candidates = []
        for modname in filter(None, (node.get("py:module"), _source_module(node.source or ""))):
            if node.get("py:class"):
                candidates.append(f"{modname}.{node['py:class']}.{target}")
            candidates.append(f"{modname}.{target}")
        candidates.append(target)
        domain = env.domains["py"]
        for candidate in candidates:
            try:
                path = documented_path(candidate)
            except Exception:  # an attribute that fails to load: not ours to resolve
                path = None
            if path:
                found = domain.resolve_xref(
                    env, node["refdoc"], app.builder, node["reftype"], path, node, contnode
                )
                if found is not None:
                    return found
        # ``Trainer.run`` in a summary table: the one documented object ending that way,
        # on this page if there is one here.
        kinds = set(domain.objtypes_for_role(node["reftype"]) or ())
        matches = [
            name
            for name, entry in domain.objects.items()
            if name.endswith("." + target) and entry.objtype in kinds and not entry.aliased
        ]
        here = [m for m in matches if domain.objects[m].docname == node["refdoc"]]
        pick = here if len(here) == 1 else matches if len(matches) == 1 else []
        if not pick:
            return None
        return domain.resolve_xref(
            env, node["refdoc"], app.builder, node["reftype"], pick[0], node, contnode
        )

    app.add_directive("dpjax-module", ModuleDirective)
    app.add_directive("dpjax-package", PackageDirective)
    app.connect("builder-inited", check_docstrings)
    app.connect("env-check-consistency", check_modules)
    app.connect("env-merge-info", merge_modules)
    app.connect("autodoc-process-docstring", note_attributes, priority=50)
    app.connect("autodoc-process-docstring", keep_prose, priority=100)
    app.connect("autodoc-process-docstring", restore_prose, priority=900)
    app.connect("autodoc-skip-member", skip_described)
    app.connect("missing-reference", resolve_alias)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
