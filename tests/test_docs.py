"""The documentation site in docs/: it builds with warnings as errors, every public name
has a docstring, every example in the pages and in the docstrings runs and prints what it
shows, and the rendered notebooks are those of their jupytext sources.

Build the site by hand with ``python -m sphinx -W -b html docs docs/_build/html`` (needs
``pip install -e ".[docs]"``).
"""

from __future__ import annotations

import doctest
import importlib
import os
import pathlib
import re
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("sphinx", reason="needs the docs extra: pip install -e '.[docs]'")
nbformat = pytest.importorskip("nbformat", reason="needs nbformat (pip install nbformat)")
jupytext = pytest.importorskip("jupytext", reason="needs jupytext (pip install jupytext)")

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
sys.path.insert(0, str(DOCS / "_ext"))

import dpjax_api  # noqa: E402  (docs/_ext: the API pages' own rules)

OPTIONS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
FENCE = re.compile(r"^```(\w+)[^\n]*\n(.*?)^```", re.S | re.M)
NOTEBOOKS = ("quickstart", "optax_chains", "accounting", "memory_and_speed", "generation")


def _pages() -> list[pathlib.Path]:
    """The hand-written markdown pages (generated ones and the build folder left out)."""
    skip = {DOCS / "benchmark_runs.md"}
    return sorted(p for p in DOCS.rglob("*.md") if "_build" not in p.parts and p not in skip)


def _modules_with_examples() -> list[str]:
    """dpjax modules whose source holds a ``>>>`` example (found without importing)."""
    names = []
    for path in sorted((ROOT / "dpjax").rglob("*.py")):
        if ">>>" in path.read_text():
            parts = path.relative_to(ROOT).with_suffix("").parts
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def _run(test: doctest.DocTest) -> doctest.TestResults:
    out: list[str] = []
    runner = doctest.DocTestRunner(optionflags=OPTIONS)
    result = runner.run(test, out=out.append)
    assert result.failed == 0, "".join(out)
    return result


# -- (a) the site builds, warnings being errors ----------------------------------------


@pytest.mark.slow
def test_site_builds_with_warnings_as_errors(tmp_path):
    """``python -m sphinx -W -b html docs <out>``: a broken reference, an undocumented
    public name, a module on no API page or a bad docstring fails the build."""
    out = tmp_path / "html"
    cmd = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", "docs",
           str(out)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-8000:]
    for page in ("index", "getting_started", "concepts/data_path", "guides/dp_lora",
                 "notebooks/quickstart", "benchmarks", "benchmark_runs", "changelog",
                 "api/dpjax", "api/training"):  # fmt: skip
        assert (out / f"{page}.html").is_file(), page
    api = (out / "api" / "dpjax.html").read_text()
    assert 'id="dpjax.clipped_grad"' in api and 'id="dpjax.Mechanism.logical_step"' in api
    notebook = (out / "notebooks" / "accounting.html").read_text()
    assert "data:image/png" in notebook or "<img" in notebook  # stored figures rendered
    assert (out / "_static" / "mathjax" / "tex-chtml.js").is_file()  # formulas offline


# -- (b) every public name has a docstring ---------------------------------------------


def test_every_public_name_has_a_docstring():
    missing = [p for p in dpjax_api.missing_docstrings() if p not in dpjax_api.KNOWN_UNDOCUMENTED]
    assert not missing, f"public names without a docstring: {missing}"


def test_known_undocumented_names_are_still_undocumented():
    """An entry of ``KNOWN_UNDOCUMENTED`` whose docstring has landed must leave the list."""
    stale = sorted(dpjax_api.KNOWN_UNDOCUMENTED - set(dpjax_api.missing_docstrings()))
    assert not stale, f"documented now, remove from docs/_ext/dpjax_api.py: {stale}"


PLANTED = {
    "__init__.py": '''
        """A synthetic package with one public name of each kind, one of them bare."""

        from fakepkg.core import Documented, bare, documented

        __all__ = ["COUNT", "LIMIT", "Documented", "bare", "documented"]

        #: How many (documented by its doc comment).
        LIMIT = 3
        COUNT = 4
        ''',
    "core.py": '''
        """The definitions."""

        import dataclasses

        __all__ = ["Bare", "Documented", "bare", "documented"]


        class Documented:
            """Has a docstring."""


        @dataclasses.dataclass
        class Bare:
            x: int = 0


        def documented():
            """Has a docstring."""


        def bare():
            return 1
        ''',
}


def _plant(tmp_path, monkeypatch, files=PLANTED) -> None:
    pkg = tmp_path / "fakepkg"
    pkg.mkdir()
    for name, text in files.items():
        (pkg / name).write_text(textwrap.dedent(text).lstrip())
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [m for m in sys.modules if m.split(".")[0] == "fakepkg"]:
        del sys.modules[name]


def test_a_planted_undocumented_name_is_caught(tmp_path, monkeypatch):
    """The check sees a bare function (at its public path), a dataclass whose only
    docstring is the generated signature, and a constant without a ``#:`` comment."""
    _plant(tmp_path, monkeypatch)
    missing = dpjax_api.missing_docstrings("fakepkg")
    assert sorted(missing) == ["fakepkg.COUNT", "fakepkg.bare", "fakepkg.core.Bare"]


def _build_fake_site(tmp_path, name: str) -> subprocess.CompletedProcess:
    site = tmp_path / f"site_{name}"
    site.mkdir()
    (site / "conf.py").write_text(
        'extensions = ["sphinx.ext.autodoc", "sphinx.ext.autosummary",\n'
        '              "sphinx.ext.napoleon", "dpjax_api"]\n'
        'dpjax_api_package = "fakepkg"\nnitpicky = True\n'
    )
    (site / "index.rst").write_text("Fake\n====\n\n.. dpjax-package:: fakepkg\n")
    path = os.pathsep.join([str(tmp_path), str(DOCS / "_ext"), str(ROOT)])
    env = {**os.environ, "PYTHONPATH": path}
    cmd = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
           str(site), str(site / "_build")]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def test_the_build_fails_on_a_planted_undocumented_name(tmp_path, monkeypatch):
    """The same package through Sphinx with ``-W``: the build fails and names the bare
    names; documenting them makes it pass."""
    _plant(tmp_path, monkeypatch)
    proc = _build_fake_site(tmp_path, "planted")
    assert proc.returncode != 0
    for path in ("fakepkg.COUNT", "fakepkg.bare", "fakepkg.core.Bare"):
        assert f"public name without a docstring: {path}" in proc.stderr, proc.stderr
    fixed = dict(PLANTED)
    fixed["__init__.py"] = PLANTED["__init__.py"].replace(
        "COUNT = 4", "#: How many more.\n        COUNT = 4"
    )
    fixed["core.py"] = (
        PLANTED["core.py"]
        .replace("    x: int = 0", '    """Now documented."""\n\n            x: int = 0')
        .replace("    return 1", '    """Now documented."""\n            return 1')
    )
    (tmp_path / "fakepkg").rename(tmp_path / "planted")
    _plant(tmp_path, monkeypatch, fixed)
    proc = _build_fake_site(tmp_path, "fixed")
    assert proc.returncode == 0, proc.stderr


# -- (c) every example runs and prints what it shows -----------------------------------


#: Modules whose examples build or convert whole models (> 6 s each on 2 cores): slow.
HEAVY_MODULES = {
    "dpjax.models.gguf",
    "dpjax.models.resnet",
    "dpjax.models.convert",
    "dpjax.models.vit",
    "dpjax.training.loop",
}


@pytest.mark.parametrize(
    "modname",
    [
        pytest.param(name, marks=[pytest.mark.slow] if name in HEAVY_MODULES else [])
        for name in _modules_with_examples()
    ],
)
def test_docstring_examples(modname):
    """Every ``>>>`` example of the module's docstrings (doctest, outputs compared)."""
    module = importlib.import_module(modname)
    tests = [t for t in doctest.DocTestFinder().find(module, modname) if t.examples]
    assert tests, f"{modname} has '>>>' in its source but no doctest was found"
    for test in tests:
        _run(test)


#: Pages whose examples train or trace full models (> 6 s each on 2 cores): slow-marked,
#: so they run in the suite's second (slow) pass.
HEAVY_PAGES = {
    "guides/dp_full_ghost.md",
    "guides/dp_lora.md",
    "guides/llama.md",
    "guides/dp_bitfit.md",
    "concepts/engines.md",
    "guides/models.md",
    "guides/auditing.md",
    "concepts/data_path.md",
}


@pytest.mark.parametrize(
    "page",
    [
        pytest.param(name, marks=[pytest.mark.slow] if name in HEAVY_PAGES else [])
        for name in (p.relative_to(DOCS).as_posix() for p in _pages())
    ],
)
def test_page_examples(page):
    """The page's ``pycon`` blocks, in order, as one doctest (names carry over)."""
    text = (DOCS / page).read_text()
    examples = []
    parser = doctest.DocTestParser()
    for block in FENCE.finditer(text):
        language, body = block.group(1), block.group(2)
        if language == "python":
            pytest.fail(f"{page}: a ```python block; write it as a ```pycon doctest")
        if language != "pycon":
            continue
        line = text.count("\n", 0, block.start(2))
        for example in parser.get_examples(body):
            example.lineno += line
            examples.append(example)
    if not examples:
        pytest.skip("no examples on this page")
    test = doctest.DocTest(examples, {"__name__": "__docs__"}, page, str(DOCS / page), 0, text)
    _run(test)


# Docstring examples that are not doctests run here, and where they run instead.
NOT_RUN = {
    # Prepared TFDS data, which the suite never downloads: run on TFDS mock data instead.
    "dpjax/data/glue.py": "tests/test_data_glue.py",
    "dpjax/data/tfds_source.py": "tests/test_data_glue.py",
    # Shell commands and a configured trainer.
    "dpjax/audit/__main__.py": "command lines: tests/test_audit.py runs them",
    "dpjax/audit/trainer.py": "replay_trainer on a toy Trainer: tests/test_audit.py",
}
UNRUN = re.compile(r"doctest: \+SKIP|not executed|Example[^\n:]*::\n")


def test_every_docstring_example_runs():
    """No ``+SKIP``, 'not executed' or literal ``Example::`` block outside ``NOT_RUN``."""
    found = sorted(
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / "dpjax").rglob("*.py")
        if UNRUN.search(path.read_text())
    )
    assert sorted(set(found) - set(NOT_RUN)) == [], "examples that never run"
    assert sorted(set(NOT_RUN) - set(found)) == [], "NOT_RUN entries that run now"


# -- notebooks -------------------------------------------------------------------------


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_rendered_notebook_is_its_source_with_outputs(name):
    """docs/notebooks/<name>.ipynb holds the code of colabs/<name>.py and its outputs;
    ``python docs/render_notebooks.py <name>`` rewrites a stale one."""
    rendered = nbformat.read(DOCS / "notebooks" / f"{name}.ipynb", as_version=4)
    source = jupytext.read(ROOT / "colabs" / f"{name}.py")
    code = [c.source.strip() for c in rendered.cells if c.cell_type == "code"]
    assert code == [c.source.strip() for c in source.cells if c.cell_type == "code"], (
        f"docs/notebooks/{name}.ipynb is stale: python docs/render_notebooks.py {name}"
    )
    outputs = [o for c in rendered.cells if c.cell_type == "code" for o in c.outputs]
    assert outputs and not any(o.output_type == "error" for o in outputs)
    assert any("image/png" in o.get("data", {}) for o in outputs), "no stored figure"
