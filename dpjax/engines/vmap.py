"""The oracle engine: per-example gradients with ``jax.vmap(jax.grad(...))``.

Every example is run through ``loss_fn`` as a batch of one, its gradient with respect
to the trainable leaves is taken, and the ``[B, ...]`` per-example gradients are clipped
and summed with one contraction per leaf (``einsum('b,b...->...')``), never with a
multiply-then-sum.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from dpjax.clip_rules import ClipPlan, norm_dtype, sum_dtype
from dpjax.engines.base import EngineResult, check_loss, vmapped
from dpjax.engines.registry import register_engine
from dpjax.partition import combine

__all__ = ["clip_and_sum", "per_example_grads", "vmap_engine"]


def per_example_grads(
    loss_fn: Any, train: Any, frozen: Any, batch: Any, spmd_axis_name: str | None = None
) -> tuple[jax.Array, Any]:
    """Per-example losses ``[B]`` and gradients (leading axis ``B``) w.r.t. ``train``."""
    (loss, grads), _ = _per_example(loss_fn, train, frozen, batch, spmd_axis_name)
    return loss, grads


def _per_example(
    loss_fn: Any, train: Any, frozen: Any, batch: Any, spmd_axis_name: str | None
) -> tuple[tuple[jax.Array, Any], bool]:

    def example_loss(t: Any, example: Any) -> jax.Array:
        one = jax.tree.map(lambda x: x[None], example)
        out = loss_fn(combine(t, frozen), one)
        check_loss(out, 1)
        return out[0]

    grad_fn = jax.vmap(
        jax.value_and_grad(example_loss), in_axes=(None, 0), spmd_axis_name=spmd_axis_name
    )
    return vmapped(grad_fn, train, batch)


def clip_and_sum(per_example: Any, plan: ClipPlan, mask: jax.Array) -> EngineResult:
    """Clips per-example gradients (leading axis ``B``) by the plan and sums them.

    The sums are float32 (float64 for float64 gradients) whatever the gradients' dtype.
    """
    leaves, treedef = jax.tree.flatten(per_example)
    sq = [
        jnp.sum(jnp.square(g.astype(norm_dtype(g.dtype))).reshape(g.shape[0], -1), axis=1)
        for g in leaves
    ]
    sq_norms = plan.group_sq_norms(sq)
    factors, keep = plan.factors(sq_norms, mask)
    summed = []
    for i, g in enumerate(leaves):
        # Factors stay float32 and the contraction runs in float32 (float64): a factor
        # rounded to bfloat16 could scale a gradient to more than C.
        dt = sum_dtype(g.dtype)
        c = plan.leaf_factor(factors, i).astype(dt)
        safe = jnp.where(keep.reshape((-1,) + (1,) * (g.ndim - 1)), g, jnp.zeros((), g.dtype))
        exact = jax.lax.Precision.HIGHEST  # no TF32 rounding of what was measured
        summed.append(jnp.einsum("b,b...->...", c, safe.astype(dt), precision=exact))
    return EngineResult(jax.tree.unflatten(treedef, summed), sq_norms, None, keep)


@register_engine("vmap")
def vmap_engine(
    loss_fn: Any,
    train: Any,
    frozen: Any,
    batch: Any,
    plan: ClipPlan,
    *,
    spmd_axis_name: str | None = None,
) -> EngineResult:
    """Clipped sum from explicit per-example gradients (the reference engine)."""
    (loss, grads), mixes = _per_example(loss_fn, train, frozen, batch, spmd_axis_name)
    result = clip_and_sum(grads, plan, batch["mask"])
    return result._replace(loss=loss, mixes_rows=mixes)
