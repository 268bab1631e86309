"""A small convolutional network for 28 x 28 images (Fashion-MNIST), trained from scratch.

Module tree (standard linen layers only, so every engine taps it: ``vmap``, ``ghost``)::

    input_norm                   (no parameters; when ``input_groups`` > 0)
    conv_{i}/{kernel, bias}      (norm_{i}/{scale, bias} when ``num_groups`` > 0)
    dense_{j}/{kernel, bias}
    classifier/{kernel, bias}    (head="classification")

The default layout is the end-to-end CNN of Tramer & Boneh (2021, "Differentially
Private Learning Needs Better Features", after Papernot et al.'s tempered sigmoids):
conv 16 8x8/2 (padding 3), tanh, max-pool 2x2/1, conv 32 4x4/2, tanh, max-pool 2x2/1,
dense 32, tanh, classifier. ``num_groups`` adds a GroupNorm after every convolution
(statistics per example, so DP-safe). Inputs are NHWC images of any channel count.
``input_groups`` normalises the input first with a parameter-free GroupNorm (per example:
Tramer & Boneh's normalisation of ScatterNet features, :mod:`dpjax.models.scattering`);
``pool_sizes`` sets the max-pool after each convolution separately and ``pool_stride`` 2
makes them halve the resolution (``cnn-scatter``: conv, tanh, pool 2x2/2, conv, tanh).

Example:
    >>> import jax, jax.numpy as jnp
    >>> from dpjax.models import CNN, get_config
    >>> model = CNN(get_config("cnn-fmnist"), head="classification", num_labels=10)
    >>> x = jnp.zeros((2, 28, 28, 1))
    >>> params = model.init(jax.random.key(0), x)["params"]
    >>> model.apply({"params": params}, x).shape
    (2, 10)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dpjax.models.attention import ACTIVATIONS, activation

__all__ = ["CNN", "CNNConfig"]

HEADS = (None, "classification")


@dataclasses.dataclass(frozen=True)
class CNNConfig:
    """Architecture of a :class:`CNN`.

    Attributes:
      num_channels: input channels (1 for grey images, 3 for grey repeated to RGB).
      features: output channels of each convolution.
      kernel_sizes: square kernel side of each convolution.
      strides: stride of each convolution.
      paddings: symmetric zero padding of each convolution.
      pool_size: side of the max-pool after each convolution; 0: none.
      pool_sizes: per-convolution max-pool sides (0: none) replacing ``pool_size``;
        empty: ``pool_size`` after every convolution.
      pool_stride: stride of the max-pools (1 keeps the resolution minus pool_size - 1).
      dense_sizes: widths of the hidden dense layers before the classifier.
      hidden_act: activation after every hidden layer (``"tanh"`` is best under DP).
      num_groups: GroupNorm groups after each convolution; 0 leaves the norm out.
      norm_eps: GroupNorm epsilon.
      input_groups: groups of a parameter-free GroupNorm of the input; 0: none.
      image_size: input side of :func:`dpjax.models.configs.dummy_inputs` (the module
        itself takes any size its layers fit).
    """

    num_channels: int = 1
    features: tuple[int, ...] = (16, 32)
    kernel_sizes: tuple[int, ...] = (8, 4)
    strides: tuple[int, ...] = (2, 2)
    paddings: tuple[int, ...] = (3, 0)
    pool_size: int = 2
    pool_sizes: tuple[int, ...] = ()
    pool_stride: int = 1
    dense_sizes: tuple[int, ...] = (32,)
    hidden_act: str = "tanh"
    num_groups: int = 0
    norm_eps: float = 1e-5
    input_groups: int = 0
    image_size: int = 28

    def __post_init__(self) -> None:
        keys = ("features", "kernel_sizes", "strides", "paddings", "dense_sizes", "pool_sizes")
        for key in keys:
            object.__setattr__(self, key, tuple(int(v) for v in getattr(self, key)))
        lengths = {len(self.features), len(self.kernel_sizes), len(self.strides)}
        if len(lengths | {len(self.paddings)}) != 1 or not self.features:
            raise ValueError(
                "features, kernel_sizes, strides and paddings must be non-empty and of equal "
                f"length, got {self.features}, {self.kernel_sizes}, {self.strides}, "
                f"{self.paddings}"
            )
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act={self.hidden_act!r} unknown; known {sorted(ACTIVATIONS)}")
        if self.num_groups < 0 or (
            self.num_groups and any(f % self.num_groups for f in self.features)
        ):
            raise ValueError(
                f"num_groups={self.num_groups} must be 0 or divide every width {self.features}"
            )
        if self.pool_sizes and (
            len(self.pool_sizes) != len(self.features) or min(self.pool_sizes) < 0
        ):
            raise ValueError(
                f"pool_sizes={self.pool_sizes} must be empty or one size >= 0 per convolution"
            )
        if self.num_channels < 1 or self.pool_size < 0 or self.pool_stride < 1:
            raise ValueError(
                "num_channels and pool_stride must be >= 1 and pool_size >= 0, got "
                f"{self.num_channels}, {self.pool_stride}, {self.pool_size}"
            )
        if self.input_groups < 0 or (self.input_groups and self.num_channels % self.input_groups):
            raise ValueError(
                f"input_groups={self.input_groups} must be 0 or divide num_channels="
                f"{self.num_channels}"
            )


class CNN(nn.Module):
    """Convolutions (+ GroupNorm), activation and max-pool, then dense layers and a head.

    Attributes:
      config: the architecture.
      head: ``None`` (features of the last hidden layer) or ``"classification"``.
      num_labels: classes of the classification head.
      dtype: computation dtype (parameters stay float32 unless initialised otherwise).
    """

    config: CNNConfig
    head: str | None = "classification"
    num_labels: int = 10
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, pixel_values: jax.Array) -> jax.Array:
        """``[B, H, W, C]`` images -> ``[B, num_labels]`` logits (or ``[B, D]`` features)."""
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")
        c = self.config
        act = activation(c.hidden_act)
        x = jnp.asarray(pixel_values, self.dtype)
        if c.input_groups:
            x = nn.GroupNorm(
                c.input_groups,
                epsilon=c.norm_eps,
                use_bias=False,
                use_scale=False,
                dtype=self.dtype,
                name="input_norm",
            )(x)
        pools = c.pool_sizes or (c.pool_size,) * len(c.features)
        layers = zip(c.features, c.kernel_sizes, c.strides, c.paddings, pools, strict=True)
        for i, (width, size, stride, pad, pool) in enumerate(layers):
            x = nn.Conv(
                width,
                (size, size),
                strides=(stride, stride),
                padding=((pad, pad), (pad, pad)),
                dtype=self.dtype,
                name=f"conv_{i}",
            )(x)
            if c.num_groups:
                x = nn.GroupNorm(
                    c.num_groups, epsilon=c.norm_eps, dtype=self.dtype, name=f"norm_{i}"
                )(x)
            x = act(x)
            if pool:
                window = (pool, pool)
                x = nn.max_pool(x, window, strides=(c.pool_stride, c.pool_stride))
        x = x.reshape(x.shape[0], -1)
        for j, width in enumerate(c.dense_sizes):
            x = act(nn.Dense(width, dtype=self.dtype, name=f"dense_{j}")(x))
        if self.head is None:
            return x
        return nn.Dense(self.num_labels, dtype=self.dtype, name="classifier")(x)
