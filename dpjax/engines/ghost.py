"""The ``ghost`` engine: book-keeping ghost clipping in one forward and one backward pass.

Zero taps with the full output shape of every layer call that uses a trainable leaf are
added to the outputs (:mod:`dpjax.engines.taps`); ``jax.grad`` of ``sum(loss)`` with
respect to the taps gives each call's output gradient ``g``, and the interceptor records
its input ``a``. The weights are closed over, so autodiff computes no weight gradient.
Then, per trainable leaf (:mod:`dpjax.engines.ghost_layers`,
:mod:`dpjax.engines.ghost_norms`):

1. the per-example squared gradient norm, from the Gram form
   ``sum_{t,s} (a_t . a_s)(g_t . g_s)`` or the direct ``||a_i^T g_i||^2``, whichever is
   smaller for the leaf's shapes (``2T^2 <= d p``: Gram); a leaf used by several calls
   (weight tying, an ``Embed`` used for lookup and ``attend``) gets the norm of the SUM of
   its per-call gradients, cross terms included;
2. clip factors from the plan (per group), in float32;
3. the clipped sum with one contraction per call, ``einsum('btd,btp,b->dp', a, g, c)``,
   or one scatter-add into an embedding table (never a one-hot over the vocabulary).

Leaves without a ghost rule (see :mod:`dpjax.engines.ghost_plan`) get exact per-example
gradients in the same pass: the engine then runs ``vmap`` over examples of ``grad`` with
respect to (taps, those leaves). Rows outside the mask or with non-finite gradients add
exactly zero.

Example:
    >>> import flax.linen as nn, jax, jax.numpy as jnp, dpjax
    >>> model = nn.Dense(2)
    >>> x = jnp.ones((4, 3, 5))
    >>> params = model.init(jax.random.key(0), x)["params"]
    >>> loss_fn = lambda p, b: jnp.sum(model.apply({"params": p}, b["x"]) ** 2, axis=(1, 2))
    >>> grads, info = dpjax.clipped_grad(loss_fn, l2_clip=1.0, method="ghost")(params, {"x": x})
    >>> grads["kernel"].shape, info.norms.shape
    ((5, 2), (4,))
"""

from __future__ import annotations

import logging
from typing import Any

import jax
import jax.numpy as jnp

from dpjax.clip_rules import ClipPlan, sum_dtype
from dpjax.engines import ghost_norms as gn
from dpjax.engines import register_engine
from dpjax.engines import taps as taps_lib
from dpjax.engines.base import EngineResult, vmapped
from dpjax.engines.ghost_layers import ExplicitPart, FactoredPart, adapter_for
from dpjax.engines.ghost_plan import GhostPlan, make_ghost_plan
from dpjax.partition import combine, leaf_paths, path_to_str

__all__ = ["ghost_engine"]

log = logging.getLogger(__name__)


def _check_loss(loss: jax.Array, size: int) -> None:
    if getattr(loss, "shape", None) != (size,):
        raise ValueError(
            f"loss_fn must return per-example losses of shape [B]=({size},), got "
            f"{getattr(loss, 'shape', type(loss))}"
        )


def _tap_zeros(gplan: GhostPlan, size: int) -> dict[str, jax.Array]:
    return {
        k: jnp.zeros((size,) + c.output_shape[1:], c.output_dtype) for k, c in gplan.calls.items()
    }


def _batched(loss_fn: Any, params: Any, batch: Any, gplan: GhostPlan, size: int):
    """One forward + one backward of the whole batch: ``(loss, g by key, a by key)``."""

    def total(t: dict[str, jax.Array]) -> tuple[jax.Array, Any]:
        loss, inputs, kw = taps_lib.tapped_loss(
            loss_fn, params, batch, t, record_inputs=True, record_kwargs=True
        )
        _check_loss(loss, size)
        return jnp.sum(loss), (loss, inputs, kw)

    g, (loss, a, kw) = jax.grad(total, has_aux=True)(_tap_zeros(gplan, size))
    return loss, g, a, kw, [], False


def _vmapped(loss_fn: Any, train: Any, frozen: Any, batch: Any, gplan: GhostPlan, spmd: Any):
    """``vmap`` over examples of ``grad`` w.r.t. (taps, fallback leaves): the same pass."""
    leaves, treedef = jax.tree.flatten(train)
    fallback = set(gplan.fallback)
    closed = [None if i in fallback else x for i, x in enumerate(leaves)]
    rest = combine(jax.tree.unflatten(treedef, closed), frozen)
    direct = [leaves[i] for i in gplan.fallback]

    def example_loss(t: dict[str, jax.Array], d: list[jax.Array], example: Any):
        own: list[Any] = [None] * len(leaves)
        for i, x in zip(gplan.fallback, d, strict=True):
            own[i] = x
        params = combine(jax.tree.unflatten(treedef, own), rest)
        one = jax.tree.map(lambda x: x[None], example)
        t1 = jax.tree.map(lambda x: x[None], t)
        loss, inputs, kw = taps_lib.tapped_loss(
            loss_fn, params, one, t1, record_inputs=True, record_kwargs=True
        )
        _check_loss(loss, 1)
        return loss[0], (loss[0], jax.tree.map(lambda x: x[0], (inputs, kw)))

    fn = jax.vmap(
        jax.grad(example_loss, argnums=(0, 1), has_aux=True),
        in_axes=(0, None, 0),
        spmd_axis_name=spmd,
    )
    size = batch["mask"].shape[0]
    ((g, d), (loss, (a, kw))), mixes = vmapped(fn, _tap_zeros(gplan, size), direct, batch)
    return loss, g, a, kw, d, mixes


def _leaf_parts(gplan: GhostPlan, g: dict, a: dict, kw: dict, num_leaves: int) -> list[list[Any]]:
    """The parts (factored or explicit) of every covered leaf, one per use."""
    parts: list[list[Any]] = [[] for _ in range(num_leaves)]
    cache: dict[str, dict[str, Any]] = {}
    for use in gplan.uses:
        if use.key not in cache:
            call = gplan.calls[use.key]
            kwargs = {**dict(call.static_kwargs), **kw.get(use.key, {})}
            cache[use.key] = adapter_for(call.module_type, call.method)(
                call, a[use.key], g[use.key], kwargs
            )
        parts[use.leaf].append(cache[use.key][use.name])
    return parts


def _sq_norm(parts: list[Any], name: str) -> jax.Array:
    if all(isinstance(p, FactoredPart) for p in parts):
        return gn.sq_norm([p.factored for p in parts])
    if all(isinstance(p, ExplicitPart) for p in parts):
        return gn.explicit_sq_norm(sum(p.value for p in parts[1:]) + parts[0].value)
    raise ValueError(f"ghost: leaf {name!r} mixes factored and explicit gradients")


def _clipped(parts: list[Any], c: jax.Array, keep: jax.Array, leaf: jax.Array) -> jax.Array:
    if isinstance(parts[0], FactoredPart):
        total = parts[0].layout.to_leaf(gn.clipped_sum([p.factored for p in parts], c, keep))
    else:
        x = sum(p.value for p in parts[1:]) + parts[0].value
        total = gn.explicit_clipped_sum(x, c, keep)
    if total.size != leaf.size:
        raise ValueError(f"ghost: clipped sum of shape {total.shape} for a leaf {leaf.shape}")
    # float32 (float64) whatever the model dtype: cast to the leaf dtype only after noise.
    return total.reshape(leaf.shape).astype(sum_dtype(leaf.dtype))


@register_engine("ghost")
def ghost_engine(
    loss_fn: Any,
    train: Any,
    frozen: Any,
    batch: Any,
    plan: ClipPlan,
    *,
    spmd_axis_name: str | None = None,
) -> EngineResult:
    """Clipped sum by book-keeping ghost clipping (see the module docstring).

    Args:
      loss_fn, train, frozen, batch, plan, spmd_axis_name: the engine contract
        (:mod:`dpjax.engines`); ``spmd_axis_name`` is used when fallback leaves need the
        per-example ``vmap``.
    """
    params = combine(train, frozen)
    paths = leaf_paths(train)
    leaves, treedef = jax.tree.flatten(train)
    size = batch["mask"].shape[0]
    gplan = make_ghost_plan(loss_fn, params, batch, paths)
    if gplan.fallback:
        log.info(gplan.describe(paths))
        loss, g, a, kw, direct, mixes = _vmapped(
            loss_fn, train, frozen, batch, gplan, spmd_axis_name
        )
    else:
        loss, g, a, kw, direct, mixes = _batched(loss_fn, params, batch, gplan, size)
    parts = _leaf_parts(gplan, g, a, kw, len(leaves))
    for i, d in zip(gplan.fallback, direct, strict=True):
        parts[i] = [ExplicitPart(d)]
    for i, p in enumerate(parts):
        if not p:  # cannot happen: every leaf is covered or in the fallback
            raise ValueError(f"ghost: trainable leaf {path_to_str(paths[i])!r} got no gradient")
    sq = [_sq_norm(p, path_to_str(paths[i])) for i, p in enumerate(parts)]
    sq_norms = plan.group_sq_norms(sq)
    factors, keep = plan.factors(sq_norms, batch["mask"])
    summed = [
        _clipped(p, plan.leaf_factor(factors, i), keep, leaves[i]) for i, p in enumerate(parts)
    ]
    tree = jax.tree.unflatten(treedef, summed)
    return EngineResult(tree, sq_norms, loss, keep, mixes_rows=mixes)
