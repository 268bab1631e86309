"""Export of a run (``dpjax.training.export``, ``experiments.export``): the exported
model predicts what the trained (adapted) model predicts, without interception; the
privacy figures are the checkpoint's; no secret is written."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from dpjax import training
from dpjax.training.checkpoint import CheckpointError
from dpjax.training.export import export, load, read_config
from experiments.configs import toy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _toy(method: str):
    c = toy.get_config("dp_bitfit")
    c.method = method
    c.peft.targets, c.peft.rank = ".", 2
    c.steps, c.epochs = 3, None
    c.privacy.accountant = "rdp"
    return c


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("lora_run"))
    results = training.train(_toy("dp_lora"), workdir, progress=False)
    return workdir, results


@pytest.mark.slow
def test_merged_export_predicts_like_the_adapted_model(lora_run, tmp_path):
    workdir, results = lora_run
    info = export(workdir, str(tmp_path))
    params, constants = load(str(tmp_path))
    assert info["adapters_merged"] and "lora" not in params and constants == {}
    trainer = training.Trainer(read_config(workdir), workdir)
    state, _ = trainer.restore()
    moved = state.params["lora"]["dense1"]["lora_b"]
    assert np.abs(np.asarray(moved)).max() > 0  # the adapters did train: merging matters
    batch = dict(trainer.task.eval_data["test"].take(np.arange(32)))
    adapted = trainer.task.loss_fn(state.params, batch)  # with interception
    base = toy.build_task(read_config(workdir).task)  # the plain model, no adapters
    merged = base.loss_fn(jax.tree.map(np.asarray, params), batch)
    np.testing.assert_allclose(merged, adapted, rtol=1e-5, atol=1e-6)
    unmerged = {k: v for k, v in state.params.items() if k != "lora"}
    assert not np.allclose(base.loss_fn(unmerged, batch), adapted)  # the oracle can fail


def test_export_reports_the_checkpoints_privacy_and_no_secret(lora_run, tmp_path):
    workdir, results = lora_run
    info = export(workdir, str(tmp_path))
    assert info["step"] == results["steps"] == 3
    assert info["epsilon"] == pytest.approx(results["epsilon"], rel=1e-9)
    assert info["delta"] == results["delta"] and info["method"] == "dp_lora"
    trainer = training.Trainer(read_config(workdir), workdir)
    root = str(trainer.secrets.root)
    for name in os.listdir(tmp_path):
        blob = (tmp_path / name).read_bytes()
        assert root.encode() not in blob, name
    assert json.loads((tmp_path / "export.json").read_text()) == info


def test_earlier_step_and_bad_inputs(lora_run, tmp_path):
    workdir, _ = lora_run
    with pytest.raises(CheckpointError):
        export(workdir, str(tmp_path), step=99)
    with pytest.raises(FileNotFoundError, match="not a dpjax run"):
        export(str(tmp_path), str(tmp_path / "out"))
    with pytest.raises(ValueError, match="no Hugging Face form"):
        export(workdir, str(tmp_path), hf=True)  # the toy task has no HF model


def test_a_run_without_checkpoint_is_refused(tmp_path):
    config = _toy("dp_bitfit")
    (tmp_path / "config.json").write_text(json.dumps(config.to_dict()))
    with pytest.raises(CheckpointError, match="no checkpoint"):
        export(str(tmp_path), str(tmp_path / "out"))


@pytest.mark.slow
def test_gpt2_lora_run_exports_a_hugging_face_checkpoint(tmp_path):
    """E2E DP-LoRA smoke (random gpt2-tiny) -> ``experiments.export --hf`` -> the HF folder
    loads with ``from_pretrained`` and gives the adapted model's logits."""
    from dpjax.models import from_pretrained
    from experiments.configs import e2e

    pytest.importorskip("tensorflow_datasets")
    workdir = tmp_path / "run"
    training.train(e2e.get_config("dp_lora,smoke"), str(workdir), progress=False)
    env = {**os.environ, "PYTHONPATH": ROOT, "XLA_FLAGS": ""}
    cmd = [sys.executable, "-m", "experiments.export", f"--workdir={workdir}",
           f"--out={tmp_path / 'out'}", "--hf"]  # fmt: skip
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    info = json.loads(done.stdout[done.stdout.index("{") :])
    assert info["adapters_merged"] and info["hf"].endswith("hf")
    model, params = from_pretrained(str(tmp_path / "out" / "hf"), "lm")
    trainer = training.Trainer(read_config(str(workdir)), str(workdir))
    state, _ = trainer.restore()
    batch = dict(trainer.task.train_data.take(np.arange(4)))
    ids, mask = batch["input_ids"], batch["attention_mask"]
    got = model.apply({"params": params}, ids, mask)
    want = trainer.task.model.apply  # the adapted logits: the trainer's model, intercepted
    from dpjax import peft

    spec = peft.lora(trainer.settings.peft.rank, trainer.settings.peft.alpha,
                     trainer.settings.peft.targets)  # fmt: skip
    adapted = spec.apply(lambda p, b: want({"params": p}, b["input_ids"], b["attention_mask"]))
    np.testing.assert_allclose(got, adapted(state.params, batch), rtol=1e-4, atol=1e-5)


def test_a_user_supplied_seed_is_not_written_and_export_still_rebuilds_the_run(tmp_path):
    config = _toy("dp_bitfit")
    config.privacy.noise_seed = 424242
    training.train(config, str(tmp_path), progress=False)
    assert "424242" not in (tmp_path / "config.json").read_text()
    info = export(str(tmp_path), str(tmp_path / "out"))  # the secret comes from the checkpoint
    assert info["step"] == 3 and not info["adapters_merged"]
    config.privacy.noise_seed = 7  # another seed on the same checkpoint: refused
    with pytest.raises(CheckpointError, match="another secret than privacy.noise_seed"):
        training.Trainer(config, str(tmp_path))
