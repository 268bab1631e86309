"""Forward functions of the text-classification task (prompt and head formats).

* :func:`mask_label_logits`: Li et al.'s text infilling. The masked-LM head runs on the
  hidden state at the ``<mask>`` only (``[B, 1, d]`` instead of ``[B, T, d]``), so the
  vocabulary logits are ``[B, V]``, not ``[B, T, V]``; the label-word columns are the class
  logits. Every parameter is used by the same linen layers as in ``BertModel.__call__``,
  so the DP-BiTFiT taps see the same biases.
* :class:`MeanPoolClassifier`: a fresh ``classifier`` Dense on the masked mean of an
  encoder's hidden states (how sentence encoders such as MiniLM were trained).

Example:
    >>> import jax, jax.numpy as jnp
    >>> from dpjax.models import BertModel, get_config
    >>> model = MeanPoolClassifier(BertModel(get_config("bert-tiny")), num_labels=3)
    >>> ids = jnp.ones((2, 5), jnp.int32)
    >>> params = model.init(jax.random.key(0), ids, jnp.ones((2, 5)))["params"]
    >>> model.apply({"params": params}, ids, jnp.ones((2, 5))).shape
    (2, 3)
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dpjax.data.losses import mask_hidden

__all__ = ["SOURCES", "MeanPoolClassifier", "mask_label_logits"]

#: What :class:`MeanPoolClassifier` can pool: hidden states or feed-forward activations.
SOURCES = ("hidden", "ffn")


def mask_label_logits(
    module: Any,
    input_ids: jax.Array,
    attention_mask: jax.Array,
    mask_position: jax.Array,
    label_word_ids: jax.Array,
) -> jax.Array:
    """Label-word logits ``[B, C]`` at each row's mask; use as ``apply(..., method=...)``.

    ``module`` is a ``BertModel`` with ``head="mlm"``.
    """
    input_ids = jnp.asarray(input_ids)
    mask = jnp.asarray(attention_mask).astype(bool)[:, None, None, :]
    x = module.embeddings(input_ids, jnp.zeros_like(input_ids), True)
    h = module.encoder(x, mask, True)
    at_mask = mask_hidden(h, mask_position)[:, None, :]
    logits = module.mlm_head(at_mask, module.embeddings.attend)[:, 0]
    return logits[:, jnp.asarray(label_word_ids)]


class MeanPoolClassifier(nn.Module):
    """``classifier(mean_t h[:, t])`` over real tokens, for a headless encoder.

    Attributes:
      encoder: a module returning hidden states ``[B, T, d]`` (``BertModel(head=None)``);
        its parameters live under ``encoder``.
      num_labels: classes.
      normalize: scale the pooled vector to unit length before the classifier (the
        geometry sentence encoders are trained for; keeps the new head's logits bounded).
      feature_scale: multiplies the (normalised) pooled vector. Under DP it sets how the
        clip budget splits between the head's kernel (gradient ~ scale) and its bias
        (gradient ~ 1); ``sqrt(d)`` gives features of unit RMS.
      layers: hidden states to pool, as indices into the encoder's ``hidden_states``
        (0 = the embeddings' output, ``num_hidden_layers`` = the last layer; negative
        counts from the end); the encoder must then be built with
        ``output_hidden_states=True``. Each layer is pooled (and normalised) on its own and
        the results are concatenated, divided by ``sqrt(len(layers))`` with ``normalize``
        so that the whole vector keeps unit length. Empty: the last layer only.
        Sentence encoders tuned for similarity keep more of a text's sentiment in their
        middle layers: on Rotten Tomatoes a DP probe on MiniLM's layers 1-6 reaches
        76.7 % against 74.4 % on the last (``benchmarks/results/bitfit_recipe/NOTES.md``).
      source: what ``layers`` index. ``"hidden"``: the hidden states above.
        ``"ffn"``: the layers' feed-forward activations (``intermediate_size`` wide, 4x
        the hidden width; the encoder built with ``output_ffn_states=True``); layer ``i``
        is the ``i``-th layer (1 to ``num_hidden_layers``, negative from the end). The
        hidden state is a linear map of them plus the residual, so they hold at least as
        much: on Rotten Tomatoes a non-private probe on MiniLM's six FFN activations
        reaches 79.3 % against 77.4 % on its six hidden states; the main job (DP probe,
        then DP-BiTFiT) 78.0 % (NOTES.md, sessions 8-10).
    """

    encoder: nn.Module
    num_labels: int = 2
    normalize: bool = False
    feature_scale: float = 1.0
    layers: tuple[int, ...] = ()
    source: str = "hidden"

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {self.source!r}")
        if self.source == "ffn" and not self.layers:
            raise ValueError("source='ffn' needs `layers` set (which layers' activations)")
        super().__post_init__()

    @property
    def feature_dim(self) -> int:
        """Width of the pooled vector: ``hidden_size`` (``intermediate_size`` for
        ``source="ffn"``) times the pooled layers."""
        c = self.encoder.config
        width = c.intermediate_size if self.source == "ffn" else c.hidden_size
        return width * max(len(self.layers), 1)

    def features(self, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
        """The pooled vector ``[B, feature_dim]`` (float32, unit length with
        ``normalize``)."""
        return self._pooled(self.encoder(input_ids, attention_mask), attention_mask)

    def _pooled(self, out: Any, attention_mask: jax.Array) -> jax.Array:
        if not self.layers:
            if isinstance(out, tuple):
                raise ValueError("an encoder with output_hidden_states needs `layers` set")
            return _pool(out, attention_mask, self.normalize)
        ffn = self.source == "ffn"
        flag = "output_ffn_states" if ffn else "output_hidden_states"
        count = self.encoder.config.num_hidden_layers + (0 if ffn else 1)
        if not isinstance(out, tuple) or len(out) != count:
            raise ValueError(f"layers={self.layers} needs an encoder built with {flag}=True")
        for i in self.layers:
            if ffn and not (1 <= i <= count or -count <= i < 0):
                raise ValueError(f"layer {i} out of range for FFN activations 1-{count}")
            if not ffn and not -count <= i < count:
                raise ValueError(f"layer {i} out of range for {count} hidden states")
        # Layer i's activations are out[i - 1]: there is none for the embeddings.
        index = {i: i - 1 if ffn and i > 0 else i for i in self.layers}
        pooled = [_pool(out[index[i]], attention_mask, self.normalize) for i in self.layers]
        joined = jnp.concatenate(pooled, axis=-1)
        return joined / jnp.sqrt(len(pooled)) if self.normalize else joined

    @nn.compact
    def __call__(
        self, input_ids: jax.Array, attention_mask: jax.Array, center: jax.Array | None = None
    ) -> jax.Array:
        """Class logits ``[B, num_labels]``; ``center`` ``[d]`` is subtracted from the
        pooled vector first (a constant, e.g. a private mean from
        :func:`dpjax.tasks.feature_mean.private_mean`; never trained)."""
        out = self.encoder(input_ids, attention_mask)
        pooled = self._pooled(out, attention_mask)
        if center is not None:
            pooled = pooled - jnp.asarray(center, jnp.float32)
        pooled = pooled * self.feature_scale
        dense = nn.Dense(
            self.num_labels, kernel_init=nn.initializers.normal(0.02), name="classifier"
        )
        dtype = (out[-1] if isinstance(out, tuple) else out).dtype
        return dense(pooled.astype(dtype))


def _pool(h: jax.Array, attention_mask: jax.Array, normalize: bool) -> jax.Array:
    """Masked mean of ``h`` over positions, in float32; unit length if ``normalize``."""
    weights = jnp.asarray(attention_mask).astype(jnp.float32)[..., None]
    pooled = jnp.sum(h.astype(jnp.float32) * weights, axis=1)
    pooled = pooled / jnp.maximum(jnp.sum(weights, axis=1), 1.0)
    if normalize:  # unit length, as sentence-transformers' Normalize module
        pooled = pooled * jax.lax.rsqrt(jnp.sum(pooled**2, -1, keepdims=True) + 1e-12)
    return pooled
