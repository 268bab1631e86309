"""Clip functions and clip groups: how per-example norms become clip factors.

A :class:`ClipPlan` is what every engine receives. It knows which group each trainable
leaf belongs to, the clip norm of each group, and the clip function. Engines compute
per-example squared norms per group, ``[B, K]``, ask the plan for factors, and form
``sum_i c[i, k(leaf)] * g_i(leaf)`` for each leaf.

* ``"abadi"``: ``c = min(1, C / ||g||)`` -- the clipped gradient has norm ``<= C``.
* ``"automatic"``: ``c = C / (||g|| + gamma)`` (Bu et al.'s automatic clipping, with the
  clip norm kept as an explicit scale) -- ``||c g|| < C`` for every example, so the
  sensitivity is still ``C``; ``gamma > 0`` must be given explicitly.

With groups (per-layer clipping), group ``k`` is clipped to ``C_k`` and the step's
sensitivity is ``sqrt(sum_k C_k**2)``.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from dpjax.partition import Path, leaf_paths, path_to_str
from dpjax.validate import CLIP_FNS

__all__ = [
    "CLIP_FNS",
    "ClipPlan",
    "check_clip_norm",
    "clip_plan",
    "norm_dtype",
    "sum_dtype",
    "top_level_group",
]


def norm_dtype(dtype: Any) -> Any:
    """Dtype for norms and clip factors: float32, or wider if the gradients are (float64)."""
    return jnp.promote_types(dtype, jnp.float32)


#: Clipped sums, their accumulation over micro-batches and the noise use this dtype too:
#: a bfloat16 sum would round one example's contribution away (or up to several times C).
sum_dtype = norm_dtype


def check_clip_norm(value: Any, what: str = "l2_clip") -> float:
    """``value`` as a float if it is a finite real number > 0 (numpy scalars included).

    Raises:
      TypeError: not a real number (a bool, a string, an array with more than one value).
      ValueError: not finite or not > 0.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        shape = getattr(value, "shape", None)
        if shape == () and not isinstance(value, bool):
            try:
                value = float(value)
            except (TypeError, ValueError):
                raise TypeError(f"{what} must be a real number, got {value!r}") from None
        else:
            raise TypeError(f"{what} must be a real number, got {value!r}")
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{what} must be a finite number > 0, got {value!r}")
    return value


def top_level_group(path: Path) -> str:
    """Default group of a leaf: its top-level module name (a leading ``params`` is skipped)."""
    if len(path) > 1 and path[0] == "params":
        path = path[1:]
    return path[0] if path else ""


@dataclasses.dataclass(frozen=True)
class ClipPlan:
    """Static description of how to clip one step.

    Attributes:
      group_names: names of the K clip groups (``("all",)`` for flat clipping).
      clip_norms: the K clip norms, in the order of ``group_names``.
      clip_fn: ``"abadi"`` or ``"automatic"``.
      gamma: stabiliser of automatic clipping (``None`` for abadi).
      leaf_groups: tuple with the group index of each trainable leaf, in
        ``jax.tree.leaves(train)`` order.
    """

    group_names: tuple[str, ...]
    clip_norms: tuple[float, ...]
    clip_fn: str
    gamma: float | None
    leaf_groups: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.clip_fn not in CLIP_FNS:
            raise ValueError(f"clip_fn must be one of {CLIP_FNS}, got {self.clip_fn!r}")
        if len(self.group_names) != len(self.clip_norms) or not self.group_names:
            raise ValueError("need one clip norm per group and at least one group")
        norms = tuple(
            check_clip_norm(c, f"l2_clip of group {name!r}")
            for name, c in zip(self.group_names, self.clip_norms, strict=True)
        )
        object.__setattr__(self, "clip_norms", norms)
        if self.clip_fn == "automatic":
            if self.gamma is None or not (math.isfinite(self.gamma) and self.gamma > 0):
                raise ValueError(
                    f"clip_fn='automatic' needs an explicit gamma > 0, got gamma={self.gamma!r}"
                )
        elif self.gamma is not None:
            raise ValueError(f"gamma is only used by clip_fn='automatic', got gamma={self.gamma!r}")

    @property
    def num_groups(self) -> int:
        return len(self.group_names)

    @property
    def sensitivity(self) -> float:
        """L2 sensitivity of the clipped sum to adding/removing one example."""
        return math.sqrt(sum(c * c for c in self.clip_norms))

    def group_sq_norms(self, leaf_sq_norms: list[jax.Array]) -> jax.Array:
        """Sums per-leaf squared norms ``[B]`` (leaves order) into groups: ``[B, K]``."""
        if len(leaf_sq_norms) != len(self.leaf_groups):
            raise ValueError(
                f"expected {len(self.leaf_groups)} per-leaf norms, got {len(leaf_sq_norms)}"
            )
        cols = []
        for k in range(self.num_groups):
            parts = [
                s.astype(norm_dtype(s.dtype))
                for s, g in zip(leaf_sq_norms, self.leaf_groups, strict=True)
                if g == k
            ]
            cols.append(sum(parts[1:], parts[0]))
        return jnp.stack(cols, axis=-1)

    def factors(self, sq_norms: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Clip factors ``[B, K]`` (float32 or wider) and the rows kept ``[B]``.

        A row is kept when it is in the mask and all its group norms are finite; other
        rows get factor 0 and engines must zero their gradients (``0 * nan`` is ``nan``).
        """
        dtype = norm_dtype(sq_norms.dtype)
        sq_norms = sq_norms.astype(dtype)
        keep = jnp.logical_and(mask, jnp.all(jnp.isfinite(sq_norms), axis=-1))
        norms = jnp.sqrt(jnp.where(keep[:, None], sq_norms, 0.0))
        clip = jnp.asarray(self.clip_norms, dtype)
        if self.clip_fn == "abadi":
            c = clip / jnp.maximum(norms, clip)
        else:
            c = clip / (norms + jnp.asarray(self.gamma, dtype))
        return jnp.where(keep[:, None], c, 0.0), keep

    def leaf_factor(self, factors: jax.Array, leaf_index: int) -> jax.Array:
        """The ``[B]`` factors that apply to trainable leaf number ``leaf_index``."""
        return factors[:, self.leaf_groups[leaf_index]]


def clip_plan(
    train: Any,
    l2_clip: float | Mapping[str, float],
    clip_fn: str = "abadi",
    gamma: float | None = None,
    group_fn: Callable[[Path], str] | None = None,
) -> ClipPlan:
    """Builds the :class:`ClipPlan` for a tree of trainable leaves (``None`` = frozen)."""
    paths = leaf_paths(train)
    if not paths:
        raise ValueError("no trainable leaves: the trainable predicate selected nothing")
    if isinstance(l2_clip, Mapping):
        if not l2_clip:
            raise ValueError("l2_clip is an empty mapping: give at least one {group: clip norm}")
        names = tuple(l2_clip)
        norms = tuple(l2_clip[n] for n in names)
        assign = group_fn or top_level_group
        index = {n: i for i, n in enumerate(names)}
        leaf_groups = []
        for p in paths:
            g = assign(p)
            if g not in index:
                raise ValueError(
                    f"trainable leaf {path_to_str(p)!r} is in clip group {g!r}, which has no "
                    f"clip norm in l2_clip (groups: {sorted(names)})"
                )
            leaf_groups.append(index[g])
        unused = sorted(set(names) - {names[i] for i in leaf_groups})
        if unused:
            raise ValueError(f"clip groups {unused} in l2_clip contain no trainable leaf")
        return ClipPlan(names, norms, clip_fn, gamma, tuple(leaf_groups))
    if group_fn is not None:
        raise ValueError("group_fn needs l2_clip to be a mapping {group name: clip norm}")
    return ClipPlan(("all",), (check_clip_norm(l2_clip),), clip_fn, gamma, (0,) * len(paths))
