"""Batch samplers for DP training: Poisson (the default) and without replacement; stateless.

Each logical step ``t`` is drawn from ``np.random.default_rng([seed, t])`` alone, so every
host draws the identical batch and resuming at step ``t`` needs no other state. In a
private run the seed is secret (it reveals batch membership): the trainer draws it from
OS entropy, and a sampler's ``repr`` never shows it. A
logical batch comes back as a list of physical :class:`MicroBatch` es of fixed shape
``[physical_batch_size]`` (indices + a bool mask, ``False`` on padding rows, whose index
is 0). A draw larger than one physical batch is split over several micro-batches of the
same logical step -- never truncated, since truncation changes the privacy analysis.

Which accounting goes with which sampler (pass ``sampler.accounting_kwargs()`` to
``dpjax.accounting.epsilon`` so the rate always comes from the sampled split):

* :class:`PoissonSampler` -- each example joins independently with probability ``q``:
  ``sampling="poisson"``.
* :class:`WithoutReplacementSampler` -- exactly ``batch_size`` distinct examples,
  uniformly without replacement, drawn afresh every step:
  ``sampling="without_replacement"`` (``dp_accounting``'s
  ``SampledWithoutReplacementDpEvent``). This, and *not* epoch-permutation shuffling
  (each example exactly once per epoch), is what it accounts for: per-step sampling
  without replacement has a standard
  analysis (subsampled Gaussian, replace-one neighbours) while shuffled epochs have no
  tight standard accounting and must not be reported as Poisson.

Example:
  >>> sampler = PoissonSampler(1000, expected_batch_size=64, physical_batch_size=32, seed=0)
  >>> mbs = sampler.sample(0)
  >>> sum(int(mb.mask.sum()) for mb in mbs) == sampler.drawn_size(0)
  True
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np

from dpjax.validate import check_int

__all__ = ["MicroBatch", "PoissonSampler", "WithoutReplacementSampler", "host_slice", "split_draw"]

#: Sampler type names of older checkpoints, read as their current name.
_FORMER_TYPES = {"FixedSizeSampler": "WithoutReplacementSampler"}


class MicroBatch(NamedTuple):
    """One physical batch: ``indices`` int64 ``[P]`` and ``mask`` bool ``[P]``."""

    indices: np.ndarray
    mask: np.ndarray


def split_draw(drawn: np.ndarray, physical_batch_size: int) -> list[MicroBatch]:
    """Splits a draw into padded micro-batches (at least one, even for an empty draw)."""
    count = max(1, math.ceil(len(drawn) / physical_batch_size))
    indices = np.zeros(count * physical_batch_size, dtype=np.int64)
    mask = np.zeros(count * physical_batch_size, dtype=bool)
    indices[: len(drawn)] = drawn
    mask[: len(drawn)] = True
    shape = (count, physical_batch_size)
    return [
        MicroBatch(i, m) for i, m in zip(indices.reshape(shape), mask.reshape(shape), strict=True)
    ]


class _Sampler:
    """Shared machinery: ``draw(step)`` is defined by subclasses."""

    num_examples: int
    physical_batch_size: int
    seed: int
    next_step: int

    def _rng(self, step: int) -> np.random.Generator:
        step = check_int("step", step, 0)
        return np.random.default_rng([self.seed, step])

    def draw(self, step: int) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def sample(self, step: int) -> list[MicroBatch]:
        """The micro-batches of logical step ``step`` (deterministic in (seed, step))."""
        return split_draw(self.draw(step), self.physical_batch_size)

    def drawn_size(self, step: int) -> int:
        """Number of real examples drawn at ``step``."""
        return len(self.draw(step))

    def num_microbatches(self, step: int) -> int:
        """Number of physical micro-batches of ``step`` (>= 1)."""
        return max(1, math.ceil(self.drawn_size(step) / self.physical_batch_size))

    def __iter__(self) -> Iterator[tuple[int, list[MicroBatch]]]:
        """Yields ``(step, micro_batches)`` from ``next_step`` on.

        ``next_step`` advances as each step is handed out, so a checkpoint taken after
        training on a step resumes at the following one.
        """
        while True:
            step = self.next_step
            batches = self.sample(step)
            self.next_step = step + 1
            yield step, batches

    def _state(self, **extra: Any) -> dict[str, Any]:
        return {
            "type": type(self).__name__,
            "num_examples": self.num_examples,
            **extra,
            "physical_batch_size": self.physical_batch_size,
            "seed": self.seed,
            "next_step": self.next_step,
        }

    @classmethod
    def _from_state(cls, state: Any, keys: tuple[str, ...]) -> dict[str, Any]:
        expected = {"type", "num_examples", "physical_batch_size", "seed", "next_step", *keys}
        if not isinstance(state, dict) or set(state) != expected:
            raise ValueError(
                f"{cls.__name__} state must be a dict with keys {sorted(expected)}, got {state!r}"
            )
        if _FORMER_TYPES.get(state["type"], state["type"]) != cls.__name__:
            raise ValueError(f"state is for {state['type']!r}, not {cls.__name__!r}")
        return {k: v for k, v in state.items() if k != "type"}


class PoissonSampler(_Sampler):
    """Poisson sampling: each example joins step ``t`` independently with probability q.

    Args:
      num_examples: size n of the training split being sampled.
      sampling_rate: q in (0, 1]; give exactly one of this and ``expected_batch_size``.
      expected_batch_size: q * n, in (0, n].
      physical_batch_size: rows per micro-batch (fixed shape for jit).
      seed: non-negative integer; all hosts must use the same.
      next_step: the step ``__iter__`` starts at (for resuming).

    Example:
      >>> s = PoissonSampler(67349, expected_batch_size=1024, physical_batch_size=256, seed=1)
      >>> s.accounting_kwargs()["sampling"], s.steps_per_epoch
      ('poisson', 66)
    """

    def __init__(
        self,
        num_examples: int,
        *,
        sampling_rate: float | None = None,
        expected_batch_size: float | None = None,
        physical_batch_size: int,
        seed: int,
        next_step: int = 0,
    ) -> None:
        self.num_examples = check_int("num_examples", num_examples, 1)
        self.physical_batch_size = check_int("physical_batch_size", physical_batch_size, 1)
        self.seed = check_int("seed", seed, 0)
        self.next_step = check_int("next_step", next_step, 0)
        if (sampling_rate is None) == (expected_batch_size is None):
            raise ValueError(
                "give exactly one of sampling_rate and expected_batch_size, got "
                f"sampling_rate={sampling_rate!r}, expected_batch_size={expected_batch_size!r}"
            )
        for name, value in (
            ("sampling_rate", sampling_rate),
            ("expected_batch_size", expected_batch_size),
        ):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, numbers.Real)
            ):
                raise ValueError(f"{name} must be a real number, got {value!r}")
        if sampling_rate is not None and not 0.0 < sampling_rate <= 1.0:
            raise ValueError(f"sampling_rate must be in (0, 1], got {sampling_rate!r}")
        if expected_batch_size is not None and not 0 < expected_batch_size <= self.num_examples:
            raise ValueError(
                f"expected_batch_size must be in (0, num_examples={self.num_examples}], "
                f"got {expected_batch_size!r}"
            )
        self._rate = sampling_rate
        self._ebs = expected_batch_size

    @property
    def sampling_rate(self) -> float:
        """q, the probability that an example is in a given step's batch."""
        if self._rate is not None:
            return float(self._rate)
        return float(self._ebs) / self.num_examples

    @property
    def expected_batch_size(self) -> float:
        """q * n: the public normaliser of the noisy gradient sum."""
        if self._ebs is not None:
            return float(self._ebs)
        return float(self._rate) * self.num_examples

    @property
    def steps_per_epoch(self) -> int:
        """``ceil(1 / q)``: steps that see n examples in expectation."""
        return max(1, math.ceil(1.0 / self.sampling_rate - 1e-9))

    def draw(self, step: int) -> np.ndarray:
        """Sorted indices drawn at ``step``: each with probability q, independently."""
        u = self._rng(step).random(self.num_examples)
        return np.flatnonzero(u < self.sampling_rate).astype(np.int64)

    def accounting_kwargs(self) -> dict[str, Any]:
        """Exactly the sampling arguments of ``dpjax.accounting.epsilon`` for this sampler."""
        return {
            "sampling_rate": self.sampling_rate,
            "sampling": "poisson",
            "dataset_size": self.num_examples,
        }

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable config + ``next_step`` (:meth:`from_state_dict` inverts it)."""
        return self._state(sampling_rate=self._rate, expected_batch_size=self._ebs)

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> PoissonSampler:
        """Rebuilds a sampler from :meth:`state_dict`; ValueError on a malformed dict."""
        kwargs = cls._from_state(state, ("sampling_rate", "expected_batch_size"))
        return cls(kwargs.pop("num_examples"), **kwargs)

    def __repr__(self) -> str:
        return (
            f"PoissonSampler(num_examples={self.num_examples}, sampling_rate="
            f"{self.sampling_rate!r}, physical_batch_size={self.physical_batch_size}, "
            f"seed=<hidden>, next_step={self.next_step})"
        )


class WithoutReplacementSampler(_Sampler):
    """Fixed-size batches: ``batch_size`` distinct examples, uniform, fresh every step.

    Accounted as ``sampling="without_replacement"`` (RDP accountant, replace-one
    neighbours). It is *not* epoch shuffling: an example can appear in
    consecutive steps and be missing for a long stretch.

    Args:
      num_examples: size n of the training split being sampled.
      batch_size: examples per step, in [1, n].
      physical_batch_size: rows per micro-batch; the last one of a step is padded.
      seed: non-negative integer; all hosts must use the same.
      next_step: the step ``__iter__`` starts at (for resuming).

    Example:
      >>> s = WithoutReplacementSampler(100, batch_size=10, physical_batch_size=4, seed=0)
      >>> [int(mb.mask.sum()) for mb in s.sample(3)]
      [4, 4, 2]
    """

    def __init__(
        self,
        num_examples: int,
        *,
        batch_size: int,
        physical_batch_size: int,
        seed: int,
        next_step: int = 0,
    ) -> None:
        self.num_examples = check_int("num_examples", num_examples, 1)
        self.batch_size = check_int("batch_size", batch_size, 1)
        if self.batch_size > self.num_examples:
            raise ValueError(f"batch_size={batch_size!r} exceeds num_examples={num_examples!r}")
        self.physical_batch_size = check_int("physical_batch_size", physical_batch_size, 1)
        self.seed = check_int("seed", seed, 0)
        self.next_step = check_int("next_step", next_step, 0)

    @property
    def sampling_rate(self) -> float:
        """``batch_size / num_examples``."""
        return self.batch_size / self.num_examples

    @property
    def expected_batch_size(self) -> float:
        """``batch_size`` (every step has exactly this many examples)."""
        return float(self.batch_size)

    @property
    def steps_per_epoch(self) -> int:
        """``ceil(n / batch_size)``."""
        return math.ceil(self.num_examples / self.batch_size)

    def draw(self, step: int) -> np.ndarray:
        """Sorted ``batch_size`` distinct indices, uniform without replacement."""
        chosen = self._rng(step).choice(self.num_examples, size=self.batch_size, replace=False)
        return np.sort(chosen).astype(np.int64)

    def drawn_size(self, step: int) -> int:
        """Always ``batch_size``."""
        check_int("step", step, 0)
        return self.batch_size

    def accounting_kwargs(self) -> dict[str, Any]:
        """Exactly the sampling arguments of ``dpjax.accounting.epsilon`` for this sampler."""
        return {
            "sampling_rate": self.sampling_rate,
            "sampling": "without_replacement",
            "dataset_size": self.num_examples,
        }

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable config + ``next_step`` (:meth:`from_state_dict` inverts it)."""
        return self._state(batch_size=self.batch_size)

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> WithoutReplacementSampler:
        """Rebuilds a sampler from :meth:`state_dict`; ValueError on a malformed dict."""
        kwargs = cls._from_state(state, ("batch_size",))
        return cls(kwargs.pop("num_examples"), **kwargs)

    def __repr__(self) -> str:
        return (
            f"WithoutReplacementSampler(num_examples={self.num_examples}, "
            f"batch_size={self.batch_size}, physical_batch_size={self.physical_batch_size}, "
            f"seed=<hidden>, next_step={self.next_step})"
        )


def host_slice(
    indices: np.ndarray, mask: np.ndarray, process_index: int, process_count: int
) -> MicroBatch:
    """This host's contiguous, equal share of a micro-batch (multi-host data loading).

    Every host samples the same micro-batch (same seed) and loads rows
    ``[k * P / H, (k + 1) * P / H)``; concatenated over hosts the slices are the batch.

    Example:
      >>> idx, m = host_slice(np.arange(8), np.ones(8, bool), process_index=1, process_count=4)
      >>> idx.tolist()
      [2, 3]
    """
    count = check_int("process_count", process_count, 1)
    index = check_int("process_index", process_index, 0)
    if index >= count:
        raise ValueError(f"process_index={process_index!r} must be < process_count={count}")
    indices, mask = np.asarray(indices), np.asarray(mask)
    if indices.ndim != 1 or indices.shape != mask.shape:
        raise ValueError(
            f"indices and mask must be 1-D of the same length, got shapes {indices.shape} "
            f"and {mask.shape}"
        )
    if len(indices) % count:
        raise ValueError(
            f"physical batch size {len(indices)} is not divisible by process_count={count}"
        )
    per = len(indices) // count
    return MicroBatch(
        indices[index * per : (index + 1) * per], mask[index * per : (index + 1) * per]
    )
