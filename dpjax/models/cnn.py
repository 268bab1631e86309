"""A small convolutional network for 28 x 28 images (Fashion-MNIST), trained from scratch.

Module tree (standard linen layers only, so every engine taps it: ``vmap``, ``ghost``)::

    conv_{i}/{kernel, bias}      (norm_{i}/{scale, bias} when ``num_groups`` > 0)
    dense_{j}/{kernel, bias}
    classifier/{kernel, bias}    (head="classification")

The default layout is the end-to-end CNN of Tramer & Boneh (2021, "Differentially
Private Learning Needs Better Features", after Papernot et al.'s tempered sigmoids):
conv 16 8x8/2 (padding 3), tanh, max-pool 2x2/1, conv 32 4x4/2, tanh, max-pool 2x2/1,
dense 32, tanh, classifier. ``num_groups`` adds a GroupNorm after every convolution
(statistics per example, so DP-safe). Inputs are NHWC images of any channel count.

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
      pool_size: side of the max-pool (stride 1) after each convolution; 0: none.
      dense_sizes: widths of the hidden dense layers before the classifier.
      hidden_act: activation after every hidden layer (``"tanh"`` is best under DP).
      num_groups: GroupNorm groups after each convolution; 0 leaves the norm out.
      norm_eps: GroupNorm epsilon.
    """

    num_channels: int = 1
    features: tuple[int, ...] = (16, 32)
    kernel_sizes: tuple[int, ...] = (8, 4)
    strides: tuple[int, ...] = (2, 2)
    paddings: tuple[int, ...] = (3, 0)
    pool_size: int = 2
    dense_sizes: tuple[int, ...] = (32,)
    hidden_act: str = "tanh"
    num_groups: int = 0
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        for key in ("features", "kernel_sizes", "strides", "paddings", "dense_sizes"):
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
        if self.num_channels < 1 or self.pool_size < 0:
            raise ValueError(
                f"num_channels must be >= 1 and pool_size >= 0, got {self.num_channels}, "
                f"{self.pool_size}"
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
        layers = zip(c.features, c.kernel_sizes, c.strides, c.paddings, strict=True)
        for i, (width, size, stride, pad) in enumerate(layers):
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
            if c.pool_size:
                window = (c.pool_size, c.pool_size)
                x = nn.max_pool(x, window, strides=(1, 1))
        x = x.reshape(x.shape[0], -1)
        for j, width in enumerate(c.dense_sizes):
            x = act(nn.Dense(width, dtype=self.dtype, name=f"dense_{j}")(x))
        if self.head is None:
            return x
        return nn.Dense(self.num_labels, dtype=self.dtype, name="classifier")(x)
