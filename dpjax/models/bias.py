"""``AddBias``: a bias added to an output that no Dense owns (the tied masked-LM decoder).

The masked-LM decoder multiplies by the transposed word embeddings (``nn.Embed.attend``),
which has no bias of its own; Hugging Face keeps a separate output bias. Making it a tiny
module (instead of a raw ``self.param`` in the head) gives interceptors a call to hook:
its per-example gradient is the output gradient summed over positions, like any bias.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["AddBias"]


class AddBias(nn.Module):
    """``y = x + bias`` with ``bias`` of shape ``[features]`` (zeros at init).

    Attributes:
      features: size of the last axis of the input.
      dtype: compute dtype of the output (``None``: the input's).
      param_dtype: dtype of the stored bias.
    """

    features: int
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), self.param_dtype)
        dtype = self.dtype or x.dtype
        return x.astype(dtype) + bias.astype(dtype)
