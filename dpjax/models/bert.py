"""BERT and RoBERTa encoders (Flax linen) with masked-LM and classification heads.

The module tree mirrors Hugging Face's names so that the checkpoint map is mechanical
(see :mod:`dpjax.models.hf_names`)::

    embeddings/{word_embeddings, position_embeddings, token_type_embeddings}/embedding
    embeddings/LayerNorm/{scale, bias}
    encoder/layer_{i}/attention/self/{query, key, value}/{kernel, bias}
    encoder/layer_{i}/attention/output/{dense, LayerNorm}
    encoder/layer_{i}/intermediate/dense, encoder/layer_{i}/output/{dense, LayerNorm}
    pooler/dense                              (BERT classification only)
    mlm_head/{dense, layer_norm}, mlm_head/output/bias   (head="mlm"; decoder TIED)
    classifier/{kernel, bias}                 (BERT: pooler -> dropout -> classifier)
    classifier/{dense, out_proj}              (RoBERTa: <s> -> dense -> tanh -> out_proj)

Every parameter belongs to a standard linen layer (``nn.Dense``, ``nn.Embed``,
``nn.LayerNorm``) except the masked-LM output bias, an :class:`~dpjax.models.bias.AddBias`.

Example:
    >>> import jax, jax.numpy as jnp
    >>> from dpjax.models import BertModel, get_config
    >>> model = BertModel(get_config("bert-tiny"), head="mlm")
    >>> ids = jnp.ones((2, 5), jnp.int32)
    >>> params = model.init(jax.random.key(0), ids)["params"]
    >>> model.apply({"params": params}, ids, attention_mask=jnp.ones((2, 5))).shape
    (2, 5, 128)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dpjax.models.attention import ACTIVATIONS, activation, dot_product_attention, split_heads
from dpjax.models.bias import AddBias

__all__ = ["BertConfig", "BertModel"]

HEADS = (None, "mlm", "classification")


def _positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _probability(name: str, value: Any) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """Architecture of a BERT or RoBERTa encoder (Hugging Face field names).

    ``model_type="roberta"`` switches position ids to start at ``pad_token_id + 1`` (pads
    get ``pad_token_id``), computed from the input ids as Hugging Face does, and the
    classification head to RoBERTa's (dense + tanh + out_proj on the first token).
    """

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    model_type: str = "bert"

    def __post_init__(self) -> None:
        for name in (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "max_position_embeddings",
            "type_vocab_size",
        ):
            _positive(name, getattr(self, name))
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by "
                f"num_attention_heads={self.num_attention_heads}"
            )
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act={self.hidden_act!r} unknown; known {sorted(ACTIVATIONS)}")
        if self.model_type not in ("bert", "roberta"):
            raise ValueError(f"model_type must be 'bert' or 'roberta', got {self.model_type!r}")
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(f"pad_token_id={self.pad_token_id} outside [0, {self.vocab_size})")
        if not self.layer_norm_eps > 0:
            raise ValueError(f"layer_norm_eps must be > 0, got {self.layer_norm_eps!r}")
        _probability("hidden_dropout_prob", self.hidden_dropout_prob)
        _probability("attention_probs_dropout_prob", self.attention_probs_dropout_prob)


def _layer_norm(c: BertConfig, dtype: Any, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=c.layer_norm_eps, dtype=dtype, use_fast_variance=False, name=name)


def _dense(features: int, dtype: Any, name: str) -> nn.Dense:
    return nn.Dense(features, dtype=dtype, kernel_init=nn.initializers.normal(0.02), name=name)


def position_ids(input_ids: jax.Array, c: BertConfig) -> jax.Array:
    """BERT: ``0..T-1``; RoBERTa: ``pad+1+(rank among non-pad tokens)``, ``pad`` at pads."""
    if c.model_type == "roberta":
        real = (input_ids != c.pad_token_id).astype(jnp.int32)
        return jnp.cumsum(real, axis=-1) * real + c.pad_token_id
    return jnp.broadcast_to(jnp.arange(input_ids.shape[-1]), input_ids.shape)


class BertEmbeddings(nn.Module):
    config: BertConfig
    dtype: Any = jnp.float32

    def setup(self) -> None:
        c = self.config
        init = nn.initializers.normal(0.02)
        kw = dict(features=c.hidden_size, dtype=self.dtype, embedding_init=init)
        self.word_embeddings = nn.Embed(c.vocab_size, **kw)
        self.position_embeddings = nn.Embed(c.max_position_embeddings, **kw)
        self.token_type_embeddings = nn.Embed(c.type_vocab_size, **kw)
        self.LayerNorm = _layer_norm(c, self.dtype, None)
        self.dropout = nn.Dropout(c.hidden_dropout_prob)

    def __call__(
        self, input_ids: jax.Array, token_type_ids: jax.Array, deterministic: bool
    ) -> jax.Array:
        x = (
            self.word_embeddings(input_ids)
            + self.position_embeddings(position_ids(input_ids, self.config))
            + self.token_type_embeddings(token_type_ids)
        )
        return self.dropout(self.LayerNorm(x), deterministic=deterministic)

    def attend(self, x: jax.Array) -> jax.Array:
        """The tied decoder: ``x @ word_embeddings.T``."""
        return self.word_embeddings.attend(x)


class BertSelfAttention(nn.Module):
    config: BertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array, deterministic: bool) -> jax.Array:
        c = self.config
        heads = c.num_attention_heads
        q, k, v = (
            split_heads(_dense(c.hidden_size, self.dtype, n)(x), heads)
            for n in ("query", "key", "value")
        )
        out = dot_product_attention(q, k, v, mask)
        out = nn.Dropout(c.attention_probs_dropout_prob)(out, deterministic=deterministic)
        return out.reshape(x.shape[:-1] + (c.hidden_size,))


class BertResidual(nn.Module):
    """``LayerNorm(dropout(dense(h)) + residual)`` (HF's ``*Output`` blocks)."""

    config: BertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h: jax.Array, residual: jax.Array, deterministic: bool) -> jax.Array:
        c = self.config
        h = _dense(c.hidden_size, self.dtype, "dense")(h)
        h = nn.Dropout(c.hidden_dropout_prob)(h, deterministic=deterministic)
        return _layer_norm(c, self.dtype, "LayerNorm")(h + residual)


class BertLayer(nn.Module):
    config: BertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self, x: jax.Array, mask: jax.Array, deterministic: bool, return_ffn: bool = False
    ) -> jax.Array | tuple[jax.Array, jax.Array]:
        """The layer's output; with ``return_ffn`` also its feed-forward activations
        ``[B, T, intermediate_size]`` (after the activation function)."""
        c = self.config
        a = _AttentionBlock(c, self.dtype, name="attention")(x, mask, deterministic)
        h = activation(c.hidden_act)(_Intermediate(c, self.dtype, name="intermediate")(a))
        out = BertResidual(c, self.dtype, name="output")(h, a, deterministic)
        return (out, h) if return_ffn else out


class _AttentionBlock(nn.Module):
    config: BertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array, deterministic: bool) -> jax.Array:
        h = BertSelfAttention(self.config, self.dtype, name="self")(x, mask, deterministic)
        return BertResidual(self.config, self.dtype, name="output")(h, x, deterministic)


class _Intermediate(nn.Module):
    config: BertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return _dense(self.config.intermediate_size, self.dtype, "dense")(x)


class BertEncoder(nn.Module):
    config: BertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        mask: jax.Array,
        deterministic: bool,
        all_layers: bool = False,
        ffn_states: bool = False,
    ) -> jax.Array | tuple[jax.Array, ...]:
        """The last hidden states; with ``all_layers`` the input and every layer's; with
        ``ffn_states`` every layer's feed-forward activations (one per layer)."""
        states, ffn = [x], []
        for i in range(self.config.num_hidden_layers):
            layer = BertLayer(self.config, self.dtype, name=f"layer_{i}")
            if ffn_states:
                x, h = layer(x, mask, deterministic, return_ffn=True)
                ffn.append(h)
            else:
                x = layer(x, mask, deterministic)
            states.append(x)
        if ffn_states:
            return tuple(ffn)
        return tuple(states) if all_layers else x


class MLMHead(nn.Module):
    """``LayerNorm(act(dense(h)))``, then the tied decoder and an own output bias."""

    config: BertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h: jax.Array, decoder: Any) -> jax.Array:
        c = self.config
        act = "gelu" if c.model_type == "roberta" else c.hidden_act
        h = activation(act)(_dense(c.hidden_size, self.dtype, "dense")(h))
        h = _layer_norm(c, self.dtype, "layer_norm")(h)
        return AddBias(c.vocab_size, dtype=self.dtype, name="output")(decoder(h))


class RobertaClassifier(nn.Module):
    config: BertConfig
    num_labels: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h: jax.Array, deterministic: bool) -> jax.Array:
        c = self.config
        drop = nn.Dropout(c.hidden_dropout_prob)
        x = drop(h[:, 0], deterministic=deterministic)
        x = jnp.tanh(_dense(c.hidden_size, self.dtype, "dense")(x))
        x = drop(x, deterministic=deterministic)
        return _dense(self.num_labels, self.dtype, "out_proj")(x)


class BertModel(nn.Module):
    """BERT / RoBERTa encoder with an optional head.

    Attributes:
      config: the architecture.
      head: ``None`` (returns last hidden states ``[B, T, d]``), ``"mlm"`` (logits
        ``[B, T, vocab]``, decoder tied to the word embeddings) or ``"classification"``
        (logits ``[B, num_labels]``).
      num_labels: classes of the classification head.
      dtype: compute dtype (parameters stay float32).
      output_hidden_states: with ``head=None``, return the embeddings' output and every
        layer's hidden states, a tuple of ``num_hidden_layers + 1`` arrays ``[B, T, d]``
        (Hugging Face's ``hidden_states`` order); the parameters are the same.
      output_ffn_states: with ``head=None``, return every layer's feed-forward
        activations (after ``hidden_act``, the input of its ``output.dense``), a tuple
        of ``num_hidden_layers`` arrays ``[B, T, intermediate_size]``.

    Call: ``model.apply({"params": p}, input_ids, attention_mask=None,
    token_type_ids=None, deterministic=True)`` (``rngs={"dropout": key}`` when not
    deterministic). ``attention_mask`` is 1/True for real tokens.
    """

    config: BertConfig
    head: str | None = None
    num_labels: int = 2
    dtype: Any = jnp.float32
    output_hidden_states: bool = False
    output_ffn_states: bool = False

    def setup(self) -> None:
        c = self.config
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")
        if self.output_hidden_states and self.head is not None:
            raise ValueError(f"output_hidden_states needs head=None, got head={self.head!r}")
        if self.output_ffn_states and (self.head is not None or self.output_hidden_states):
            raise ValueError(
                "output_ffn_states needs head=None and output_hidden_states=False, got "
                f"head={self.head!r}, output_hidden_states={self.output_hidden_states}"
            )
        _positive("num_labels", self.num_labels)
        self.embeddings = BertEmbeddings(c, self.dtype)
        self.encoder = BertEncoder(c, self.dtype)
        if self.head == "mlm":
            self.mlm_head = MLMHead(c, self.dtype)
        elif self.head == "classification" and c.model_type == "roberta":
            self.classifier = RobertaClassifier(c, self.num_labels, self.dtype)
        elif self.head == "classification":
            self.pooler = _Pooler(c, self.dtype)
            self.classifier = _dense(self.num_labels, self.dtype, None)
            self.classifier_dropout = nn.Dropout(c.hidden_dropout_prob)

    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        token_type_ids: jax.Array | None = None,
        *,
        deterministic: bool = True,
    ) -> jax.Array:
        input_ids = jnp.asarray(input_ids)
        if attention_mask is None:
            attention_mask = jnp.ones(input_ids.shape, bool)
        if token_type_ids is None:
            token_type_ids = jnp.zeros(input_ids.shape, jnp.int32)
        mask = jnp.asarray(attention_mask).astype(bool)[:, None, None, :]
        x = self.embeddings(input_ids, token_type_ids, deterministic)
        if self.output_hidden_states or self.output_ffn_states:
            return self.encoder(
                x, mask, deterministic, all_layers=True, ffn_states=self.output_ffn_states
            )
        h = self.encoder(x, mask, deterministic)
        if self.head is None:
            return h
        if self.head == "mlm":
            return self.mlm_head(h, self.embeddings.attend)
        if self.config.model_type == "roberta":
            return self.classifier(h, deterministic)
        pooled = self.classifier_dropout(self.pooler(h), deterministic=deterministic)
        return self.classifier(pooled)


class _Pooler(nn.Module):
    config: BertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        return jnp.tanh(_dense(self.config.hidden_size, self.dtype, "dense")(h[:, 0]))
