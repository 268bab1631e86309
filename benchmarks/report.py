"""Tables (markdown), goal checks and plots from the benchmark's result rows.

A *row* is one step variant on one configuration::

    {"model", "kind", "batch", "tokens", "dtype", "variant", "available",
     "flops", "temp_bytes", "argument_bytes", "output_bytes", "footprint_bytes",
     "median_s", ...}

Ratios are always taken against ``nonprivate_full`` (and ``dp_vmap`` where stated) of the
same model, batch, tokens and dtype, measured in the same process.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = [
    "budget_table",
    "compile_table",
    "flip_markdown",
    "goals",
    "goals_table",
    "plot",
    "ratio",
    "time_table",
]

MIB = 2.0**20
Row = dict[str, Any]


def _key(row: Row) -> tuple:
    return (row["model"], row["batch"], row["tokens"], row["dtype"])


def _find(rows: Iterable[Row], like: Row, variant: str) -> Row | None:
    for r in rows:
        if _key(r) == _key(like) and r["variant"] == variant and r.get("available", True):
            return r
    return None


def ratio(rows: Sequence[Row], row: Row, field: str, base: str = "nonprivate_full") -> float:
    """``row[field] / base_row[field]`` for the base variant of the same configuration."""
    other = _find(rows, row, base)
    num = row.get(field, math.nan)
    den = other.get(field, math.nan) if other else math.nan
    if num is None or den is None or not den or math.isnan(num) or math.isnan(den):
        return math.nan
    return num / den


def _f(x: float, digits: int = 2) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _mib(x: float) -> str:
    return _f(x / MIB, 0 if x >= 100 * MIB else 2)


def _md(header: Sequence[str], body: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in body]
    return "\n".join(lines)


def compile_table(rows: Sequence[Row]) -> str:
    """XLA flops and memory per variant, absolute and as ratios to non-private full."""
    body = []
    for r in rows:
        if "temp_bytes" not in r and r.get("available", True):
            continue
        head = [r["model"], r["tokens"], r["batch"], r["variant"]]
        if not r.get("available", True):
            body.append(head + ["n/a"] * 8)
            continue
        body.append(
            head
            + [
                _f(r["flops"] / 1e9, 1),
                _f(ratio(rows, r, "flops")),
                _mib(r["temp_bytes"]),
                _f(ratio(rows, r, "temp_bytes")),
                _f(ratio(rows, r, "temp_bytes", "dp_vmap")),
                _mib(r["argument_bytes"]),
                _mib(r["output_bytes"]),
                _f(ratio(rows, r, "footprint_bytes")),
            ]
        )
    header = ["model", "T", "B", "variant", "GFLOP", "x flops", "temp MiB", "x temp",
              "temp / vmap", "args MiB", "out MiB", "x footprint"]  # fmt: skip
    return _md(header, body)


def time_table(rows: Sequence[Row]) -> str:
    """Median step time (interleaved runs) and its ratios to the non-private steps."""
    body = []
    for r in rows:
        if "median_s" not in r:
            continue
        body.append(
            [r["model"], r["tokens"], r["batch"], r["variant"], _f(r["median_s"] * 1e3, 1),
             _f(ratio(rows, r, "median_s")), _f(ratio(rows, r, "median_s", "nonprivate_bitfit")),
             _f(ratio(rows, r, "median_s", "dp_vmap")), r.get("n", "")]
        )  # fmt: skip
    header = ["model", "T", "B", "variant", "median ms", "x np full", "x np bitfit",
              "x vmap", "runs"]  # fmt: skip
    return _md(header, body)


def lora_table(rows: Sequence[Row]) -> str:
    """The LoRA variants as ratios to non-private LoRA and to non-private full."""
    body = []
    for r in rows:
        if "lora" not in r["variant"] or not r.get("available", True):
            continue
        body.append(
            [r["model"], r["tokens"], r["batch"], r["variant"],
             _f(ratio(rows, r, "flops", "nonprivate_lora")),
             _f(ratio(rows, r, "temp_bytes", "nonprivate_lora")),
             _f(ratio(rows, r, "temp_bytes")),
             _f(ratio(rows, r, "median_s", "nonprivate_lora")), _f(ratio(rows, r, "median_s"))]
        )  # fmt: skip
    header = ["model", "T", "B", "variant", "x flops np LoRA", "x temp np LoRA",
              "x temp np full", "x time np LoRA", "x time np full"]  # fmt: skip
    return _md(header, body)


def budget_table(budget: Sequence[Row]) -> str:
    """Largest batch whose XLA footprint fits the memory budget, per variant."""
    body = [
        [b["model"], b["tokens"], b["dtype"], b["variant"], _f(b["budget_gib"], 2),
         b["max_batch"] if b.get("available", True) else "n/a",
         _f(b["max_batch"] / b["base_max_batch"]) if b.get("base_max_batch") else "n/a",
         len(b.get("probes", {}))]
        for b in budget
    ]  # fmt: skip
    header = ["model", "T", "dtype", "variant", "budget GiB", "max B", "x np full", "compiles"]
    return _md(header, body)


def flip_markdown(model: str, flips: Sequence[Row]) -> str:
    """Ghost/direct choice per layer shape (the engine's rule ``2T^2 <= d p``)."""
    counts = sorted({t for f in flips for t in f["choice"]}, key=int)
    body = [
        [model, f"{f['d']}x{f['p']}", f["layers"], f["example"], _f(f["flip_T"], 0)]
        + [f["choice"].get(t, "-") for t in counts]
        for f in flips
    ]
    return _md(["model", "d x p", "layers", "e.g.", "flip T*"] + [f"T={t}" for t in counts], body)


# (goal, variant, field, base variant, threshold, applies to (B, T) or None = all)
GOALS = [
    ("DP-BiTFiT time <= 0.70x non-private full", "dp_bitfit", "median_s", "nonprivate_full",
     0.70, None),
    ("DP-BiTFiT time <= 1.05x non-private BiTFiT", "dp_bitfit", "median_s",
     "nonprivate_bitfit", 1.05, None),
    ("DP-BiTFiT temp <= 0.5x DP full (vmap)", "dp_bitfit", "temp_bytes", "dp_vmap", 0.5, None),
    ("ghost temp <= 1.3x non-private full (B=32, T=512)", "dp_ghost", "temp_bytes",
     "nonprivate_full", 1.3, (32, 512)),
    ("ghost temp <= 0.5x vmap (B=32, T=512)", "dp_ghost", "temp_bytes", "dp_vmap", 0.5,
     (32, 512)),
    ("ghost time <= 1.5x non-private full", "dp_ghost", "median_s", "nonprivate_full", 1.5,
     None),
    ("(proxy) DP-BiTFiT flops <= 0.70x non-private full", "dp_bitfit", "flops",
     "nonprivate_full", 0.70, None),
    ("DP-LoRA (ghost) time <= 1.10x non-private LoRA", "dp_lora_ghost", "median_s",
     "nonprivate_lora", 1.10, None),
    ("DP-LoRA (ghost) temp <= 1.05x non-private LoRA", "dp_lora_ghost", "temp_bytes",
     "nonprivate_lora", 1.05, None),
    ("DP-LoRA (ghost) time < DP full (ghost)", "dp_lora_ghost", "median_s", "dp_ghost",
     0.9999, None),
    ("DP-LoRA (ghost) temp < DP full (ghost)", "dp_lora_ghost", "temp_bytes", "dp_ghost",
     0.9999, None),
]  # fmt: skip


def goals(rows: Sequence[Row]) -> list[Row]:
    """Every goal checked on every configuration that has the needed measurements."""
    out = []
    for name, variant, field, base, limit, where in GOALS:
        found = False
        for r in rows:
            if r["variant"] != variant or field not in r or not r.get("available", True):
                continue
            if where and (r["batch"], r["tokens"]) != where:
                continue
            value = ratio(rows, r, field, base)
            if math.isnan(value):
                continue
            found = True
            out.append({"goal": name, "model": r["model"], "batch": r["batch"],
                        "tokens": r["tokens"], "dtype": r["dtype"], "ratio": value,
                        "limit": limit, "met": value <= limit})  # fmt: skip
        if not found:
            out.append({"goal": name, "model": "-", "batch": "-", "tokens": "-", "dtype": "-",
                        "ratio": math.nan, "limit": limit, "met": None})  # fmt: skip
    return out


def goals_table(checks: Sequence[Row]) -> str:
    """Goals as a markdown table: measured ratio, limit, met / NOT met / not measured."""
    verdict = {True: "met", False: "NOT met", None: "not measured"}
    body = [
        [c["goal"], c["model"], c["tokens"], c["batch"], _f(c["ratio"]), c["limit"],
         verdict[c["met"]]]
        for c in checks
    ]  # fmt: skip
    return _md(["goal", "model", "T", "B", "ratio", "limit", "verdict"], body)


def plot(rows: Sequence[Row], path: str, batch: int | None = None) -> bool:
    """Temp memory (and time, when measured) vs tokens per model; ``False`` if no data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = ["nonprivate_full", "nonprivate_bitfit", "dp_vmap", "dp_ghost", "dp_bitfit"]
    models = sorted({r["model"] for r in rows if "temp_bytes" in r or "median_s" in r})
    if batch is None and rows:
        batch = max(r["batch"] for r in rows)
    panels = [("temp_bytes", "XLA temp memory (MiB)", MIB), ("median_s", "step time (ms)", 1e-3)]
    panels = [p for p in panels if any(p[0] in r for r in rows)]
    if not models or not panels:
        return False
    fig, axes = plt.subplots(
        len(panels), len(models), figsize=(4.5 * len(models), 3.5 * len(panels)), squeeze=False
    )
    for j, model in enumerate(models):
        for i, (field, label, scale) in enumerate(panels):
            ax = axes[i][j]
            for v in variants:
                pts = sorted(
                    (r["tokens"], r[field] / scale)
                    for r in rows
                    if r["model"] == model and r["variant"] == v and r["batch"] == batch
                    and field in r and r.get("available", True)
                )  # fmt: skip
                if pts:
                    ax.plot(*zip(*pts), marker="o", label=v)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("tokens per example T")
            ax.set_ylabel(label)
            ax.set_title(f"{model}, B={batch}")
            ax.grid(True, alpha=0.3)
            if ax.lines and not fig.legends and not any(a.get_legend() for a in fig.axes):
                ax.legend(fontsize=8)  # once, on the first panel with data
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
