"""dpjax.accounting against dp_accounting called directly (the oracle)."""

import math
import time

import pytest
from accounting_oracle import N_SST2, Q_SST2, REL
from accounting_oracle import oracle_epsilon as _oracle
from accounting_oracle import poisson_event as _poisson
from accounting_oracle import without_replacement_event as _wor

from dpjax import accounting

# (sigma, q, steps, delta, PLD grid): the default grid 1e-4 where it is cheap.
POISSON_SETTINGS = [
    (0.7, Q_SST2, 198, 1 / (2 * N_SST2), 1e-3),
    (1.1, 0.02, 150, 1e-5, 1e-4),
    (3.0, 0.001, 1000, 1e-6, 1e-4),
    (0.9, 1.0, 5, 1e-5, 1e-3),
]


@pytest.mark.parametrize("accountant_name", ["pld", "rdp"])
@pytest.mark.parametrize("sigma,q,steps,delta,grid", POISSON_SETTINGS)
def test_poisson_epsilon_matches_dp_accounting(accountant_name, sigma, q, steps, delta, grid):
    got = accounting.epsilon(
        noise_multiplier=sigma,
        sampling_rate=q,
        steps=steps,
        delta=delta,
        accountant=accountant_name,
        value_discretization_interval=grid,
    )
    want = _oracle([_poisson(sigma, q, steps)], delta, accountant_name, grid=grid)
    assert got == pytest.approx(want, rel=1e-12)
    assert 0 < got < 100


@pytest.mark.parametrize(
    "sigma,n,m,steps,delta",
    [(1.0, 50000, 1000, 150, 1e-5), (0.8, 1000, 50, 40, 1e-4), (2.0, 10000, 100, 300, 1e-5)],
)
def test_without_replacement_epsilon_matches_rdp_without_replacement(sigma, n, m, steps, delta):
    got = accounting.epsilon(
        noise_multiplier=sigma,
        sampling_rate=m / n,
        steps=steps,
        delta=delta,
        accountant="rdp",
        sampling="without_replacement",
        dataset_size=n,
    )
    want = _oracle([_wor(sigma, n, m, steps)], delta, "rdp", relation=REL.REPLACE_ONE)
    assert got == pytest.approx(want, rel=1e-12)
    # Not silently Poisson: the replace-one without-replacement bound is a different number.
    poisson = accounting.epsilon(
        noise_multiplier=sigma, sampling_rate=m / n, steps=steps, delta=delta, accountant="rdp"
    )
    assert abs(got - poisson) > 1e-3 * poisson


def test_without_replacement_with_pld_raises_and_names_rdp():
    with pytest.raises(ValueError, match="accountant='rdp'"):
        accounting.epsilon(
            noise_multiplier=1.0,
            sampling_rate=0.02,
            steps=10,
            delta=1e-5,
            sampling="without_replacement",
            dataset_size=50000,
        )


def test_pld_grid_is_configurable():
    kw = dict(noise_multiplier=0.8, sampling_rate=0.02, steps=100, delta=1e-5)
    coarse = accounting.epsilon(**kw, value_discretization_interval=1e-2)
    assert coarse == pytest.approx(_oracle([_poisson(0.8, 0.02, 100)], 1e-5, "pld", grid=1e-2))
    assert coarse >= accounting.epsilon(**kw)  # pessimistic discretisation


def test_zero_noise_is_infinite_epsilon():
    for acc in ("pld", "rdp"):
        eps = accounting.epsilon(
            noise_multiplier=0.0, sampling_rate=0.1, steps=3, delta=1e-5, accountant=acc
        )
        assert eps == math.inf


def test_delta_for_rules():
    assert accounting.delta_for(67349) == 1 / (2 * 67349)
    assert accounting.delta_for(50000, rule="n^-1.1") == pytest.approx(50000**-1.1)
    with pytest.raises(ValueError, match="1/n"):
        accounting.delta_for(100, rule="1/n")
    with pytest.raises(ValueError, match="n must"):
        accounting.delta_for(0)


GOOD = dict(noise_multiplier=1.0, sampling_rate=0.01, steps=10, delta=1e-5)


@pytest.mark.parametrize(
    "override,needle",
    [
        (dict(noise_multiplier=-0.5), "-0.5"),
        (dict(noise_multiplier=float("nan")), "nan"),
        (dict(sampling_rate=0.0), "sampling_rate"),
        (dict(sampling_rate=1.5), "1.5"),
        (dict(delta=0.0), "delta"),
        (dict(delta=1.0), "delta"),
        (dict(delta=-1e-5), "-1e-05"),
        (dict(steps=0), "steps"),
        (dict(steps=2.5), "2.5"),
        (dict(steps=True), "True"),
        (dict(accountant="moments"), "moments"),
        (dict(sampling="epoch"), "epoch"),
        (dict(sampling="without_replacement", accountant="rdp"), "dataset_size"),
        (dict(sampling="without_replacement", accountant="rdp", dataset_size=1234), "1234"),
        (dict(dataset_size=0), "dataset_size"),
        (dict(value_discretization_interval=0.0), "value_discretization_interval"),
    ],
)
def test_bad_inputs_raise_value_error_naming_value(override, needle):
    with pytest.raises(ValueError, match=needle.replace("(", r"\(").replace(".", r"\.")):
        accounting.epsilon(**{**GOOD, **override})


# ----------------------------------------------------------------------------- calibration
@pytest.mark.parametrize("accountant_name", ["pld", "rdp"])
@pytest.mark.parametrize("target", [3.0, 8.0])
def test_calibrate_round_trip(accountant_name, target):
    kw = dict(sampling_rate=Q_SST2, steps=198, delta=1 / (2 * N_SST2), accountant=accountant_name)
    if accountant_name == "pld":  # final grid 1e-3 keeps it fast; search grid is coarser
        kw["value_discretization_interval"] = 1e-3
    t0 = time.perf_counter()
    sigma = accounting.calibrate_noise_multiplier(target_epsilon=target, **kw)
    elapsed = time.perf_counter() - t0
    print(f"calibrate {accountant_name} eps={target}: sigma={sigma:.5f} in {elapsed:.2f}s")
    assert accounting.epsilon(noise_multiplier=sigma, **kw) <= target
    assert accounting.epsilon(noise_multiplier=0.99 * sigma, **kw) > target
    # Independent oracle: dp_accounting directly, at the default grid.
    grid = kw.get("value_discretization_interval", 1e-4)
    assert (
        _oracle([_poisson(sigma, Q_SST2, 198)], kw["delta"], accountant_name, grid=grid) <= target
    )


def test_calibrate_without_replacement_rdp_round_trip():
    kw = dict(
        sampling_rate=100 / 5000,
        steps=100,
        delta=1e-5,
        accountant="rdp",
        sampling="without_replacement",
        dataset_size=5000,
    )
    sigma = accounting.calibrate_noise_multiplier(target_epsilon=4.0, **kw)
    assert _oracle([_wor(sigma, 5000, 100, 100)], 1e-5, "rdp", relation=REL.REPLACE_ONE) <= 4.0
    assert accounting.epsilon(noise_multiplier=0.99 * sigma, **kw) > 4.0


def test_calibrate_with_coarse_final_grid_still_meets_target():
    kw = dict(sampling_rate=0.02, steps=150, delta=1e-5, value_discretization_interval=5e-2)
    sigma = accounting.calibrate_noise_multiplier(target_epsilon=8.0, **kw)
    assert accounting.epsilon(noise_multiplier=sigma, **kw) <= 8.0


@pytest.mark.parametrize(
    "target,needle",
    [(0.0, "target_epsilon"), (-1.0, "-1.0"), (1e-9, "unreachable"), (1e6, "loose")],
)
def test_calibrate_unreachable_or_bad_target(target, needle):
    with pytest.raises(ValueError, match=needle):
        accounting.calibrate_noise_multiplier(
            target_epsilon=target, sampling_rate=0.02, steps=150, delta=1e-5, accountant="rdp"
        )


def test_calibrate_validates_other_inputs():
    with pytest.raises(ValueError, match="tolerance"):
        accounting.calibrate_noise_multiplier(
            target_epsilon=3.0, sampling_rate=0.02, steps=10, delta=1e-5, tolerance=0.0
        )
    with pytest.raises(ValueError, match="accountant='rdp'"):
        accounting.calibrate_noise_multiplier(
            target_epsilon=3.0,
            sampling_rate=0.02,
            steps=10,
            delta=1e-5,
            sampling="without_replacement",
            dataset_size=50000,
        )
