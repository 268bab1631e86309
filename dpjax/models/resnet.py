"""ResNet-18/50 (Flax linen) with GroupNorm, never BatchNorm (it mixes examples).

Module tree (mirrors Hugging Face's ``ResNetModel``; its BatchNorms become GroupNorms)::

    embedder/embedder/{convolution, normalization}          7x7/2 conv, norm, relu, maxpool
    encoder/stages_{s}/layers_{l}/shortcut/{convolution, normalization}   (when reshaping)
    encoder/stages_{s}/layers_{l}/layer_{k}/{convolution, normalization}
    classifier/{kernel, bias}                               (head="classification")

Convolutions have no bias unless ``conv_bias=True`` (the paper's "DP-BiTFiT-Add": gives
bias-free convs a zero-initialised ``bias``, so a pretrained model computes the same
function until the biases train). Inputs are NHWC ``pixel_values``.

Example:
    >>> import jax, jax.numpy as jnp
    >>> from dpjax.models import ResNet, get_config
    >>> model = ResNet(get_config("resnet-tiny"), head="classification", num_labels=3)
    >>> x = jnp.zeros((2, 32, 32, 3))
    >>> params = model.init(jax.random.key(0), x)["params"]
    >>> model.apply({"params": params}, x).shape
    (2, 3)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dpjax.models.attention import ACTIVATIONS, activation

__all__ = ["ResNet", "ResNetConfig"]

HEADS = (None, "classification")


@dataclasses.dataclass(frozen=True)
class ResNetConfig:
    """Architecture of a ResNet (Hugging Face field names plus ``num_groups``, ``conv_bias``).

    Attributes:
      layer_type: ``"basic"`` (ResNet-18/34) or ``"bottleneck"`` (ResNet-50+, stride on
        the 3x3 conv unless ``downsample_in_bottleneck``).
      num_groups: GroupNorm groups; must divide every normalised channel count.
      conv_bias: give every convolution a bias (DP-BiTFiT-Add).
    """

    num_channels: int = 3
    embedding_size: int = 64
    hidden_sizes: tuple[int, ...] = (256, 512, 1024, 2048)
    depths: tuple[int, ...] = (3, 4, 6, 3)
    layer_type: str = "bottleneck"
    hidden_act: str = "relu"
    downsample_in_first_stage: bool = False
    downsample_in_bottleneck: bool = False
    num_groups: int = 32
    conv_bias: bool = False
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden_sizes", tuple(self.hidden_sizes))
        object.__setattr__(self, "depths", tuple(self.depths))
        if len(self.hidden_sizes) != len(self.depths) or not self.depths:
            raise ValueError(
                f"hidden_sizes {self.hidden_sizes} and depths {self.depths} must be non-empty "
                "and of equal length"
            )
        for name, v in [("num_channels", self.num_channels), ("num_groups", self.num_groups)]:
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if self.layer_type not in ("basic", "bottleneck"):
            raise ValueError(f"layer_type must be 'basic' or 'bottleneck', got {self.layer_type!r}")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act={self.hidden_act!r} unknown; known {sorted(ACTIVATIONS)}")
        if any(d < 1 for d in self.depths):
            raise ValueError(f"depths must be positive, got {self.depths}")
        widths = {self.embedding_size, *self.hidden_sizes}
        if self.layer_type == "bottleneck":
            widths |= {h // 4 for h in self.hidden_sizes}
        bad = sorted(w for w in widths if w < 1 or w % self.num_groups)
        if bad:
            raise ValueError(
                f"num_groups={self.num_groups} must divide every normalised width; it does not "
                f"divide {bad}"
            )
        if not self.norm_eps > 0:
            raise ValueError(f"norm_eps must be > 0, got {self.norm_eps!r}")


class ConvLayer(nn.Module):
    """``act(GroupNorm(conv(x)))`` with HF's names ``convolution`` / ``normalization``."""

    config: ResNetConfig
    features: int
    kernel: int = 3
    stride: int = 1
    act: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.config
        pad = self.kernel // 2
        x = nn.Conv(
            self.features,
            (self.kernel, self.kernel),
            strides=(self.stride, self.stride),
            padding=((pad, pad), (pad, pad)),
            use_bias=c.conv_bias,
            dtype=self.dtype,
            kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
            name="convolution",
        )(x)
        x = nn.GroupNorm(c.num_groups, epsilon=c.norm_eps, dtype=self.dtype, name="normalization")(
            x
        )
        return activation(c.hidden_act)(x) if self.act else x


class ResidualLayer(nn.Module):
    """A basic (two 3x3) or bottleneck (1x1, 3x3, 1x1) residual block."""

    config: ResNetConfig
    in_features: int
    features: int
    stride: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.config
        residual = x
        if self.in_features != self.features or self.stride != 1:
            residual = ConvLayer(
                c, self.features, 1, self.stride, act=False, dtype=self.dtype, name="shortcut"
            )(x)
        if c.layer_type == "basic":
            specs = [(self.features, 3, self.stride, True), (self.features, 3, 1, False)]
        else:
            mid = self.features // 4
            s_first = self.stride if c.downsample_in_bottleneck else 1
            s_mid = 1 if c.downsample_in_bottleneck else self.stride
            specs = [(mid, 1, s_first, True), (mid, 3, s_mid, True), (self.features, 1, 1, False)]
        h = x
        for k, (features, kernel, stride, act) in enumerate(specs):
            h = ConvLayer(c, features, kernel, stride, act, self.dtype, name=f"layer_{k}")(h)
        return activation(c.hidden_act)(h + residual)


class ResNet(nn.Module):
    """ResNet with GroupNorm and an optional classification head.

    Attributes:
      config: the architecture.
      head: ``None`` (the last feature map ``[B, h, w, C]``) or ``"classification"``
        (logits ``[B, num_labels]`` after global average pooling).
      num_labels: classes of the head.
      dtype: compute dtype (parameters stay float32).

    Call: ``model.apply({"params": p}, pixel_values)`` with NHWC ``pixel_values``.
    """

    config: ResNetConfig
    head: str | None = None
    num_labels: int = 1000
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, pixel_values: jax.Array, *, deterministic: bool = True) -> jax.Array:
        del deterministic  # no dropout; accepted for a uniform call convention
        c = self.config
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")
        if isinstance(self.num_labels, bool) or self.num_labels < 1:
            raise ValueError(f"num_labels must be a positive int, got {self.num_labels!r}")
        x = jnp.asarray(pixel_values)
        if x.ndim != 4 or x.shape[-1] != c.num_channels:
            raise ValueError(f"pixel_values must be NHWC with C={c.num_channels}, got {x.shape}")
        x = _Embedder(c, self.dtype, name="embedder")(x)
        x = _Encoder(c, self.dtype, name="encoder")(x)
        if self.head is None:
            return x
        pooled = jnp.mean(x, axis=(1, 2), dtype=jnp.promote_types(x.dtype, jnp.float32))
        pooled = pooled.astype(x.dtype)
        return nn.Dense(self.num_labels, dtype=self.dtype, name="classifier")(pooled)


class _Embedder(nn.Module):
    config: ResNetConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.config
        x = ConvLayer(c, c.embedding_size, 7, 2, dtype=self.dtype, name="embedder")(x)
        return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


class _Encoder(nn.Module):
    config: ResNetConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.config
        in_features = c.embedding_size
        for s, (features, depth) in enumerate(zip(c.hidden_sizes, c.depths, strict=True)):
            stage = _Stage(c, in_features, features, depth, s, self.dtype, name=f"stages_{s}")
            x = stage(x)
            in_features = features
        return x


class _Stage(nn.Module):
    config: ResNetConfig
    in_features: int
    features: int
    depth: int
    index: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.config
        first = self.index == 0
        stride = 2 if (not first or c.downsample_in_first_stage) else 1
        for i in range(self.depth):
            x = ResidualLayer(
                c,
                self.in_features if i == 0 else self.features,
                self.features,
                stride if i == 0 else 1,
                self.dtype,
                name=f"layers_{i}",
            )(x)
        return x
