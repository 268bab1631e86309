"""Vision Transformer (Flax linen): patchify conv, cls token, pre-LN encoder, classifier.

Module tree (mirrors Hugging Face's ``ViTModel``)::

    embeddings/cls_token                 raw param [1, 1, d]
    embeddings/position_embeddings       raw param [1, 1 + num_patches, d]
    embeddings/patch_embeddings/projection/{kernel, bias}   nn.Conv, kernel = stride = patch
    encoder/layer_{i}/layernorm_before, encoder/layer_{i}/layernorm_after
    encoder/layer_{i}/attention/attention/{query, key, value}
    encoder/layer_{i}/attention/output/dense
    encoder/layer_{i}/intermediate/dense, encoder/layer_{i}/output/dense
    layernorm/{scale, bias}
    classifier/{kernel, bias}            (head="classification", on the cls token)

Only ``cls_token`` and ``position_embeddings`` are raw ``self.param`` leaves; every other
parameter belongs to a standard linen layer. Inputs are NHWC ``pixel_values``.

Example:
    >>> import jax, jax.numpy as jnp
    >>> from dpjax.models import ViT, get_config
    >>> model = ViT(get_config("vit-tiny"), head="classification", num_labels=10)
    >>> x = jnp.zeros((2, 32, 32, 3))
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

from dpjax.models.attention import ACTIVATIONS, activation, dot_product_attention, split_heads

__all__ = ["ViT", "ViTConfig"]

HEADS = (None, "classification")


@dataclasses.dataclass(frozen=True)
class ViTConfig:
    """Architecture of a ViT (Hugging Face field names)."""

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-12
    image_size: int = 224
    patch_size: int = 16
    num_channels: int = 3
    qkv_bias: bool = True
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0

    def __post_init__(self) -> None:
        for name in (
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "image_size",
            "patch_size",
            "num_channels",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by "
                f"num_attention_heads={self.num_attention_heads}"
            )
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size={self.image_size} is not divisible by patch_size={self.patch_size}"
            )
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act={self.hidden_act!r} unknown; known {sorted(ACTIVATIONS)}")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)!r}")
        if not self.layer_norm_eps > 0:
            raise ValueError(f"layer_norm_eps must be > 0, got {self.layer_norm_eps!r}")

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


def _dense(features: int, dtype: Any, name: str, use_bias: bool = True) -> nn.Dense:
    init = nn.initializers.truncated_normal(0.02)
    return nn.Dense(features, use_bias=use_bias, dtype=dtype, kernel_init=init, name=name)


def _layer_norm(c: ViTConfig, dtype: Any, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=c.layer_norm_eps, dtype=dtype, use_fast_variance=False, name=name)


class ViTEmbeddings(nn.Module):
    config: ViTConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, pixel_values: jax.Array) -> jax.Array:
        c = self.config
        if pixel_values.shape[1:] != (c.image_size, c.image_size, c.num_channels):
            raise ValueError(
                f"pixel_values must be NHWC [B, {c.image_size}, {c.image_size}, "
                f"{c.num_channels}], got {pixel_values.shape}"
            )
        patches = _Patches(c, self.dtype, name="patch_embeddings")(pixel_values)
        B = patches.shape[0]
        init = nn.initializers.truncated_normal(0.02)
        cls = self.param("cls_token", init, (1, 1, c.hidden_size), jnp.float32)
        pos = self.param("position_embeddings", init, (1, c.num_patches + 1, c.hidden_size))
        cls = jnp.broadcast_to(cls.astype(self.dtype), (B, 1, c.hidden_size))
        x = jnp.concatenate([cls, patches.astype(self.dtype)], axis=1)
        return x + pos.astype(self.dtype)


class _Patches(nn.Module):
    """``[B, H, W, C] -> [B, num_patches, d]`` with one ``projection`` conv (HF nesting)."""

    config: ViTConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        p = self.config.patch_size
        y = nn.Conv(
            self.config.hidden_size,
            (p, p),
            strides=(p, p),
            padding="VALID",
            dtype=self.dtype,
            name="projection",
        )(x)
        return y.reshape(y.shape[0], -1, y.shape[-1])


class ViTLayer(nn.Module):
    config: ViTConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        c = self.config
        drop = nn.Dropout(c.hidden_dropout_prob)
        h = _layer_norm(c, self.dtype, "layernorm_before")(x)
        x = x + _ViTAttention(c, self.dtype, name="attention")(h, deterministic)
        h = _layer_norm(c, self.dtype, "layernorm_after")(x)
        h = activation(c.hidden_act)(_Wrap(c.intermediate_size, self.dtype, name="intermediate")(h))
        h = _Wrap(c.hidden_size, self.dtype, name="output")(h)
        return x + drop(h, deterministic=deterministic)


class _Wrap(nn.Module):
    """A ``dense`` Dense nested one level (HF's ``intermediate.dense`` / ``output.dense``)."""

    features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return _dense(self.features, self.dtype, "dense")(x)


class _ViTAttention(nn.Module):
    config: ViTConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        c = self.config
        out = _ViTSelfAttention(c, self.dtype, name="attention")(x, deterministic)
        out = _Wrap(c.hidden_size, self.dtype, name="output")(out)
        return nn.Dropout(c.hidden_dropout_prob)(out, deterministic=deterministic)


class _ViTSelfAttention(nn.Module):
    config: ViTConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        c = self.config
        q, k, v = (
            split_heads(_dense(c.hidden_size, self.dtype, n, c.qkv_bias)(x), c.num_attention_heads)
            for n in ("query", "key", "value")
        )
        out = dot_product_attention(q, k, v)
        out = nn.Dropout(c.attention_probs_dropout_prob)(out, deterministic=deterministic)
        return out.reshape(x.shape[:-1] + (c.hidden_size,))


class ViTEncoder(nn.Module):
    config: ViTConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        for i in range(self.config.num_hidden_layers):
            x = ViTLayer(self.config, self.dtype, name=f"layer_{i}")(x, deterministic)
        return x


class ViT(nn.Module):
    """Vision Transformer with an optional classification head.

    Attributes:
      config: the architecture.
      head: ``None`` (final-LayerNorm hidden states ``[B, 1 + num_patches, d]``) or
        ``"classification"`` (logits ``[B, num_labels]`` from the cls token).
      num_labels: classes of the head.
      dtype: compute dtype (parameters stay float32).

    Call: ``model.apply({"params": p}, pixel_values, deterministic=True)`` with NHWC
    ``pixel_values``.
    """

    config: ViTConfig
    head: str | None = None
    num_labels: int = 1000
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, pixel_values: jax.Array, *, deterministic: bool = True) -> jax.Array:
        c = self.config
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")
        if isinstance(self.num_labels, bool) or self.num_labels < 1:
            raise ValueError(f"num_labels must be a positive int, got {self.num_labels!r}")
        x = ViTEmbeddings(c, self.dtype, name="embeddings")(jnp.asarray(pixel_values))
        x = nn.Dropout(c.hidden_dropout_prob)(x, deterministic=deterministic)
        x = ViTEncoder(c, self.dtype, name="encoder")(x, deterministic)
        x = _layer_norm(c, self.dtype, "layernorm")(x)
        if self.head is None:
            return x
        return nn.Dense(self.num_labels, dtype=self.dtype, name="classifier")(x[:, 0])
