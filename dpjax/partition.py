"""Selecting trainable leaves: predicates on ``(path, leaf)`` and split/recombine.

A *path* is the tuple of string keys that leads to a leaf, e.g.
``("encoder", "layer_0", "attention", "query", "bias")``. Predicates receive that tuple
and the leaf itself and return ``True`` for trainable leaves.

Frozen leaves stay out of the optimizer: ``partition`` splits a tree into two complementary
trees of the same structure, with ``None`` where a leaf belongs to the other side, and
``combine`` puts them back together.

Example:
    >>> import jax.numpy as jnp
    >>> import dpjax
    >>> params = {"dense": {"kernel": jnp.ones((2, 3)), "bias": jnp.zeros(3)}}
    >>> train, frozen = dpjax.partition(params, dpjax.bias_only)
    >>> train["dense"]["kernel"] is None, frozen["dense"]["bias"] is None
    (True, True)
    >>> dpjax.combine(train, frozen)["dense"]["kernel"].shape
    (2, 3)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax

#: A leaf's path in a parameter tree: its dict keys, outermost first.
Path = tuple[str, ...]
#: A trainable-set predicate: ``(path, leaf) -> bool``.
Predicate = Callable[[Path, Any], bool]

__all__ = [
    "Path",
    "Predicate",
    "all_leaves",
    "bias_only",
    "combine",
    "leaf_paths",
    "named",
    "partition",
    "path_to_str",
    "subtree_at",
    "trainable_mask",
]


def _key_name(entry: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def _to_path(key_path: Sequence[Any]) -> Path:
    return tuple(_key_name(k) for k in key_path)


def path_to_str(path: Path) -> str:
    """Renders a path as ``a/b/c`` for messages and logs."""
    return "/".join(path)


def leaf_paths(tree: Any) -> list[Path]:
    """The path of every (non-``None``) leaf, in ``jax.tree.leaves`` order."""
    return [_to_path(kp) for kp, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def all_leaves(path: Path, leaf: Any) -> bool:
    """Predicate selecting every leaf (full fine-tuning)."""
    del path, leaf
    return True


def bias_only(path: Path, leaf: Any) -> bool:
    """Predicate selecting leaves named ``bias`` (DP-BiTFiT)."""
    del leaf
    return bool(path) and path[-1] == "bias"


def named(*names: str, base: Predicate | None = None) -> Predicate:
    """Predicate: ``base`` (if given) OR any path component / path string equals a name.

    Use it to add extra trainable leaves to bias-only training, e.g. a fresh classifier
    head and a position embedding::

        trainable = dpjax.named("classifier", "pos_embedding", base=dpjax.bias_only)

    A name matches a path component (``"classifier"`` selects the whole head) or a full
    ``a/b/c`` path string.
    """
    if not names:
        raise ValueError("named() needs at least one name")
    wanted = frozenset(names)

    def predicate(path: Path, leaf: Any) -> bool:
        if base is not None and base(path, leaf):
            return True
        return path_to_str(path) in wanted or any(p in wanted for p in path)

    shown = ", ".join(repr(n) for n in sorted(wanted))
    extra = "" if base is None else f", or where ``{getattr(base, '__name__', base)}`` holds"
    predicate.__doc__ = f"Predicate: leaves whose path has a component {shown}{extra}."
    return predicate


def subtree_at(tree: Any, path: tuple[str, ...]) -> Any | None:
    """The node of nested mappings ``tree`` at the key path ``path`` (``None`` if absent).

    Example:
        >>> subtree_at({"a": {"b": {"lora_a": 1}}}, ("a", "b")), subtree_at({"a": 1}, ("a", "x"))
        ({'lora_a': 1}, None)
    """
    node: Any = tree
    for part in path:
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def trainable_mask(tree: Any, predicate: Predicate | None) -> Any:
    """A tree of Python bools, ``True`` where ``predicate(path, leaf)`` holds."""
    pred = all_leaves if predicate is None else predicate
    return jax.tree_util.tree_map_with_path(lambda kp, x: bool(pred(_to_path(kp), x)), tree)


def partition(tree: Any, predicate: Predicate | None) -> tuple[Any, Any]:
    """Splits ``tree`` into ``(selected, rest)``, each ``None`` where the other has a leaf."""
    mask = trainable_mask(tree, predicate)
    selected = jax.tree.map(lambda m, x: x if m else None, mask, tree)
    rest = jax.tree.map(lambda m, x: None if m else x, mask, tree)
    return selected, rest


def combine(*trees: Any) -> Any:
    """Inverse of :func:`partition`: the first non-``None`` leaf among ``trees`` wins."""

    def pick(*leaves: Any) -> Any:
        for leaf in leaves:
            if leaf is not None:
                return leaf
        return None

    return jax.tree.map(pick, *trees, is_leaf=lambda x: x is None)
