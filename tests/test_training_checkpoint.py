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


def test_one_phase_runs_store_only_the_trained_leaves(task, finished):
    """DP-BiTFiT's frozen weights never change: the checkpoint holds the biases and the
    head (and a digest of the rest), and a resumed run takes the rest from its task."""
    from dpjax.training.checkpoint import Checkpointer, base_digest

    trainer = Trainer(_config(), str(finished), task=task, devices=ONE)
    ckpt = Checkpointer(str(finished / "checkpoints"), keep=2, fingerprint="unused")
    meta = ckpt.read_meta(2)
    template = trainer.initial_state()
    trained = {"/".join(p) for p in dpjax_paths(template.train)}
    assert set(meta["params"]) == trained and len(trained) < len(dpjax_paths(template.params))
    assert meta["base"] == base_digest(template.frozen)
    ckpt.close()


def test_other_frozen_weights_are_refused(finished, tmp_path):
    tcfg = toy.get_config().task
    tcfg.init_seed = 1  # same shapes and config fingerprint, other frozen weights
    other = toy.build_task(tcfg)
    with pytest.raises(CheckpointError, match="other frozen weights"):
        Trainer(_config(), str(_copy(finished, tmp_path)), task=other, devices=ONE).run(
            progress=False
        )


def test_two_phase_runs_store_every_leaf(task, tmp_path):
    from dpjax.training.checkpoint import Checkpointer

    c = toy.get_config("two_phase")
    c.privacy.target_epsilon, c.privacy.noise_multiplier = None, 1.0
    c.privacy.accountant = "rdp"
    c.epochs, c.two_phase.full_epochs = 0.125, 0.0625  # 2 steps: one per phase
    trainer = Trainer(c, str(tmp_path), task=task, devices=ONE)
    trainer.run(progress=False)
    ckpt = Checkpointer(str(tmp_path / "checkpoints"), keep=2, fingerprint="unused")
    meta = ckpt.read_meta(ckpt.latest_step())
    assert "base" not in meta  # phase 1 trained the weights phase 2 freezes
    assert len(meta["params"]) == len(dpjax_paths(trainer.state.params))
    ckpt.close()


def dpjax_paths(tree):
    from dpjax.partition import leaf_paths

    return leaf_paths(tree)
