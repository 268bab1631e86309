"""Segments of DP steps, their cached composition, and the :class:`PrivacyLedger`.

:func:`compose_epsilon` gives exactly the epsilon of ``dp_accounting``'s accountants
fed one ``SelfComposedDpEvent`` per :class:`Segment`, but reuses work between calls:

* PLD: ``PLDAccountant`` turns ``SelfComposedDpEvent(PoissonSampledDpEvent(q,
  GaussianDpEvent(sigma)), k)`` into ``from_gaussian_mechanism(sigma, q, grid)
  .self_compose(k)`` and composes that into ``identity(grid)``. The same calls run
  here, with the one-step PLD (the expensive part, ~1 s at grid 1e-4) and the
  self-composed segment PLD kept in small LRU caches, so a ledger that grows by one
  step only pays for ``self_compose``.
* RDP: ``RdpAccountant`` adds ``k * rdp_one_step`` per segment; the one-step RDP
  vector is cached and the sum formed the same way.
* The final epsilon is cached per ``(segments, delta, accountant, grid)``.

All cached objects are immutable in use (``dp_accounting`` composition returns new
objects), so every answer is bit-identical to the uncached accountant.
:func:`clear_caches` empties the caches; :func:`cache_info` reports their use.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Iterable
from typing import Any

import dp_accounting
import numpy as np
from dp_accounting import rdp
from dp_accounting.pld import privacy_loss_distribution as pld_lib
from dp_accounting.rdp import rdp_privacy_accountant

from dpjax.validate import ACCOUNTANTS, RENAMED, SAMPLINGS, check_choice, check_int, check_real

#: The PLD accountant's default ``value_discretization_interval`` (tight enough for epsilon
#: to about three digits).
DEFAULT_PLD_GRID = 1e-4
#: Renyi orders of the RDP accountant: fine steps near 1, integers to 64, a sparse tail.
RDP_ORDERS: tuple[float, ...] = (
    tuple(1 + k / 10 for k in range(1, 100))
    + tuple(float(k) for k in range(11, 65))
    + (80.0, 96.0, 128.0, 192.0, 256.0, 512.0, 1024.0)
)
_REL = dp_accounting.NeighboringRelation


# ----------------------------------------------------------------------------- checks
def sample_size(sampling_rate: float, dataset_size: int) -> int:
    """``round(q * n)`` for sampling without replacement; refuses a q that is not m / n."""
    exact = sampling_rate * dataset_size
    m = round(exact)
    if abs(exact - m) > 1e-6 * max(1.0, exact):
        raise ValueError(
            "sampling='without_replacement' needs sampling_rate = batch_size / dataset_size, "
            "but "
            f"sampling_rate={sampling_rate!r} * dataset_size={dataset_size!r} = {exact!r} is "
            "not an integer batch size (was q computed from a different split?)"
        )
    if m < 1:
        raise ValueError(
            f"sampling_rate={sampling_rate!r} * dataset_size={dataset_size!r} rounds to an "
            "empty batch"
        )
    return m


# ----------------------------------------------------------------------------- segments
@dataclasses.dataclass(frozen=True)
class Segment:
    """``steps`` identical DP steps: one sampling rule, one noise multiplier.

    Attributes:
      noise_multiplier: sigma (noise std / clip norm); 0 means no privacy.
      sampling_rate: q in (0, 1].
      steps: number of steps, >= 1.
      sampling: ``"poisson"`` or ``"without_replacement"`` (see :mod:`dpjax.accounting`).
      dataset_size: n; required for ``"without_replacement"``, optional (unused) for ``"poisson"``.
    """

    noise_multiplier: float
    sampling_rate: float
    steps: int
    sampling: str = "poisson"
    dataset_size: int | None = None

    def __post_init__(self) -> None:
        sigma = check_real("noise_multiplier", self.noise_multiplier, "[0, inf)")
        q = check_real("sampling_rate", self.sampling_rate, "(0, 1]")
        steps = check_int("steps", self.steps, 1)
        check_choice("sampling", self.sampling, SAMPLINGS)
        n = self.dataset_size
        if n is not None:
            n = check_int("dataset_size", n, 1)
        elif self.sampling == "without_replacement":
            raise ValueError(
                "sampling='without_replacement' needs dataset_size (the number of training "
                "examples), got dataset_size=None"
            )
        if self.sampling == "without_replacement":
            sample_size(q, n)
        object.__setattr__(self, "noise_multiplier", sigma)
        object.__setattr__(self, "sampling_rate", q)
        object.__setattr__(self, "steps", steps)
        object.__setattr__(self, "dataset_size", n)

    def step_event(self, replace_one: bool | None = None) -> dp_accounting.DpEvent:
        """The ``dp_accounting`` event of one step of this segment.

        Args:
          replace_one: account under *replace-one* neighbours (``None``: only for
            ``"without_replacement"`` segments). ``dp_accounting``'s RDP formulas take
            the noise multiplier relative to the L2 sensitivity of the query; under replace-one
            the clipped sum moves by up to ``2 C`` (``+C`` replaced by ``-C``), so the
            multiplier passed is ``sigma / 2`` (google/differential-privacy issue 378).
            A Poisson segment can only be read under replace-one when it samples
            everything (``q = 1``: one unsampled Gaussian mechanism).
        """
        if replace_one is None:
            replace_one = self.sampling == "without_replacement"
        if not replace_one:
            if self.sampling == "without_replacement":
                raise ValueError(
                    "a 'without_replacement' segment is only defined under replace-one"
                )
            gaussian = dp_accounting.GaussianDpEvent(self.noise_multiplier)
            return dp_accounting.PoissonSampledDpEvent(self.sampling_rate, gaussian)
        gaussian = dp_accounting.GaussianDpEvent(self.noise_multiplier / 2)
        if self.sampling == "poisson":
            if self.sampling_rate != 1.0:
                raise ValueError(
                    f"a Poisson-sampled segment with q={self.sampling_rate} has no replace-one "
                    "accounting in dp_accounting; only unsampled (q = 1) ones compose with "
                    "'without_replacement' segments"
                )
            return gaussian
        m = sample_size(self.sampling_rate, self.dataset_size)
        return dp_accounting.SampledWithoutReplacementDpEvent(self.dataset_size, m, gaussian)

    def event(self) -> dp_accounting.DpEvent:
        """The ``dp_accounting`` event of this segment (all its steps)."""
        return dp_accounting.SelfComposedDpEvent(self.step_event(), self.steps)

    def step_key(self) -> Segment:
        """This segment with one step (and no unused ``dataset_size``): a cache key."""
        n = self.dataset_size if self.sampling == "without_replacement" else None
        return dataclasses.replace(self, steps=1, dataset_size=n)


# ----------------------------------------------------------------------------- caches
@functools.lru_cache(maxsize=16)
def _step_pld(step: Segment, grid: float) -> pld_lib.PrivacyLossDistribution:
    """One Poisson-sampled Gaussian step, built as ``PLDAccountant`` builds it."""
    return pld_lib.from_gaussian_mechanism(
        standard_deviation=step.noise_multiplier,
        value_discretization_interval=grid,
        sampling_prob=step.sampling_rate,
        neighboring_relation=_REL.ADD_OR_REMOVE_ONE,
    )


@functools.lru_cache(maxsize=4)
def _segment_pld(seg: Segment, grid: float) -> pld_lib.PrivacyLossDistribution:
    """``seg.steps`` self-compositions of its one-step PLD."""
    return _step_pld(seg.step_key(), grid).self_compose(seg.steps)


@functools.lru_cache(maxsize=64)
def _step_rdp(step: Segment, replace_one: bool) -> np.ndarray:
    """RDP vector (at :data:`RDP_ORDERS`) of one step, from ``RdpAccountant`` itself."""
    relation = _REL.REPLACE_ONE if replace_one else _REL.ADD_OR_REMOVE_ONE
    acc = rdp.RdpAccountant(orders=RDP_ORDERS, neighboring_relation=relation)
    acc.compose(step.step_event(replace_one))
    vector = acc.rdp  # a copy; 0 + 1 * v == v exactly, as the accountant adds it
    vector.setflags(write=False)
    return vector


@functools.lru_cache(maxsize=1024)
def _cached_epsilon(
    segments: tuple[Segment, ...], delta: float, accountant: str, grid: float
) -> float:
    """Epsilon of validated, non-empty, all-noisy ``segments`` (see :func:`compose_epsilon`)."""
    if accountant == "pld":
        total = pld_lib.identity(value_discretization_interval=grid)
        for seg in segments:
            total = total.compose(_segment_pld(seg, grid))
        return float(total.get_epsilon_for_delta(delta))
    total = np.zeros(len(RDP_ORDERS), dtype=np.float64)
    replace_one = any(s.sampling == "without_replacement" for s in segments)
    for seg in segments:
        total += seg.steps * _step_rdp(seg.step_key(), replace_one)
    return float(rdp_privacy_accountant.compute_epsilon(np.array(RDP_ORDERS), total, delta)[0])


_CACHES = {
    "step_pld": _step_pld,
    "segment_pld": _segment_pld,
    "step_rdp": _step_rdp,
    "epsilon": _cached_epsilon,
}


def clear_caches() -> None:
    """Empties every accounting cache (answers do not change, only their cost)."""
    for fn in _CACHES.values():
        fn.cache_clear()


def cache_info() -> dict[str, Any]:
    """``functools`` cache statistics (hits, misses, size) of each accounting cache."""
    return {name: fn.cache_info() for name, fn in _CACHES.items()}


def compose_epsilon(
    segments: Iterable[Segment], delta: float, accountant: str, grid: float
) -> float:
    """Epsilon at ``delta`` of the segments composed in one accountant (cached).

    Args:
      segments: the segments, in order (empty gives 0.0).
      delta: target delta in (0, 1).
      accountant: ``"pld"`` or ``"rdp"``.
      grid: PLD ``value_discretization_interval`` (validated, unused by RDP).

    Returns:
      The epsilon ``dp_accounting``'s accountant gives for the same events.

    Raises:
      ValueError: bad inputs, without-replacement segments with PLD, or mixed samplings.
    """
    segments = tuple(segments)
    delta = check_real("delta", delta, "(0, 1)")
    check_choice("accountant", accountant, ACCOUNTANTS)
    grid = check_real("value_discretization_interval", grid, "(0, 1]")
    samplings = {s.sampling for s in segments}
    if "without_replacement" in samplings:
        if accountant == "pld":
            raise ValueError(
                "sampling='without_replacement' (fixed-size batches) is not supported by "
                "dp_accounting's PLD accountant; use accountant='rdp' (it is never "
                "silently accounted as Poisson)"
            )
        sampled = [s for s in segments if s.sampling == "poisson" and s.sampling_rate < 1]
        if sampled:
            raise ValueError(
                f"cannot compose Poisson-sampled segments ({sampled[0]}) with "
                "'without_replacement' (replace-one neighbours) segments: dp_accounting has "
                "no replace-one accounting for Poisson sampling (unsampled q = 1 segments compose)"
            )
    if not segments:
        return 0.0
    if any(s.noise_multiplier == 0.0 for s in segments):
        return math.inf
    return _cached_epsilon(segments, delta, accountant, grid if accountant == "pld" else 0.0)


# ----------------------------------------------------------------------------- ledger
class PrivacyLedger:
    """Record of the DP steps taken, for epsilon at any time and for checkpoints.

    Consecutive records with identical parameters merge into one :class:`Segment`, so
    recording one step at a time stays small. Different segments (e.g. two-phase
    training) compose in one accountant. Epsilon queries share the module caches, so
    asking again (or after one more step) is cheap.

    Example:
      >>> ledger = PrivacyLedger()
      >>> for _ in range(100):
      ...     ledger.record(noise_multiplier=0.7, sampling_rate=0.02)
      >>> ledger.steps, len(ledger.segments)
      (100, 1)
      >>> ledger.epsilon(delta=1e-5) > 0
      True
    """

    _VERSION = 1

    def __init__(self, segments: Iterable[Segment] = ()) -> None:
        self._segments: list[Segment] = []
        for seg in segments:
            if not isinstance(seg, Segment):
                raise ValueError(f"segments must be Segment instances, got {seg!r}")
            self._append(seg)

    def _append(self, seg: Segment) -> None:
        last = self._segments[-1] if self._segments else None
        if last is not None and dataclasses.replace(last, steps=seg.steps) == seg:
            self._segments[-1] = dataclasses.replace(last, steps=last.steps + seg.steps)
        else:
            self._segments.append(seg)

    def record(
        self,
        steps: int = 1,
        *,
        noise_multiplier: float,
        sampling_rate: float,
        sampling: str = "poisson",
        dataset_size: int | None = None,
    ) -> None:
        """Records ``steps`` DP steps (validated like :func:`dpjax.accounting.epsilon`)."""
        self._append(Segment(noise_multiplier, sampling_rate, steps, sampling, dataset_size))

    @property
    def segments(self) -> tuple[Segment, ...]:
        """The merged segments, in order."""
        return tuple(self._segments)

    @property
    def steps(self) -> int:
        """Total number of recorded steps."""
        return sum(s.steps for s in self._segments)

    def epsilon(
        self,
        delta: float,
        *,
        accountant: str = "pld",
        value_discretization_interval: float = DEFAULT_PLD_GRID,
    ) -> float:
        """Epsilon at ``delta`` of all recorded steps composed (0.0 when empty)."""
        return compose_epsilon(self._segments, delta, accountant, value_discretization_interval)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable state; :meth:`from_dict` restores it exactly."""
        return {
            "version": self._VERSION,
            "segments": [dataclasses.asdict(s) for s in self._segments],
        }

    @classmethod
    def from_dict(cls, state: Any) -> PrivacyLedger:
        """Inverse of :meth:`to_dict`; raises ValueError on a malformed dict.

        States written before the rename say ``sampling="shuffle"``; they are read as
        ``"without_replacement"`` (the same event), so old checkpoints resume.
        """
        if not isinstance(state, dict) or set(state) != {"version", "segments"}:
            raise ValueError(
                f"ledger state must be a dict with keys 'version' and 'segments', got {state!r}"
            )
        if state["version"] != cls._VERSION:
            raise ValueError(f"unsupported ledger state version {state['version']!r}")
        if not isinstance(state["segments"], list):
            raise ValueError(f"ledger 'segments' must be a list, got {state['segments']!r}")
        fields = {f.name for f in dataclasses.fields(Segment)}
        segments = []
        for i, raw in enumerate(state["segments"]):
            if not isinstance(raw, dict) or set(raw) != fields:
                raise ValueError(
                    f"ledger segment {i} must be a dict with keys {sorted(fields)}, got {raw!r}"
                )
            if raw["sampling"] in RENAMED:  # written by an older version
                raw = {**raw, "sampling": RENAMED[raw["sampling"]]}
            segments.append(Segment(**raw))
        return cls(segments)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PrivacyLedger) and self._segments == other._segments

    def __repr__(self) -> str:
        return f"PrivacyLedger(steps={self.steps}, segments={self._segments!r})"
