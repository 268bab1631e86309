"""Smoke test of benchmarks/step_cost.py on toy sizes (tables, JSON, XLA flops ordering)."""

from __future__ import annotations

import importlib.util
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


@pytest.mark.slow
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


def _write_results(folder, rows, device="cpu"):
    folder.mkdir()
    env = {"backend": "cpu", "device": device, "jax": "x", "methods": ["ghost"]}
    payload = {"env": env, "rows": rows, "small": [], "budget": [], "flip": {}}
    (folder / "results.json").write_text(json.dumps(payload))
    return str(folder)


def _row(variant, tokens, **fields):
    if "temp_bytes" in fields:  # the other XLA figures a compile run records
        fields = {"flops": 1.0, "argument_bytes": 1.0, "output_bytes": 1.0,
                  "footprint_bytes": 1.0 + fields["temp_bytes"], **fields}  # fmt: skip
    return {"model": "m", "kind": "bert", "batch": 8, "tokens": tokens, "dtype": "float32",
            "variant": variant, "available": True, **fields}  # fmt: skip


def test_combine_merges_time_and_compile_runs(tmp_path):
    """Time rows of one run and XLA rows of another join per variant; ratios still come
    from one process per measurement (checked against hand-computed values)."""
    from benchmarks import combine

    timed = _write_results(tmp_path / "t", [
        _row("nonprivate_full", 64, median_s=2.0), _row("dp_ghost", 64, median_s=2.5),
        _row("nonprivate_full", 512, median_s=8.0), _row("dp_ghost", 512, median_s=10.4),
    ])  # fmt: skip
    compiled = _write_results(tmp_path / "c", [
        _row("nonprivate_full", 64, temp_bytes=100.0), _row("dp_ghost", 64, temp_bytes=130.0),
    ])  # fmt: skip
    again = _write_results(tmp_path / "c2", [  # the same exact XLA figures: accepted
        _row("nonprivate_full", 64, temp_bytes=100.0), _row("dp_ghost", 64, temp_bytes=130.0),
    ])  # fmt: skip
    rows = combine.combine([timed, compiled, again])["rows"]
    assert len(rows) == 4
    ghost64 = next(r for r in rows if r["variant"] == "dp_ghost" and r["tokens"] == 64)
    assert report.ratio(rows, ghost64, "median_s") == pytest.approx(1.25)
    assert report.ratio(rows, ghost64, "temp_bytes") == pytest.approx(1.30)
    ghost512 = next(r for r in rows if r["variant"] == "dp_ghost" and r["tokens"] == 512)
    assert report.ratio(rows, ghost512, "median_s") == pytest.approx(1.30)
    out = tmp_path / "out"
    assert combine.main([timed, compiled, "--out", str(out)]) == 0
    assert "| m | 512 | 8 | dp_ghost | 10400.0 | 1.30 |" in (out / "tables.md").read_text()
    if importlib.util.find_spec("matplotlib"):
        assert (out / "cost_vs_T_B8.png").stat().st_size > 0


def test_combine_refuses_ratios_across_processes(tmp_path):
    from benchmarks import combine

    a = _write_results(tmp_path / "a", [_row("nonprivate_full", 64, median_s=2.0)])
    b = _write_results(tmp_path / "b", [_row("dp_ghost", 64, median_s=2.5)])
    with pytest.raises(ValueError, match=r"time rows in both '.*/a' and '.*/b'"):
        combine.combine([a, b])
    c = _write_results(tmp_path / "c", [_row("nonprivate_full", 64, temp_bytes=1.0)])
    d = _write_results(tmp_path / "d", [_row("nonprivate_full", 64, temp_bytes=2.0)])
    with pytest.raises(ValueError, match="compile rows in both"):
        combine.combine([c, d])  # XLA figures that differ: not the same measurement
    e = _write_results(tmp_path / "e", [_row("dp_ghost", 128, median_s=1.0)], device="gpu")
    with pytest.raises(ValueError, match="measured on cpu/gpu"):
        combine.combine([a, e])
    with pytest.raises(ValueError, match="more than once"):
        combine.combine([a, a])
    with pytest.raises(FileNotFoundError, match="no results.json"):
        combine.combine([str(tmp_path)])
