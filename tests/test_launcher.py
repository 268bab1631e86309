"""``python -m experiments.train``: overrides, outputs, and config errors before compiling."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY = "experiments/configs/toy.py"


def _launch(*args, timeout=300, devices=1):
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-m", "experiments.train", "--noprogress", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_smoke_run_with_overrides(tmp_path):
    out = _launch(f"--config={TOY}:smoke", f"--workdir={tmp_path}", "--config.optimizer.lr=0.02")
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["config"]["optimizer"]["lr"] == 0.02
    assert results["steps"] == 3 and results["method"] == "dp_bitfit"
    assert results["noise_multiplier"] == 1.0 and 0 < results["epsilon"] < float("inf")
    printed = json.loads(out.stdout[out.stdout.index("{") :])
    assert printed["epsilon"] == results["epsilon"]
    assert (tmp_path / "metrics.jsonl").exists()


@pytest.mark.parametrize(
    "override,message",
    [
        ("--config.optimizer.lr=-1", "config.optimizer.lr must be > 0, got -1.0"),
        ("--config.method=dp_magic", "config.method must be one of"),
        ("--config.privacy.delta=2.0", "config.privacy.delta must be in (0, 1), got 2.0"),
        ("--config.privacy.delta=1/(3n)", "or one of ('1/(2n)', 'n^-1.1'), got '1/(3n)'"),
        ("--config.sampler=fixed", "config.sampler='fixed' was renamed: use 'without_replacement'"),
    ],
)
def test_bad_config_fails_before_any_jax_work(tmp_path, override, message):
    out = _launch(f"--config={TOY}:dp_full", f"--workdir={tmp_path}", override, timeout=120)
    assert out.returncode != 0
    assert message in out.stderr
    assert "invalid config" in out.stderr
    assert not os.path.exists(tmp_path / "checkpoints")  # stopped before the trainer
