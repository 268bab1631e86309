"""Where book-keeping ghost clipping switches between the Gram (ghost) and direct norms.

Per layer the ghost engine picks the Gram form ``sum_{t,s} (a_t.a_s)(g_t.g_s)`` (memory
``~2T^2`` per example) when it is no larger than the direct per-example gradient
(``d*p``): ``2T^2 <= d*p``, so the flip is at ``T* = sqrt(d*p/2)``. This module asks the
engine's own rule (:func:`dpjax.engines.ghost_norms.prefer_ghost`) on abstract shapes,
and falls back to that formula if the module is missing.

A kernel's ``d`` is the product of all its axes but the last and ``p`` the last (Dense,
Conv patches, a ``DenseGeneral`` whose outputs are its last axis); an embedding table
``[V, d]`` has ``d = V`` rows of one-hot inputs.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from dpjax.partition import leaf_paths

__all__ = ["flip_table", "layer_shapes", "prefers_ghost"]


def layer_shapes(params: Any) -> dict[tuple[int, int], list[str]]:
    """``{(d, p): [layer paths]}`` for every kernel / embedding table in ``params``."""
    shapes: dict[tuple[int, int], list[str]] = {}
    leaves = jax.tree.leaves(params)
    for path, leaf in zip(leaf_paths(params), leaves):
        if path[-1] not in ("kernel", "embedding") or len(leaf.shape) < 2:
            continue
        d, p = math.prod(leaf.shape[:-1]), leaf.shape[-1]
        shapes.setdefault((int(d), int(p)), []).append("/".join(path[:-1]))
    return shapes


def prefers_ghost(d: int, p: int, tokens: int) -> bool:
    """The engine's choice for a layer ``d -> p`` at ``tokens`` positions."""
    try:
        from dpjax.engines.ghost_norms import Factored, prefer_ghost
    except ImportError:
        return 2 * tokens * tokens <= d * p
    left = jax.ShapeDtypeStruct((1, tokens, 1, d), jnp.float32)
    right = jax.ShapeDtypeStruct((1, tokens, 1, p), jnp.float32)
    return bool(prefer_ghost([Factored(left, right, d)]))


def flip_table(params: Any, token_counts: list[int]) -> list[dict[str, Any]]:
    """One row per layer shape: ``T*`` and the form chosen at each token count."""
    rows = []
    for (d, p), names in sorted(layer_shapes(params).items()):
        rows.append(
            {
                "d": d,
                "p": p,
                "layers": len(names),
                "example": names[0],
                "flip_T": math.sqrt(d * p / 2),
                "choice": {
                    t: "ghost" if prefers_ghost(d, p, t) else "direct" for t in token_counts
                },
            }
        )
    return rows
