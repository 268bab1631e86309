"""Per-example losses that match the batch formats of the data loaders.

Every function returns one loss per example (shape ``[B]``), the contract of
``dpjax.clipped_grad``. Log-softmaxes run in at least float32 (bfloat16 logits are upcast).

* ``cross_entropy``: softmax cross-entropy over the last axis with a hand-written
  backward pass that keeps only the logits and their log-sum-exp: asking for the loss's
  value beside its gradient (every DP engine does: the clip needs per-example losses
  for logging and for the NaN guard) then costs no extra ``[B, T, V]`` buffer.
* ``prompt_logits`` / ``prompt_loss``: text infilling -- the label-word logits at the
  mask position, gathered directly (no one-hot over the vocabulary).
* ``classification_loss``: softmax cross-entropy of a classifier head.
* ``multilabel_loss``: sigmoid cross-entropy summed over labels (CelebA, 40 attributes).
* ``lm_loss``: next-token loss on the positions selected by a ``loss_mask``.

Example:
    >>> import jax.numpy as jnp
    >>> logits = jnp.zeros((2, 5, 11))  # [B, T, V] from a masked LM
    >>> prompt_logits(logits, jnp.array([1, 3]), jnp.array([4, 7])).shape
    (2, 2)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dpjax.validate import check_real


def _f32(x: jax.Array) -> jax.Array:
    """Upcasts to at least float32 (bfloat16 -> float32; float64 stays float64)."""
    x = jnp.asarray(x)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


__all__ = [
    "classification_loss",
    "cross_entropy",
    "lm_loss",
    "mask_hidden",
    "multilabel_loss",
    "prompt_logits",
    "prompt_loss",
]


@jax.custom_vjp
def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """``-log softmax(logits)[label]`` over the last axis, in at least float32.

    Same values and gradients as ``log_softmax`` then a gather, but autodiff keeps only the
    logits (in their own dtype) and one log-sum-exp per row for the backward pass, which
    computes ``softmax - one_hot`` in one fused expression. Through ``log_softmax``, asking
    for the value as well as the gradient (``value_and_grad``, every per-example engine)
    materialises a second logits-sized buffer: measured one ``[8, 128, 50257]`` float32
    buffer (196 MiB) on GPT-2 (``benchmarks/results/lora_compile``).

    Args:
      logits: ``[..., K]`` in any float dtype.
      labels: ``[...]`` integer class indices in ``[0, K)``.

    Returns:
      ``[...]`` losses in ``promote_types(logits.dtype, float32)``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> logits, labels = jnp.array([[2.0, 0.0, -1.0]]), jnp.array([0])
        >>> ref = -jax.nn.log_softmax(logits)[0, 0]
        >>> bool(jnp.allclose(cross_entropy(logits, labels)[0], ref))
        True
    """
    return _ce_forward(logits, labels)[0]


def _ce_forward(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, tuple]:
    x = _f32(logits)
    lse = jax.nn.logsumexp(x, axis=-1)
    labels = jnp.asarray(labels).astype(jnp.int32)
    picked = jnp.take_along_axis(x, labels[..., None], -1)[..., 0]
    return lse - picked, (logits, lse, labels)


def _ce_backward(res: tuple, g: jax.Array) -> tuple[jax.Array, None]:
    logits, lse, labels = res
    x = _f32(logits)
    probs = jnp.exp(x - lse[..., None])
    # softmax - one_hot as one select against an iota: XLA fuses it, where a one_hot
    # array would be materialised as one more [B, T, V] buffer (measured: 785 MiB on
    # GPT-2 at B 8, T 512).
    classes = jax.lax.broadcasted_iota(jnp.int32, x.shape, x.ndim - 1)
    d = jnp.where(classes == labels[..., None], probs - 1.0, probs)
    return (g[..., None] * d).astype(logits.dtype), None


cross_entropy.defvjp(_ce_forward, _ce_backward)


def prompt_logits(mlm_logits: jax.Array, mask_position: jax.Array, label_word_ids: jax.Array):
    """``[B, T, V]`` masked-LM logits -> ``[B, C]`` label-word logits at each mask.

    Args:
      mlm_logits: vocabulary logits of a masked LM.
      mask_position: ``[B]`` position of the mask token in each row.
      label_word_ids: ``[C]`` token id of each class's label word.
    """
    rows = jnp.arange(mlm_logits.shape[0])[:, None]
    return mlm_logits[rows, jnp.asarray(mask_position)[:, None], jnp.asarray(label_word_ids)[None]]


def mask_hidden(hidden: jax.Array, mask_position: jax.Array) -> jax.Array:
    """``[B, T, d]`` hidden states -> ``[B, d]`` at the mask (apply the LM head to this
    alone, and only to the label-word rows of the decoder, to skip the ``[B, T, V]``
    logits entirely)."""
    return hidden[jnp.arange(hidden.shape[0]), jnp.asarray(mask_position)]


def classification_loss(
    logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0
) -> jax.Array:
    """Softmax cross-entropy per example: ``[B, C]`` logits, ``[B]`` int labels.

    With ``label_smoothing`` = a, the target is ``(1 - a) one_hot + a / C``: the loss is
    ``(1 - a) CE + a mean_k(-log p_k)``, whose gradient vanishes at a finite margin. Under
    normalised (automatic) clipping, where every example's gradient is rescaled to the
    same norm however well it is classified, that stops well-classified examples from
    pushing their logits apart without end.

    Example:
        >>> import jax.numpy as jnp
        >>> logits, labels = jnp.array([[2.0, 0.0]]), jnp.array([0])
        >>> ce, uniform = cross_entropy(logits, labels), cross_entropy(logits, 1 - labels)
        >>> bool(jnp.allclose(classification_loss(logits, labels, 0.2),
        ...                   0.9 * ce + 0.1 * uniform))
        True
    """
    label_smoothing = check_real("label_smoothing", label_smoothing, "[0, 1)")
    loss = cross_entropy(logits, labels)
    if label_smoothing == 0.0:
        return loss
    x = _f32(logits)
    uniform = jax.nn.logsumexp(x, axis=-1) - jnp.mean(x, axis=-1)
    return (1.0 - label_smoothing) * loss + label_smoothing * uniform


def prompt_loss(
    mlm_logits: jax.Array,
    mask_position: jax.Array,
    label_word_ids: jax.Array,
    labels: jax.Array,
) -> jax.Array:
    """Cross-entropy over the label words only (LM-BFF): ``[B]``."""
    return classification_loss(prompt_logits(mlm_logits, mask_position, label_word_ids), labels)


def multilabel_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Sigmoid cross-entropy summed over labels: ``[B, K]`` logits, ``[B, K]`` 0/1."""
    x = _f32(logits)
    y = jnp.asarray(labels).astype(jnp.float32)
    return jnp.sum(jnp.logaddexp(0.0, x) - x * y, axis=-1)


def lm_loss(
    logits: jax.Array,
    input_ids: jax.Array,
    loss_mask: jax.Array,
    reduction: str = "mean",
) -> jax.Array:
    """Next-token cross-entropy per example on the tokens where ``loss_mask`` is 1.

    Position ``t`` of ``logits`` predicts ``input_ids[:, t + 1]``; a target token at
    ``t + 1`` counts when ``loss_mask[:, t + 1] == 1`` (the table-to-text batches put 1
    exactly on the reference tokens and the final eos).

    Args:
      logits: ``[B, T, V]``; input_ids, loss_mask: ``[B, T]``.
      reduction: ``"mean"`` over each example's target tokens, or ``"sum"``.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    nll = cross_entropy(logits[:, :-1], jnp.asarray(input_ids)[:, 1:])
    weights = jnp.asarray(loss_mask)[:, 1:].astype(nll.dtype)
    total = jnp.sum(nll * weights, axis=-1)
    if reduction == "sum":
        return total
    return total / jnp.maximum(jnp.sum(weights, axis=-1), 1.0)
