"""Multi-head dot-product attention math and the activation functions the models use.

Attention scores and the softmax are computed in float32 whatever the compute dtype, and
every operation works example by example (nothing mixes rows of the batch axis).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

__all__ = ["ACTIVATIONS", "activation", "dot_product_attention", "split_heads"]

#: Activation functions by their Hugging Face ``hidden_act`` name.
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
}


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """The activation called ``name`` in Hugging Face configs (``gelu`` is the exact erf form)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; known: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def split_heads(x: jax.Array, num_heads: int) -> jax.Array:
    """``[B, T, H*D] -> [B, T, H, D]``."""
    return x.reshape(x.shape[:-1] + (num_heads, x.shape[-1] // num_heads))


def dot_product_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None = None
) -> jax.Array:
    """Softmax attention, ``[B, T, H, D] x [B, S, H, D] -> [B, T, H, D]``.

    Args:
      q: queries ``[B, T, H, D]``.
      k: keys ``[B, S, H, D]``.
      v: values ``[B, S, H, D]``.
      mask: bool, broadcastable to ``[B, H, T, S]``; False positions get no weight.

    Returns:
      The attended values in the dtype of ``v``.
    """
    scale = 1.0 / jnp.sqrt(jnp.asarray(q.shape[-1], jnp.float32))
    scores = jnp.einsum("bthd,bshd->bhts", q, k, preferred_element_type=jnp.float32) * scale
    if mask is not None:
        scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    return jnp.einsum("bhts,bshd->bthd", weights, v)
