"""Merges result folders of :mod:`benchmarks.step_cost` into one set of tables and plots.

Long sweeps are run in pieces (one process per range of ``T`` or ``B``, compile-only
figures in one run and wall-clock in another). Every ratio is taken against baselines
measured in the same process, so for one configuration (model, B, T, dtype) each kind of
measurement (XLA figures, step time) must come whole from one folder; rows of the same
variant from a compile run and a time run are merged, and XLA figures found twice are
kept when equal (they are exact); anything else split across folders is refused. Writes
``tables.md``, ``results.json`` and one ``cost_vs_T_B<B>.png`` per batch size.

Example::

    python -m benchmarks.combine benchmarks/results/cpu_time_sweep_b8 \\
        benchmarks/results/cpu_time_sweep_b8_long --out benchmarks/results/cpu_time_b8
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import report

__all__ = ["combine", "main"]


#: Row fields by the measurement that produces them.
MEASUREMENTS = {
    "compile": ("flops", "temp_bytes", "argument_bytes", "output_bytes", "footprint_bytes"),
    "time": ("median_s", "min_s", "max_s", "n"),
}


def _config(row: dict[str, Any]) -> tuple:
    return (row["model"], row["batch"], row["tokens"], row["dtype"])


def combine(folders: Sequence[str]) -> dict[str, Any]:
    """The union of the ``results.json`` of ``folders`` (rows, budget, flip tables).

    Raises:
      FileNotFoundError: a folder has no ``results.json``.
      ValueError: one configuration has rows in two folders, or the folders were measured
        on different devices.
    """
    repeated = sorted({f for f in folders if list(folders).count(f) > 1})
    if repeated:
        raise ValueError(f"folders given more than once: {repeated}")
    merged: dict[str, Any] = {"env": {}, "rows": [], "small": [], "budget": [], "flip": {}}
    owner: dict[tuple, str] = {}
    rows: dict[tuple, dict[str, Any]] = {}
    for folder in folders:
        path = os.path.join(folder, "results.json")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{folder!r} has no results.json (not a step_cost --out?)")
        with open(path) as f:
            results = json.load(f)
        for row in results.get("rows", []):
            for kind, fields in MEASUREMENTS.items():
                if not any(f in row for f in fields):
                    continue
                key = (*_config(row), kind)
                seen = rows.get((*_config(row), row["variant"]), {})
                repeat = kind == "compile" and all(seen.get(f) == row.get(f) for f in fields)
                if owner.setdefault(key, folder) != folder and not repeat:
                    raise ValueError(
                        f"configuration {key[:4]} (model, B, T, dtype) has {kind} rows in both "
                        f"{owner[key]!r} and {folder!r}: ratios need one process's baselines"
                    )
            same = rows.get((*_config(row), row["variant"]))
            if same is None:
                rows[(*_config(row), row["variant"])] = dict(row)
            else:
                same.update(row)
        env = results.get("env", {})
        if not merged["env"]:
            merged["env"] = {**env, "sources": list(folders)}
        elif (env.get("backend"), env.get("device")) != (
            merged["env"].get("backend"),
            merged["env"].get("device"),
        ):
            raise ValueError(
                f"{folder!r} was measured on {env.get('backend')}/{env.get('device')}, "
                f"{folders[0]!r} on {merged['env'].get('backend')}/{merged['env'].get('device')}"
            )
        merged["small"] += results.get("small", [])
        merged["budget"] += results.get("budget", [])
        for model, flips in results.get("flip", {}).items():  # union of the T columns
            known = {(f["d"], f["p"], f["example"]): f for f in merged["flip"].get(model, [])}
            for f in flips:
                key = (f["d"], f["p"], f["example"])
                if key in known:
                    known[key]["choice"].update(f["choice"])
                else:
                    known[key] = {**f, "choice": dict(f["choice"])}
            merged["flip"][model] = list(known.values())
    merged["rows"] = sorted(rows.values(), key=lambda r: (r["model"], r["batch"], r["tokens"]))
    return merged


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.combine FOLDER... --out DIR``."""
    from benchmarks import step_cost

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("folders", nargs="+")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    results = combine(args.folders)
    step_cost.write(results, argparse.Namespace(out=args.out, no_plot=True))
    for batch in sorted({r["batch"] for r in results["rows"]}):
        report.plot(results["rows"], os.path.join(args.out, f"cost_vs_T_B{batch}.png"), batch)
    return 0


if __name__ == "__main__":
    sys.exit(main())
