"""The logged epsilon: computed ahead from the plan, equal to the ledger's exact epsilon."""

import dp_accounting
import pytest

from dpjax.accounting import PrivacyLedger, joint_noise_multiplier
from dpjax.partition import all_leaves
from dpjax.training.epsilon_curve import EpsilonCurve
from dpjax.training.plan import Phase, RunPlan

Q, SIGMA, S, DELTA = 0.05, 0.8, 2.0, 1e-5


def _plan(loss_sigma=S, total=12, log_every=4, accountant="rdp"):
    return RunPlan(
        (Phase("full", 0, total, all_leaves, "vmap", 1e-3),),
        noise_multiplier=SIGMA,
        delta=DELTA,
        sampling={"sampling_rate": Q, "sampling": "poisson", "dataset_size": 1000},
        accountant=accountant,
        max_epsilon=None,
        expected_batch_size=50,
        loss_noise_multiplier=loss_sigma,
        log_every=log_every,
    )


def _ledger(plan, steps):
    """A ledger recorded one step at a time, as the trainer records it (interleaved)."""
    ledger = PrivacyLedger()
    for done in range(1, steps + 1):
        sigma = SIGMA
        if plan.releases_loss(done):
            sigma = joint_noise_multiplier(SIGMA, S)
        ledger.record(noise_multiplier=sigma, sampling_rate=Q)
    return ledger


def test_curve_values_equal_the_ledger_epsilon_and_dp_accounting():
    plan = _plan()
    curve = EpsilonCurve(plan, [4, 8, 12])
    try:
        for t in (4, 8, 12):
            ledger = _ledger(plan, t)
            assert len(ledger.segments) > 2 or t == 4  # interleaved events
            got = curve.get(ledger)
            assert got == plan.epsilon(ledger)
            # oracle: dp_accounting's RDP accountant composing the same events in order
            acc = dp_accounting.rdp.RdpAccountant()
            for done in range(1, t + 1):
                s = joint_noise_multiplier(SIGMA, S) if plan.releases_loss(done) else SIGMA
                acc.compose(
                    dp_accounting.PoissonSampledDpEvent(Q, dp_accounting.GaussianDpEvent(s))
                )
            assert got == pytest.approx(acc.get_epsilon(DELTA), rel=1e-6)
    finally:
        curve.close()


def test_a_ledger_off_the_plan_is_computed_exactly():
    plan = _plan(accountant="pld")
    curve = EpsilonCurve(plan, [4])
    try:
        off = PrivacyLedger()
        off.record(4, noise_multiplier=2 * SIGMA, sampling_rate=Q)  # not what the plan ran
        assert curve.get(off) == plan.epsilon(off)
        assert curve.get(off) < curve.get(_ledger(plan, 4))
    finally:
        curve.close()


def test_a_log_never_waits_on_the_queue():
    """Asked at once for the last of many queued steps, the curve answers it directly."""
    plan = _plan(log_every=1)
    curve = EpsilonCurve(plan, range(1, 13))
    try:
        ledger = _ledger(plan, 12)
        assert curve.get(ledger) == plan.epsilon(ledger)
    finally:
        curve.close()
