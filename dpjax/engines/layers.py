"""The one layer table of the tap engines: which linen layers are tapped, and how.

Every layer type the ``bitfit`` and ``ghost`` engines know is ONE entry of
:data:`LAYERS`, a :class:`Layer`:

* ``methods``: the methods whose calls :mod:`dpjax.engines.taps` intercepts (the layer
  input is their first positional argument, they return one array);
* ``bias``: the ``bitfit`` rule, ``(module, output_shape, bias_shape) -> axes``: the output
  axes the ``bias`` param spans when it is simply *added* (``None``: not this call);
* ``ghost``: ``{method: adapter}``, the ``ghost`` engine's per-call gradient in factored or
  explicit form (:mod:`dpjax.engines.ghost_layers`).

Matching rule: :func:`lookup` matches the module type *exactly*. A subclass of a known
layer may change the math (a bias scaled, a kernel masked, a second call of the parent
method through ``super()``), so it is not tapped until it is registered itself; its
parameters take the engines' exact per-example path instead (still correct, only
slower). :func:`dpjax.check.check_engine` is the backstop for registered custom layers.

Adding a layer type (a custom bias layer, an RMSNorm-like scale, a LoRA adapter) is one
:func:`register_layer` call, or one entry here.

Example:
    >>> import flax.linen as nn
    >>> from dpjax.engines import layers
    >>> layers.lookup(nn.Dense).methods, layers.lookup(nn.Embed).methods
    (('__call__',), ('__call__', 'attend'))
    >>> class MyDense(nn.Dense):
    ...     pass
    >>> layers.lookup(MyDense) is None  # a subclass is not tapped until registered
    True
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn

from dpjax.engines import ghost_layers as gl

__all__ = ["LAYERS", "BiasRule", "Layer", "lookup", "register_layer", "trailing_bias"]

#: (module, output_shape, bias_shape) -> the output axes the bias spans, in bias order,
#: or None when this call's bias is not simply added (the leaf then goes the exact way).
BiasRule = Callable[[Any, tuple[int, ...], tuple[int, ...]], tuple[int, ...] | None]


def trailing_bias(
    module: Any, output_shape: tuple[int, ...], bias_shape: tuple[int, ...]
) -> tuple[int, ...] | None:
    """Bias rule for a bias added on the trailing axes of the output (Dense, Conv, ...).

    Example:
        >>> trailing_bias(None, (4, 7, 3), (3,))
        (2,)
    """
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


@dataclasses.dataclass(frozen=True)
class Layer:
    """What the tap engines know about one module type (see the module docstring).

    Attributes:
      methods: the intercepted methods.
      bias: the ``bitfit`` bias rule, or ``None`` (the layer's bias is not tapped).
      ghost: ``{method: adapter}`` for the ``ghost`` engine (empty: exact path).
    """

    methods: tuple[str, ...] = ("__call__",)
    bias: BiasRule | None = None
    ghost: Mapping[str, gl.Adapter] = dataclasses.field(default_factory=dict)

    def adapter(self, method: str) -> gl.Adapter | None:
        """The ghost adapter of ``method``, or ``None``."""
        return self.ghost.get(method)


#: The layer table: linen layer class -> how the tap engines handle its calls.
LAYERS: dict[type, Layer] = {
    nn.Dense: Layer(bias=trailing_bias, ghost={"__call__": gl.dense}),
    nn.DenseGeneral: Layer(bias=_dense_general_bias, ghost={"__call__": gl.dense_general}),
    nn.Conv: Layer(bias=trailing_bias, ghost={"__call__": gl.conv}),
    nn.ConvTranspose: Layer(bias=trailing_bias),
    nn.ConvLocal: Layer(bias=trailing_bias),
    nn.Embed: Layer(
        methods=("__call__", "attend"),
        ghost={"__call__": gl.embed_lookup, "attend": gl.embed_attend},
    ),
    nn.LayerNorm: Layer(bias=_layer_norm_bias, ghost={"__call__": gl.layer_norm}),
    nn.GroupNorm: Layer(bias=trailing_bias, ghost={"__call__": gl.group_norm}),
    nn.RMSNorm: Layer(ghost={"__call__": gl.layer_norm}),
    nn.Einsum: Layer(),
}


def lookup(module_type: type) -> Layer | None:
    """The entry of exactly ``module_type`` (no base-class lookup), or ``None``."""
    return LAYERS.get(module_type)


def register_layer(
    module_type: type,
    methods: tuple[str, ...] = ("__call__",),
    *,
    bias: BiasRule | None = None,
    ghost: Mapping[str, gl.Adapter] | None = None,
) -> Layer:
    """Adds (or updates) the entry of ``module_type``; returns the new entry.

    Args:
      module_type: a ``flax.linen.Module`` subclass (only this exact type is matched).
      methods: the methods to intercept; each takes the layer input as its first
        positional argument and returns one array.
      bias: a ``bitfit`` bias rule (kept from an existing entry when ``None``).
      ghost: ``ghost`` adapters by method (kept from an existing entry when ``None``).

    Example:
        >>> class AddBias(nn.Module):
        ...     @nn.compact
        ...     def __call__(self, x):
        ...         return x + self.param("bias", nn.initializers.zeros, (x.shape[-1],))
        >>> register_layer(AddBias, bias=trailing_bias).methods
        ('__call__',)
        >>> _ = LAYERS.pop(AddBias)
    """
    if not (isinstance(module_type, type) and issubclass(module_type, nn.Module)):
        raise TypeError(f"register_layer needs a flax.linen.Module subclass, got {module_type!r}")
    old = LAYERS.get(module_type, Layer())
    entry = Layer(
        methods=tuple(methods),
        bias=old.bias if bias is None else bias,
        ghost=dict(old.ghost if ghost is None else ghost),
    )
    LAYERS[module_type] = entry
    return entry
