"""The host loop: kill-and-resume, budget stop, two-phase, results and metrics files."""

import json
import math
import os

import jax
import numpy as np
import pytest

from dpjax import accounting
from dpjax.training import Trainer
from dpjax.training.metrics import read_jsonl
from experiments.configs import toy

ONE = jax.devices()[:1]


class SimulatedKillError(Exception):
    pass


@pytest.fixture(scope="module")
def task():
    return toy.build_task(toy.get_config().task)


def _config(method="dp_full", steps=6, sigma=1.0):
    c = toy.get_config(method)
    c.steps, c.epochs = steps, None
    c.privacy.target_epsilon = None
    c.privacy.noise_multiplier = sigma
    c.privacy.accountant = "rdp"
    c.log_every = 1
    return c


def _trainer(cfg, workdir, task):
    return Trainer(cfg, str(workdir), task=task, devices=ONE)


def _host(x):
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    return np.asarray(x)


def _equal_trees(a, b):
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(_host(x), _host(y)), a, b)


@pytest.mark.slow
def test_kill_and_resume_matches_uninterrupted_run(task, tmp_path):
    cfg = _config(steps=6)
    cfg.privacy.noise_seed = 3  # two runs compared: the same (non-secret) streams
    cfg.checkpoint_every = 2
    full = _trainer(cfg, tmp_path / "a", task)
    res_a = full.run(progress=False)

    def kill_after_3(step, state):
        if step == 3:
            raise SimulatedKillError

    with pytest.raises(SimulatedKillError):
        _trainer(cfg, tmp_path / "b", task).run(hooks=[kill_after_3], progress=False)
    # The failed run kept what it trained: a checkpoint at step 3 and a partial results.json.
    failed = json.loads((tmp_path / "b" / "results.json").read_text())
    assert failed["steps"] == 3 and "SimulatedKillError" in failed["failure"]
    assert failed["ledger"]["segments"][0]["steps"] == 3
    seen = []
    resumed = _trainer(cfg, tmp_path / "b", task)
    res_b = resumed.run(hooks=[lambda step, state: seen.append(step)], progress=False)
    assert seen == [4, 5, 6]  # resumed from the step-3 checkpoint the failure left
    assert res_b["steps"] == res_a["steps"] == 6
    assert res_b["ledger"] == res_a["ledger"] and res_b["ledger"]["segments"][0]["steps"] == 6
    assert res_b["epsilon"] == pytest.approx(res_a["epsilon"], rel=1e-12)
    _equal_trees(resumed.state.params, full.state.params)
    _equal_trees(resumed.state.opt_state, full.state.opt_state)
    # a finished run resumed again does nothing and reports the same
    again = _trainer(cfg, tmp_path / "b", task).run(progress=False)
    assert again["steps"] == 6 and again["epsilon"] == res_b["epsilon"]


def test_budget_stop_before_exceeding_max_epsilon(task, tmp_path):
    cfg = _config(steps=40, sigma=1.0)
    kw = dict(noise_multiplier=1.0, sampling_rate=64 / 1024, delta=1 / 2048, accountant="rdp")
    budget = accounting.epsilon(steps=5, **kw) * 1.001
    cfg.privacy.max_epsilon = budget
    res = _trainer(cfg, tmp_path, task).run(progress=False)
    assert res["steps"] == 5 and res["planned_steps"] == 40
    assert res["epsilon"] <= budget < accounting.epsilon(steps=6, **kw)
    assert "privacy budget" in res["stopped_early"] and "max_epsilon" in res["stopped_early"]
    # resuming with the same budget takes no further step
    assert _trainer(cfg, tmp_path, task).run(progress=False)["steps"] == 5


def test_two_phase_switches_trainable_set_and_ledger_counts_both(task, tmp_path):
    cfg = toy.get_config("two_phase")
    cfg.epochs, cfg.two_phase.full_epochs = 0.25, 0.125  # 16 steps/epoch: 2 + 2 steps
    cfg.privacy.accountant = "rdp"
    snaps = {}
    trainer = _trainer(cfg, tmp_path, task)
    res = trainer.run(
        hooks=[lambda s, st: snaps.__setitem__(s, jax.device_get(st.params))], progress=False
    )
    assert [p["name"] for p in res["phases"]] == ["full", "bitfit"]
    assert [(p["start"], p["stop"]) for p in res["phases"]] == [(0, 2), (2, 4)]
    assert res["steps"] == 4 and res["ledger"]["segments"][0]["steps"] == 4
    sigma = res["noise_multiplier"]
    want = accounting.epsilon(
        noise_multiplier=sigma, sampling_rate=64 / 1024, steps=4, delta=1 / 2048, accountant="rdp"
    )
    assert res["epsilon"] == pytest.approx(want, rel=1e-9) and res["epsilon"] <= 8.0
    init = task.params

    def changed(a, b, *path):
        for k in path:
            a, b = a[k], b[k]
        return not np.array_equal(np.asarray(a), np.asarray(b))

    assert changed(init, snaps[2], "dense1", "kernel")  # phase 1 trains weights
    assert not changed(snaps[2], snaps[4], "dense1", "kernel")  # phase 2 freezes them
    assert changed(snaps[2], snaps[4], "dense1", "bias")  # ... and trains biases
    assert changed(snaps[2], snaps[4], "head", "kernel")  # ... and the task's extra head
    assert trainer.state.train["dense1"]["kernel"] is None
    assert trainer.state.frozen["dense1"]["bias"] is None


def test_results_metrics_and_tensorboard(task, tmp_path):
    cfg = _config("dp_bitfit", steps=4)
    cfg.eval_every = 2
    res = _trainer(cfg, tmp_path, task).run(progress=False)
    on_disk = json.loads((tmp_path / "results.json").read_text())
    for key in ("epsilon", "delta", "noise_multiplier", "steps", "eval", "wall_time_s", "config"):
        assert key in on_disk
    assert on_disk["steps"] == 4 and on_disk["delta"] == 1 / 2048
    assert on_disk["config"]["privacy"]["noise_multiplier"] == 1.0
    assert on_disk["noise_seed"] == "secret (OS entropy)"
    per_class = {f"test/accuracy_class{k}" for k in range(2)}  # the toy task's 2 classes
    assert set(res["eval"]) == {"test/accuracy", "test/loss", *per_class}
    rows = read_jsonl(str(tmp_path / "metrics.jsonl"))
    train_rows = [r for r in rows if "train/epsilon" in r]
    assert [r["step"] for r in train_rows] == [1, 2, 3, 4]
    # A private run writes public quantities only (no loss, norms or batch size).
    assert all(set(r) == {"step", "train/epsilon", "train/lr", "train/phase"} for r in train_rows)
    assert train_rows[0]["train/lr"] == pytest.approx(cfg.optimizer.lr)  # linear decay, step 0
    eps = [r["train/epsilon"] for r in train_rows]
    assert eps == sorted(eps) and eps[-1] == pytest.approx(res["epsilon"])
    assert [r["step"] for r in rows if "eval/test/accuracy" in r] == [2, 4]
    pytest.importorskip("tensorboardX")
    assert any(f.startswith("events.out") for f in os.listdir(tmp_path / "tensorboard"))


def test_nonprivate_baseline_learns_and_reports_no_epsilon(task, tmp_path):
    cfg = toy.get_config("nonprivate_full")
    cfg.steps, cfg.epochs, cfg.optimizer.lr = 16, None, 1e-2
    res = _trainer(cfg, tmp_path, task).run(progress=False)
    assert res["private"] is False and res["epsilon"] is None and res["noise_multiplier"] == 0.0
    assert res["ledger"]["segments"] == []
    assert res["eval"]["test/accuracy"] > 0.9  # synthetic data is separable
    assert math.isfinite(res["eval"]["test/loss"])


def test_eval_at_start_reports_the_initial_parameters_metrics(task, tmp_path):
    from dpjax.training.evaluation import Evaluator
    from dpjax.training.settings import MeshSettings
    from dpjax.training.sharding import make_mesh

    cfg = _config("nonprivate_full", steps=3)
    cfg.optimizer.lr, cfg.eval_at_start = 1e-1, True
    res = _trainer(cfg, tmp_path, task).run(progress=False)
    mesh = make_mesh(MeshSettings(), ONE)
    oracle = Evaluator(task.eval_fn, task.eval_data, cfg.eval_batch_size, mesh)(task.params)
    assert set(res["eval_at_start"]) == set(oracle)
    for k, v in oracle.items():
        assert res["eval_at_start"][k] == pytest.approx(float(v), rel=1e-6), k
    assert res["eval_at_start"]["test/loss"] != pytest.approx(res["eval"]["test/loss"])
    rows = read_jsonl(str(tmp_path / "metrics.jsonl"))
    assert [r["step"] for r in rows if "eval/test/accuracy" in r] == [0, 3]
    with pytest.raises(TypeError, match="eval_at_start"):  # the config schema types it
        cfg.eval_at_start = "yes"


def test_freeze_keeps_matching_leaves_and_trains_the_rest(task, tmp_path):
    """``config.freeze`` (a regex over ``a/b/c`` paths): the matching leaves stay at their
    initial values bit for bit in every phase, the others move, and a pattern that matches
    nothing is a ConfigError naming it (a typo must not silently freeze nothing)."""
    from dpjax.training.settings import ConfigError

    cfg = _config("dp_full", steps=2)
    cfg.freeze = r"^dense1/bias$|head/kernel"
    trainer = _trainer(cfg, tmp_path / "a", task)
    trainer.run(progress=False)
    params, init = jax.device_get(trainer.state.params), task.params
    for layer, leaf in (("dense1", "bias"), ("head", "kernel")):
        np.testing.assert_array_equal(np.asarray(params[layer][leaf]), init[layer][leaf])
    for layer, leaf in (("dense1", "kernel"), ("head", "bias")):
        assert not np.array_equal(np.asarray(params[layer][leaf]), init[layer][leaf])
    cfg.freeze = "dense_one/bias"
    with pytest.raises(ConfigError, match="config.freeze='dense_one/bias' matches no"):
        _trainer(cfg, tmp_path / "b", task)
    cfg.freeze = "."
    with pytest.raises(ConfigError, match="freezes every parameter that phase 'full'"):
        _trainer(cfg, tmp_path / "d", task)
    cfg.freeze = "(("
    with pytest.raises(ConfigError, match=r"config.freeze='\(\(' is not a valid regex"):
        _trainer(cfg, tmp_path / "c", task)
