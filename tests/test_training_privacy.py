"""What a private run keeps secret and what it writes: noise seeds, diagnostics, failures."""

import dataclasses
import json
import os
import re
import shutil

import dp_accounting as dpa
import jax
import numpy as np
import pytest
from accounting_oracle import REL, oracle_epsilon, poisson_event, without_replacement_event
from test_training_loop import _config as _loop_config
from test_training_loop import _trainer

from dpjax import accounting
from dpjax.training.metrics import read_jsonl
from dpjax.training.settings import ConfigError, TrainSettings
from experiments.configs import toy


@pytest.fixture(scope="module")
def task():
    return toy.build_task(toy.get_config().task)


def _config(method="dp_full", steps=3, sigma=1.0):
    return _loop_config(method, steps, sigma)


def _files_text(root):
    out = []
    for base, _, names in os.walk(root):
        for name in names:
            path = os.path.join(base, name)
            if "checkpoints" in path:
                continue
            with open(path, "rb") as f:
                out.append(f.read().decode("utf-8", "replace"))
    return "\n".join(out)


def test_two_runs_of_one_config_draw_different_noise_and_batches(task, tmp_path):
    cfg = _config()
    a, b = _trainer(cfg, tmp_path / "a", task), _trainer(cfg, tmp_path / "b", task)
    assert a.secrets.describe() == "secret (OS entropy)"
    assert a.sampler.seed != b.sampler.seed != cfg.seed  # secret, not config.seed
    assert not np.array_equal(a.sampler.draw(0), b.sampler.draw(0))
    ka, kb = (jax.random.key_data(t.noise_key(0)) for t in (a, b))
    assert not np.array_equal(ka, kb)
    pa, _ = a.run(progress=False), b.run(progress=False)
    wa, wb = (jax.tree.leaves(t.state.params)[0] for t in (a, b))
    assert not np.allclose(wa, wb)
    assert pa["noise_seed"] == "secret (OS entropy)"


def test_secrets_never_reach_results_metrics_or_logs(task, tmp_path, caplog):
    cfg = _config("dp_bitfit")
    trainer = _trainer(cfg, tmp_path, task)
    with caplog.at_level("DEBUG"):
        trainer.run(progress=False)
    secret = trainer.secrets
    written = _files_text(tmp_path) + caplog.text
    values = [str(secret.root), str(secret.seed("sampler")), str(trainer.sampler.seed)]
    values += [str(int(w)) for w in np.asarray(jax.random.key_data(trainer.noise_key(0)))]
    for value in values:
        assert value not in written
    assert "secret" not in repr(secret).replace("secret (OS entropy)", "")  # repr redacts
    # ... but the checkpoint keeps the secret, so that a resumed run continues the streams.
    meta = trainer._checkpointer().read_meta(cfg.steps)
    assert meta["secrets"]["root"] == str(secret.root)


def test_user_supplied_noise_seed_is_reported_not_secret_and_never_written(task, tmp_path):
    cfg = _config()
    cfg.privacy.noise_seed = 123456789
    a = _trainer(cfg, tmp_path / "a", task)
    res = a.run(progress=False)
    assert res["noise_seed"] == "user-supplied (not secret)"
    assert res["config"]["privacy"]["noise_seed"] == "user-supplied (not secret)"
    assert "123456789" not in _files_text(tmp_path / "a")
    b = _trainer(cfg, tmp_path / "b", task)  # reproducible: the same noise and batches
    b.run(progress=False)
    np.testing.assert_array_equal(a.sampler.draw(5), b.sampler.draw(5))
    jax.tree.map(np.testing.assert_array_equal, a.state.params, b.state.params)


def test_resume_continues_the_secret_streams_of_the_checkpoint(task, tmp_path):
    """A run resumed from its step-2 checkpoint ends exactly where the uninterrupted run did:
    it read the secret from the checkpoint (a fresh draw would give other noise)."""
    cfg = _config(steps=4)
    cfg.checkpoint_every = 2
    cfg.keep_checkpoints = 3
    full = _trainer(cfg, tmp_path / "a", task)
    full.run(progress=False)
    shutil.copytree(tmp_path / "a" / "checkpoints" / "2", tmp_path / "b" / "checkpoints" / "2")
    resumed = _trainer(cfg, tmp_path / "b", task)
    assert resumed.secrets.root == full.secrets.root
    resumed.run(progress=False)
    jax.tree.map(np.testing.assert_array_equal, resumed.state.params, full.state.params)


def test_private_diagnostics_only_on_opt_in_with_a_warning(task, tmp_path, caplog):
    cfg = _config("dp_bitfit", steps=2)
    cfg.privacy.log_private_diagnostics = True
    with caplog.at_level("WARNING"):
        _trainer(cfg, tmp_path, task).run(progress=False)
    assert "NOT covered by the reported epsilon" in caplog.text
    rows = [r for r in read_jsonl(str(tmp_path / "metrics.jsonl")) if "train/epsilon" in r]
    assert {"train/loss", "train/grad_norm", "train/clipped_frac", "train/batch_rows"} <= set(
        rows[0]
    )
    # Non-private runs write every statistic (nothing to protect).
    cfg = toy.get_config("nonprivate_full")
    cfg.steps, cfg.epochs, cfg.log_every = 2, None, 1
    _trainer(cfg, tmp_path / "np", task).run(progress=False)
    rows = [r for r in read_jsonl(str(tmp_path / "np" / "metrics.jsonl")) if "train/loss" in r]
    assert len(rows) == 2


def test_released_loss_is_noisy_and_accounted_as_one_joint_gaussian(task, tmp_path):
    """log_every=2 over 5 steps: steps 2, 4 and 5 release the loss; the ledger records
    them at (1/s^2 + 1/s_L^2)^-1/2, and epsilon equals dp_accounting's on those events."""
    cfg = _config(steps=5, sigma=1.0)
    cfg.log_every = 2
    cfg.privacy.loss_noise_multiplier = 2.0
    cfg.privacy.loss_clip = 5.0
    trainer = _trainer(cfg, tmp_path, task)
    res = trainer.run(progress=False)
    joint = (1 / 1.0**2 + 1 / 2.0**2) ** -0.5
    sigmas = [s["noise_multiplier"] for s in res["ledger"]["segments"]]
    steps = [s["steps"] for s in res["ledger"]["segments"]]
    assert sigmas == [1.0, joint, 1.0, joint] and steps == [1, 1, 1, 2]
    q = 64 / 1024
    events = [poisson_event(1.0, q, 2), poisson_event(joint, q, 3)]
    want = oracle_epsilon(events, 1 / 2048, "rdp")
    assert res["epsilon"] == pytest.approx(want, rel=1e-9)
    rows = [r for r in read_jsonl(str(tmp_path / "metrics.jsonl")) if "train/epsilon" in r]
    assert [r["step"] for r in rows if "train/loss_dp" in r] == [2, 4, 5]
    assert all("train/loss" not in r for r in rows)
    assert res["loss_release"] == {"noise_multiplier": 2.0, "loss_clip": 5.0, "log_every": 2}


def test_released_loss_noise_has_the_stated_scale(task, tmp_path):
    """train/loss_dp = (clipped loss sum + N(0, (s L)^2)) / E[B], through the trainer's own
    release code, over many secrets: mean and std of the noise match, wrong scales don't."""
    from dpjax.mechanism import MicroStats
    from dpjax.randomness import RunSecrets
    from dpjax.training import release

    cfg = _config(steps=2)
    cfg.privacy.loss_noise_multiplier, cfg.privacy.loss_clip = 3.0, 5.0
    trainer = _trainer(cfg, tmp_path, task)
    plan, e = trainer.plan, trainer.plan.expected_batch_size
    total = 123.0
    stats = MicroStats(*(np.float32(x) for x in (0.0, 64.0, 0.0, 0.0, total)))
    ledger = accounting.PrivacyLedger()
    noise = np.array([
        release.log_row(plan, trainer.settings, RunSecrets.draw(), stats, ledger, 2, 0)[
            "train/loss_dp"
        ] * e - total
        for _ in range(3000)
    ])  # fmt: skip
    assert abs(noise.mean()) < 4 * 15.0 / np.sqrt(3000)
    assert noise.std() == pytest.approx(3.0 * 5.0, rel=0.05)
    for wrong in (1.2, 0.8):
        assert abs(noise.std() / (15.0 * wrong) - 1) > 0.1


def test_calibration_with_loss_release_reaches_the_target_exactly(task, tmp_path):
    cfg = _config(steps=6)
    cfg.privacy.noise_multiplier = None
    cfg.privacy.target_epsilon = 3.0
    cfg.log_every = 3
    cfg.privacy.loss_noise_multiplier = 4.0
    trainer = _trainer(cfg, tmp_path, task)
    sigma, q = trainer.plan.noise_multiplier, 64 / 1024
    joint = (sigma**-2 + 4.0**-2) ** -0.5
    eps = oracle_epsilon([poisson_event(sigma, q, 4), poisson_event(joint, q, 2)], 1 / 2048, "rdp")
    assert 2.99 <= eps <= 3.0
    sigma_plain = accounting.calibrate_noise_multiplier(
        target_epsilon=3.0, sampling_rate=q, steps=6, delta=1 / 2048, accountant="rdp"
    )
    assert sigma > sigma_plain  # releasing the loss costs privacy


def test_delta_is_a_number_or_a_named_rule_never_a_numeric_string():
    """The command line gives a float (tests/test_config_schema.py); no string is guessed."""
    cfg = _config()
    cfg.privacy.delta = 1e-5
    assert TrainSettings.from_config(cfg).privacy.delta == 1e-5
    for bad in ("1e-5", "1/(3n)"):
        cfg.privacy.delta = bad
        with pytest.raises(ConfigError, match=re.escape(repr(bad))):
            TrainSettings.from_config(cfg)


def test_without_replacement_sampler_with_a_task_prior_and_explicit_sigma(task, tmp_path):
    """Issue 13 #11: this crashed after a trained step. The prior (one unsampled Gaussian)
    composes with the fixed-size steps under replace-one neighbours (both at sigma / 2)."""
    cfg = _config(steps=3, sigma=1.0)
    cfg.sampler = "without_replacement"
    prior = accounting.Segment(20.0, 1.0, 1)
    res = _trainer(cfg, tmp_path, dataclasses.replace(task, prior_privacy=(prior,))).run(
        progress=False
    )
    want = oracle_epsilon(
        [dpa.GaussianDpEvent(20.0 / 2), without_replacement_event(1.0, 1024, 64, 3)],
        1 / 2048,
        "rdp",
        relation=REL.REPLACE_ONE,
    )
    assert res["epsilon"] == pytest.approx(want, rel=1e-9)
    # A Poisson-sampled prior (q < 1) has no replace-one accounting: refused before training.
    sampled = accounting.Segment(5.0, 0.5, 1)
    with pytest.raises(ConfigError, match="Poisson-sampled"):
        _trainer(cfg, tmp_path / "x", dataclasses.replace(task, prior_privacy=(sampled,)))


def test_a_failure_after_training_leaves_a_checkpoint_and_partial_results(task, tmp_path):
    cfg = _config(steps=4)

    def boom(step, state):
        if step == 2:
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        _trainer(cfg, tmp_path, task).run(hooks=[boom], progress=False)
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["steps"] == 2 and res["failure"] == "RuntimeError: disk full"
    assert res["epsilon"] == pytest.approx(
        accounting.epsilon(
            noise_multiplier=1.0, sampling_rate=64 / 1024, steps=2, delta=1 / 2048,
            accountant="rdp",
        )
    )  # fmt: skip
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2"]


def test_run_secrets_streams_are_independent_and_round_trip():
    from dpjax.randomness import RunSecrets, secret_key

    s = RunSecrets.draw()
    assert RunSecrets.draw().root != s.root
    k0, k1 = (np.asarray(jax.random.key_data(s.key(f"noise/phase{i}"))) for i in (0, 1))
    assert not np.array_equal(k0, k1)
    assert s.seed("sampler") != s.seed("loss/1") and s.seed("sampler") == s.seed("sampler")
    back = RunSecrets.from_checkpoint(json.loads(json.dumps(s.to_checkpoint())))
    assert back.root == s.root and not back.user_supplied
    assert str(s.root) not in repr(s) and str(s.root) not in str(s)
    with pytest.raises(ValueError, match="-1"):
        RunSecrets.from_seed(-1)
    with pytest.raises(ValueError, match="malformed"):
        RunSecrets.from_checkpoint({"root": "1"})
    a, b = (np.asarray(jax.random.key_data(secret_key())) for _ in range(2))
    assert not np.array_equal(a, b)
