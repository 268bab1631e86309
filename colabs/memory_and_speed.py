# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Memory and speed of a DP step
#
# How much does privacy cost per step? We compile one gradient step of a small BERT
# (`bert-tiny`, random weights) for each of
#
# * `nonprivate_full`: `jax.grad` of the summed loss (the baseline);
# * `dp_vmap`: per-example gradients with `vmap(grad)`, clipped and summed;
# * `dp_ghost`: book-keeping ghost clipping — per-example norms from activations and
#   output gradients, no per-example gradients, one backward pass;
# * `dp_bitfit`: DP-BiTFiT — bias gradients only, computed from output gradients;
#
# and read XLA's own figures — `compiled.memory_analysis()` (temporary buffers) and
# `compiled.cost_analysis()` (flops) — plus the median wall-clock of interleaved runs,
# against the sequence length. The measuring code is the benchmark suite's
# (`benchmarks/step_cost.py`: `make_workload`, `make_step`, `compile_stats`,
# `time_steps`); run that script for the full tables on BERT-base, GPT-2 and ViT.
#
# `DPJAX_FAST=1` measures two short sequence lengths (the test suite does).

# %%
# Setup: install dpjax from its repository when it is not importable (e.g. on Colab).
# ruff: noqa: E402  (notebook: imports live in the cells that use them)
import os
import pathlib
import subprocess
import sys

try:
    import dpjax
except ImportError:  # a fresh runtime (e.g. Colab): fetch dpjax, install it and its assets
    SRC = pathlib.Path(os.environ.get("DPJAX_SRC", "/content/dpjax"))
    if not (SRC / "setup.py").is_file():  # no uploaded copy there: clone the repository
        REPO_URL = os.environ.get("DPJAX_REPO_URL", "https://github.com/dpjax/dpjax")
        if subprocess.run(["git", "clone", "--depth=1", REPO_URL, str(SRC)]).returncode:
            raise RuntimeError(
                f"could not clone dpjax from {REPO_URL!r} into {SRC}: set DPJAX_REPO_URL to "
                f"your dpjax repository, or upload a copy of it to {SRC}, and rerun this cell"
            ) from None
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", f"{SRC}[plot]"], check=True)
    subprocess.run(["bash", str(SRC / "scripts" / "install_assets.sh")], check=True)
    sys.path.insert(0, str(SRC))
    import dpjax

ROOT = pathlib.Path(dpjax.__file__).resolve().parents[1]  # the repository (benchmarks/)
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
FAST = os.environ.get("DPJAX_FAST", "0") == "1"  # tiny settings (used by the tests)
OUT = pathlib.Path(os.environ.get("DPJAX_COLAB_OUT", "colab_outputs/memory_and_speed"))
OUT.mkdir(parents=True, exist_ok=True)
print("dpjax", dpjax.__version__, "| FAST =", FAST, "| outputs in", OUT)

# %%
import json

import jax
import matplotlib.pyplot as plt

from benchmarks.measure import compile_stats, time_steps
from benchmarks.shapes import make_workload
from benchmarks.variants import make_step

print("backend:", jax.default_backend(), jax.devices()[0])

# %% [markdown]
# ## Measure
#
# For each sequence length `T`: build the workload (model, per-example loss, a random
# batch of `B` sequences), make the four step functions, compile each once for XLA's
# memory and flop figures, then time them in interleaved rounds so machine noise hits
# all variants alike.

# %%
MODEL, B = "bert-tiny", 8
seq_lens = [16, 64] if FAST else [32, 64, 128, 256, 512]
repeats = 3 if FAST else 10
VARIANTS = ["nonprivate_full", "dp_vmap", "dp_ghost", "dp_bitfit"]
rows = []
for T in seq_lens:
    work = make_workload(MODEL, B, T, concrete=True)
    steps = {v: make_step(v, work) for v in VARIANTS}
    missing = [v for v, s in steps.items() if s is None]
    if missing:
        raise RuntimeError(f"engines not registered: {missing}")
    times = time_steps(steps, work.params, work.batch, repeats=repeats)
    for v, step in steps.items():
        stats = compile_stats(step, work.params, work.batch)
        row = {"variant": v, "seq_len": T, "batch": B, **stats, **times[v]}
        rows.append(row)
        mib, gflops, ms = row["temp_bytes"] / 2**20, row["flops"] / 1e9, 1e3 * row["median_s"]
        print(f"T={T:4d} {v:16s} temp {mib:8.2f} MiB  flops {gflops:7.3f} G  time {ms:8.2f} ms")

# %% [markdown]
# ## Plot

# %%
fig, axes = plt.subplots(1, 3, figsize=(14, 4))
panels = [("median_s", 1e3, "step time (ms)"), ("temp_bytes", 2**-20, "XLA temp memory (MiB)"),
          ("flops", 1e-9, "XLA flops (G)")]  # fmt: skip
for ax, (field, scale, label) in zip(axes, panels, strict=True):
    for v in VARIANTS:
        pts = [r for r in rows if r["variant"] == v]
        ax.plot([r["seq_len"] for r in pts], [scale * r[field] for r in pts], "o-", label=v)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length T")
    ax.set_ylabel(label)
axes[0].legend(fontsize=8)
fig.suptitle(f"{MODEL}, batch {B}, {jax.default_backend()}")
fig.tight_layout()
fig.savefig(OUT / "cost_vs_seq_len.png", dpi=100)
plt.show()

# %% [markdown]
# What to look for: `dp_vmap` materialises one gradient per example, so its temporary
# memory is about `B` times the parameter count (the 30k-word embedding dominates);
# `dp_ghost` never does, and `dp_bitfit` needs no weight gradients at all, so it sits at
# or below the non-private step. On small CPU shapes times are noisy; the paper's large
# factors (2–30× faster than DP full) show up at long sequences and big models.

# %%
T_max = max(seq_lens)


def at(variant, field, T=T_max):
    return next(r[field] for r in rows if r["variant"] == variant and r["seq_len"] == T)


summary = {
    v: {f: at(v, f) / at("nonprivate_full", f) for f in ("temp_bytes", "flops", "median_s")}
    for v in VARIANTS
}
for v, ratios in summary.items():
    print(f"T={T_max} {v:16s} " + "  ".join(f"{k} x{x:.2f}" for k, x in ratios.items()))
results = {"model": MODEL, "batch": B, "seq_lens": seq_lens, "rows": rows,
           "ratios_at_max_T": summary, "plots": ["cost_vs_seq_len.png"]}  # fmt: skip
(OUT / "results.json").write_text(json.dumps(results, indent=1))
