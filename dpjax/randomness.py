"""Secret randomness for private runs: noise keys and sampling seeds nobody else knows.

DP-SGD's guarantee assumes the adversary does not know the noise or which examples a
step sampled. A noise key derived from a published seed (``config.seed = 0`` in a
``results.json``) lets anyone subtract the noise from the released parameters and read
the exact clipped gradient sums; a published sampler seed reveals batch membership and
voids the amplification by subsampling behind every reported epsilon. So:

* :func:`secret_key` gives a JAX PRNG key drawn from the operating system's entropy
  (``secrets``), for users of :func:`dpjax.optim.privatize` outside the trainer.
* :class:`RunSecrets` holds one private run's root secret (128 bits of OS entropy, or a
  user-supplied seed that the run then reports as *not secret*) and derives every
  stream of the run from it by name -- the noise key of each phase, the sampler's seed,
  the noise of a task's released statistics -- so that all of them are stored in the
  checkpoint as one number and a resumed run continues the same streams. Its ``repr``
  never shows the value; only :meth:`RunSecrets.to_checkpoint` does.
* Multi-host: :meth:`RunSecrets.broadcast` gives every process process 0's secret (JAX's
  own collective), so every host draws the same batches and adds the same noise.

Example:
    >>> import jax
    >>> key = secret_key()
    >>> key.shape, jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
    ((), True)
    >>> s = RunSecrets.draw()
    >>> s.describe(), "value" in repr(s)
    ('secret (OS entropy)', False)
    >>> RunSecrets.from_seed(7).describe()
    'user-supplied (not secret)'
"""

from __future__ import annotations

import dataclasses
import hashlib
import numbers
import secrets
from typing import Any

import jax
import numpy as np

__all__ = ["RunSecrets", "secret_key"]

_BITS = 128


def _key_from_words(words: np.ndarray) -> jax.Array:
    """A typed key of JAX's default implementation from uint32 words (as many as it needs)."""
    impl = jax.random.key_impl(jax.random.key(0))
    width = jax.random.key_data(jax.random.key(0)).shape[-1]
    if len(words) < width:
        raise ValueError(f"need {width} uint32 words for a {impl} key, got {len(words)}")
    return jax.random.wrap_key_data(np.asarray(words[:width], np.uint32), impl=impl)


def secret_key() -> jax.Array:
    """A JAX PRNG key drawn from the operating system's entropy (never reproducible).

    Use it for :func:`dpjax.optim.privatize` whenever the run is private; keep it (e.g. in
    your checkpoint) if the run must be resumed, and never publish it.
    """
    words = np.frombuffer(secrets.token_bytes(32), np.uint32)
    return _key_from_words(words)


def _words(root: int, stream: str, count: int) -> np.ndarray:
    digest = hashlib.blake2b(
        stream.encode(), key=root.to_bytes(_BITS // 8, "little"), digest_size=4 * count
    ).digest()
    return np.frombuffer(digest, np.uint32).copy()


@dataclasses.dataclass(frozen=True, repr=False, eq=False)
class RunSecrets:
    """The root secret of one private run and the named streams derived from it.

    Attributes:
      root: a non-negative integer below ``2**128`` (OS entropy, or the user's seed).
      user_supplied: the root came from the user (``privacy.noise_seed``): reproducible,
        and therefore *not secret*; runs say so in their output and ``results.json``.
    """

    root: int
    user_supplied: bool = False

    def __post_init__(self) -> None:
        r = self.root
        if isinstance(r, bool) or not isinstance(r, numbers.Integral) or not 0 <= r < 2**_BITS:
            raise ValueError("the run secret must be an integer in [0, 2**128)")
        object.__setattr__(self, "root", int(r))

    @classmethod
    def draw(cls) -> RunSecrets:
        """A fresh root from the operating system's entropy."""
        return cls(secrets.randbits(_BITS), user_supplied=False)

    @classmethod
    def from_seed(cls, seed: int) -> RunSecrets:
        """A root from a user-supplied seed (reproducible research runs: not secret)."""
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
            raise ValueError(f"noise_seed must be a non-negative integer, got {seed!r}")
        if seed >= 2**_BITS:
            raise ValueError("noise_seed must be below 2**128")
        return cls(int(seed), user_supplied=True)

    def describe(self) -> str:
        """What ``results.json`` reports instead of the value."""
        return "user-supplied (not secret)" if self.user_supplied else "secret (OS entropy)"

    def key(self, stream: str) -> jax.Array:
        """The JAX PRNG key of ``stream`` (e.g. ``"noise/phase0"``)."""
        return _key_from_words(_words(self.root, stream, 8))

    def seed(self, stream: str) -> int:
        """A 128-bit integer seed of ``stream`` (e.g. ``"sampler"``, for numpy)."""
        return int.from_bytes(_words(self.root, stream, 4).tobytes(), "little")

    def numpy_rng(self, stream: str) -> np.random.Generator:
        """A numpy generator on ``stream`` (e.g. the noise of a task's feature mean)."""
        return np.random.default_rng(self.seed(stream))

    def to_checkpoint(self) -> dict[str, Any]:
        """The JSON form kept in the (private) checkpoint, and nowhere else."""
        return {"root": str(self.root), "user_supplied": self.user_supplied}

    @classmethod
    def from_checkpoint(cls, state: Any) -> RunSecrets:
        """Inverse of :meth:`to_checkpoint`; ValueError on a malformed record."""
        if not isinstance(state, dict) or set(state) != {"root", "user_supplied"}:
            raise ValueError("the checkpoint's run secret record is malformed")
        return cls(int(state["root"]), bool(state["user_supplied"]))

    def broadcast(self) -> RunSecrets:
        """Process 0's secret on every process (identity with one process)."""
        if jax.process_count() == 1:
            return self
        from jax.experimental import multihost_utils

        words = np.frombuffer(self.root.to_bytes(_BITS // 8, "little"), np.uint32)
        words = np.concatenate([words, np.asarray([int(self.user_supplied)], np.uint32)])
        got = np.asarray(multihost_utils.broadcast_one_to_all(words), np.uint32)
        root = int.from_bytes(got[:4].tobytes(), "little")
        return RunSecrets(root, user_supplied=bool(got[4]))

    def __repr__(self) -> str:
        return f"RunSecrets(<{self.describe()}>)"
