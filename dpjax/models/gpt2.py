"""GPT-2 (Flax linen): causal decoder, tied LM head, optional explicit KV cache.

Module tree (mirrors Hugging Face's ``GPT2Model``; HF's ``Conv1D`` weights are stored
``[in, out]`` like a linen ``kernel``, so they need no transpose)::

    wte/embedding, wpe/embedding
    h_{i}/ln_1, h_{i}/attn/{c_attn, c_proj}, h_{i}/ln_2, h_{i}/mlp/{c_fc, c_proj}
    ln_f/{scale, bias}

``head="lm"`` returns logits ``wte.attend(ln_f(h))`` (tied, no extra parameters);
``head=None`` returns the final hidden states ``ln_f(h)`` ``[B, T, d]``.

Example:
    >>> import jax, jax.numpy as jnp
    >>> from dpjax.models import GPT2Model, get_config
    >>> model = GPT2Model(get_config("gpt2-tiny"), head="lm")
    >>> ids = jnp.zeros((2, 6), jnp.int32)
    >>> params = model.init(jax.random.key(0), ids)["params"]
    >>> model.apply({"params": params}, ids).shape
    (2, 6, 128)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dpjax.models.attention import ACTIVATIONS, activation, dot_product_attention, split_heads

__all__ = ["GPT2Config", "GPT2Model", "KVCache", "init_cache"]

HEADS = (None, "lm")
#: One ``(keys, values)`` pair per layer, each ``[B, max_len, heads, head_dim]``.
KVCache = tuple[tuple[jax.Array, jax.Array], ...]


@dataclasses.dataclass(frozen=True)
class GPT2Config:
    """Architecture of a GPT-2 model (Hugging Face field names)."""

    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: int | None = None
    activation_function: str = "gelu_new"
    layer_norm_epsilon: float = 1e-5
    resid_pdrop: float = 0.1
    embd_pdrop: float = 0.1
    attn_pdrop: float = 0.1
    bos_token_id: int = 50256
    eos_token_id: int = 50256

    def __post_init__(self) -> None:
        for name in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.n_inner is not None and (not isinstance(self.n_inner, int) or self.n_inner < 1):
            raise ValueError(f"n_inner must be a positive int or None, got {self.n_inner!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if self.activation_function not in ACTIVATIONS:
            raise ValueError(
                f"activation_function={self.activation_function!r} unknown; "
                f"known {sorted(ACTIVATIONS)}"
            )
        for name in ("resid_pdrop", "embd_pdrop", "attn_pdrop"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)!r}")
        if not self.layer_norm_epsilon > 0:
            raise ValueError(f"layer_norm_epsilon must be > 0, got {self.layer_norm_epsilon!r}")

    @property
    def inner_size(self) -> int:
        return self.n_inner or 4 * self.n_embd


def init_cache(config: GPT2Config, batch: int, length: int, dtype: Any = jnp.float32) -> KVCache:
    """An empty KV cache: per layer ``(k, v)`` of shape ``[batch, length, heads, head_dim]``."""
    if length > config.n_positions:
        raise ValueError(f"cache length {length} exceeds n_positions={config.n_positions}")
    shape = (batch, length, config.n_head, config.n_embd // config.n_head)
    return tuple((jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)) for _ in range(config.n_layer))


def _dense(features: int, dtype: Any, name: str) -> nn.Dense:
    return nn.Dense(features, dtype=dtype, kernel_init=nn.initializers.normal(0.02), name=name)


def _layer_norm(c: GPT2Config, dtype: Any, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(
        epsilon=c.layer_norm_epsilon, dtype=dtype, use_fast_variance=False, name=name
    )


class GPT2Attention(nn.Module):
    config: GPT2Config
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        mask: jax.Array,
        cache: tuple[jax.Array, jax.Array] | None,
        cache_index: jax.Array | None,
        deterministic: bool,
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
        c = self.config
        qkv = _dense(3 * c.n_embd, self.dtype, "c_attn")(x)
        q, k, v = (split_heads(t, c.n_head) for t in jnp.split(qkv, 3, axis=-1))
        if cache is not None:
            start = (0, cache_index, 0, 0)
            k = jax.lax.dynamic_update_slice(cache[0], k.astype(cache[0].dtype), start)
            v = jax.lax.dynamic_update_slice(cache[1], v.astype(cache[1].dtype), start)
            cache = (k, v)
        out = dot_product_attention(q, k.astype(q.dtype), v.astype(q.dtype), mask)
        out = nn.Dropout(c.attn_pdrop)(out, deterministic=deterministic)
        out = _dense(c.n_embd, self.dtype, "c_proj")(out.reshape(x.shape[:-1] + (c.n_embd,)))
        return nn.Dropout(c.resid_pdrop)(out, deterministic=deterministic), cache


class GPT2MLP(nn.Module):
    config: GPT2Config
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        c = self.config
        h = activation(c.activation_function)(_dense(c.inner_size, self.dtype, "c_fc")(x))
        h = _dense(c.n_embd, self.dtype, "c_proj")(h)
        return nn.Dropout(c.resid_pdrop)(h, deterministic=deterministic)


class GPT2Block(nn.Module):
    config: GPT2Config
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        mask: jax.Array,
        cache: tuple[jax.Array, jax.Array] | None,
        cache_index: jax.Array,
        deterministic: bool,
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
        c = self.config
        a, cache = GPT2Attention(c, self.dtype, name="attn")(
            _layer_norm(c, self.dtype, "ln_1")(x), mask, cache, cache_index, deterministic
        )
        x = x + a
        x = x + GPT2MLP(c, self.dtype, name="mlp")(
            _layer_norm(c, self.dtype, "ln_2")(x), deterministic
        )
        return x, cache


class GPT2Model(nn.Module):
    """GPT-2 decoder with optional tied LM head.

    Attributes:
      config: the architecture.
      head: ``None`` (hidden states ``[B, T, d]``) or ``"lm"`` (logits ``[B, T, vocab]``).
      dtype: compute dtype (parameters stay float32).

    Call: ``model.apply({"params": p}, input_ids, attention_mask=None, *,
    position_ids=None, cache=None, cache_index=None, deterministic=True)``.

    Without a cache, ``attention_mask`` ``[B, T]`` marks real tokens and attention is
    causal; position ids default to ``0..T-1``. With a cache (see :func:`init_cache`) the
    input is written at buffer offset ``cache_index``, ``attention_mask`` is ``[B, L]``
    over the whole cache buffer, and the call returns ``(output, new_cache)``.
    """

    config: GPT2Config
    head: str | None = None
    dtype: Any = jnp.float32

    def setup(self) -> None:
        c = self.config
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")
        init = nn.initializers.normal(0.02)
        self.wte = nn.Embed(c.vocab_size, c.n_embd, dtype=self.dtype, embedding_init=init)
        self.wpe = nn.Embed(c.n_positions, c.n_embd, dtype=self.dtype, embedding_init=init)
        self.drop = nn.Dropout(c.embd_pdrop)
        self.h = [GPT2Block(c, self.dtype, name=f"h_{i}") for i in range(c.n_layer)]
        self.ln_f = _layer_norm(c, self.dtype, "ln_f")

    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        *,
        position_ids: jax.Array | None = None,
        cache: KVCache | None = None,
        cache_index: jax.Array | int | None = None,
        deterministic: bool = True,
    ) -> jax.Array | tuple[jax.Array, KVCache]:
        input_ids = jnp.asarray(input_ids)
        B, T = input_ids.shape
        if cache is None:
            offset = jnp.zeros((), jnp.int32)
            key_len = T
        else:
            if cache_index is None:
                raise ValueError("cache_index is required together with cache")
            offset = jnp.asarray(cache_index, jnp.int32)
            key_len = cache[0][0].shape[1]
        if attention_mask is None:
            attention_mask = jnp.ones((B, key_len), bool)
        if attention_mask.shape != (B, key_len):
            raise ValueError(
                f"attention_mask must have shape {(B, key_len)}, got {attention_mask.shape}"
            )
        if position_ids is None:
            position_ids = jnp.broadcast_to(offset + jnp.arange(T), (B, T))
        q_idx = offset + jnp.arange(T)
        causal = jnp.arange(key_len)[None, :] <= q_idx[:, None]  # [T, S]
        mask = causal[None, None] & jnp.asarray(attention_mask).astype(bool)[:, None, None, :]
        x = self.wte(input_ids) + self.wpe(position_ids)
        x = self.drop(x, deterministic=deterministic)
        new_cache = []
        for i, block in enumerate(self.h):
            x, layer_cache = block(
                x, mask, None if cache is None else cache[i], offset, deterministic
            )
            new_cache.append(layer_cache)
        x = self.ln_f(x)
        out = self.wte.attend(x) if self.head == "lm" else x
        if cache is None:
            return out
        return out, tuple(new_cache)
