"""dpjax.ledger: segments, the ledger and its cached composition, against dp_accounting.

Every epsilon here is compared with ``dp_accounting``'s own accountant fed the same
events, with ``==``: the caches must not change a single bit of the answer.
"""

import json
import math
import time

import pytest
from accounting_oracle import N_SST2, Q_SST2, REL
from accounting_oracle import oracle_epsilon as _oracle
from accounting_oracle import poisson_event as _poisson
from accounting_oracle import without_replacement_event as _wor
from dp_accounting.pld import privacy_loss_distribution as pld_lib

from dpjax import accounting, ledger


@pytest.fixture(autouse=True)
def _cold_caches():
    ledger.clear_caches()
    yield
    ledger.clear_caches()


class _Counter:
    """Counts calls of the one-step PLD builder and of ``PrivacyLossDistribution.self_compose``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.builds = self.self_composes = 0
        build = pld_lib.from_gaussian_mechanism
        self_compose = pld_lib.PrivacyLossDistribution.self_compose

        def counting_build(*args, **kwargs):
            self.builds += 1
            return build(*args, **kwargs)

        def counting_self_compose(pld_self, *args, **kwargs):
            self.self_composes += 1
            return self_compose(pld_self, *args, **kwargs)

        monkeypatch.setattr(pld_lib, "from_gaussian_mechanism", counting_build)
        monkeypatch.setattr(pld_lib.PrivacyLossDistribution, "self_compose", counting_self_compose)

    @property
    def counts(self) -> tuple[int, int]:
        return self.builds, self.self_composes


@pytest.fixture
def counter(monkeypatch):
    return _Counter(monkeypatch)


# ----------------------------------------------------------------------------- module split
def test_accounting_reexports_the_ledger_names():
    assert accounting.PrivacyLedger is ledger.PrivacyLedger
    assert accounting.Segment is ledger.Segment
    assert accounting.RDP_ORDERS is ledger.RDP_ORDERS
    assert accounting.clear_caches is ledger.clear_caches
    assert {"PrivacyLedger", "Segment", "epsilon", "delta_for"} <= set(accounting.__all__)


# ----------------------------------------------------------------------------- caches
def test_growing_pld_ledger_builds_one_step_pld_once_and_matches_dp_accounting(counter):
    grid, delta = 1e-3, 1e-5
    book = ledger.PrivacyLedger()
    got, timings = {}, []
    for steps in range(1, 41):
        book.record(noise_multiplier=0.9, sampling_rate=0.05)
        if steps in (10, 11, 12, 40):
            t0 = time.perf_counter()
            got[steps] = book.epsilon(delta, value_discretization_interval=grid)
            timings.append(time.perf_counter() - t0)
    assert counter.counts == (1, 4)  # one build; one self_compose per distinct step count
    t0 = time.perf_counter()
    again = book.epsilon(delta, value_discretization_interval=grid)
    hit = time.perf_counter() - t0
    assert counter.counts == (1, 4) and again == got[40]
    print(f"first {timings[0]:.3f}s, +1 step {timings[1]:.3f}s, repeat {hit * 1e6:.0f}us")
    for steps, eps in got.items():
        assert eps == _oracle([_poisson(0.9, 0.05, steps)], delta, "pld", grid=grid)


def test_new_ledger_objects_share_the_cache_and_a_new_delta_reuses_the_segment(counter):
    # RunPlan.epsilon builds a fresh PrivacyLedger per query: the cache is module-wide.
    segs = [accounting.Segment(1.1, 0.02, 150)]
    first = accounting.PrivacyLedger(segs).epsilon(1e-5, value_discretization_interval=1e-3)
    second = accounting.PrivacyLedger(segs).epsilon(1e-5, value_discretization_interval=1e-3)
    assert counter.counts == (1, 1) and first == second
    other_delta = accounting.PrivacyLedger(segs).epsilon(1e-6, value_discretization_interval=1e-3)
    assert counter.counts == (1, 1)  # only the cheap epsilon-for-delta ran again
    assert first == _oracle([_poisson(1.1, 0.02, 150)], 1e-5, "pld", grid=1e-3)
    assert other_delta == _oracle([_poisson(1.1, 0.02, 150)], 1e-6, "pld", grid=1e-3)
    assert other_delta > first


def test_cache_keys_separate_sigma_rate_grid_and_accountant(counter):
    base = dict(sampling_rate=0.02, steps=100, delta=1e-5)
    runs = [
        dict(noise_multiplier=1.0, value_discretization_interval=1e-3),
        dict(noise_multiplier=1.0 + 1e-9, value_discretization_interval=1e-3),
        dict(noise_multiplier=1.0, value_discretization_interval=2e-3),
        dict(noise_multiplier=1.0, value_discretization_interval=1e-3, sampling_rate=0.021),
    ]
    got = [accounting.epsilon(**{**base, **r}) for r in runs]
    assert counter.builds == len(runs)  # no false cache hit
    assert len(set(got)) == len(runs)
    for r, eps in zip(runs, got):
        kw = {**base, **r}
        event = _poisson(kw["noise_multiplier"], kw["sampling_rate"], 100)
        assert eps == _oracle([event], 1e-5, "pld", grid=kw["value_discretization_interval"])
    rdp_eps = accounting.epsilon(**base, noise_multiplier=1.0, accountant="rdp")
    assert rdp_eps == _oracle([_poisson(1.0, 0.02, 100)], 1e-5, "rdp")
    assert rdp_eps != got[0]


def test_poisson_dataset_size_does_not_split_the_one_step_cache(counter):
    plain = accounting.PrivacyLedger([accounting.Segment(0.8, 0.04, 30)])
    sized = accounting.PrivacyLedger([accounting.Segment(0.8, 0.04, 30, dataset_size=5000)])
    a = plain.epsilon(1e-5, value_discretization_interval=1e-3)
    b = sized.epsilon(1e-5, value_discretization_interval=1e-3)
    assert counter.builds == 1 and a == b
    assert a == _oracle([_poisson(0.8, 0.04, 30)], 1e-5, "pld", grid=1e-3)


def test_two_phase_ledger_reuses_the_finished_phase(counter):
    book = accounting.PrivacyLedger()
    book.record(60, noise_multiplier=0.7, sampling_rate=0.02)
    book.record(5, noise_multiplier=0.7, sampling_rate=0.04)
    first = book.epsilon(1e-5, value_discretization_interval=1e-3)
    assert counter.counts == (2, 2)
    book.record(noise_multiplier=0.7, sampling_rate=0.04)
    second = book.epsilon(1e-5, value_discretization_interval=1e-3)
    assert counter.counts == (2, 3)  # phase 1 not recomposed, phase 2 once more
    for eps, k in ((first, 5), (second, 6)):
        events = [_poisson(0.7, 0.02, 60), _poisson(0.7, 0.04, k)]
        assert eps == _oracle(events, 1e-5, "pld", grid=1e-3)


def test_rdp_one_step_vector_cached_and_linear_in_steps():
    got = {}
    for steps in (1, 7, 100, 5000):
        got[steps] = accounting.PrivacyLedger([accounting.Segment(0.8, 0.01, steps)]).epsilon(
            1e-5, accountant="rdp"
        )
    info = ledger.cache_info()["step_rdp"]
    assert (info.misses, info.hits) == (1, 3)
    for steps, eps in got.items():
        assert eps == _oracle([_poisson(0.8, 0.01, steps)], 1e-5, "rdp")
    without = [accounting.Segment(1.0, 50 / 1000, k, "without_replacement", 1000) for k in (40, 41)]
    for seg in without:
        want = _oracle([_wor(1.0, 1000, 50, seg.steps)], 1e-4, "rdp", relation=REL.REPLACE_ONE)
        assert accounting.PrivacyLedger([seg]).epsilon(1e-4, accountant="rdp") == want
    assert ledger.cache_info()["step_rdp"].misses == 2


def test_calibration_leaves_its_answer_cached_for_the_ledger(counter):
    kw = dict(sampling_rate=Q_SST2, steps=198, delta=1 / (2 * N_SST2))
    sigma = accounting.calibrate_noise_multiplier(
        target_epsilon=4.0, value_discretization_interval=1e-3, **kw
    )
    before = counter.counts
    book = accounting.PrivacyLedger()
    book.record(198, noise_multiplier=sigma, sampling_rate=Q_SST2)
    eps = book.epsilon(kw["delta"], value_discretization_interval=1e-3)
    assert counter.counts == before  # the final check already built and composed it
    again = accounting.calibrate_noise_multiplier(
        target_epsilon=4.0, value_discretization_interval=1e-3, **kw
    )
    assert again == sigma and counter.counts == before  # every evaluation was cached
    assert eps == _oracle([_poisson(sigma, Q_SST2, 198)], kw["delta"], "pld", grid=1e-3) <= 4.0


def test_clear_caches_rebuilds_the_same_answer(counter):
    kw = dict(noise_multiplier=1.2, sampling_rate=0.1, steps=20, delta=1e-5)
    first = accounting.epsilon(**kw, value_discretization_interval=1e-3)
    assert ledger.cache_info()["epsilon"].currsize == 1
    ledger.clear_caches()
    assert all(info.currsize == 0 for info in ledger.cache_info().values())
    second = accounting.epsilon(**kw, value_discretization_interval=1e-3)
    assert counter.builds == 2 and first == second


def test_warm_cache_still_validates_inputs():
    kw = dict(noise_multiplier=1.0, sampling_rate=0.02, steps=10, accountant="rdp")
    accounting.epsilon(**kw, delta=1e-5)
    for bad in (0.0, 1.0, float("nan")):
        with pytest.raises(ValueError, match="delta"):
            accounting.epsilon(**kw, delta=bad)


@pytest.mark.slow
def test_glue_setting_at_default_grid_cached_matches_dp_accounting(counter):
    delta = 1 / (2 * N_SST2)
    book = accounting.PrivacyLedger()
    book.record(198, noise_multiplier=0.55, sampling_rate=Q_SST2)
    t0 = time.perf_counter()
    first = book.epsilon(delta)
    t1 = time.perf_counter()
    book.epsilon(delta)
    t2 = time.perf_counter()
    book.record(noise_multiplier=0.55, sampling_rate=Q_SST2)
    plus_one = book.epsilon(delta)
    t3 = time.perf_counter()
    print(f"GLUE eps: first {t1 - t0:.2f}s, repeat {(t2 - t1) * 1e3:.2f}ms, +1 step {t3 - t2:.2f}s")
    assert counter.counts == (1, 2)
    assert first == _oracle([_poisson(0.55, Q_SST2, 198)], delta, "pld")
    assert plus_one == _oracle([_poisson(0.55, Q_SST2, 199)], delta, "pld")


# ----------------------------------------------------------------------------- the ledger
def test_ledger_two_phase_composition_matches_dp_accounting():
    ledger = accounting.PrivacyLedger()
    ledger.record(60, noise_multiplier=0.7, sampling_rate=0.02)  # phase 1: full fine-tuning
    ledger.record(90, noise_multiplier=0.7, sampling_rate=0.04)  # phase 2: BiTFiT, bigger q
    assert ledger.steps == 150 and len(ledger.segments) == 2
    events = [_poisson(0.7, 0.02, 60), _poisson(0.7, 0.04, 90)]
    for acc in ("pld", "rdp"):
        got = ledger.epsilon(1e-5, accountant=acc, value_discretization_interval=1e-3)
        assert got == pytest.approx(_oracle(events, 1e-5, acc, grid=1e-3), rel=1e-12)
    # Composition is more than either phase alone.
    phase2 = accounting.epsilon(
        noise_multiplier=0.7, sampling_rate=0.04, steps=90, delta=1e-5, accountant="rdp"
    )
    assert ledger.epsilon(1e-5, accountant="rdp") > phase2


def test_ledger_merges_identical_consecutive_records():
    ledger = accounting.PrivacyLedger()
    for _ in range(5):
        ledger.record(noise_multiplier=1.0, sampling_rate=0.01)
    ledger.record(2, noise_multiplier=1.5, sampling_rate=0.01)
    ledger.record(noise_multiplier=1.0, sampling_rate=0.01)
    assert [s.steps for s in ledger.segments] == [5, 2, 1]
    assert [s.noise_multiplier for s in ledger.segments] == [1.0, 1.5, 1.0]
    merged = ledger.epsilon(1e-5, accountant="rdp")
    events = [_poisson(1.0, 0.01, 5), _poisson(1.5, 0.01, 2), _poisson(1.0, 0.01, 1)]
    assert merged == pytest.approx(_oracle(events, 1e-5, "rdp"), rel=1e-12)


def test_ledger_ten_thousand_single_steps_are_cheap():
    ledger = accounting.PrivacyLedger()
    t0 = time.perf_counter()
    for _ in range(10_000):
        ledger.record(noise_multiplier=0.8, sampling_rate=0.001)
    elapsed = time.perf_counter() - t0
    print(f"10k ledger records: {elapsed * 1e3:.1f} ms")
    assert len(ledger.segments) == 1 and ledger.steps == 10_000
    assert len(json.dumps(ledger.to_dict())) < 300
    want = _oracle([_poisson(0.8, 0.001, 10_000)], 1e-5, "rdp")
    assert ledger.epsilon(1e-5, accountant="rdp") == pytest.approx(want, rel=1e-12)


def test_ledger_round_trip_is_exact_through_json():
    ledger = accounting.PrivacyLedger()
    ledger.record(7, noise_multiplier=0.6123456789012345, sampling_rate=1024 / 67349)
    ledger.record(3, noise_multiplier=0.6123456789012345, sampling_rate=0.1 + 0.2)
    restored = accounting.PrivacyLedger.from_dict(json.loads(json.dumps(ledger.to_dict())))
    assert restored == ledger
    assert restored.segments == ledger.segments
    assert restored.epsilon(1e-5, accountant="rdp") == ledger.epsilon(1e-5, accountant="rdp")
    without = accounting.PrivacyLedger()
    without.record(
        4,
        noise_multiplier=1.0,
        sampling_rate=0.02,
        sampling="without_replacement",
        dataset_size=500,
    )
    assert accounting.PrivacyLedger.from_dict(json.loads(json.dumps(without.to_dict()))) == without


def test_old_shuffle_ledger_state_reads_as_without_replacement():
    """Checkpoints written before the rename say sampling='shuffle': same event, same epsilon."""
    old = {
        "version": 1,
        "segments": [
            {
                "noise_multiplier": 1.0,
                "sampling_rate": 0.02,
                "steps": 4,
                "sampling": "shuffle",
                "dataset_size": 500,
            }
        ],
    }
    ledger = accounting.PrivacyLedger.from_dict(old)
    assert ledger.segments == (accounting.Segment(1.0, 0.02, 4, "without_replacement", 500),)
    want = _oracle([_wor(1.0, 500, 10, 4)], 1e-5, "rdp", relation=REL.REPLACE_ONE)
    assert ledger.epsilon(1e-5, accountant="rdp") == want


@pytest.mark.parametrize("old", ["shuffle", "fixed"])
def test_old_sampling_names_are_refused_naming_the_new_one(old):
    with pytest.raises(ValueError, match="use 'without_replacement'"):
        accounting.Segment(1.0, 0.02, 4, old, 500)
    with pytest.raises(ValueError, match="use 'without_replacement'"):
        accounting.epsilon(
            noise_multiplier=1.0, sampling_rate=0.02, steps=4, delta=1e-5, sampling=old,
            accountant="rdp", dataset_size=500,
        )  # fmt: skip


@pytest.mark.parametrize(
    "state,needle",
    [
        ([], "dict"),
        ({"version": 1}, "segments"),
        ({"version": 2, "segments": []}, "version 2"),
        ({"version": 1, "segments": "x"}, "list"),
        ({"version": 1, "segments": [{"steps": 3}]}, "segment 0"),
        (
            {
                "version": 1,
                "segments": [
                    {
                        "noise_multiplier": 1.0,
                        "sampling_rate": 2.0,
                        "steps": 3,
                        "sampling": "poisson",
                        "dataset_size": None,
                    }
                ],
            },
            "2.0",
        ),
    ],
)
def test_ledger_from_malformed_dict_raises(state, needle):
    with pytest.raises(ValueError, match=needle):
        accounting.PrivacyLedger.from_dict(state)


def test_ledger_rejects_mixed_samplings_and_without_replacement_on_pld():
    ledger = accounting.PrivacyLedger()
    ledger.record(
        noise_multiplier=1.0, sampling_rate=0.02, sampling="without_replacement", dataset_size=500
    )
    with pytest.raises(ValueError, match="rdp"):
        ledger.epsilon(1e-5)
    ledger.record(noise_multiplier=1.0, sampling_rate=0.02)
    with pytest.raises(ValueError, match="replace-one"):
        ledger.epsilon(1e-5, accountant="rdp")


def test_empty_ledger_and_zero_noise():
    ledger = accounting.PrivacyLedger()
    assert ledger.steps == 0 and ledger.epsilon(1e-5) == 0.0
    ledger.record(noise_multiplier=0.0, sampling_rate=0.5)
    assert ledger.epsilon(1e-5) == math.inf
