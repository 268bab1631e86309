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

Leaves without a ghost rule (a ``cls`` token or position embedding added to activations,
an ``nn.Einsum`` kernel, a leaf used inside ``nn.scan``, a subclass of a known layer, a
leaf also read outside its layer calls; see :mod:`dpjax.engines.tap_plan`) are *direct*:
they get exact per-example gradients in the same pass, which then runs ``vmap`` over
examples of ``grad`` with respect to (taps, those leaves)
(:mod:`dpjax.engines.tap_pass`). Rows outside the mask or with non-finite gradients add
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

import flax.linen as nn
import jax
import jax.numpy as jnp

from dpjax.clip_rules import ClipPlan, sum_dtype
from dpjax.engines import ghost_norms as gn
from dpjax.engines import taps
from dpjax.engines.base import EngineResult
from dpjax.engines.ghost_layers import ExplicitPart, FactoredPart
from dpjax.engines.layers import lookup
from dpjax.engines.registry import register_engine
from dpjax.engines.tap_pass import by_leaf, tap_pass
from dpjax.engines.tap_plan import Rule, Use, plan_taps
from dpjax.partition import combine, leaf_paths, path_to_str

__all__ = ["GHOST", "ghost_engine"]

log = logging.getLogger(__name__)


def _covers(call: taps.LayerCall) -> dict[str, None]:
    """Parameter names the adapter handles for this call (decided by tracing it on shapes)."""
    entry = lookup(call.module_type)
    adapter = entry.adapter(call.method) if entry is not None else None
    if adapter is None or call.extra_args:  # adapters know the single-input signatures
        return {}
    names: set[str] = set()
    ids = call.module_type is nn.Embed and call.method == "__call__"

    def probe(a: jax.Array, g: jax.Array) -> jax.Array:
        names.update(adapter(call, a, g, dict(call.static_kwargs)))
        return jnp.zeros(())

    jax.eval_shape(
        probe,
        jax.ShapeDtypeStruct(call.input_shape, jnp.int32 if ids else jnp.float32),
        jax.ShapeDtypeStruct(call.output_shape, jnp.float32),
    )
    return dict.fromkeys(names)


#: The ``ghost`` rule: any parameter the layer's ghost adapter handles for the call.
GHOST = Rule("ghost", _covers)


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
        (:mod:`dpjax.engines`); ``spmd_axis_name`` is used when direct leaves need the
        per-example ``vmap``.
    """
    paths = leaf_paths(train)
    leaves, treedef = jax.tree.flatten(train)
    tplan = plan_taps(loss_fn, combine(train, frozen), batch, paths, GHOST)
    if tplan.direct:
        log.info(tplan.describe(paths))
    shapes = {k: c.output_shape[1:] for k, c in tplan.calls.items()}
    out = tap_pass(
        loss_fn, train, frozen, batch, tplan, shapes,
        vmap=bool(tplan.direct), record=True, spmd_axis_name=spmd_axis_name,
    )  # fmt: skip
    adapted: dict[str, dict[str, Any]] = {}

    def from_use(use: Use) -> Any:
        if use.key not in adapted:
            call = tplan.calls[use.key]
            kwargs = {**dict(call.static_kwargs), **out.kwargs.get(use.key, {})}
            adapter = lookup(call.module_type).adapter(call.method)
            adapted[use.key] = adapter(call, out.inputs[use.key], out.taps[use.key], kwargs)
        return adapted[use.key][use.name]

    parts = by_leaf(tplan, out, paths, from_use, ExplicitPart)
    sq = [_sq_norm(p, path_to_str(paths[i])) for i, p in enumerate(parts)]
    sq_norms = plan.group_sq_norms(sq)
    factors, keep = plan.factors(sq_norms, batch["mask"])
    summed = [
        _clipped(p, plan.leaf_factor(factors, i), keep, leaves[i]) for i, p in enumerate(parts)
    ]
    tree = jax.tree.unflatten(treedef, summed)
    return EngineResult(tree, sq_norms, out.loss, keep, mixes_rows=out.mixes_rows)
