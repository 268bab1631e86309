"""Ghost-clipping math: per-example norms and clipped sums of factored gradients.

A layer's per-example weight gradient is a sum of outer products over positions. For a
linear layer with input ``a`` ``[B, T, d]`` and output gradient ``g`` ``[B, T, p]`` it is
``G_i = sum_t a_{i,t} (x) g_{i,t}`` (a ``d x p`` matrix). This module works with such
gradients without ever materialising all of them at once:

* :class:`Factored` holds ``L`` ``[B, T, G, m]`` and ``R`` ``[B, T, G, n]`` with
  ``G_i = sum_t L_{i,t} (x) R_{i,t}`` per group ``G`` (block-diagonal weights such as grouped
  convolutions; ``G = 1`` otherwise). ``L`` may instead be integer ids ``[B, T]``, the
  one-hot rows of an embedding lookup (``m`` = vocabulary size), never expanded.
* :func:`sq_norm` gives ``||sum_u G_{u,i}||^2`` of one parameter used by several calls
  (weight tying, shared layers), cross terms included: either the ghost (Gram) form
  ``sum_{t,s} (L_t . L'_s)(R_t . R'_s)`` or the direct per-example matrices, whichever
  :func:`prefer_ghost` says is smaller for the shapes.
* :func:`clipped_sum` gives ``sum_i c_i G_i`` with one contraction per call
  (``einsum('btgm,btgn,b->gmn')``) or, for ids, one scatter-add into the table.
* :class:`Layout` maps the canonical ``[G, m, n]`` matrix back to the parameter's shape.

Norms and clipped sums accumulate in float32 (float64 when the inputs are float64), at
``Precision.HIGHEST``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp

__all__ = [
    "Factored",
    "Layout",
    "clipped_sum",
    "explicit_clipped_sum",
    "explicit_sq_norm",
    "ghost_cost",
    "direct_cost",
    "pair_inner",
    "per_example",
    "prefer_ghost",
    "sq_norm",
]


#: Norms and clipped sums are contracted at full precision: a TF32 matmul (the GPU
#: default for float32) would measure one vector and sum a slightly different one.
_EXACT = jax.lax.Precision.HIGHEST


def _acc(*xs: jax.Array) -> jnp.dtype:
    """Accumulation dtype: at least float32, float64 if any input is float64."""
    dt = jnp.float32
    for x in xs:
        if jnp.issubdtype(x.dtype, jnp.floating):
            dt = jnp.promote_types(dt, x.dtype)
    return dt


class Factored(NamedTuple):
    """One call's per-example gradient ``G_i = sum_t L_{i,t} (x) R_{i,t}`` per group.

    Attributes:
      left: ``[B, T, G, m]`` float, or integer ids ``[B, T]`` (one-hot rows, ``G = 1``).
      right: ``[B, T, G, n]``.
      rows: ``m`` (needed when ``left`` holds ids).
    """

    left: jax.Array
    right: jax.Array
    rows: int

    @property
    def is_ids(self) -> bool:
        return self.left.ndim == 2

    @property
    def positions(self) -> int:
        return self.right.shape[1]

    @property
    def groups(self) -> int:
        return self.right.shape[2]

    @property
    def cols(self) -> int:
        return self.right.shape[3]


@dataclasses.dataclass(frozen=True)
class Layout:
    """How a canonical ``[..., G, m, n]`` gradient maps onto a parameter of ``shape``.

    The matrix is reshaped to ``[..., *pre_shape]``, its last ``len(perm)`` axes are
    permuted by ``perm`` and the result is reshaped to ``[..., *shape]``.
    """

    groups: int
    rows: int
    cols: int
    pre_shape: tuple[int, ...]
    perm: tuple[int, ...]
    shape: tuple[int, ...]

    @classmethod
    def matrix(cls, shape: Sequence[int], rows: int) -> Layout:
        """A parameter whose first axes flatten to ``rows`` and the rest to columns."""
        shape = tuple(int(s) for s in shape)
        size = math.prod(shape)
        return cls(1, rows, size // rows, shape, tuple(range(len(shape))), shape)

    def to_leaf(self, mat: jax.Array) -> jax.Array:
        lead = mat.shape[:-3]
        x = mat.reshape(lead + self.pre_shape)
        k = len(lead)
        x = jnp.transpose(x, tuple(range(k)) + tuple(k + p for p in self.perm))
        return x.reshape(lead + self.shape)


def pair_grams(u: Factored, v: Factored) -> tuple[jax.Array, jax.Array]:
    """``(L_u . L_v)`` and ``(R_u . R_v)`` over positions: two ``[B, G, T_u, T_v]``."""
    dt = _acc(u.right, v.right)
    r = jnp.einsum("btgn,bsgn->bgts", u.right, v.right, preferred_element_type=dt, precision=_EXACT)
    if u.is_ids and v.is_ids:
        eq = u.left[:, :, None] == v.left[:, None, :]
        return eq[:, None].astype(dt), r
    if u.is_ids != v.is_ids:
        ids, dense = (u.left, v.left) if u.is_ids else (v.left, u.left)
        # dense one-hot . dense row = the dense row's entry at the id: [B, S_dense, T_ids].
        idx = jnp.broadcast_to(ids[:, None, :], (ids.shape[0], dense.shape[1], ids.shape[1]))
        picked = jnp.take_along_axis(dense[:, :, 0, :], idx, axis=2).astype(dt)
        left = jnp.swapaxes(picked, 1, 2) if u.is_ids else picked
        return left[:, None], r
    left = jnp.einsum(
        "btgm,bsgm->bgts", u.left, v.left, preferred_element_type=dt, precision=_EXACT
    )
    return left, r


def pair_inner(u: Factored, v: Factored) -> jax.Array:
    """Per-example Frobenius inner product ``<G_u, G_v>``: ``[B]``, by the ghost form."""
    left, right = pair_grams(u, v)
    return jnp.einsum("bgts,bgts->b", left, right, precision=_EXACT)


def per_example(f: Factored) -> jax.Array:
    """The explicit per-example gradients ``[B, G, m, n]`` (direct form)."""
    dt = _acc(f.left, f.right)
    if f.is_ids:
        b, t = f.left.shape
        rows = jnp.broadcast_to(jnp.arange(b)[:, None], (b, t))
        out = jnp.zeros((b, f.rows, f.cols), dt).at[rows, f.left].add(f.right[:, :, 0].astype(dt))
        return out[:, None]
    return jnp.einsum(
        "btgm,btgn->bgmn", f.left, f.right, preferred_element_type=dt, precision=_EXACT
    )


def ghost_cost(factors: Sequence[Factored]) -> int:
    """Per-example memory of the Gram form: two ``T_u x T_v`` matrices per pair, per group."""
    t = sum(f.positions for f in factors)
    return 2 * t * t * factors[0].groups


def direct_cost(factors: Sequence[Factored]) -> int:
    """Per-example memory of the direct form: one ``G x m x n`` gradient."""
    f = factors[0]
    return f.groups * f.rows * f.cols


def prefer_ghost(factors: Sequence[Factored]) -> bool:
    """``True`` when the Gram form is no larger than the direct one (``2T^2 <= m n``)."""
    return ghost_cost(factors) <= direct_cost(factors)


def _check_same_shape(factors: Sequence[Factored]) -> None:
    if not factors:
        raise ValueError("need at least one factored gradient")
    shapes = {(f.groups, f.rows, f.cols) for f in factors}
    if len(shapes) != 1:
        raise ValueError(f"factored gradients of one parameter disagree on shape: {shapes}")


def sq_norm(factors: Sequence[Factored], ghost: bool | None = None) -> jax.Array:
    """``||sum_u G_{u,i}||^2`` per example, ``[B]``, cross terms included.

    Args:
      factors: the contributions of every call that uses one parameter.
      ghost: force the Gram (``True``) or direct (``False``) form; ``None`` picks by
        :func:`prefer_ghost`.
    """
    _check_same_shape(factors)
    if ghost is None:
        ghost = prefer_ghost(factors)
    if not ghost:
        total = per_example(factors[0])
        for f in factors[1:]:
            total = total + per_example(f)
        return jnp.sum(jnp.square(total).reshape(total.shape[0], -1), axis=1)
    out = None
    for i, u in enumerate(factors):
        for j in range(i, len(factors)):
            term = pair_inner(u, factors[j])
            term = term if i == j else 2 * term
            out = term if out is None else out + term
    return out


def _rows(keep: jax.Array, x: jax.Array) -> jax.Array:
    """``x`` with the rows outside ``keep`` set to exactly zero (NaN-safe)."""
    return jnp.where(keep.reshape((-1,) + (1,) * (x.ndim - 1)), x, jnp.zeros((), x.dtype))


def clipped_sum(factors: Sequence[Factored], c: jax.Array, keep: jax.Array) -> jax.Array:
    """``sum_i c_i sum_u G_{u,i}`` as ``[G, m, n]``; rows outside ``keep`` add exactly 0.

    The factors ``c`` and the contraction stay in float32 (float64) whatever the dtype of
    ``L`` and ``R``: a factor or a sum rounded to bfloat16 can exceed the clip norm.
    """
    _check_same_shape(factors)
    dt = _acc(*(f.right for f in factors))
    c = c.astype(dt)
    total = None
    for f in factors:
        right = _rows(keep, f.right).astype(dt)
        if f.is_ids:
            scaled = right[:, :, 0] * c[:, None, None]
            flat = scaled.reshape(-1, f.cols)
            part = jnp.zeros((f.rows, f.cols), dt).at[f.left.reshape(-1)].add(flat)[None]
        else:
            left = _rows(keep, f.left).astype(dt)
            part = jnp.einsum("btgm,btgn,b->gmn", left, right, c, precision=_EXACT)
        total = part if total is None else total + part
    return total


def explicit_sq_norm(x: jax.Array) -> jax.Array:
    """Squared norms ``[B]`` of explicit per-example gradients ``[B, ...]``."""
    x = x.astype(_acc(x))
    return jnp.sum(jnp.square(x).reshape(x.shape[0], -1), axis=1)


def explicit_clipped_sum(x: jax.Array, c: jax.Array, keep: jax.Array) -> jax.Array:
    """``sum_i c_i x_i`` by one contraction; rows outside ``keep`` add exactly 0."""
    dt = _acc(x)
    x = _rows(keep, x).astype(dt)
    return jnp.einsum("b,b...->...", c.astype(dt), x, precision=_EXACT)
