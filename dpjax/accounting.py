"""Privacy accounting on ``dp_accounting`` events: epsilon, noise calibration, a ledger.

Every training step of DP-SGD / DP-Adam is one ``dp_accounting`` event; this module
builds the event that matches the sampler actually used, composes it and asks an
accountant for epsilon.

* ``sampling="poisson"``: every example joins each step's batch independently with
  probability ``q`` (:class:`dpjax.data.sampling.PoissonSampler`). Event:
  ``PoissonSampledDpEvent(q, GaussianDpEvent(sigma))``, add-or-remove-one neighbours.
  Supported by both accountants.
* ``sampling="without_replacement"``: every step draws a fixed-size batch of
  ``m = round(q * n)`` distinct examples uniformly without replacement, independently per
  step (:class:`dpjax.data.sampling.WithoutReplacementSampler`). Event:
  ``SampledWithoutReplacementDpEvent(n, m, GaussianDpEvent(sigma / 2))``, which
  ``dp_accounting`` supports only in the RDP accountant with *replace-one* neighbours
  (a different, stronger neighbouring relation than add-or-remove: its epsilons are not
  comparable with Poisson ones). The ``/ 2``: replacing one example moves the clipped
  sum by up to ``2 C``, and dp_accounting's RDP formulas take the noise relative to the
  query's sensitivity (google/differential-privacy issue 378). An unsampled Gaussian
  release (a ``Segment`` with ``q = 1``, e.g. a task's noisy feature mean) composes with
  such steps the same way; Poisson-sampled ones with ``q < 1`` cannot.
  Epoch-permutation shuffling is neither of these and has no tight standard accounting:
  do not account it as either.

``accountant="pld"`` (default) is ``dp_accounting.pld.PLDAccountant`` (pessimistic
discretisation, grid ``value_discretization_interval``, default 1e-4);
``accountant="rdp"`` is ``dp_accounting.rdp.RdpAccountant`` with :data:`RDP_ORDERS`.
A noise multiplier of 0 is allowed and gives ``epsilon = inf``.

:class:`Segment`, :class:`PrivacyLedger` and the composition itself live in
:mod:`dpjax.ledger` (re-exported here). Composition is cached -- one-step PLDs and RDP
vectors, self-composed segments, final epsilons -- with answers identical to
``dp_accounting``'s accountants; :func:`clear_caches` and :func:`cache_info` manage it.

delta has no default anywhere: pick it explicitly, e.g. with :func:`delta_for`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from dpjax.ledger import (
    DEFAULT_PLD_GRID,
    RDP_ORDERS,
    PrivacyLedger,
    Segment,
    cache_info,
    clear_caches,
    compose_epsilon,
)
from dpjax.validate import (
    ACCOUNTANTS,
    DELTA_RULES,
    SAMPLINGS,
    check_choice,
    check_int,
    check_real,
)

__all__ = [
    "ACCOUNTANTS",
    "DEFAULT_PLD_GRID",
    "RDP_ORDERS",
    "SAMPLINGS",
    "PrivacyLedger",
    "Segment",
    "cache_info",
    "calibrate_noise_multiplier",
    "calibrate_segments",
    "clear_caches",
    "delta_for",
    "epsilon",
    "joint_noise_multiplier",
    "step_segment",
]

_SIGMA_MAX = 1e4  # calibration gives up above this noise multiplier
_SIGMA_MIN = 0.05  # ... and below this one (PLD support explodes as sigma -> 0)


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
      sampling: ``"poisson"`` or ``"without_replacement"`` (fixed-size batches drawn
        without replacement per step; RDP only, replace-one neighbours, needs
        ``dataset_size``).
      dataset_size: n, the training set size (required for ``"without_replacement"``).
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
    return compose_epsilon([seg], delta, accountant, value_discretization_interval)


def delta_for(n: int, rule: str = "1/(2n)") -> float:
    """A conventional delta for a training set of ``n`` examples.

    ``rule="1/(2n)"`` gives ``1 / (2 n)`` (the DP-BiTFiT GLUE setting);
    ``rule="n^-1.1"`` gives ``n ** -1.1`` (Li et al.'s setting). Both are below ``1 / n``.

    Example:
      >>> delta_for(50000)
      1e-05
    """
    n = check_int("n", n, 2)
    if rule == "1/(2n)":
        return 1.0 / (2 * n)
    if rule == "n^-1.1":
        return float(n) ** -1.1
    raise ValueError(f"rule must be one of {DELTA_RULES}, got {rule!r}")


def _root(
    eps_fn: Callable[[float], float],
    target: float,
    lo: float,
    e_lo: float,
    hi: float,
    e_hi: float,
    tol: float,
) -> float:
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
    prior: Sequence[Segment] = (),
) -> float:
    """Smallest noise multiplier whose epsilon is ``<= target_epsilon`` (within tolerance).

    Brackets sigma by doubling / halving from 1, then narrows the bracket with a
    safeguarded regula falsi in log-log space (5-6 epsilon evaluations in typical
    settings). With PLD the search runs on a coarse grid (``min(1e-2, target / 500)``,
    never finer than the final grid; pessimistic, so it only overestimates epsilon), then
    the result is checked -- and if needed re-searched -- at
    ``value_discretization_interval``, so ``epsilon(sigma) <= target_epsilon`` holds at
    the accountant settings you will report with. Every evaluation goes through the
    accounting caches (:mod:`dpjax.ledger`), so the final check also leaves the one-step
    PLD of the answer cached: a ledger or a budget check at the calibrated sigma then
    skips its most expensive part, and repeating a calibration is nearly free.

    Args:
      target_epsilon: the epsilon to reach, > 0.
      sampling_rate, steps, delta, accountant, sampling, dataset_size: as in
        :func:`epsilon`.
      tolerance: relative precision on sigma: the answer is at most ``1 + tolerance``
        times the smallest sigma found feasible by the search.
      value_discretization_interval: PLD grid of the final check.
      prior: privacy already spent on the same data (e.g. a noisy statistic computed
        before training, see :class:`dpjax.training.Task`); the returned sigma makes the
        prior segments *and* the ``steps`` composed reach ``target_epsilon``.

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
    Segment(1.0, sampling_rate, steps, sampling, dataset_size)  # validates the rest
    prior = tuple(prior)
    for seg in prior:
        if not isinstance(seg, Segment):
            raise ValueError(f"prior must hold dpjax.accounting.Segment instances, got {seg!r}")

    def segments(sigma: float) -> list[Segment]:
        return [*prior, Segment(sigma, sampling_rate, steps, sampling, dataset_size)]

    return calibrate_segments(
        segments,
        target_epsilon=target_epsilon,
        delta=delta,
        accountant=accountant,
        tolerance=tolerance,
        value_discretization_interval=value_discretization_interval,
        fixed=prior,
        what=f"q={sampling_rate!r}, steps={steps!r}",
    )


def joint_noise_multiplier(noise_multiplier: float, *others: float) -> float:
    """Noise multiplier of several Gaussian releases of one sample, as one mechanism.

    Releasing ``sum_i g_i + N(0, (s C)^2)`` and ``sum_i l_i + N(0, (s_k L)^2)`` from the
    same sampled batch (``||g_i|| <= C``, ``|l_i| <= L``) is, after rescaling each by its
    noise std, one Gaussian mechanism of sensitivity ``sqrt(1/s^2 + sum_k 1/s_k^2)``
    with unit noise: noise multiplier ``(1/s^2 + sum_k 1/s_k^2) ** -0.5``.

    Example:
      >>> round(joint_noise_multiplier(1.0, 1.0), 4)
      0.7071
    """
    total = 0.0
    for s in (noise_multiplier, *others):
        s = check_real("noise_multiplier", s, "[0, inf)")
        if s == 0.0:
            return 0.0
        total += 1.0 / (s * s)
    return total**-0.5


def step_segment(
    noise_multiplier: float,
    sampling: Mapping[str, Any],
    *,
    steps: int = 1,
    loss_noise_multiplier: float | None = None,
) -> Segment:
    """The accounting segment of ``steps`` identical DP training steps.

    The one place a training step becomes an accounting event: calibration, the ledger
    and :class:`dpjax.Mechanism` all call it, so they cannot disagree.

    Args:
      noise_multiplier: sigma of the gradient's noise.
      sampling: ``sampler.accounting_kwargs()``: ``sampling_rate``, ``sampling`` and
        ``dataset_size``.
      steps: how many such steps.
      loss_noise_multiplier: ``s`` when each step also releases its clipped loss sum with
        noise; the step is then one joint Gaussian (:func:`joint_noise_multiplier`).

    Example:
      >>> step_segment(1.0, {"sampling_rate": 0.01}, steps=3).steps
      3
      >>> round(step_segment(1.0, {"sampling_rate": 0.01},
      ...                    loss_noise_multiplier=1.0).noise_multiplier, 4)
      0.7071
    """
    sigma = noise_multiplier
    if loss_noise_multiplier is not None:
        sigma = joint_noise_multiplier(noise_multiplier, loss_noise_multiplier)
    return Segment(sigma, steps=steps, **dict(sampling))


def calibrate_segments(
    segments: Callable[[float], Sequence[Segment]],
    *,
    target_epsilon: float,
    delta: float,
    accountant: str = "pld",
    tolerance: float = 1e-3,
    value_discretization_interval: float = DEFAULT_PLD_GRID,
    fixed: Sequence[Segment] = (),
    what: str = "",
) -> float:
    """Smallest sigma whose ``segments(sigma)`` compose to ``<= target_epsilon``.

    The general form of :func:`calibrate_noise_multiplier` (see it for the search), for
    runs whose steps are not all alike: e.g. a trainer that also releases a noisy loss
    on some steps records those with :func:`joint_noise_multiplier`.

    Args:
      segments: ``sigma -> [Segment, ...]``, every noisy segment of the run; epsilon must
        decrease as sigma grows.
      target_epsilon, delta, accountant, tolerance, value_discretization_interval: as in
        :func:`calibrate_noise_multiplier`.
      fixed: the segments that do not depend on sigma (checked first: they alone must
        stay below the target).
      what: the run's sampling described in error messages.

    Raises:
      ValueError: bad inputs, or a target no sigma in [0.05, 1e4] reaches.
    """
    target = check_real("target_epsilon", target_epsilon, "[0, inf)")
    if target == 0:
        raise ValueError(f"target_epsilon must be > 0, got {target_epsilon!r}")
    tol = check_real("tolerance", tolerance, "(0, 1)")
    final_grid = check_real(
        "value_discretization_interval", value_discretization_interval, "(0, 1]"
    )
    check_choice("accountant", accountant, ACCOUNTANTS)
    fixed = tuple(fixed)
    if fixed and compose_epsilon(fixed, delta, accountant, final_grid) >= target:
        raise ValueError(
            f"target_epsilon={target!r} is unreachable: the prior segments {fixed} alone "
            f"spend epsilon={compose_epsilon(fixed, delta, accountant, final_grid):.4g}"
        )

    def eps_at(grid: float) -> Callable[[float], float]:
        def fn(sigma: float) -> float:
            return compose_epsilon(segments(sigma), delta, accountant, grid)

        return fn

    search_grid = min(1e-2, max(target / 500, final_grid)) if accountant == "pld" else final_grid
    search, final = eps_at(search_grid), eps_at(final_grid)

    # Bracket: eps(lo) > target >= eps(hi), doubling / halving from sigma = 1.
    hi, e_hi = 1.0, search(1.0)
    while e_hi > target:
        if hi * 2 > _SIGMA_MAX:
            raise ValueError(
                f"target_epsilon={target!r} is unreachable: noise_multiplier={hi:g} still "
                f"gives epsilon={e_hi:.3g} at delta={delta!r}, {what}"
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
