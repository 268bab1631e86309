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

Which layers are tapped: the types in :data:`BIAS_RULES` (Dense, DenseGeneral, Conv,
ConvTranspose, ConvLocal, LayerNorm, GroupNorm; subclasses included). A rule maps a call
to the output axes its ``bias`` spans. Register a custom module whose bias is *added*
to its output with :func:`register_bias_layer`; if the bias is used any other way, the
result is wrong, which :func:`dpjax.check.check_engine` detects.

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

import dataclasses
from collections.abc import Callable, Collection, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dpjax.clip_rules import ClipPlan
from dpjax.engines import register_engine
from dpjax.engines import taps as taps_lib
from dpjax.engines.base import EngineResult, vmapped
from dpjax.engines.reads import read_outside
from dpjax.engines.vmap import clip_and_sum
from dpjax.partition import Path, combine, leaf_paths, path_to_str

__all__ = ["BIAS_RULES", "BiasRule", "Site", "TapPlan", "bitfit_engine", "plan_taps",
           "register_bias_layer", "trailing_bias"]  # fmt: skip

# (module, output_shape, bias_shape) -> the output axes the bias spans, in bias order,
# or None when this call's bias is not simply added (the leaf then goes the direct way).
BiasRule = Callable[[Any, tuple[int, ...], tuple[int, ...]], tuple[int, ...] | None]


def trailing_bias(
    module: Any, output_shape: tuple[int, ...], bias_shape: tuple[int, ...]
) -> tuple[int, ...] | None:
    """Rule for a bias added on the trailing axes of the output (Dense, Conv, ...)."""
    del module
    k, n = len(bias_shape), len(output_shape)
    if k == 0 or k >= n or tuple(output_shape[n - k :]) != tuple(bias_shape):
        return None
    return tuple(range(n - k, n))


def _dense_general_bias(module: Any, output_shape: tuple[int, ...], bias_shape: tuple[int, ...]):
    if tuple(getattr(module, "batch_dims", ()) or ()):
        return None  # the bias is broadcast along the kernel's batch dims too
    return trailing_bias(module, output_shape, bias_shape)


def _layer_norm_bias(module: Any, output_shape: tuple[int, ...], bias_shape: tuple[int, ...]):
    axes = module.feature_axes
    axes = (axes,) if isinstance(axes, int) else tuple(axes)
    n = len(output_shape)
    axes = tuple(sorted(a % n for a in axes))
    if 0 in axes or tuple(output_shape[a] for a in axes) != tuple(bias_shape):
        return None
    return axes


BIAS_RULES: dict[type, BiasRule] = {
    nn.Dense: trailing_bias,
    nn.DenseGeneral: _dense_general_bias,
    nn.Conv: trailing_bias,
    nn.ConvTranspose: trailing_bias,
    nn.ConvLocal: trailing_bias,
    nn.LayerNorm: _layer_norm_bias,
    nn.GroupNorm: trailing_bias,
}


def register_bias_layer(
    module_type: type,
    rule: BiasRule = trailing_bias,
    *,
    methods: tuple[str, ...] = ("__call__",),
) -> None:
    """Lets the ``bitfit`` engine tap a custom module whose ``bias`` param is added to its output.

    Args:
      module_type: a linen module class with a ``params`` variable named ``bias``.
      rule: maps ``(module, output_shape, bias_shape)`` to the output axes the bias
        spans (default: the trailing axes, as in ``x @ W + b``).
      methods: the methods that add the bias.

    Example::

        class AddBias(nn.Module):
            @nn.compact
            def __call__(self, x):
                return x + self.param("bias", nn.initializers.zeros, (x.shape[-1],))

        register_bias_layer(AddBias)
        dpjax.check_engine(loss_fn, params, batch, method="bitfit", trainable=...)
    """
    taps_lib.register_layer(module_type, methods)
    BIAS_RULES[module_type] = rule


def _bias_rule(module_type: type) -> BiasRule | None:
    for base in module_type.__mro__:
        if base in BIAS_RULES:
            return BIAS_RULES[base]
    return None


@dataclasses.dataclass(frozen=True)
class Site:
    """One tapped call feeding trainable leaf ``leaf``: tap ``key`` over output ``axes``."""

    key: str
    leaf: int
    axes: tuple[int, ...]
    output_shape: tuple[int, ...]
    dtype: Any


@dataclasses.dataclass(frozen=True)
class TapPlan:
    """How the trainable leaves are covered: tapped sites and direct leaves (indices)."""

    sites: tuple[Site, ...]
    direct: tuple[int, ...]
    reasons: dict[int, str] = dataclasses.field(compare=False, hash=False)

    def tap_shape(self, site: Site, batch: int) -> tuple[int, ...]:
        """Tap shape for ``batch`` examples: ``batch`` on axis 0, bias axes, 1 elsewhere."""
        shape = [1] * len(site.output_shape)
        for a in site.axes:
            shape[a] = site.output_shape[a]
        return (batch, *shape[1:])


def plan_taps(
    calls: Sequence[taps_lib.LayerCall],
    params: Any,
    train_paths: Sequence[Path],
    read_outside: Collection[Path] = (),
) -> TapPlan:
    """Decides which trainable leaves are tapped biases; the rest go the direct way.

    A leaf is tapped only if every discovered call that uses it is a top-level call of a
    layer with a bias rule that accepts it; a leaf also used by a lifted call (inside
    ``nn.scan``, ...), by an unrecognised rule, or read outside its layer calls
    (``read_outside``, see :mod:`dpjax.engines.reads`) is differentiated directly instead.
    """
    index = {p: i for i, p in enumerate(train_paths)}
    sites: list[Site] = []
    blocked: dict[int, str] = {
        index[p]: "also read outside its layer call" for p in read_outside if p in index
    }
    for call in calls:
        if call.param_shape("bias") is None:
            continue
        path = taps_lib.resolve(params, call, "bias")
        if path is None or path not in index:
            if call.lifted:  # a stacked leaf seen through a slice: mark by suffix
                for p, i in index.items():
                    if p[-len(call.module_path) - 1 :] == (*call.module_path, "bias"):
                        blocked[i] = f"used inside a lifted transform ({call.key})"
            continue
        leaf = index[path]
        rule = _bias_rule(call.module_type)
        axes = None
        if call.lifted:
            blocked[leaf] = f"used inside a lifted transform ({call.key})"
        elif rule is None:
            blocked[leaf] = f"{call.module_type.__name__} has no bias rule ({call.key})"
        else:
            axes = rule(call.module, call.output_shape, call.param_shape("bias"))
            if axes is None:
                blocked[leaf] = f"bias rule rejected call {call.key}"
        if axes is not None:
            sites.append(Site(call.key, leaf, axes, call.output_shape, call.output_dtype))
    tapped = {s.leaf for s in sites} - set(blocked)
    reasons = dict(blocked)
    for i in range(len(train_paths)):
        if i not in tapped:
            reasons.setdefault(i, "not the bias of a recognised layer call")
    return TapPlan(
        sites=tuple(s for s in sites if s.leaf in tapped),
        direct=tuple(i for i in range(len(train_paths)) if i not in tapped),
        reasons=reasons,
    )


def _check_loss(loss: jax.Array, size: int) -> None:
    if getattr(loss, "shape", None) != (size,):
        raise ValueError(
            f"loss_fn must return per-example losses of shape [B]=({size},), got "
            f"{getattr(loss, 'shape', type(loss))}"
        )


def _batched(loss_fn: Any, params: Any, batch: Any, plan: TapPlan, size: int):
    zeros = {s.key: jnp.zeros(plan.tap_shape(s, size), s.dtype) for s in plan.sites}

    def total(t: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
        loss, _ = taps_lib.tapped_loss(loss_fn, params, batch, t)
        _check_loss(loss, size)
        return jnp.sum(loss), loss

    grads, loss = jax.grad(total, has_aux=True)(zeros)
    return loss, grads, [], False


def _vmapped(
    loss_fn: Any, train: Any, rest: Any, batch: Any, plan: TapPlan, spmd_axis_name: str | None
):
    direct = list(jax.tree.leaves(train))
    treedef = jax.tree.structure(train)
    direct_leaves = [direct[i] for i in plan.direct]
    zeros = {s.key: jnp.zeros(plan.tap_shape(s, 1), s.dtype) for s in plan.sites}

    def example_loss(t: dict[str, jax.Array], d: list[jax.Array], example: Any) -> jax.Array:
        leaves = [None] * treedef.num_leaves
        for i, x in zip(plan.direct, d, strict=True):
            leaves[i] = x
        params = combine(jax.tree.unflatten(treedef, leaves), rest)
        one = jax.tree.map(lambda x: x[None], example)
        loss, _ = taps_lib.tapped_loss(loss_fn, params, one, t)
        _check_loss(loss, 1)
        return loss[0]

    fn = jax.vmap(
        jax.value_and_grad(example_loss, argnums=(0, 1)),
        in_axes=(None, None, 0),
        spmd_axis_name=spmd_axis_name,
    )
    (loss, (tap_grads, direct_grads)), mixes = vmapped(fn, zeros, direct_leaves, batch)
    return loss, tap_grads, direct_grads, mixes


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
    params = combine(train, frozen)
    paths = leaf_paths(train)
    size = jax.tree.leaves(batch)[0].shape[0]
    one = jax.tree.map(lambda x: x[:1], batch)
    calls = taps_lib.discover(loss_fn, params, one)
    tplan = plan_taps(calls, params, paths)
    if tplan.sites:
        tapped = [paths[i] for i in sorted({s.leaf for s in tplan.sites})]
        outside = read_outside(loss_fn, params, one, tapped)
        if outside:
            tplan = plan_taps(calls, params, paths, outside)
    if mode == "batched" and tplan.direct:
        named = [f"{path_to_str(paths[i])} ({tplan.reasons[i]})" for i in tplan.direct]
        raise ValueError(
            "bitfit mode='batched' covers only biases of tappable layer calls; these "
            f"trainable leaves are not: {named}. Use mode='vmap' (exact per-example "
            "gradients for them) or freeze them"
        )
    use_vmap = mode == "vmap" or (mode == "auto" and bool(tplan.direct))
    leaves = jax.tree.leaves(train)
    if use_vmap:
        rest = combine(_tapped_only(train, tplan), frozen)
        loss, tap_grads, direct_grads, mixes = _vmapped(
            loss_fn, train, rest, batch, tplan, spmd_axis_name
        )
    else:
        loss, tap_grads, direct_grads, mixes = _batched(loss_fn, params, batch, tplan, size)

    per_example: list[Any] = [None] * len(leaves)
    for s in tplan.sites:
        g = tap_grads[s.key].reshape((size, *leaves[s.leaf].shape)).astype(leaves[s.leaf].dtype)
        per_example[s.leaf] = g if per_example[s.leaf] is None else per_example[s.leaf] + g
    for i, g in zip(tplan.direct, direct_grads, strict=True):
        per_example[i] = g
    for i, g in enumerate(per_example):
        if g is None:  # a tapped leaf with no site cannot happen; never silently drop one
            raise ValueError(f"bitfit: trainable leaf {path_to_str(paths[i])!r} got no gradient")
    tree = jax.tree.unflatten(jax.tree.structure(train), per_example)
    result = clip_and_sum(tree, plan, batch["mask"])
    return result._replace(loss=loss, mixes_rows=mixes)


def _tapped_only(train: Any, tplan: TapPlan) -> Any:
    """``train`` with the direct leaves removed: the tapped biases, closed over in vmap mode."""
    leaves, treedef = jax.tree.flatten(train)
    direct = set(tplan.direct)
    return jax.tree.unflatten(treedef, [None if i in direct else x for i, x in enumerate(leaves)])
