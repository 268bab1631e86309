"""Checkpoints: mismatched configs / shapes and corrupt files give clear errors."""

import os
import shutil

import jax
import pytest

from dpjax.training import CheckpointError, Trainer
from experiments.configs import toy

ONE = jax.devices()[:1]


def _config():
    c = toy.get_config("dp_bitfit")
    c.steps, c.epochs = 2, None
    c.privacy.target_epsilon, c.privacy.noise_multiplier = None, 1.0
    c.privacy.accountant = "rdp"
    return c


@pytest.fixture(scope="module")
def task():
    return toy.build_task(toy.get_config().task)


@pytest.fixture(scope="module")
def finished(task, tmp_path_factory):
    """A workdir holding the final (step 2) checkpoint of a short run."""
    workdir = tmp_path_factory.mktemp("run")
    Trainer(_config(), str(workdir), task=task, devices=ONE).run(progress=False)
    assert os.path.isdir(workdir / "checkpoints" / "2")
    return workdir


def _copy(src, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(src, dst)
    return dst


def test_different_config_is_refused(task, finished, tmp_path):
    cfg = _config()
    cfg.optimizer.lr = 1e-2
    with pytest.raises(CheckpointError, match="different config"):
        Trainer(cfg, str(_copy(finished, tmp_path)), task=task, devices=ONE).run(progress=False)


def test_operational_changes_are_allowed(task, finished, tmp_path):
    cfg = _config()
    cfg.log_every, cfg.eval_every = 2, 1  # not part of the fingerprint
    res = Trainer(cfg, str(_copy(finished, tmp_path)), task=task, devices=ONE).run(progress=False)
    assert res["steps"] == 2


def test_different_parameter_shapes_are_refused(finished, tmp_path):
    tcfg = toy.get_config().task
    tcfg.hidden = 12  # same config fingerprint (task passed in), other shapes
    other = toy.build_task(tcfg)
    with pytest.raises(CheckpointError, match=r"parameter 'dense1/bias' is \[\[16\], 'float32'\]"):
        Trainer(_config(), str(_copy(finished, tmp_path)), task=other, devices=ONE).run(
            progress=False
        )


@pytest.mark.parametrize("target", ["state", "meta"])
def test_corrupt_checkpoint_is_reported(task, finished, tmp_path, target):
    workdir = _copy(finished, tmp_path)
    item = workdir / "checkpoints" / "2" / target
    for root, _, files in os.walk(item):
        for f in files:
            with open(os.path.join(root, f), "wb") as fh:
                fh.write(b"\x00garbage")
    with pytest.raises(CheckpointError, match="checkpoints/2"):
        Trainer(_config(), str(workdir), task=task, devices=ONE).run(progress=False)
