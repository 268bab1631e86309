"""dpjax.audit.bounds against independent oracles: scipy, dp_accounting, mpmath, hand values
and simulation."""

import functools
import math

import numpy as np
import pytest
from scipy import special, stats

from dpjax.audit.bounds import (
    clopper_pearson,
    epsilon_lower_bound_from_rates,
    gdp_delta,
    gdp_epsilon,
    gdp_mu_lower_bound,
    one_run_epsilon_lower_bound,
    one_run_tail_bound,
)

# --- Clopper-Pearson -------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.005, 0.05, 0.2])
@pytest.mark.parametrize("k,n", [(0, 1), (1, 1), (0, 10), (3, 10), (10, 10), (7, 50), (999, 1000)])
def test_clopper_pearson_matches_scipy_exact_interval(k, n, alpha):
    # One-sided level alpha on each side == scipy's two-sided exact interval at 1 - 2 alpha.
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=1 - 2 * alpha, method="exact")
    lower, upper = clopper_pearson(k, n, alpha)
    assert lower == pytest.approx(ci.low, abs=1e-12)
    assert upper == pytest.approx(ci.high, abs=1e-12)


@pytest.mark.parametrize("n", [1, 7, 100])
def test_clopper_pearson_edges_hand_computed(n):
    alpha = 0.05
    assert clopper_pearson(0, n, alpha) == pytest.approx((0.0, 1 - alpha ** (1 / n)), abs=1e-14)
    assert clopper_pearson(n, n, alpha) == pytest.approx((alpha ** (1 / n), 1.0), abs=1e-14)


def test_clopper_pearson_coverage():
    alpha, n = 0.05, 40
    rng = np.random.default_rng(0)
    for p in (0.02, 0.3, 0.5, 0.9):
        ks = rng.binomial(n, p, size=1000)
        bounds = {k: clopper_pearson(int(k), n, alpha) for k in np.unique(ks)}
        assert np.mean([bounds[k][1] >= p for k in ks]) >= 1 - alpha - 0.02
        assert np.mean([bounds[k][0] <= p for k in ks]) >= 1 - alpha - 0.02
    # Exact coverage (enumerating k) is >= 1 - alpha for every p, not just on average.
    table = [clopper_pearson(k, n, alpha) for k in range(n + 1)]
    for p in np.linspace(0.001, 0.999, 97):
        pmf = stats.binom.pmf(np.arange(n + 1), n, p)
        assert pmf @ np.array([hi >= p for _, hi in table]) >= 1 - alpha - 1e-12
        assert pmf @ np.array([lo <= p for lo, _ in table]) >= 1 - alpha - 1e-12


@pytest.mark.parametrize(
    "args,name",
    [
        ((-1, 10, 0.05), "successes"),
        ((11, 10, 0.05), "successes"),
        ((1, 0, 0.05), "trials"),
        ((1.5, 10, 0.05), "successes"),
        ((1, 10, 0.0), "alpha"),
        ((1, 10, 1.0), "alpha"),
        ((1, 10, float("nan")), "alpha"),
    ],
)
def test_clopper_pearson_rejects_bad_input(args, name):
    with pytest.raises(ValueError, match=name):
        clopper_pearson(*args)


# --- Gaussian DP -----------------------------------------------------------------------------


@pytest.mark.parametrize("mu", [0.3, 1.0, 2.0, 5.0])
def test_gdp_delta_matches_dp_accounting_gaussian_mechanism(mu):
    from dp_accounting.pld import privacy_loss_distribution as pld

    mech = pld.from_gaussian_mechanism(
        standard_deviation=1 / mu, sensitivity=1, value_discretization_interval=1e-4
    )
    for eps in (0.0, 0.5, 1.0, 3.0, 8.0):
        assert gdp_delta(mu, eps) == pytest.approx(mech.get_delta_for_epsilon(eps), abs=1e-4)
    for delta in (1e-2, 1e-5):
        assert gdp_epsilon(mu, delta) == pytest.approx(mech.get_epsilon_for_delta(delta), abs=2e-3)


def test_gdp_delta_large_mu_matches_mpmath():
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 60
    for mu, eps in ((40.0, 500.0), (40.0, 1200.0), (10.0, 120.0), (0.05, 0.3)):
        m, e = mpmath.mpf(mu), mpmath.mpf(eps)
        exact = mpmath.ncdf(-e / m + m / 2) - mpmath.exp(e) * mpmath.ncdf(-e / m - m / 2)
        assert gdp_delta(mu, eps) == pytest.approx(float(exact), rel=1e-6)
        assert gdp_delta(mu, eps) > 0


@pytest.mark.parametrize("mu", [0.05, 0.5, 1.0, 3.0, 20.0, 60.0])
def test_gdp_epsilon_inverts_gdp_delta(mu):
    for eps in (0.01, 0.5, 2.0, 10.0, 100.0):
        delta = gdp_delta(mu, eps)
        if delta < 1e-300 or delta > 1 - 1e-6:  # not resolvable in double precision
            continue
        assert gdp_epsilon(mu, delta) == pytest.approx(eps, rel=1e-6, abs=1e-9)
    assert gdp_epsilon(mu, gdp_delta(mu, 0.0)) == 0.0
    assert gdp_epsilon(mu, min(1.0, gdp_delta(mu, 0.0) + 1e-3)) == 0.0
    assert gdp_epsilon(mu, 0.0) == math.inf


def test_gdp_edge_cases():
    assert gdp_delta(0.0, 1.0) == 0.0
    assert gdp_delta(math.inf, 5.0) == 1.0
    assert gdp_delta(1.0, math.inf) == 0.0
    assert gdp_delta(1.0, 0.0) == pytest.approx(2 * stats.norm.cdf(0.5) - 1, abs=1e-15)
    assert gdp_epsilon(math.inf, 1e-5) == math.inf
    assert gdp_epsilon(0.0, 1e-5) == 0.0
    for bad in (lambda: gdp_delta(-1.0, 1.0), lambda: gdp_epsilon(1.0, 1.5)):
        with pytest.raises(ValueError):
            bad()
    with pytest.raises(ValueError, match="epsilon"):
        gdp_delta(1.0, -0.1)


def test_gdp_monotonicity():
    eps_grid = np.linspace(0.0, 12.0, 60)
    for mu in (0.5, 1.0, 4.0):
        deltas = [gdp_delta(mu, e) for e in eps_grid]
        assert np.all(np.diff(deltas) <= 0)
    mus = np.linspace(0.1, 6.0, 40)
    assert np.all(np.diff([gdp_delta(m, 1.0) for m in mus]) >= 0)
    assert np.all(np.diff([gdp_epsilon(m, 1e-5) for m in mus]) > 0)
    assert np.all(np.diff([gdp_epsilon(2.0, d) for d in np.logspace(-12, -1, 30)]) < 0)


def _threshold_counts(rng, mu, n):
    """Threshold test at mu / 2 on n draws each of N(0, 1) (negatives) and N(mu, 1)."""
    negatives = rng.normal(0.0, 1.0, size=n)
    positives = rng.normal(mu, 1.0, size=n)
    return int(np.sum(negatives > mu / 2)), n, int(np.sum(positives <= mu / 2)), n


def test_gdp_mu_lower_bound_hand_values():
    n, alpha = 50, 0.05
    expected = 2 * stats.norm.ppf((alpha / 2) ** (1 / n))  # no errors at all
    assert gdp_mu_lower_bound(0, n, 0, n, alpha) == pytest.approx(expected, abs=1e-12)
    assert gdp_mu_lower_bound(25, 50, 25, 50, alpha) == 0.0  # coin-flip attack
    assert gdp_mu_lower_bound(50, 50, 50, 50, alpha) == 0.0
    with pytest.raises(ValueError, match="alpha"):
        gdp_mu_lower_bound(1, 10, 1, 10, 1.5)


def test_gdp_mu_lower_bound_coverage():
    rng = np.random.default_rng(1)
    mu, alpha = 1.0, 0.05
    lbs = [gdp_mu_lower_bound(*_threshold_counts(rng, mu, 2000), alpha) for _ in range(300)]
    assert np.mean(np.array(lbs) <= mu) >= 1 - alpha - 0.02
    assert np.median(lbs) > 0.8  # and it is not trivially 0


def test_gdp_mu_lower_bound_tight_for_large_samples():
    rng = np.random.default_rng(2)
    lb = gdp_mu_lower_bound(*_threshold_counts(rng, 1.0, 1_000_000), 0.05)
    assert 0.97 < lb <= 1.0


def test_gdp_mu_lower_bound_has_power():
    # Data from a 2-GDP mechanism refute the claim that it is 1.5-GDP.
    rng = np.random.default_rng(3)
    assert gdp_mu_lower_bound(*_threshold_counts(rng, 2.0, 20_000), 0.05) > 1.5


# --- rates -> epsilon ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fpr,fnr,delta,expected",
    [
        (0.1, 0.2, 0.0, math.log(8.0)),  # max(log(0.9/0.2), log(0.8/0.1))
        (0.1, 0.2, 0.1, math.log(7.0)),  # max(log(0.8/0.2), log(0.7/0.1))
        (0.2, 0.1, 0.0, math.log(8.0)),  # symmetric
        (0.5, 0.5, 0.0, 0.0),
        (0.6, 0.6, 0.0, 0.0),  # negative logs clip to 0
        (0.0, 0.5, 0.0, math.inf),  # (1 - 0.5) / 0
        (1.0, 0.0, 0.0, 0.0),  # both numerators are 0
        (0.0, 0.0, 0.0, math.inf),
        (0.0, 0.95, 0.05, 0.0),  # numerator 1 - 0.05 - 0.95 = 0 over rate 0
        (0.01, 0.01, 1e-3, math.log(0.989 / 0.01)),
    ],
)
def test_epsilon_lower_bound_from_rates_hand_values(fpr, fnr, delta, expected):
    assert epsilon_lower_bound_from_rates(fpr, fnr, delta) == pytest.approx(expected, abs=1e-12)


def test_epsilon_lower_bound_from_rates_rejects_bad_input():
    cases = (((1.2, 0.1, 0.0), "fpr"), ((0.1, -0.1, 0.0), "fnr"), ((0.1, 0.1, 2), "delta"))
    for args, name in cases:
        with pytest.raises(ValueError, match=name):
            epsilon_lower_bound_from_rates(*args)


# --- one-run audit ---------------------------------------------------------------------------


def test_one_run_delta_zero_is_binomial_tail():
    for m, r in ((10, 10), (100, 40), (1000, 1000)):
        for eps in (0.0, 0.3, 1.0, 4.0):
            q = math.exp(eps) / (1 + math.exp(eps))
            for v in np.unique(np.linspace(0, r, 9).astype(int)):
                expected = stats.binom.sf(v - 1, r, q)
                got = one_run_tail_bound(m, r, int(v), eps, 0.0)
                assert got == pytest.approx(expected, rel=1e-10, abs=1e-300)


def test_one_run_delta_term_hand_values():
    eps, delta = 1.0, 1e-3
    q = math.exp(eps) / (1 + math.exp(eps))
    # m = r = v = 1: f(1) = q, max_i (f(1 - i) - f(1)) / i = 1 - q.
    assert one_run_tail_bound(1, 1, 1, eps, delta) == pytest.approx(q + 2 * delta * (1 - q))
    # m = 10, r = v = 2: f(2) = q^2, i = 1: 2q(1 - q), i = 2: (1 - q^2) / 2.
    slope = max(2 * q * (1 - q), (1 - q * q) / 2)
    assert one_run_tail_bound(10, 2, 2, eps, delta) == pytest.approx(q * q + 20 * delta * slope)
    assert one_run_tail_bound(10, 2, 2, eps, 0.5) == 1.0  # capped


def test_one_run_bound_covers_an_achievable_mechanism():
    # Independent randomized response with accuracy q + delta (1 - q) on each canary is
    # (eps, delta)-DP; a valid bound must be at least its exact tail.
    for m in (1, 5, 100):
        for eps in (0.0, 1.0, 3.0):
            for delta in (1e-4, 1e-2, 0.2):
                q = special.expit(eps)
                acc = q + delta * (1 - q)
                for r in sorted({1, m // 2 or 1, m}):
                    for v in range(r + 1):
                        achieved = stats.binom.sf(v - 1, r, acc)
                        assert one_run_tail_bound(m, r, v, eps, delta) >= achieved - 1e-12


def test_one_run_tail_bound_monotone():
    m, r = 1000, 300
    eps_grid = np.linspace(0.0, 4.0, 41)
    for delta in (0.0, 1e-6, 4e-4):  # 2 m delta <= 1
        for v in (150, 200, 260):
            tails = [one_run_tail_bound(m, r, v, e, delta) for e in eps_grid]
            assert np.all(np.diff(tails) >= -1e-15)
        for eps in (0.5, 2.0):
            tails = [one_run_tail_bound(m, r, v, eps, delta) for v in range(0, r + 1, 10)]
            assert np.all(np.diff(tails) <= 1e-15)
    for eps in (0.5, 2.0):
        for v in (160, 250):
            by_delta = [one_run_tail_bound(m, r, v, eps, d) for d in (0.0, 1e-7, 1e-5, 1e-3)]
            assert np.all(np.diff(by_delta) >= 0)
            if by_delta[0] < 0.9:
                assert by_delta[1] > by_delta[0]


def test_one_run_epsilon_all_correct_hand_value():
    p = 0.05 ** (1 / 100)  # P[Binomial(100, p) = 100] = p^100 = 0.05
    got = one_run_epsilon_lower_bound(100, 100, 100, 0.0, 0.05)
    assert got == pytest.approx(math.log(p / (1 - p)), abs=1e-8)


def test_one_run_epsilon_lower_bound_properties():
    m, r, v, alpha = 1000, 500, 400, 0.05
    for delta in (0.0, 1e-5):
        eps = one_run_epsilon_lower_bound(m, r, v, delta, alpha)
        assert one_run_tail_bound(m, r, v, eps, delta) <= alpha
        assert one_run_tail_bound(m, r, v, eps + 1e-6, delta) > alpha
    assert one_run_epsilon_lower_bound(m, r, v, 1e-5, alpha) < one_run_epsilon_lower_bound(
        m, r, v, 0.0, alpha
    )
    assert one_run_epsilon_lower_bound(m, r, 250, 0.0, alpha) == 0.0  # chance level
    assert one_run_epsilon_lower_bound(m, r, 0, 0.0, alpha) == 0.0
    assert one_run_epsilon_lower_bound(m, 0, 0, 0.0, alpha) == 0.0
    # Large 2 m delta: the bound is valid wherever it is returned.
    eps = one_run_epsilon_lower_bound(100, 100, 100, 0.004, alpha)
    assert eps > 0 and one_run_tail_bound(100, 100, 100, eps, 0.004) <= alpha


def test_one_run_epsilon_lower_bound_coverage_randomized_response():
    eps_true, m, alpha = 1.0, 200, 0.05
    q = math.exp(eps_true) / (1 + math.exp(eps_true))
    lower_bound = functools.cache(lambda v: one_run_epsilon_lower_bound(m, m, v, 0.0, alpha))
    rng = np.random.default_rng(4)
    included = rng.random((300, m)) < 0.5  # each canary in with probability 1/2
    keep = rng.random((300, m)) < q  # eps-DP randomized response on each membership bit
    guesses = np.where(keep, included, ~included)
    correct = np.sum(guesses == included, axis=1)
    bounds = np.array([lower_bound(int(v)) for v in correct])
    assert np.mean(bounds <= eps_true) >= 1 - alpha - 0.02
    assert np.median(bounds) > 0.3  # informative, not trivially 0
    # Exact coverage by enumerating v ~ Binomial(m, q).
    support = np.arange(m + 1)
    pmf = stats.binom.pmf(support, m, q)
    covered = np.array([pmf[v] < 1e-12 or lower_bound(int(v)) <= eps_true for v in support])
    assert pmf @ covered >= 1 - alpha - 1e-9


@pytest.mark.parametrize(
    "args,name",
    [
        ((10, 11, 5, 1.0, 0.0), "r"),
        ((10, 5, 6, 1.0, 0.0), "v"),
        ((0, 0, 0, 1.0, 0.0), "m"),
        ((10, 5, -1, 1.0, 0.0), "v"),
        ((10, 5, 3, -1.0, 0.0), "epsilon"),
        ((10, 5, 3, 1.0, 1.5), "delta"),
        ((10, 5, 3, float("nan"), 0.0), "epsilon"),
    ],
)
def test_one_run_rejects_bad_input(args, name):
    with pytest.raises(ValueError, match=name):
        one_run_tail_bound(*args)


def test_one_run_epsilon_lower_bound_rejects_bad_alpha():
    with pytest.raises(ValueError, match="alpha"):
        one_run_epsilon_lower_bound(10, 10, 10, 0.0, 0.0)
