"""Smoke test of benchmarks/step_cost.py on toy sizes (tables, JSON, XLA flops ordering)."""

from __future__ import annotations

import json
import math

import pytest

from benchmarks import report, step_cost
from benchmarks.measure import max_batch
from benchmarks.variants import available_methods


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    variants = ["nonprivate_full", "nonprivate_bitfit", "dp_bitfit"]
    args = step_cost.parse_args(
        ["--models", "bert-tiny", "--seq-lens", "8", "--batch-sizes", "4",
         "--variants", ",".join(variants), "--mode", "compile", "--sections", "main,small",
         "--small-models", "mlp", "--small-batch", "8", "--repeats", "2",
         "--out", str(out), "--no-plot"]
    )  # fmt: skip
    return step_cost.run(args), out


def test_tables_and_json_are_written(toy_run):
    results, out = toy_run
    text = (out / "tables.md").read_text()
    assert "## XLA flops and memory" in text
    assert "## Goals" in text
    assert "## Small models" in text
    saved = json.loads((out / "results.json").read_text())
    assert {r["variant"] for r in saved["rows"]} == {
        "nonprivate_full",
        "nonprivate_bitfit",
        "dp_bitfit",
    }
    assert all(r["temp_bytes"] >= 0 for r in saved["rows"] if r["available"])
    small = {r["variant"]: r for r in results["small"]}
    assert small["dp_vmap"]["median_s"] > 0 and small["nonprivate_full"]["median_s"] > 0


def test_bitfit_needs_fewer_flops_than_full(toy_run):
    if "bitfit" not in available_methods():
        pytest.skip("bitfit engine not registered")
    rows = {r["variant"]: r for r in toy_run[0]["rows"]}
    assert rows["dp_bitfit"]["available"]
    assert rows["dp_bitfit"]["flops"] < rows["nonprivate_full"]["flops"]
    assert report.ratio(toy_run[0]["rows"], rows["dp_bitfit"], "flops") < 1.0


def test_plot_is_written(toy_run, tmp_path):
    pytest.importorskip("matplotlib")
    assert report.plot(toy_run[0]["rows"], str(tmp_path / "p.png"))
    assert (tmp_path / "p.png").stat().st_size > 0


@pytest.mark.parametrize(("fixed", "per_row", "budget"), [(100, 10, 1000), (5e8, 3e7, 4e9)])
def test_max_batch_finds_the_largest_fitting_batch(fixed, per_row, budget):
    calls = []

    def bytes_at(b):
        calls.append(b)
        return fixed + per_row * b

    found = max_batch(bytes_at, budget, rel_tol=0.0)
    best = math.floor((budget - fixed) / per_row)
    assert found["max_batch"] == best
    assert len(calls) <= 8


def test_max_batch_when_nothing_fits():
    assert max_batch(lambda b: 10.0 * b, 5.0)["max_batch"] == 0
