"""Privacy accounting on ``dp_accounting`` events: epsilon, noise calibration, a ledger.

Every training step of DP-SGD / DP-Adam is one ``dp_accounting`` event; this module
builds the event that matches the sampler actually used, composes it and asks an
accountant for epsilon.

* ``sampling="poisson"``: every example joins each step's batch independently with
  probability ``q`` (:class:`dpjax.data.sampling.PoissonSampler`). Event:
  ``PoissonSampledDpEvent(q, GaussianDpEvent(sigma))``, add-or-remove-one neighbours.
  Supported by both accountants.
* ``sampling="shuffle"``: every step draws a fixed-size batch of ``m = round(q * n)``
  distinct examples uniformly without replacement, independently per step
  (:class:`dpjax.data.sampling.FixedSizeSampler`). Event:
  ``SampledWithoutReplacementDpEvent(n, m, GaussianDpEvent(sigma))``, which
  ``dp_accounting`` supports only in the RDP accountant with *replace-one* neighbours
  (a different, stronger neighbouring relation than add-or-remove: its epsilons are not
  comparable with Poisson ones). Epoch-permutation shuffling is neither of these and
  has no tight standard accounting: do not account it as either.

``accountant="pld"`` (default) is ``dp_accounting.pld.PLDAccountant`` (pessimistic
discretisation, grid ``value_discretization_interval``, default 1e-4);
``accountant="rdp"`` is ``dp_accounting.rdp.RdpAccountant`` with :data:`RDP_ORDERS`.
A noise multiplier of 0 is allowed and gives ``epsilon = inf``.

delta has no default anywhere: pick it explicitly, e.g. with :func:`delta_for`.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Iterable
from typing import Any

import dp_accounting
from dp_accounting import pld, rdp

__all__ = [
    "ACCOUNTANTS",
    "RDP_ORDERS",
    "SAMPLINGS",
    "PrivacyLedger",
    "Segment",
    "calibrate_noise_multiplier",
    "delta_for",
    "epsilon",
]

ACCOUNTANTS = ("pld", "rdp")
SAMPLINGS = ("poisson", "shuffle")
DEFAULT_PLD_GRID = 1e-4
#: Renyi orders of the RDP accountant: fine steps near 1, integers to 64, a sparse tail.
RDP_ORDERS: tuple[float, ...] = (
    tuple(1 + k / 10 for k in range(1, 100))
    + tuple(float(k) for k in range(11, 65))
    + (80.0, 96.0, 128.0, 192.0, 256.0, 512.0, 1024.0)
)
_SIGMA_MAX = 1e4  # calibration gives up above this noise multiplier
_SIGMA_MIN = 0.05  # ... and below this one (PLD support explodes as sigma -> 0)


# ----------------------------------------------------------------------------- checks
def _check_real(name: str, value: Any, interval: str | None = None) -> float:
    """A real number; ``interval`` is ``"(0, 1)"``, ``"(0, 1]"`` or ``"[0, inf)"``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(value):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    ok = {
        None: True,
        "(0, 1)": 0 < value < 1,
        "(0, 1]": 0 < value <= 1,
        "[0, inf)": 0 <= value < math.inf,
    }[interval]
    if not ok:
        raise ValueError(f"{name} must be in {interval}, got {value!r}")
    return float(value)


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def _sample_size(sampling_rate: float, dataset_size: int) -> int:
    """``round(q * n)`` for shuffle sampling; refuses a q that is not m / n for integer m."""
    exact = sampling_rate * dataset_size
    m = round(exact)
    if abs(exact - m) > 1e-6 * max(1.0, exact):
        raise ValueError(
            f"sampling='shuffle' needs sampling_rate = batch_size / dataset_size, but "
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
      sampling: ``"poisson"`` or ``"shuffle"`` (see the module docstring).
      dataset_size: n; required for ``"shuffle"``, optional (unused) for ``"poisson"``.
    """

    noise_multiplier: float
    sampling_rate: float
    steps: int
    sampling: str = "poisson"
    dataset_size: int | None = None

    def __post_init__(self) -> None:
        sigma = _check_real("noise_multiplier", self.noise_multiplier, "[0, inf)")
        q = _check_real("sampling_rate", self.sampling_rate, "(0, 1]")
        steps = _check_int("steps", self.steps, 1)
        _check_choice("sampling", self.sampling, SAMPLINGS)
        n = self.dataset_size
        if n is not None:
            n = _check_int("dataset_size", n, 1)
        elif self.sampling == "shuffle":
            raise ValueError(
                "sampling='shuffle' needs dataset_size (the number of training examples), "
                "got dataset_size=None"
            )
        if self.sampling == "shuffle":
            _sample_size(q, n)
        object.__setattr__(self, "noise_multiplier", sigma)
        object.__setattr__(self, "sampling_rate", q)
        object.__setattr__(self, "steps", steps)
        object.__setattr__(self, "dataset_size", n)

    def event(self) -> dp_accounting.DpEvent:
        """The ``dp_accounting`` event of this segment (all its steps)."""
        gaussian = dp_accounting.GaussianDpEvent(self.noise_multiplier)
        if self.sampling == "poisson":
            one = dp_accounting.PoissonSampledDpEvent(self.sampling_rate, gaussian)
        else:
            m = _sample_size(self.sampling_rate, self.dataset_size)
            one = dp_accounting.SampledWithoutReplacementDpEvent(self.dataset_size, m, gaussian)
        return dp_accounting.SelfComposedDpEvent(one, self.steps)


def _epsilon_of(segments: Iterable[Segment], delta: float, accountant: str, grid: float) -> float:
    """Composes the segments in one accountant and returns epsilon at ``delta``."""
    segments = tuple(segments)
    delta = _check_real("delta", delta, "(0, 1)")
    _check_choice("accountant", accountant, ACCOUNTANTS)
    grid = _check_real("value_discretization_interval", grid, "(0, 1]")
    samplings = {s.sampling for s in segments}
    if "shuffle" in samplings:
        if accountant == "pld":
            raise ValueError(
                "sampling='shuffle' (fixed-size batches without replacement) is not supported "
                "by dp_accounting's PLD accountant; use accountant='rdp' (it is never "
                "silently accounted as Poisson)"
            )
        if len(samplings) > 1:
            raise ValueError(
                "cannot compose 'poisson' (add-or-remove neighbours) with 'shuffle' "
                "(replace-one neighbours) segments in one accountant"
            )
    if any(s.noise_multiplier == 0.0 for s in segments):
        return math.inf
    if accountant == "pld":
        acc = pld.PLDAccountant(value_discretization_interval=grid)
    else:
        relation = dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE
        if samplings == {"shuffle"}:
            relation = dp_accounting.NeighboringRelation.REPLACE_ONE
        acc = rdp.RdpAccountant(orders=RDP_ORDERS, neighboring_relation=relation)
    for s in segments:
        acc.compose(s.event())
    return float(acc.get_epsilon(delta))


# ----------------------------------------------------------------------------- front doors
def epsilon(
    *,
    noise_multiplier: float,
    sampling_rate: float,
    steps: int,
    delta: float,
    accountant: str = "pld",
    sampling: str = "poisson",
    dataset_size: int | None = None,
    value_discretization_interval: float = DEFAULT_PLD_GRID,
) -> float:
    """Epsilon of ``steps`` sampled-Gaussian steps at ``delta``.

    Args:
      noise_multiplier: sigma >= 0 (noise std divided by the clip norm); 0 gives ``inf``.
      sampling_rate: q in (0, 1]: ``expected_batch_size / n`` (n = *training* set size).
      steps: number of steps (an integer >= 1).
      delta: target delta in (0, 1); no default, see :func:`delta_for`.
      accountant: ``"pld"`` (tight, default) or ``"rdp"``.
      sampling: ``"poisson"`` or ``"shuffle"`` (fixed-size batches drawn without
        replacement per step; RDP only, replace-one neighbours, needs ``dataset_size``).
      dataset_size: n, the training set size (required for ``"shuffle"``).
      value_discretization_interval: PLD grid (smaller = tighter and slower).

    Returns:
      epsilon (a float, ``math.inf`` for ``noise_multiplier == 0``).

    Example:
      >>> from dpjax import accounting
      >>> eps = accounting.epsilon(noise_multiplier=0.7, sampling_rate=1024 / 67349,
      ...                          steps=198, delta=accounting.delta_for(67349))
      >>> round(eps, 2)
      3.88
    """
    seg = Segment(noise_multiplier, sampling_rate, steps, sampling, dataset_size)
    return _epsilon_of([seg], delta, accountant, value_discretization_interval)


def delta_for(n: int, rule: str = "1/(2n)") -> float:
    """A conventional delta for a training set of ``n`` examples.

    ``rule="1/(2n)"`` gives ``1 / (2 n)`` (the DP-BiTFiT GLUE setting);
    ``rule="n^-1.1"`` gives ``n ** -1.1`` (Li et al.'s setting). Both are below ``1 / n``.

    Example:
      >>> delta_for(50000)
      1e-05
    """
    n = _check_int("n", n, 2)
    if rule == "1/(2n)":
        return 1.0 / (2 * n)
    if rule == "n^-1.1":
        return float(n) ** -1.1
    raise ValueError(f"rule must be one of ('1/(2n)', 'n^-1.1'), got {rule!r}")


def _root(eps_fn, target: float, lo: float, e_lo: float, hi: float, e_hi: float, tol: float):
    """Smallest sigma in (lo, hi] with eps <= target, given eps(lo) > target >= eps(hi).

    Illinois regula falsi on ``log eps - log target`` against ``log sigma`` (nearly linear,
    so a handful of evaluations), kept at least ``tol / 2`` inside the bracket so the
    bracket always shrinks to ``hi / lo <= 1 + tol``.
    """

    def f(e: float) -> float:
        return math.log(min(max(e, 1e-300), 1e300) / target)

    a, b, fa, fb = math.log(lo), math.log(hi), f(e_lo), f(e_hi)
    width, kept = math.log1p(tol), 0
    while b - a > width:
        c = min(max(b - fb * (b - a) / (fb - fa), a + width / 2), b - width / 2)
        fc = f(eps_fn(math.exp(c)))
        if fc <= 0:
            b, fb = c, fc
            fa, kept = (fa / 2 if kept == -1 else fa), -1
        else:
            a, fa = c, fc
            fb, kept = (fb / 2 if kept == 1 else fb), 1
    return math.exp(b)


def calibrate_noise_multiplier(
    *,
    target_epsilon: float,
    sampling_rate: float,
    steps: int,
    delta: float,
    accountant: str = "pld",
    sampling: str = "poisson",
    dataset_size: int | None = None,
    tolerance: float = 1e-3,
    value_discretization_interval: float = DEFAULT_PLD_GRID,
) -> float:
    """Smallest noise multiplier whose epsilon is ``<= target_epsilon`` (within tolerance).

    Brackets sigma by doubling / halving from 1, then narrows the bracket with a
    safeguarded regula falsi in log-log space (5-6 epsilon evaluations in typical
    settings). With PLD the search runs on a coarse grid (``min(1e-2, target / 500)``,
    never finer than the final grid; pessimistic, so it only overestimates epsilon), then
    the result is checked -- and if needed re-searched -- at
    ``value_discretization_interval``, so ``epsilon(sigma) <= target_epsilon`` holds at
    the accountant settings you will report with.

    Args:
      target_epsilon: the epsilon to reach, > 0.
      sampling_rate, steps, delta, accountant, sampling, dataset_size: as in
        :func:`epsilon`.
      tolerance: relative precision on sigma: the answer is at most ``1 + tolerance``
        times the smallest sigma found feasible by the search.
      value_discretization_interval: PLD grid of the final check.

    Returns:
      sigma with ``epsilon(noise_multiplier=sigma, ...) <= target_epsilon``.

    Raises:
      ValueError: bad inputs, or a target no sigma in [0.05, 1e4] reaches.

    Example:
      >>> from dpjax import accounting
      >>> sigma = accounting.calibrate_noise_multiplier(
      ...     target_epsilon=3.0, sampling_rate=1000 / 50000, steps=150, delta=1e-5)
      >>> accounting.epsilon(noise_multiplier=sigma, sampling_rate=1000 / 50000,
      ...                    steps=150, delta=1e-5) <= 3.0
      True
    """
    target = _check_real("target_epsilon", target_epsilon, "[0, inf)")
    if target == 0:
        raise ValueError(f"target_epsilon must be > 0, got {target_epsilon!r}")
    tol = _check_real("tolerance", tolerance, "(0, 1)")
    final_grid = _check_real(
        "value_discretization_interval", value_discretization_interval, "(0, 1]"
    )
    _check_choice("accountant", accountant, ACCOUNTANTS)
    Segment(1.0, sampling_rate, steps, sampling, dataset_size)  # validates the rest

    def eps_at(grid: float):
        def fn(sigma: float) -> float:
            seg = Segment(sigma, sampling_rate, steps, sampling, dataset_size)
            return _epsilon_of([seg], delta, accountant, grid)

        return fn

    search_grid = min(1e-2, max(target / 500, final_grid)) if accountant == "pld" else final_grid
    search, final = eps_at(search_grid), eps_at(final_grid)

    # Bracket: eps(lo) > target >= eps(hi), doubling / halving from sigma = 1.
    hi, e_hi = 1.0, search(1.0)
    while e_hi > target:
        if hi * 2 > _SIGMA_MAX:
            raise ValueError(
                f"target_epsilon={target!r} is unreachable: noise_multiplier={hi:g} still "
                f"gives epsilon={e_hi:.3g} at delta={delta!r}, q={sampling_rate!r}, "
                f"steps={steps!r}"
            )
        hi, e_hi = hi * 2, search(hi * 2)
    lo, e_lo = hi / 2, search(hi / 2)
    while e_lo <= target:
        if lo / 2 < _SIGMA_MIN:
            raise ValueError(
                f"target_epsilon={target!r} is so loose that noise_multiplier={lo:g} "
                "already reaches it; ask for a smaller epsilon"
            )
        hi, e_hi, lo, e_lo = lo, e_lo, lo / 2, search(lo / 2)
    sigma = _root(search, target, lo, e_lo, hi, e_hi, tol)
    if search_grid == final_grid:
        return sigma
    e_final = final(sigma)
    if e_final <= target:
        return sigma
    # The final grid is coarser than the search grid: re-bracket upwards and search on it.
    lo, e_lo, hi = sigma, e_final, sigma * (1 + tol)
    while (e_hi := final(hi)) > target:
        if hi * 2 > _SIGMA_MAX:
            raise ValueError(f"target_epsilon={target!r} is unreachable at this PLD grid")
        lo, e_lo, hi = hi, e_hi, hi * 2
    return _root(final, target, lo, e_lo, hi, e_hi, tol)


# ----------------------------------------------------------------------------- ledger
class PrivacyLedger:
    """Record of the DP steps taken, for epsilon at any time and for checkpoints.

    Consecutive records with identical parameters merge into one :class:`Segment`, so
    recording one step at a time stays small. Different segments (e.g. two-phase
    training) compose in one accountant.

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
        """Records ``steps`` DP steps (validated like :func:`epsilon`)."""
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
        return _epsilon_of(self._segments, delta, accountant, value_discretization_interval)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable state; :meth:`from_dict` restores it exactly."""
        return {
            "version": self._VERSION,
            "segments": [dataclasses.asdict(s) for s in self._segments],
        }

    @classmethod
    def from_dict(cls, state: Any) -> PrivacyLedger:
        """Inverse of :meth:`to_dict`; raises ValueError on a malformed dict."""
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
            segments.append(Segment(**raw))
        return cls(segments)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PrivacyLedger) and self._segments == other._segments

    def __repr__(self) -> str:
        return f"PrivacyLedger(steps={self.steps}, segments={self._segments!r})"
