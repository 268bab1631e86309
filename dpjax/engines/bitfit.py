"""The ``bitfit`` engine: per-example bias gradients from output gradients (DP-BiTFiT).

For a layer ``y = f(x; W) + b`` the per-example gradient of ``b`` is ``dL_i/dy_i`` summed
over every axis of ``y`` that ``b`` is broadcast along. A zero *tap* shaped like ``b``
broadcast to ``y`` (``(B, 1, ..., 1, p)`` for a Dense bias) is added to the layer's output
(:mod:`dpjax.engines.taps`); the gradient with respect to the taps *is* the per-example
bias gradient, already reduced. Weights are closed over, never differentiated: XLA
computes no weight gradients and keeps no activations for them.

Two ways to take that gradient (both exact, both compared to ``vmap`` in the tests):

* ``"batched"``: one ``jax.grad`` of ``sum(loss_fn(params, batch))`` with respect to taps
  of shape ``(B, 1, ..., 1, *bias)``. ``loss_fn`` runs on the whole batch, exactly as in
  non-private training. Needs every trainable leaf to be a tapped bias.
* ``"vmap"``: ``jax.vmap`` over examples of ``jax.grad`` with respect to (taps, *direct*
  leaves). Direct leaves are the trainable leaves that are not biases of tappable calls
  (a fresh classifier head, a ``cls`` token, position embeddings, a bias used inside
  ``nn.scan``); they get their exact per-example gradient from the same backward pass.

``mode="auto"`` (what ``dpjax.clipped_grad(method="bitfit")`` uses) picks ``"batched"``
when every trainable leaf is a tapped bias and ``"vmap"`` otherwise. Measured by XLA on
the small encoder of the tests and on a BERT-base-shaped encoder
(``benchmarks/bitfit_cost.py``, XLA CPU, B=8, T=128): both modes compile to the same
FLOPs within 0.01% and the same temp memory (0.68x FLOPs and 0.97x temp memory of a
non-private full step; DP full with vmap needs 4.0x the temp memory). The batched mode
needs no batching rules for the user's ops, so it is the default whenever it applies.

Which layers are tapped: the entries of the one layer table (:mod:`dpjax.engines.layers`)
with a bias rule (Dense, DenseGeneral, Conv, ConvTranspose, ConvLocal, LayerNorm,
GroupNorm; exactly these types: a subclass takes the direct path until registered). A
rule maps a call to the output axes its ``bias`` spans. Register a custom module whose
bias is *added* to its output with :func:`register_bias_layer`; if the bias is used any
other way, the result is wrong, which :func:`dpjax.check.check_engine` detects.

Example:
    >>> import flax.linen as nn, jax, jax.numpy as jnp, dpjax
    >>> model = nn.Dense(2)
    >>> x = jnp.ones((4, 3))
    >>> params = model.init(jax.random.key(0), x)["params"]
    >>> def loss_fn(p, b):
    ...     return jnp.sum(model.apply({"params": p}, b["x"]) ** 2, axis=-1)
    >>> grad_fn = dpjax.clipped_grad(loss_fn, l2_clip=1.0, method="bitfit",
    ...                              trainable=dpjax.bias_only)
    >>> grads, info = grad_fn(params, {"x": x})
    >>> grads["kernel"] is None, grads["bias"].shape, info.norms.shape
    (True, (2,), (4,))
"""

from __future__ import annotations

from typing import Any

import jax

from dpjax.clip_rules import ClipPlan
from dpjax.engines import taps
from dpjax.engines.base import EngineResult
from dpjax.engines.layers import BiasRule, lookup, register_layer, trailing_bias
from dpjax.engines.registry import register_engine
from dpjax.engines.tap_pass import by_leaf, tap_pass
from dpjax.engines.tap_plan import Rule, plan_taps
from dpjax.engines.vmap import clip_and_sum
from dpjax.partition import combine, leaf_paths, path_to_str

__all__ = ["BIAS", "BiasRule", "bitfit_engine", "register_bias_layer", "trailing_bias"]


def register_bias_layer(
    module_type: type,
    rule: BiasRule = trailing_bias,
    *,
    methods: tuple[str, ...] = ("__call__",),
) -> None:
    """Lets the ``bitfit`` engine tap a custom module whose ``bias`` param is added to its output.

    One entry of the layer table (:func:`dpjax.engines.layers.register_layer`); only this
    exact type is matched, so register each subclass you want tapped.

    Args:
      module_type: a linen module class with a ``params`` variable named ``bias``.
      rule: maps ``(module, output_shape, bias_shape)`` to the output axes the bias
        spans (default: the trailing axes, as in ``x @ W + b``).
      methods: the methods that add the bias.

    Example:
        >>> import flax.linen as nn, jax, jax.numpy as jnp, dpjax
        >>> class Shift(nn.Module):  # a layer of one's own that adds a bias
        ...     @nn.compact
        ...     def __call__(self, x):
        ...         return x + self.param("bias", nn.initializers.zeros, (x.shape[-1],))
        >>> register_bias_layer(Shift)
        >>> model = Shift()
        >>> x = jnp.arange(6.0).reshape(3, 2)
        >>> params = model.init(jax.random.key(0), x)["params"]
        >>> loss_fn = lambda p, b: jnp.sum(model.apply({"params": p}, b["x"]) ** 2, axis=1)
        >>> errors = dpjax.check_engine(loss_fn, params, {"x": x}, method="bitfit",
        ...                             trainable=dpjax.bias_only, l2_clip=1.0)
        >>> max(errors.values()) < 1e-5
        True
    """
    register_layer(module_type, methods, bias=rule)


def _covers(call: taps.LayerCall) -> dict[str, tuple[int, ...] | None]:
    entry, shape = lookup(call.module_type), call.param_shape("bias")
    if entry is None or entry.bias is None or shape is None:
        return {}
    axes = entry.bias(call.module, call.output_shape, shape)
    return {} if axes is None else {"bias": tuple(axes)}


#: The ``bitfit`` rule: the ``bias`` of a layer whose bias rule gives the axes it spans.
BIAS = Rule("bitfit", _covers)


def _tap_shape(call: taps.LayerCall, axes: tuple[int, ...]) -> tuple[int, ...]:
    """Per-example tap shape: the bias axes of the output, 1 elsewhere."""
    return tuple(call.output_shape[a] if a in axes else 1 for a in range(1, len(call.output_shape)))


@register_engine("bitfit")
def bitfit_engine(
    loss_fn: Any,
    train: Any,
    frozen: Any,
    batch: Any,
    plan: ClipPlan,
    *,
    spmd_axis_name: str | None = None,
    mode: str = "auto",
) -> EngineResult:
    """Clipped sum of per-example bias gradients from taps (see the module docstring).

    Args:
      loss_fn, train, frozen, batch, plan, spmd_axis_name: the engine contract
        (:mod:`dpjax.engines`).
      mode: ``"auto"``, ``"batched"`` (every trainable leaf must be a tapped bias) or
        ``"vmap"``.

    Raises:
      ValueError: ``mode="batched"`` with a trainable leaf that is not a tapped bias
        (the message names it), or an unknown mode.
    """
    if mode not in ("auto", "batched", "vmap"):
        raise ValueError(f"mode must be 'auto', 'batched' or 'vmap', got {mode!r}")
    paths = leaf_paths(train)
    tplan = plan_taps(loss_fn, combine(train, frozen), batch, paths, BIAS)
    if mode == "batched" and tplan.direct:
        named = [f"{path_to_str(paths[i])} ({tplan.reasons[i]})" for i in tplan.direct]
        raise ValueError(
            "bitfit mode='batched' covers only biases of tappable layer calls; these "
            f"trainable leaves are not: {named}. Use mode='vmap' (exact per-example "
            "gradients for them) or freeze them"
        )
    shapes = {u.key: _tap_shape(tplan.calls[u.key], u.axes) for u in tplan.uses}
    use_vmap = mode == "vmap" or bool(tplan.direct)
    out = tap_pass(
        loss_fn, train, frozen, batch, tplan, shapes, vmap=use_vmap, spmd_axis_name=spmd_axis_name
    )
    leaves = jax.tree.leaves(train)

    def from_use(use: Any) -> jax.Array:
        leaf = leaves[use.leaf]
        return out.taps[use.key].reshape((-1, *leaf.shape)).astype(leaf.dtype)

    parts = by_leaf(tplan, out, paths, from_use, lambda g: g)
    per_example = [sum(p[1:], p[0]) for p in parts]  # a shared bias: sum before the norm
    tree = jax.tree.unflatten(jax.tree.structure(train), per_example)
    result = clip_and_sum(tree, plan, batch["mask"])
    return result._replace(loss=out.loss, mixes_rows=out.mixes_rows)
