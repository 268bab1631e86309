"""Llama-family decoder (Flax linen): RMSNorm, RoPE, grouped-query attention, SwiGLU.

Module tree (mirrors Hugging Face's ``LlamaModel``; a Linear ``weight`` ``[out, in]`` is
a Dense ``kernel`` ``[in, out]``)::

    embed_tokens/embedding
    layers_{i}/input_layernorm/scale
    layers_{i}/self_attn/{q_proj, k_proj, v_proj, o_proj}/kernel   (+ bias: attention_bias)
    layers_{i}/post_attention_layernorm/scale
    layers_{i}/mlp/{gate_proj, up_proj, down_proj}/kernel          (+ bias: mlp_bias)
    norm/scale
    lm_head/kernel          (head="lm" with untied embeddings only)
    score/kernel            (head="classification")

Every parameter belongs to a standard linen layer (``nn.Embed``, ``nn.Dense``,
``nn.RMSNorm``), so every engine and the LoRA adapters (e.g. ``targets="(q_proj|v_proj)$"``)
see the model unedited. RoPE is parameter-free.

Heads: ``None`` (final hidden states ``norm(h)`` ``[B, T, d]``), ``"lm"`` (logits
``[B, T, vocab]``; ``embed_tokens.attend`` when ``tie_word_embeddings``, else ``lm_head``)
and ``"classification"`` (Hugging Face's ``LlamaForSequenceClassification``: a bias-free
``score`` layer on the hidden state of the last real token, ``[B, num_labels]``).

Example:
    >>> import jax, jax.numpy as jnp
    >>> from dpjax.models import LlamaModel, get_config
    >>> model = LlamaModel(get_config("llama-tiny"), head="lm")
    >>> ids = jnp.zeros((2, 6), jnp.int32)
    >>> params = model.init(jax.random.key(0), ids)["params"]
    >>> model.apply({"params": params}, ids).shape
    (2, 6, 128)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dpjax.models.attention import split_heads
from dpjax.models.rope import apply_rope, rope_frequencies

__all__ = [
    "LlamaConfig",
    "LlamaModel",
    "grouped_attention",
    "init_cache",
]

HEADS = (None, "lm", "classification")
KVCache = tuple[tuple[jax.Array, jax.Array], ...]


def _positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _rope_scaling(value: Any) -> tuple[tuple[str, Any], ...] | None:
    """A ``rope_scaling`` dict as sorted pairs (``type`` read as ``rope_type``; the
    ``default`` type as ``None``)."""
    if not isinstance(value, Mapping):
        return value
    scaling = dict(value)
    if "type" in scaling:  # the older spelling
        scaling.setdefault("rope_type", scaling.pop("type"))
    if scaling.get("rope_type", "default") == "default":
        return None
    return tuple(sorted(scaling.items()))


def _token_ids(value: Any) -> int | tuple[int, ...] | None:
    """``None``, an id, or a tuple of ids (Hugging Face writes lists, e.g. Llama 3's eos)."""
    return tuple(int(v) for v in value) if isinstance(value, (list, tuple)) else value


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """Architecture of a Llama-family decoder (Hugging Face field names).

    ``num_key_value_heads`` defaults to ``num_attention_heads`` (no grouping) and
    ``head_dim`` to ``hidden_size // num_attention_heads``; both are filled in. A
    ``rope_scaling`` dict (``{"rope_type": "llama3", "factor": 32.0, ...}`` or
    ``{"rope_type": "linear", "factor": 2.0}``) is stored as sorted ``(key, value)``
    pairs so that the config stays hashable (models are static arguments of ``jit``).

    Example:
        >>> c = LlamaConfig(hidden_size=64, num_attention_heads=4, num_hidden_layers=1,
        ...                 intermediate_size=128, vocab_size=10,
        ...                 rope_scaling={"rope_type": "linear", "factor": 2.0})
        >>> c.head_dim, c.num_key_value_heads, dict(c.rope_scaling)["factor"]
        (16, 4, 2.0)
    """

    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    hidden_act: str = "silu"
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: tuple[tuple[str, Any], ...] | None = None
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    bos_token_id: int | tuple[int, ...] | None = 1
    eos_token_id: int | tuple[int, ...] | None = 2
    pad_token_id: int | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        if self.num_key_value_heads is None:
            set_(self, "num_key_value_heads", self.num_attention_heads)
        heads, hidden = self.num_attention_heads, self.hidden_size
        if (
            self.head_dim is None
            and isinstance(heads, int)
            and isinstance(hidden, int)
            and heads > 0
        ):
            set_(self, "head_dim", hidden // heads)
        set_(self, "rope_scaling", _rope_scaling(self.rope_scaling))
        for name in ("bos_token_id", "eos_token_id"):
            set_(self, name, _token_ids(getattr(self, name)))
        for name in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "head_dim",
            "max_position_embeddings",
        ):
            _positive(name, getattr(self, name))
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads={self.num_key_value_heads}"
            )
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for RoPE, got {self.head_dim}")
        if self.hidden_act != "silu":
            raise ValueError(f"hidden_act must be 'silu' (SwiGLU), got {self.hidden_act!r}")
        if not self.rms_norm_eps > 0:
            raise ValueError(f"rms_norm_eps must be > 0, got {self.rms_norm_eps!r}")
        if not self.rope_theta > 0:
            raise ValueError(f"rope_theta must be > 0, got {self.rope_theta!r}")
        self.rope_frequencies()  # validates rope_scaling

    @property
    def rope(self) -> dict[str, Any]:
        """``rope_scaling`` as a dict (``{}`` when unscaled)."""
        return dict(self.rope_scaling or ())

    def rope_frequencies(self) -> np.ndarray:
        """The rotary inverse frequencies, scaled (:func:`dpjax.models.rope.rope_frequencies`)."""
        return rope_frequencies(self.head_dim, self.rope_theta, self.rope)

    @classmethod
    def from_hf(cls, hf: Mapping[str, Any], **overrides: Any) -> LlamaConfig:
        """From a Hugging Face ``config.json`` dict; unknown keys are ignored.

        Reads both the legacy ``rope_theta`` / ``rope_scaling`` keys and transformers 5's
        ``rope_parameters`` dict.

        Example:
            >>> LlamaConfig.from_hf({"hidden_size": 8, "num_attention_heads": 2,
            ...     "rope_parameters": {"rope_type": "default", "rope_theta": 5e5}}).rope_theta
            500000.0
        """
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in hf.items() if k in names}
        rope = dict(hf.get("rope_parameters") or {})
        if "rope_theta" in rope:
            kwargs.setdefault("rope_theta", rope.pop("rope_theta"))
        kwargs["rope_scaling"] = kwargs.get("rope_scaling") or rope or None
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields in overrides: {unknown}")
        return cls(**{**kwargs, **overrides})

    def to_hf(self) -> dict[str, Any]:
        """The Hugging Face ``config.json`` dict (``model_type`` included)."""
        out = dataclasses.asdict(self)
        out["rope_scaling"] = None if self.rope_scaling is None else self.rope
        for name in ("bos_token_id", "eos_token_id"):
            if isinstance(out[name], tuple):
                out[name] = list(out[name])
        out["model_type"] = "llama"
        return out


def grouped_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None = None
) -> jax.Array:
    """Grouped-query softmax attention, ``[B, T, H, D] x [B, S, KV, D] -> [B, T, H, D]``.

    Query head ``h`` reads key-value head ``h // (H // KV)`` (Hugging Face's ``repeat_kv``
    order) without materialising the repeated keys. Scores and softmax are computed in
    float32, or float64 for float64 inputs.

    Args:
      q: queries ``[B, T, H, D]``.
      k: keys ``[B, S, KV, D]`` (``H`` a multiple of ``KV``).
      v: values ``[B, S, KV, D]``.
      mask: bool, broadcastable to ``[B, 1, 1, T, S]`` (``[B, KV, group, T, S]``); False
        positions get no weight.

    Example:
        >>> q, kv = jnp.ones((1, 3, 4, 2)), jnp.ones((1, 3, 2, 2))
        >>> grouped_attention(q, kv, kv).shape
        (1, 3, 4, 2)
    """
    B, T, H, D = q.shape
    KV = k.shape[2]
    acc = jnp.promote_types(q.dtype, jnp.float32)
    q = q.reshape(B, T, KV, H // KV, D)
    scores = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=acc) / np.sqrt(D)
    if mask is not None:
        scores = jnp.where(mask, scores, jnp.finfo(acc).min)
    weights = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    return jnp.einsum("bkgts,bskd->btkgd", weights, v).reshape(B, T, H, D)


def init_cache(config: LlamaConfig, batch: int, length: int, dtype: Any = jnp.float32) -> KVCache:
    """An empty KV cache: per layer ``(k, v)`` ``[batch, length, kv_heads, head_dim]``.

    Example:
        >>> from dpjax.models import get_config
        >>> init_cache(get_config("llama-tiny"), 2, 10)[0][0].shape
        (2, 10, 2, 8)
    """
    if length > config.max_position_embeddings:
        raise ValueError(
            f"cache length {length} exceeds max_position_embeddings="
            f"{config.max_position_embeddings}"
        )
    shape = (batch, length, config.num_key_value_heads, config.head_dim)
    layers = range(config.num_hidden_layers)
    return tuple((jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)) for _ in layers)


def _dense(features: int, bias: bool, dtype: Any, name: str) -> nn.Dense:
    init = nn.initializers.normal(0.02)
    return nn.Dense(features, use_bias=bias, dtype=dtype, kernel_init=init, name=name)


def _rms_norm(c: LlamaConfig, dtype: Any, name: str) -> nn.RMSNorm:
    return nn.RMSNorm(epsilon=c.rms_norm_eps, dtype=dtype, name=name)


class LlamaAttention(nn.Module):
    """Grouped-query self-attention with RoPE (``q_proj``, ``k_proj``, ``v_proj``, ``o_proj``)."""

    config: LlamaConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        mask: jax.Array,
        positions: jax.Array,
        cache: tuple[jax.Array, jax.Array] | None,
        cache_index: jax.Array,
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
        c = self.config
        H, KV, D = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        bias = c.attention_bias
        inv_freq = c.rope_frequencies()
        q = split_heads(_dense(H * D, bias, self.dtype, "q_proj")(x), H)
        k = split_heads(_dense(KV * D, bias, self.dtype, "k_proj")(x), KV)
        v = split_heads(_dense(KV * D, bias, self.dtype, "v_proj")(x), KV)
        q, k = apply_rope(q, positions, inv_freq), apply_rope(k, positions, inv_freq)
        if cache is not None:
            zero = jnp.zeros((), jnp.int32)  # one index dtype, also under x64
            start = (zero, jnp.asarray(cache_index, jnp.int32), zero, zero)
            k = jax.lax.dynamic_update_slice(cache[0], k.astype(cache[0].dtype), start)
            v = jax.lax.dynamic_update_slice(cache[1], v.astype(cache[1].dtype), start)
            cache = (k, v)
        out = grouped_attention(q, k.astype(q.dtype), v.astype(q.dtype), mask)
        out = out.reshape(x.shape[:-1] + (H * D,))
        return _dense(c.hidden_size, bias, self.dtype, "o_proj")(out), cache


class LlamaMLP(nn.Module):
    """SwiGLU feed-forward: ``down_proj(silu(gate_proj(x)) * up_proj(x))``."""

    config: LlamaConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.config
        gate = _dense(c.intermediate_size, c.mlp_bias, self.dtype, "gate_proj")(x)
        up = _dense(c.intermediate_size, c.mlp_bias, self.dtype, "up_proj")(x)
        return _dense(c.hidden_size, c.mlp_bias, self.dtype, "down_proj")(nn.silu(gate) * up)


class LlamaBlock(nn.Module):
    """Pre-norm decoder block: ``x + attn(rms(x))``, then ``x + mlp(rms(x))``."""

    config: LlamaConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        mask: jax.Array,
        positions: jax.Array,
        cache: tuple[jax.Array, jax.Array] | None,
        cache_index: jax.Array,
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
        c = self.config
        a, cache = LlamaAttention(c, self.dtype, name="self_attn")(
            _rms_norm(c, self.dtype, "input_layernorm")(x), mask, positions, cache, cache_index
        )
        x = x + a
        h = _rms_norm(c, self.dtype, "post_attention_layernorm")(x)
        return x + LlamaMLP(c, self.dtype, name="mlp")(h), cache


class LlamaModel(nn.Module):
    """Llama-family decoder with an optional LM or classification head.

    Attributes:
      config: the architecture.
      head: ``None``, ``"lm"`` or ``"classification"`` (see the module docstring).
      num_labels: classes of the classification head.
      dtype: compute dtype (parameters stay float32).

    Call: ``model.apply({"params": p}, input_ids, attention_mask=None, *,
    position_ids=None, cache=None, cache_index=None, deterministic=True)`` with the
    conventions of :class:`~dpjax.models.GPT2Model`: without a cache, ``attention_mask``
    ``[B, T]`` marks real tokens and attention is causal; with a cache (see
    :func:`init_cache`) the input is written at ``cache_index``, ``attention_mask`` is
    ``[B, L]`` over the whole buffer and the call returns ``(output, new_cache)``.
    ``logits_at`` ``[B]`` (``head="lm"``, no cache) runs the LM head on one position per
    row only, returning ``[B, vocab]``: the next-token logits a causal prompt reads.
    ``deterministic`` is accepted for a uniform API (Llama has no dropout).
    """

    config: LlamaConfig
    head: str | None = None
    num_labels: int = 2
    dtype: Any = jnp.float32

    def setup(self) -> None:
        c = self.config
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")
        _positive("num_labels", self.num_labels)
        init = nn.initializers.normal(0.02)
        self.embed_tokens = nn.Embed(
            c.vocab_size, c.hidden_size, dtype=self.dtype, embedding_init=init
        )
        self.layers = [
            LlamaBlock(c, self.dtype, name=f"layers_{i}") for i in range(c.num_hidden_layers)
        ]
        self.norm = _rms_norm(c, self.dtype, "norm")
        if self.head == "lm" and not c.tie_word_embeddings:
            self.lm_head = _dense(c.vocab_size, False, self.dtype, "lm_head")
        if self.head == "classification":
            self.score = _dense(self.num_labels, False, self.dtype, "score")

    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        *,
        position_ids: jax.Array | None = None,
        cache: KVCache | None = None,
        cache_index: jax.Array | int | None = None,
        logits_at: jax.Array | None = None,
        deterministic: bool = True,
    ) -> jax.Array | tuple[jax.Array, KVCache]:
        del deterministic
        input_ids = jnp.asarray(input_ids)
        B, T = input_ids.shape
        if cache is None:
            offset, key_len = jnp.zeros((), jnp.int32), T
        else:
            if cache_index is None:
                raise ValueError("cache_index is required together with cache")
            if self.head == "classification":
                raise ValueError("the classification head takes no KV cache")
            offset, key_len = jnp.asarray(cache_index, jnp.int32), cache[0][0].shape[1]
        if attention_mask is None:
            attention_mask = jnp.ones((B, key_len), bool)
        if attention_mask.shape != (B, key_len):
            raise ValueError(
                f"attention_mask must have shape {(B, key_len)}, got {attention_mask.shape}"
            )
        real = jnp.asarray(attention_mask).astype(bool)
        if position_ids is None:
            position_ids = jnp.broadcast_to(offset + jnp.arange(T), (B, T))
        q_idx = offset + jnp.arange(T)
        causal = jnp.arange(key_len)[None, :] <= q_idx[:, None]  # [T, S]
        mask = causal[None, None, None] & real[:, None, None, None, :]  # [B, 1, 1, T, S]
        x = self.embed_tokens(input_ids)
        new_cache = []
        for i, block in enumerate(self.layers):
            layer_cache = None if cache is None else cache[i]
            x, layer_cache = block(x, mask, position_ids, layer_cache, offset)
            new_cache.append(layer_cache)
        x = self.norm(x)
        if self.head == "classification":
            last = jnp.max(jnp.where(real, jnp.arange(T), 0), axis=1)  # last real token
            return self.score(jnp.take_along_axis(x, last[:, None, None], axis=1)[:, 0])
        if self.head == "lm":
            if logits_at is not None:  # one position per row: [B, d] -> logits [B, vocab]
                at = jnp.asarray(logits_at, jnp.int32)[:, None, None]
                x = jnp.take_along_axis(x, at, axis=1)[:, 0]
            out = (
                self.embed_tokens.attend(x) if self.config.tie_word_embeddings else self.lm_head(x)
            )
        else:
            out = x
        return out if cache is None else (out, tuple(new_cache))
