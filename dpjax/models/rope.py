"""Rotary position embeddings (RoPE): inverse frequencies with scaling, and the rotation.

Hugging Face's layout: dimension ``j < D/2`` of a head pairs with ``j + D/2``. (llama.cpp
pairs adjacent dimensions ``2j, 2j+1``; its GGUF files permute the q/k rows to match, see
:func:`dpjax.models.gguf.unpermute_rotary`.) RoPE has no parameters: the engines and the
adapters never see it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["ROPE_TYPES", "apply_rope", "rope_frequencies"]

#: The supported ``rope_scaling["rope_type"]`` values.
ROPE_TYPES = ("default", "linear", "llama3")


def rope_frequencies(
    head_dim: int, theta: float, scaling: Mapping[str, Any] | None = None
) -> np.ndarray:
    """The rotary inverse frequencies ``[head_dim // 2]`` (float64), scaling applied.

    ``inv_j = theta ** (-2j / head_dim)``; ``scaling`` is a Hugging Face ``rope_scaling``
    dict: ``"linear"`` divides the frequencies by ``factor``; ``"llama3"`` divides the low
    ones by ``factor`` and interpolates the middle band (Llama 3.1's rule, with
    ``low_freq_factor``, ``high_freq_factor`` and ``original_max_position_embeddings``).

    Example:
        >>> rope_frequencies(4, 100.0).tolist()
        [1.0, 0.1]
        >>> rope_frequencies(4, 100.0, {"rope_type": "linear", "factor": 2.0}).tolist()
        [0.5, 0.05]
    """
    d = head_dim
    inv = 1.0 / theta ** (np.arange(0, d, 2, dtype=np.float64) / d)
    rope = dict(scaling or {})
    kind = rope.get("rope_type", "default")
    if kind not in ROPE_TYPES:
        raise ValueError(f"rope_scaling rope_type={kind!r} unsupported; supported {ROPE_TYPES}")
    if kind == "default":
        return inv
    factor = float(rope.get("factor", 0))
    if not factor > 0:
        raise ValueError(f"rope_scaling needs a positive 'factor', got {rope!r}")
    if kind == "linear":
        return inv / factor
    try:
        low, high = float(rope["low_freq_factor"]), float(rope["high_freq_factor"])
        old = float(rope["original_max_position_embeddings"])
    except KeyError as e:
        raise ValueError(f"llama3 rope_scaling lacks {e.args[0]!r}: {rope!r}") from e
    if not high > low:
        raise ValueError(f"llama3 rope_scaling needs high_freq_factor > low_freq_factor: {rope!r}")
    wavelen = 2 * math.pi / inv
    scaled = np.where(wavelen > old / low, inv / factor, inv)
    smooth = (old / wavelen - low) / (high - low)
    middle = (wavelen >= old / high) & (wavelen <= old / low)
    return np.where(middle, (1 - smooth) * scaled / factor + smooth * scaled, scaled)


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: np.ndarray) -> jax.Array:
    """Rotates ``x`` ``[B, T, H, D]`` by ``positions`` ``[B, T]`` (Hugging Face's half layout).

    Dimension ``j < D/2`` pairs with ``j + D/2``: ``x_j cos - x_{j+D/2} sin`` and
    ``x_{j+D/2} cos + x_j sin`` at angle ``position * inv_freq[j]``. The angles are computed
    in float32 (float64 for float64 inputs).

    Example:
        >>> x = jnp.ones((1, 1, 1, 4))
        >>> apply_rope(x, jnp.zeros((1, 1)), np.ones(2)).tolist()  # position 0: identity
        [[[[1.0, 1.0, 1.0, 1.0]]]]
    """
    dt = jnp.promote_types(x.dtype, jnp.float32)
    angles = positions.astype(dt)[..., None] * jnp.asarray(inv_freq, dt)  # [B, T, D/2]
    angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]
    cos, sin = jnp.cos(angles).astype(x.dtype), jnp.sin(angles).astype(x.dtype)
    first, second = jnp.split(x, 2, axis=-1)
    return x * cos + jnp.concatenate([-second, first], axis=-1) * sin
