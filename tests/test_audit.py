"""dpjax.audit: each audit passes the correct mechanism and fails every planted bug it targets.

The oracles are the planted bugs themselves (a known-broken mechanism must fail) and the
analytic epsilon of dp_accounting; the harness is benchmarks/audit_power.py's.
"""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import toy_models

import dpjax
from benchmarks.audit_power import harness, plant
from dpjax import audit
from dpjax.audit import bounds, planted
from dpjax.training import Trainer
from experiments.configs import toy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUGS = ("no_clipping", "noise_tenth", "noise_0.8", "reused_key", "bf16_sum", "mixing")


@pytest.mark.parametrize("bug", ("correct", *BUGS))
def test_sensitivity_replay_passes_correct_and_fails_each_bug(bug):
    grad_fn, params, d, canary = harness(bug)
    with plant(bug):
        rep = audit.sensitivity_replay(
            grad_fn, params, d, canaries={"canary": canary}, rows=4,
            noise_multiplier=1.0, expected_batch_size=len(d["x"]), key=jax.random.key(1),
        )  # fmt: skip
    assert rep.ok == (bug == "correct"), rep.summary()
    if bug != "correct":
        with pytest.raises(audit.SensitivityError):
            rep.assert_ok()
    expected = {
        "no_clipping": "x the sensitivity",
        "mixing": "x the sensitivity",
        "noise_tenth": "noise std",
        "noise_0.8": "noise std",
        "reused_key": "correlation",
        "bf16_sum": "depends on the data",
    }
    if bug in expected:
        assert expected[bug] in " ".join(rep.failures)


@pytest.mark.slow
@pytest.mark.parametrize("bug", ("correct", *BUGS))
def test_single_step_audit_passes_correct_and_fails_each_bug(bug):
    grad_fn, params, d, canary = harness(bug)
    with plant(bug):
        res = audit.single_step_audit(
            grad_fn, params, d, canary, noise_multiplier=1.0, trials=100_000, delta=1e-5
        )
    # The claim is one Gaussian step at sigma = 1: dp_accounting's epsilon (and mu-GDP's).
    assert res.epsilon_claimed == pytest.approx(bounds.gdp_epsilon(1.0, 1e-5), rel=1e-3)
    assert res.passed == (bug == "correct"), res.summary()
    if bug == "correct":  # tight: within 10 % of the claim with N = 100k
        assert res.epsilon_lower > 0.9 * res.epsilon_claimed


@pytest.mark.slow
def test_single_step_audit_fails_a_noise_scale_of_0_8_on_any_engine():
    model, params, batch = toy_models.make("mlp", batch_size=8)
    x = np.asarray(batch["x"])
    canary = {"x": x[:1] * 100.0, "y": np.asarray(batch["y"])[:1]}
    d = {"x": x[1:], "y": np.asarray(batch["y"])[1:]}
    for method in ("ghost",):  # the batched-loss engine (bitfit: test_privacy_invariants)
        trainable = None
        grad_fn = dpjax.clipped_grad(
            toy_models.xent_loss(model), l2_clip=0.5, method=method, trainable=trainable
        )
        ok = audit.single_step_audit(
            grad_fn, params, d, canary, noise_multiplier=1.0, trials=60_000
        )
        assert ok.passed and ok.details["canary_shift"] == pytest.approx(1.0, rel=1e-5)
        with planted.noise_scale(0.8):
            bad = audit.single_step_audit(
                grad_fn, params, d, canary, noise_multiplier=1.0, trials=60_000
            )
        assert not bad.passed, bad.summary()


@pytest.mark.slow
@pytest.mark.parametrize("bug", ("correct", "no_clipping", "noise_tenth", "reused_key"))
def test_one_run_audit_passes_correct_and_fails_strong_bugs(bug):
    """m = 1000 canaries at a claimed epsilon of 2 (the audit is weak by nature: a 0.8x
    noise scale, bf16 rounding or a mixing loss stay below its power, see README)."""
    with plant(bug):
        res = audit.one_run_audit(m=1000, epsilon=2.0)
    assert res.epsilon_claimed == pytest.approx(2.0, abs=0.01)
    assert res.passed == (bug == "correct"), res.summary()
    if bug != "correct":
        assert res.epsilon_lower > 3.0


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["dp_full", "dp_bitfit", "two_phase"])
def test_replay_trainer_on_the_real_step(variant, tmp_path):
    cfg = toy.get_config(variant)
    cfg.engine = "ghost" if variant == "dp_full" else "vmap"
    trainer = Trainer(cfg, str(tmp_path), devices=jax.devices()[:1])
    rep = audit.replay_trainer(trainer, step=0, rows=4)
    assert rep.ok, rep.summary()
    assert 0.9 < rep.noise_std_ratio < 1.1 and abs(rep.noise_correlation) < 0.1
    with planted.no_clipping():
        assert not audit.replay_trainer(trainer, step=0, rows=4).ok


@pytest.mark.parametrize("excess", [0.0, 3e-4])
def test_replay_tolerance_is_the_sums_rounding_and_no_more(excess):
    """64 aligned unit rows (a float32 sum of norm 64): the exact mechanism passes within
    ``rtol + 8 eps ||S|| / Delta``; one row worth ``1 + 3e-4`` -- 5x that allowance -- fails."""
    rng = np.random.default_rng(0)
    direction = rng.normal(size=4096)
    rows = np.tile(direction / np.linalg.norm(direction), (64, 1)).astype(np.float32)
    rows[0] *= 1 + excess
    batch = {"x": rows, "mask": np.ones(64, bool)}

    def sum_fn(batches):
        return sum(jnp.sum(jnp.where(b["mask"][:, None], b["x"], 0.0), 0) for b in batches)

    rep = audit.replay(sum_fn, [batch], 1.0, canaries={}, rows=1, rtol=0.0)
    assert rep.tolerance == pytest.approx(8 * np.finfo(np.float32).eps * 64, rel=1e-3)
    assert rep.ok == (excess == 0.0), rep.summary()


@pytest.mark.slow
def test_replay_covers_every_engine_and_model(x64):
    for kind in ("cnn", "block"):  # the MLP: tests/test_properties.py
        model, params, batch = toy_models.make(kind, dtype=jnp.float64)
        loss_fn = toy_models.xent_loss(model)
        for method, trainable in (("vmap", None), ("ghost", None), ("bitfit", dpjax.bias_only)):
            grad_fn = dpjax.clipped_grad(loss_fn, l2_clip=0.3, method=method, trainable=trainable)
            rep = audit.sensitivity_replay(grad_fn, params, batch, rows=3, rtol=1e-9)
            assert rep.ok, (kind, method, rep.summary())


@pytest.mark.slow
def test_command_line_exit_status_follows_the_verdict(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", XLA_FLAGS="")
    cmd = [sys.executable, "-m", "dpjax.audit", "replay",
           "--config=experiments/configs/toy.py:dp_bitfit", "--rows=2"]  # fmt: skip
    ok = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0 and "PASS" in ok.stdout, ok.stderr[-2000:]
    out = tmp_path / "bad.json"
    bad = subprocess.run(
        [*cmd, "--plant=reused_key", f"--json={out}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert bad.returncode == 1 and "FAIL" in bad.stdout, bad.stderr[-2000:]
    assert '"passed": false' in out.read_text()
