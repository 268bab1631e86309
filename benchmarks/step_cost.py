"""Step cost of DP fine-tuning vs non-private baselines: XLA flops, memory, time, max batch.

For each model shape (BERT-base classification, GPT-2 LM, ViT-B/16 classification, from
:mod:`dpjax.models` with random init) and each ``(B, T)`` it compiles five step variants
(:mod:`benchmarks.variants`): non-private full, non-private BiTFiT, DP full with the
``vmap`` and ``ghost`` engines, and DP-BiTFiT; all in one process. ``--variants`` also
takes the LoRA steps (non-private LoRA, DP-LoRA with ``vmap`` / ``ghost``, DP-BiTFiT-LoRA),
reported as ratios to non-private LoRA with their goals. It prints markdown
tables of ratios against the non-private full step (and the vmap engine), checks the
goals of the issues, and writes ``results.json``, ``tables.md`` and ``cost_vs_T.png``
under ``--out``.

* ``--mode compile``: XLA's exact figures (``memory_analysis`` / ``cost_analysis``), no
  execution: safe for big shapes on a CPU.
* ``--mode time``: median wall-clock of interleaved runs on concrete random inputs (use
  small shapes on a CPU). ``--mode both`` does both.
* ``--budget-gib G``: largest batch whose XLA footprint fits ``G`` GiB (compile-only).
* The small-model section (``--sections small``) compares the vmap engine with a
  non-private step on a 2-layer MLP and BERT-tiny at ``B = 64``.

Examples::

    python -m benchmarks.step_cost --models bert-base --seq-lens 128,512 --batch-sizes 8 \\
        --mode compile --out benchmarks/results/cpu_compile
    python -m benchmarks.step_cost --models bert-tiny --seq-lens 32 --batch-sizes 8 \\
        --mode time --repeats 5 --out /tmp/toy
    python -m benchmarks.step_cost --models bert-base,gpt2 --seq-lens 128,512,1024 \\
        --batch-sizes 8 --variants nonprivate_full,dp_ghost,nonprivate_lora,dp_lora_vmap,\\
dp_lora_ghost,dp_bitfit_lora --mode compile --out benchmarks/results/lora_compile
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax

from benchmarks import report
from benchmarks.flip import flip_table
from benchmarks.measure import compile_stats, max_batch, time_steps
from benchmarks.shapes import make_workload, tokens_of
from benchmarks.variants import LORA_VARIANTS, VARIANTS, available_methods, make_step

__all__ = ["main", "parse_args", "run"]

GIB = 2.0**30


def _csv(kind: type) -> Any:
    return lambda s: [kind(x) for x in s.split(",") if x.strip()]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line (argparse only: no extra packages)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", type=_csv(str), default=["bert-base", "gpt2", "vit-base"])
    p.add_argument("--seq-lens", type=_csv(int), default=[64, 128, 256, 512, 1024])
    p.add_argument("--batch-sizes", type=_csv(int), default=[8, 32])
    p.add_argument("--variants", type=_csv(str), default=list(VARIANTS))
    p.add_argument("--mode", choices=["compile", "time", "both", "none"], default="compile")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds per variant")
    p.add_argument("--budget-gib", type=float, default=None, help="max-batch search budget")
    p.add_argument("--budget-seq-lens", type=_csv(int), default=[512])
    p.add_argument("--sections", type=_csv(str), default=["main"], help="main,small")
    p.add_argument("--small-models", type=_csv(str), default=["mlp", "bert-tiny"])
    p.add_argument("--small-batch", type=int, default=64)
    p.add_argument("--out", default="benchmarks/results/latest")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument(
        "--isolate-nonfinite",
        action="store_true",
        help="measure DP steps with clipped_grad's non-finite guard (a lax.cond whose "
        "untaken branch XLA still counts in flops); off by default",
    )
    args = p.parse_args(argv)
    known = VARIANTS + LORA_VARIANTS
    unknown = sorted(set(args.variants) - set(known))
    if unknown:
        p.error(f"unknown variants {unknown}; known {list(known)}")
    return args


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _configs(models: Sequence[str], seq_lens: Sequence[int], batches: Sequence[int]) -> list:
    """``(model, B, T)`` triples; image models get one T (their patch count)."""
    out, seen = [], set()
    for model in models:
        for b in batches:
            for t in seq_lens:
                key = (model, b, tokens_of(make_workload(model, 1, t).kind, t, model))
                if key not in seen:
                    seen.add(key)
                    out.append((model, b, t))
    return out


def measure_config(
    model: str, batch: int, seq_len: int, args: argparse.Namespace, variants: Sequence[str]
) -> list[dict[str, Any]]:
    """Rows for every variant of one configuration (compile and/or time)."""
    work = make_workload(model, batch, seq_len, args.dtype)
    base = {"model": model, "kind": work.kind, "batch": batch, "tokens": work.tokens,
            "seq_len": seq_len, "dtype": args.dtype}  # fmt: skip
    rows, steps = [], {}
    for v in variants:
        step = make_step(v, work, isolate_nonfinite=args.isolate_nonfinite)
        row = dict(base, variant=v, available=True)
        steps[v] = step
        if args.mode in ("compile", "both"):
            row.update(compile_stats(step, work.params, work.batch))
            _log(f"  {model} B={batch} T={work.tokens} {v}: {row['compile_s']:.1f}s compile")
        rows.append(row)
    if args.mode in ("time", "both") and steps:
        concrete = make_workload(model, batch, seq_len, args.dtype, concrete=True)
        times = time_steps(steps, concrete.params, concrete.batch, repeats=args.repeats, log=_log)
        for row in rows:
            row.update(times.get(row["variant"], {}))
    return rows


def budget_search(model: str, seq_len: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Max batch in ``--budget-gib`` per variant (compile-only)."""
    out = []
    budget = args.budget_gib * GIB
    for v in args.variants:
        w1 = make_workload(model, 1, seq_len, args.dtype)
        entry = {"model": model, "tokens": w1.tokens, "dtype": args.dtype, "variant": v,
                 "budget_gib": args.budget_gib}  # fmt: skip

        def bytes_at(b: int, v: str = v) -> float:
            w = make_workload(model, b, seq_len, args.dtype)
            step = make_step(v, w, isolate_nonfinite=args.isolate_nonfinite)
            return compile_stats(step, w.params, w.batch)["footprint_bytes"]

        start = time.perf_counter()
        found = max_batch(bytes_at, budget, start=max(args.batch_sizes))
        _log(f"  budget {model} T={w1.tokens} {v}: B={found['max_batch']} "
             f"({len(found['probes'])} compiles, {time.perf_counter() - start:.0f}s)")  # fmt: skip
        out.append(dict(entry, available=True, **found))
    base = {b["tokens"]: b["max_batch"] for b in out if b["variant"] == "nonprivate_full"}
    for b in out:
        b["base_max_batch"] = base.get(b["tokens"])
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Runs every requested section and returns the results dict (also written to disk)."""
    dev = jax.devices()[0]
    env = {"jax": jax.__version__, "backend": jax.default_backend(),
           "device": getattr(dev, "device_kind", str(dev)), "devices": jax.device_count(),
           "methods": sorted(available_methods()), "argv": sys.argv[1:],
           "isolate_nonfinite": args.isolate_nonfinite}  # fmt: skip
    _log(f"dpjax step cost on {env['backend']} ({env['device']}), methods {env['methods']}")
    results: dict[str, Any] = {"env": env, "rows": [], "small": [], "budget": [], "flip": {}}
    if "main" in args.sections and args.mode != "none":
        for model, b, t in _configs(args.models, args.seq_lens, args.batch_sizes):
            results["rows"] += measure_config(model, b, t, args, args.variants)
            write(results, args, quiet=True)  # partial results survive a time limit
    if "small" in args.sections:
        small = argparse.Namespace(**{**vars(args), "mode": "both"})  # small: always timed
        for model in args.small_models:
            results["small"] += measure_config(
                model, args.small_batch, 32, small, ["nonprivate_full", "dp_vmap"]
            )
    if args.budget_gib:
        for model in args.models:
            for t in sorted({tokens_of_seq(model, t) for t in args.budget_seq_lens}):
                results["budget"] += budget_search(model, t, args)
    for model in args.models:
        w = make_workload(model, 1, max(args.seq_lens))
        counts = sorted({tokens_of(w.kind, t, model) for t in args.seq_lens})
        results["flip"][model] = flip_table(w.params, counts)
    write(results, args)
    return results


def tokens_of_seq(model: str, seq_len: int) -> int:
    """The ``seq_len`` to build ``model`` with (image models ignore it: one value)."""
    return 0 if make_workload(model, 1, seq_len).kind == "vit" else seq_len


def markdown(results: dict[str, Any]) -> str:
    """Every table as one markdown document."""
    env = results["env"]
    parts = [f"# dpjax step cost ({env['backend']}: {env['device']}, jax {env['jax']})",
             f"methods registered: {', '.join(env['methods'])}"]  # fmt: skip
    rows = results["rows"]
    if any("temp_bytes" in r for r in rows):
        parts += [
            "## XLA flops and memory (ratios to non-private full)",
            report.compile_table(rows),
        ]
    if any("median_s" in r for r in rows):
        parts += ["## Step time, median of interleaved runs", report.time_table(rows)]
    if any("lora" in r["variant"] for r in rows):
        parts += ["## LoRA variants (ratios to non-private LoRA and full)", report.lora_table(rows)]
    if results["budget"]:
        parts += ["## Max batch in the memory budget (XLA temp + args + out)",
                  report.budget_table(results["budget"])]  # fmt: skip
    if results["small"]:
        small = results["small"]
        parts += ["## Small models: vmap engine vs non-private step",
                  report.compile_table(small), report.time_table(small)]  # fmt: skip
    if rows:
        parts += ["## Goals", report.goals_table(report.goals(rows))]
    for model, flips in results["flip"].items():
        parts += [f"## Ghost vs direct norm per layer: {model}", report.flip_markdown(model, flips)]
    return "\n\n".join(parts) + "\n"


def _clean(x: Any) -> Any:
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def write(results: dict[str, Any], args: argparse.Namespace, quiet: bool = False) -> None:
    """Prints the tables and writes ``results.json``, ``tables.md``, ``cost_vs_T.png``."""
    os.makedirs(args.out, exist_ok=True)
    text = markdown(results)
    if not quiet:
        print(text)
    with open(os.path.join(args.out, "tables.md"), "w") as f:
        f.write(text)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(_clean(results), f, indent=1)
    if not (args.no_plot or quiet) and results["rows"]:
        report.plot(results["rows"], os.path.join(args.out, "cost_vs_T.png"))


def main(argv: Sequence[str] | None = None) -> int:
    run(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
