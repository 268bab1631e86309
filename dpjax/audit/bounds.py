"""Confidence bounds behind empirical privacy audits (numpy/scipy only).

An audit runs a mechanism on neighbouring inputs, records how well an attack tells them apart
and turns the observed error counts into a statistically valid *lower* bound on the privacy
parameters: "with confidence ``1 - alpha`` the mechanism is not ``(eps', delta)``-DP for any
``eps'`` below the returned value".

Hypothesis-testing view. For an ``(eps, delta)``-DP mechanism every test between neighbouring
inputs has rates with ``FPR + e^eps FNR >= 1 - delta`` and ``FNR + e^eps FPR >= 1 - delta``
(Kairouz, Oh & Viswanath 2015), so upper confidence bounds on FPR and FNR (one-sided
Clopper-Pearson, :func:`clopper_pearson`) give :func:`epsilon_lower_bound_from_rates`.
For mu-Gaussian DP (Dong, Roth & Su 2019) every test has ``FNR >= Phi(Phi^-1(1 - FPR) - mu)``,
hence ``mu >= Phi^-1(1 - FPR) - Phi^-1(FNR)``; the right side decreases in both rates, so
plugging in upper bounds gives :func:`gdp_mu_lower_bound`. mu-GDP is equivalent to the family
of ``(eps, delta(eps))``-DP guarantees with
``delta(eps) = Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2)`` (:func:`gdp_delta`,
inverted by :func:`gdp_epsilon`).

One-run audit (Steinke, Nasr & Jagielski, "Privacy auditing with one (1) training run",
NeurIPS 2023, arXiv:2305.08846). ``m`` canaries are each included independently with
probability 1/2; after one run the auditor guesses inclusion for ``r`` of them (abstaining on
the rest) and ``v`` guesses are right. Under ``eps``-DP the count of right guesses is
stochastically dominated by ``Binomial(r, q)`` with ``q = e^eps / (1 + e^eps)``; their main
theorem (Theorem 3.1) extends this to ``delta > 0`` with an additive term, see
:func:`one_run_tail_bound`. A small tail bound at a hypothesised ``eps`` rejects it
(:func:`one_run_epsilon_lower_bound`).
"""

from __future__ import annotations

import math
import operator

import numpy as np
from scipy import optimize, special, stats

__all__ = [
    "clopper_pearson",
    "epsilon_lower_bound_from_rates",
    "gdp_delta",
    "gdp_epsilon",
    "gdp_mu_lower_bound",
    "one_run_epsilon_lower_bound",
    "one_run_tail_bound",
]


def _count(name: str, value: int, low: int = 0) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    try:
        out = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None
    if out < low:
        raise ValueError(f"{name} must be >= {low}, got {value!r}")
    return out


def _in_range(name: str, value: float, low: float, high: float, open_ends: bool = False) -> float:
    x = float(value)
    ok = (low < x < high) if open_ends else (low <= x <= high)
    if not ok:  # also rejects NaN
        brackets = f"({low}, {high})" if open_ends else f"[{low}, {high}]"
        raise ValueError(f"{name} must lie in {brackets}, got {value!r}")
    return x


def clopper_pearson(successes: int, trials: int, alpha: float) -> tuple[float, float]:
    """One-sided exact (Clopper-Pearson) confidence bounds on a binomial proportion.

    ``lower`` is the ``alpha`` quantile of ``Beta(k, n - k + 1)`` (0 when ``k = 0``) and
    ``upper`` the ``1 - alpha`` quantile of ``Beta(k + 1, n - k)`` (1 when ``k = n``). Each
    is a one-sided ``1 - alpha`` bound on its own: ``P[p <= upper] >= 1 - alpha`` and
    ``P[p >= lower] >= 1 - alpha``; together they form a two-sided ``1 - 2 alpha`` interval.

    Args:
        successes: Observed successes ``k``, ``0 <= k <= trials``.
        trials: Number of trials ``n >= 1``.
        alpha: Error level of each one-sided bound, in (0, 1).

    Returns:
        ``(lower, upper)``.

    Raises:
        ValueError: On counts out of range or ``alpha`` outside (0, 1).

    >>> lo, hi = clopper_pearson(0, 10, 0.05)
    >>> lo, round(hi, 4)
    (0.0, 0.2589)
    """
    n = _count("trials", trials, low=1)
    k = _count("successes", successes)
    if k > n:
        raise ValueError(f"successes must be <= trials={n}, got {successes!r}")
    a = _in_range("alpha", alpha, 0.0, 1.0, open_ends=True)
    lower = 0.0 if k == 0 else float(stats.beta.ppf(a, k, n - k + 1))
    upper = 1.0 if k == n else float(stats.beta.isf(a, k + 1, n - k))
    return lower, upper


def gdp_mu_lower_bound(
    false_positives: int, negatives: int, false_negatives: int, positives: int, alpha: float
) -> float:
    """A ``1 - alpha`` lower confidence bound on the Gaussian-DP parameter ``mu``.

    The attack is one threshold test, fixed before the data are seen, applied to ``negatives``
    outputs from one input and ``positives`` outputs from its neighbour. With ``FPR_ub`` and
    ``FNR_ub`` one-sided Clopper-Pearson upper bounds at level ``alpha / 2`` each (Bonferroni),
    ``mu_lb = max(0, Phi^-1(1 - FPR_ub) - Phi^-1(FNR_ub))``: if the mechanism is mu-GDP then
    ``mu >= Phi^-1(1 - FPR) - Phi^-1(FNR) >= mu_lb`` whenever both rate bounds hold.

    Args:
        false_positives: Negatives the test flagged.
        negatives: Number of negative trials (>= 1).
        false_negatives: Positives the test missed.
        positives: Number of positive trials (>= 1).
        alpha: Total error level in (0, 1).

    Returns:
        The lower bound, 0.0 when the data are not informative.

    >>> round(gdp_mu_lower_bound(300, 1000, 300, 1000, 0.05), 3)
    0.883
    """
    a = _in_range("alpha", alpha, 0.0, 1.0, open_ends=True)
    fpr_ub = clopper_pearson(false_positives, negatives, a / 2)[1]
    fnr_ub = clopper_pearson(false_negatives, positives, a / 2)[1]
    mu = -special.ndtri(fpr_ub) - special.ndtri(fnr_ub)  # Phi^-1(1-x) = -Phi^-1(x)
    return float(mu) if mu > 0 else 0.0


def _gdp_log_delta(mu: float, epsilon: float) -> float:
    """log of delta(eps) for mu-GDP, with 0 < mu < inf and 0 <= eps < inf."""
    log_a = special.log_ndtr(-epsilon / mu + mu / 2)
    log_b = epsilon + special.log_ndtr(-epsilon / mu - mu / 2)
    diff = log_b - log_a  # < 0 in exact arithmetic
    if diff >= 0:
        return -math.inf
    return float(log_a + np.log(-np.expm1(diff)))


def gdp_delta(mu: float, epsilon: float) -> float:
    """The ``delta`` at which ``mu``-GDP implies ``(epsilon, delta)``-DP (tight).

    ``delta(eps) = Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2)`` (Dong, Roth & Su,
    Corollary 2.13), evaluated in log space so it stays accurate for large ``mu`` and ``eps``.

    Args:
        mu: GDP parameter, ``>= 0`` (``inf`` allowed).
        epsilon: ``>= 0`` (``inf`` allowed).

    Returns:
        ``delta`` in [0, 1].

    >>> round(gdp_delta(1.0, 1.0), 6)
    0.126937
    """
    mu = _in_range("mu", mu, 0.0, math.inf)
    eps = _in_range("epsilon", epsilon, 0.0, math.inf)
    if mu == 0.0 or eps == math.inf:
        return 0.0
    if mu == math.inf:
        return 1.0
    return min(1.0, max(0.0, math.exp(_gdp_log_delta(mu, eps))))


def gdp_epsilon(mu: float, delta: float) -> float:
    """The smallest ``epsilon`` with ``gdp_delta(mu, epsilon) <= delta``.

    ``delta(eps)`` decreases in ``eps``; the root of ``log delta(eps) = log delta`` is found
    by Brent's method after bracketing by doubling.

    Args:
        mu: GDP parameter, ``>= 0`` (``inf`` allowed).
        delta: Target in [0, 1].

    Returns:
        0.0 when ``delta >= delta(0)`` (or ``mu = 0``); ``inf`` when no finite ``epsilon``
        works (``mu = inf`` with ``delta < 1``, or ``delta = 0`` with ``mu > 0``).

    >>> round(gdp_epsilon(1.0, gdp_delta(1.0, 2.0)), 8)
    2.0
    """
    mu = _in_range("mu", mu, 0.0, math.inf)
    d = _in_range("delta", delta, 0.0, 1.0)
    if mu == 0.0 or d >= gdp_delta(mu, 0.0):
        return 0.0
    if mu == math.inf or d == 0.0:
        return math.inf
    target = math.log(d)

    def gap(eps: float) -> float:
        return _gdp_log_delta(mu, eps) - target

    hi = max(1.0, mu * mu)
    while gap(hi) > 0:
        hi *= 2.0
    return float(optimize.brentq(gap, 0.0, hi, xtol=1e-13, rtol=1e-14, maxiter=500))


def epsilon_lower_bound_from_rates(fpr_upper: float, fnr_upper: float, delta: float) -> float:
    """The ``epsilon`` lower bound implied by error-rate upper bounds of one test.

    Any ``(eps, delta)``-DP mechanism satisfies ``FPR + e^eps FNR >= 1 - delta`` and
    ``FNR + e^eps FPR >= 1 - delta``, so
    ``eps >= max(0, log((1 - delta - FPR) / FNR), log((1 - delta - FNR) / FPR))``; both
    right sides decrease in the rates, so upper bounds on the rates keep it valid. A term with
    a non-positive numerator contributes 0; one with a zero rate and positive numerator is
    ``inf`` (no finite ``eps`` is consistent).

    Args:
        fpr_upper: Upper bound on the false-positive rate, in [0, 1].
        fnr_upper: Upper bound on the false-negative rate, in [0, 1].
        delta: The ``delta`` of the hypothesis, in [0, 1].

    Returns:
        The lower bound on ``epsilon`` (``>= 0``, possibly ``inf``).

    >>> round(epsilon_lower_bound_from_rates(0.1, 0.2, 0.0), 6)  # log(0.8 / 0.1)
    2.079442
    """
    fpr = _in_range("fpr_upper", fpr_upper, 0.0, 1.0)
    fnr = _in_range("fnr_upper", fnr_upper, 0.0, 1.0)
    d = _in_range("delta", delta, 0.0, 1.0)
    best = 0.0
    for numerator, rate in ((1.0 - d - fpr, fnr), (1.0 - d - fnr, fpr)):
        if numerator <= 0.0:
            continue
        best = max(best, math.inf if rate == 0.0 else math.log(numerator / rate))
    return best


def _one_run_args(m: int, r: int, v: int, delta: float) -> tuple[int, int, int, float]:
    m = _count("m", m, low=1)
    r = _count("r", r)
    v = _count("v", v)
    if r > m:
        raise ValueError(f"r must be <= m={m}, got {r!r}")
    if v > r:
        raise ValueError(f"v must be <= r={r}, got {v!r}")
    return m, r, v, _in_range("delta", delta, 0.0, 1.0)


def one_run_tail_bound(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """Upper bound on ``P[#correct >= v]`` in the one-run audit game under ``(eps, delta)``-DP.

    With ``q = e^eps / (1 + e^eps)`` and ``f(k) = P[Binomial(r, q) >= k]`` (``f(k) = 1`` for
    ``k <= 0``) this is Theorem 3.1 of Steinke, Nasr & Jagielski (arXiv:2305.08846)::

        P[W >= v] <= f(v) + 2 m delta * max_{i = 1..m} (f(v - i) - f(v)) / i,

    capped at 1. For ``delta = 0`` it is exactly the binomial tail ``f(v)``. Terms with
    ``i > v`` never win the max (numerator stays ``1 - f(v)``), so ``i`` runs over ``1..v``.
    The bound increases in ``epsilon`` and decreases in ``v`` whenever ``2 m delta <= 1``
    (each term is then a nonnegative mix of increasing tails); for larger ``2 m delta`` it
    can dip as ``epsilon`` grows, which :func:`one_run_epsilon_lower_bound` tolerates.

    Args:
        m: Number of canaries (>= 1), each included with probability 1/2.
        r: Number of guesses made, ``r <= m``.
        v: Number of correct guesses, ``v <= r``.
        epsilon: Hypothesised ``epsilon >= 0`` (``inf`` allowed).
        delta: Hypothesised ``delta`` in [0, 1].

    Returns:
        The bound, a p-value for the hypothesis "the mechanism is (epsilon, delta)-DP".

    >>> round(one_run_tail_bound(100, 100, 100, 0.0, 0.0) * 2**100, 6)
    1.0
    """
    m, r, v, d = _one_run_args(m, r, v, delta)
    eps = _in_range("epsilon", epsilon, 0.0, math.inf)
    if v == 0:
        return 1.0
    q = float(special.expit(eps))
    tail = float(stats.binom.sf(v - 1, r, q))
    if d == 0.0 or tail >= 1.0:
        return min(tail, 1.0)
    # cum[i - 1] = P[v - i <= B <= v - 1] = f(v - i) - f(v), for i = 1..v
    cum = np.cumsum(stats.binom.pmf(np.arange(v - 1, -1, -1), r, q))
    slope = float(np.max(cum / np.arange(1, v + 1)))
    return min(1.0, tail + 2.0 * m * d * slope)


def one_run_epsilon_lower_bound(m: int, r: int, v: int, delta: float, alpha: float) -> float:
    """A ``1 - alpha`` lower confidence bound on ``epsilon`` from one one-run audit.

    Returns (up to 1e-10) the largest ``eps`` with ``one_run_tail_bound(m, r, v, eps, delta)
    <= alpha``, found by bisection, and 0.0 when even ``eps = 0`` is not rejected. This is
    valid even where the tail bound is not monotone: an ``(eps', delta)``-DP mechanism with
    ``eps' <= eps`` is also ``(eps, delta)``-DP, so a rejection at ``eps`` rejects all
    ``eps' <= eps``. The bisection keeps the invariant ``tail(lo) <= alpha``.

    Args:
        m: Number of canaries (>= 1).
        r: Number of guesses, ``r <= m``.
        v: Number of correct guesses, ``v <= r``.
        delta: The ``delta`` of the hypotheses, in [0, 1].
        alpha: Significance level in (0, 1).

    Returns:
        The lower bound on ``epsilon`` (``>= 0``).

    >>> p = 0.05 ** (1 / 100)
    >>> abs(one_run_epsilon_lower_bound(100, 100, 100, 0.0, 0.05) - math.log(p / (1 - p))) < 1e-8
    True
    """
    m, r, v, d = _one_run_args(m, r, v, delta)
    a = _in_range("alpha", alpha, 0.0, 1.0, open_ends=True)

    def rejected(eps: float) -> bool:
        return one_run_tail_bound(m, r, v, eps, d) <= a

    if not rejected(0.0):
        return 0.0
    lo, hi = 0.0, 1.0
    while rejected(hi):  # terminates: the bound tends to 1 > alpha as eps grows
        lo, hi = hi, 2.0 * hi
    while hi - lo > 1e-10 * max(1.0, lo):
        mid = 0.5 * (lo + hi)
        if rejected(mid):
            lo = mid
        else:
            hi = mid
    return lo
