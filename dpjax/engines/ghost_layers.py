"""Per-layer gradients in ghost form: from a call's input ``a`` and output gradient ``g``.

Each adapter takes one recognised layer call (a :class:`dpjax.engines.taps.LayerCall`),
its recorded input ``a`` (leading batch axis ``B``) and its output gradient ``g`` (same
shape as the output) and returns ``{param name: part}`` where a part is either

* :class:`FactoredPart`: ``sum_t L_t (x) R_t`` per example (:class:`Factored`) and the
  :class:`Layout` that maps the ``[G, m, n]`` matrix to the parameter's shape (weights,
  embedding tables), or
* :class:`ExplicitPart`: the per-example gradient ``[B, *shape]`` itself, when it is as
  small as the parameter (biases, norm scales): ``sum_t g_t`` or ``sum_t xhat_t * g_t``.

A parameter an adapter does not return (a masked conv kernel, a ``DenseGeneral`` with
``batch_dims``) is left to the engine's exact path. Which module type and method uses
which adapter is decided by the one layer table, :mod:`dpjax.engines.layers`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen.linear import canonicalize_padding

from dpjax.engines.ghost_norms import Factored, Layout

__all__ = [
    "Adapter", "ExplicitPart", "FactoredPart", "conv", "conv_patches", "dense", "dense_general",
    "embed_attend", "embed_lookup", "group_norm", "layer_norm",
]  # fmt: skip


class FactoredPart(NamedTuple):
    """A parameter's per-example gradient from one call, in factored form."""

    factored: Factored
    layout: Layout


class ExplicitPart(NamedTuple):
    """A parameter's per-example gradient from one call, ``[B, *shape]``."""

    value: jax.Array


Parts = dict[str, FactoredPart | ExplicitPart]
#: ``adapter(call, a, g, kwargs) -> parts``; ``kwargs`` are the call's keyword arguments
#: (the array ones as recorded in this pass, the static ones from discovery).
Adapter = Callable[[Any, jax.Array, jax.Array, Mapping[str, Any]], Parts]


def _acc(x: jax.Array) -> jnp.dtype:
    return jnp.promote_types(x.dtype, jnp.float32)


def _sum_over(x: jax.Array, keep_axes: Sequence[int]) -> jax.Array:
    """Sums ``x`` over every axis except 0 and ``keep_axes``, accumulating in float32+."""
    axes = tuple(i for i in range(1, x.ndim) if i not in keep_axes)
    return jnp.sum(x.astype(_acc(x)), axis=axes)


def _trailing_bias(g: jax.Array, k: int) -> ExplicitPart:
    """Per-example gradient of a bias on the last ``k`` output axes: ``sum_t g_t``."""
    return ExplicitPart(_sum_over(g, range(g.ndim - k, g.ndim)))


def dense(call: Any, a: jax.Array, g: jax.Array, kwargs: Mapping[str, Any]) -> Parts:
    """``nn.Dense``: ``y = a @ kernel + bias`` over the last axis."""
    del kwargs
    b, d, p = a.shape[0], a.shape[-1], g.shape[-1]
    f = Factored(a.reshape(b, -1, 1, d), g.reshape(b, -1, 1, p), d)
    parts: Parts = {"kernel": FactoredPart(f, Layout.matrix((d, p), d))}
    if call.module.use_bias:
        parts["bias"] = _trailing_bias(g, 1)
    return parts


def dense_general(call: Any, a: jax.Array, g: jax.Array, kwargs: Mapping[str, Any]) -> Parts:
    """``nn.DenseGeneral``: contracts ``axis`` of ``a`` with the kernel, adds ``features``."""
    del kwargs
    m = call.module
    if tuple(m.batch_dims):
        return {}
    axis = (m.axis,) if isinstance(m.axis, int) else tuple(m.axis)
    axis = tuple(ax % a.ndim for ax in axis)
    features = (m.features,) if isinstance(m.features, int) else tuple(m.features)
    if 0 in axis:
        return {}
    in_shape = tuple(a.shape[ax] for ax in axis)
    rows, cols, b = math.prod(in_shape), math.prod(features), a.shape[0]
    moved = jnp.moveaxis(a, axis, tuple(range(a.ndim - len(axis), a.ndim)))
    f = Factored(moved.reshape(b, -1, 1, rows), g.reshape(b, -1, 1, cols), rows)
    parts: Parts = {"kernel": FactoredPart(f, Layout.matrix(in_shape + features, rows))}
    if m.use_bias:
        parts["bias"] = _trailing_bias(g, len(features))
    return parts


def _tuple(x: Any, n: int) -> tuple[int, ...]:
    if x is None:
        return (1,) * n
    return (int(x),) * n if isinstance(x, int) else tuple(int(v) for v in x)


def _kernel_size(module: Any) -> tuple[int, ...]:
    k = module.kernel_size
    return (int(k),) if isinstance(k, int) else tuple(int(v) for v in k)


def conv_patches(module: nn.Conv, x: jax.Array) -> jax.Array:
    """Input patches of ``nn.Conv``: ``[N, *out_spatial, K * C]`` ordered ``(*kernel, C)``.

    ``x`` is ``[N, *spatial, C]``. The patch of an output position, dotted with the
    kernel reshaped to ``[K * C, F]`` (``K = prod(kernel_size)``), gives that output for
    ``feature_group_count == 1``. A patchify convolution (kernel == stride, no padding, no
    dilation) is a reshape; other convolutions use ``lax.conv_general_dilated_patches``.
    """
    ks = _kernel_size(module)
    n = len(ks)
    strides = _tuple(module.strides, n)
    in_dil = _tuple(module.input_dilation, n)
    k_dil = _tuple(module.kernel_dilation, n)
    padding = canonicalize_padding(module.padding, n)
    if padding in ("CIRCULAR", "REFLECT"):
        dilated = [(k - 1) * d + 1 for k, d in zip(ks, k_dil, strict=True)]
        pads = [(0, 0)] + [((k - 1) // 2, k // 2) for k in dilated] + [(0, 0)]
        x = jnp.pad(x, pads, mode={"CIRCULAR": "wrap", "REFLECT": "reflect"}[padding])
        padding = "VALID"
    elif padding == "CAUSAL":
        x = jnp.pad(x, [(0, 0), (k_dil[0] * (ks[0] - 1), 0), (0, 0)])
        padding = "VALID"
    spatial = x.shape[1:-1]
    no_pad = padding == "VALID" or (
        not isinstance(padding, str) and all(tuple(p) == (0, 0) for p in padding)
    )
    if padding == "SAME" and all(s % k == 0 for s, k in zip(spatial, ks, strict=True)):
        no_pad = True
    plain = all(v == 1 for v in in_dil + k_dil)
    if no_pad and plain and strides == ks:
        out = tuple(s // k for s, k in zip(spatial, ks, strict=True))
        x = x[(slice(None),) + tuple(slice(0, o * k) for o, k in zip(out, ks, strict=True))]
        shape = (x.shape[0],) + tuple(v for o, k in zip(out, ks, strict=True) for v in (o, k))
        x = x.reshape(shape + (x.shape[-1],))
        perm = (0,) + tuple(1 + 2 * i for i in range(n)) + tuple(2 + 2 * i for i in range(n))
        x = jnp.transpose(x, perm + (2 * n + 1,))
        return x.reshape(x.shape[: n + 1] + (-1,))
    spec = "N" + "".join(chr(ord("a") + i) for i in range(n)) + "C"
    rhs = "OI" + spec[1:-1]
    p = jax.lax.conv_general_dilated_patches(
        x,
        ks,
        strides,
        padding,
        lhs_dilation=in_dil,
        rhs_dilation=k_dil,
        dimension_numbers=(spec, rhs, spec),
        precision=jax.lax.Precision.HIGHEST,
    )
    # Feature order of p is (C, *kernel); reorder to the kernel's (*kernel, C).
    c = x.shape[-1]
    p = p.reshape(p.shape[:-1] + (c, math.prod(ks)))
    return jnp.swapaxes(p, -1, -2).reshape(p.shape[:-2] + (-1,))


def conv(call: Any, a: jax.Array, g: jax.Array, kwargs: Mapping[str, Any]) -> Parts:
    """``nn.Conv`` (shared weights, no kernel mask), grouped convolutions included."""
    del kwargs
    m = call.module
    ks = _kernel_size(m)
    n = len(ks)
    batch_dims = a.ndim - n - 1
    parts: Parts = {}
    if m.use_bias:
        parts["bias"] = _trailing_bias(g, 1)
    if m.mask is not None or batch_dims < 1:
        return parts
    b, c, feats, groups = a.shape[0], a.shape[-1], m.features, m.feature_group_count
    x = a.reshape((-1,) + a.shape[batch_dims:])
    patches = conv_patches(m, x)  # [N, *out, K * C] ordered (K, C)
    k = math.prod(ks)
    cg, fg = c // groups, feats // groups
    p = patches.reshape(b, -1, k, groups, cg)
    left = jnp.transpose(p, (0, 1, 3, 2, 4)).reshape(b, -1, groups, k * cg)
    right = g.reshape(b, -1, groups, fg)
    perm = tuple(range(1, n + 1)) + (n + 1, 0, n + 2)
    layout = Layout(groups, k * cg, fg, (groups,) + ks + (cg, fg), perm, ks + (cg, feats))
    parts["kernel"] = FactoredPart(Factored(left, right, k * cg), layout)
    return parts


def embed_lookup(call: Any, a: jax.Array, g: jax.Array, kwargs: Mapping[str, Any]) -> Parts:
    """``nn.Embed.__call__``: rows ``ids`` of the table; one-hot left factor kept as ids.

    Ids are read the way the forward pass reads them (``jnp.take``): a negative id ``-k``
    (``k <= V``) is row ``V - k``, so the equal-token pairs of the norm and the scatter of
    the sum see the row the forward pass used. Ids outside ``[-V, V)`` make the forward
    pass return ``nan`` for that row, which is then dropped like any non-finite row.
    """
    del kwargs
    v, d, b = call.module.num_embeddings, call.module.features, a.shape[0]
    ids = a.reshape(b, -1).astype(jnp.int32)
    ids = jnp.where(ids < 0, ids + v, ids)
    f = Factored(ids, g.reshape(b, -1, 1, d), v)
    return {"embedding": FactoredPart(f, Layout.matrix((v, d), v))}


def embed_attend(call: Any, a: jax.Array, g: jax.Array, kwargs: Mapping[str, Any]) -> Parts:
    """``nn.Embed.attend``: ``y = q @ table.T``, so the table gets ``sum_t g_t (x) q_t``."""
    del kwargs
    v, d, b = call.module.num_embeddings, call.module.features, a.shape[0]
    f = Factored(g.reshape(b, -1, 1, v), a.reshape(b, -1, 1, d), v)
    return {"embedding": FactoredPart(f, Layout.matrix((v, d), v))}


def _norm(feature_axes: Callable[[Any, int], tuple[int, ...]]) -> Adapter:
    def adapter(call: Any, a: jax.Array, g: jax.Array, kwargs: Mapping[str, Any]) -> Parts:
        """A normalisation layer's per-example ``scale`` and ``bias`` gradients, explicit."""
        m = call.module
        feats = tuple(sorted(ax % a.ndim for ax in feature_axes(m, a.ndim)))
        if 0 in feats:
            return {}
        parts: Parts = {}
        if getattr(m, "use_scale", False):
            # The normalised input, recomputed by the module itself without scale/bias.
            off = {"use_scale": False}
            if hasattr(m, "use_bias"):
                off["use_bias"] = False
            # Same keyword arguments as the call itself (a ``mask=`` changes the statistics).
            xhat = m.clone(parent=None, **off).apply({}, a, **kwargs)
            prod = xhat.astype(_acc(g)) * g.astype(_acc(g))
            parts["scale"] = ExplicitPart(_sum_over(prod, feats))
        if getattr(m, "use_bias", False):
            parts["bias"] = ExplicitPart(_sum_over(g, feats))
        return parts

    return adapter


def _axes(m: Any, ndim: int) -> tuple[int, ...]:
    fa = m.feature_axes
    return (fa,) if isinstance(fa, int) else tuple(fa)


#: ``nn.LayerNorm`` / ``nn.RMSNorm``: ``scale`` and ``bias`` on ``feature_axes``.
layer_norm = _norm(_axes)
#: ``nn.GroupNorm``: ``scale`` and ``bias`` on the last axis.
group_norm = _norm(lambda m, ndim: (ndim - 1,))
