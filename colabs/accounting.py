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
# # Privacy accounting with dpjax
#
# Every DP-SGD / DP-Adam step is one *sampled Gaussian* event: each example joins the
# logical batch with probability `q = B / n` (Poisson sampling) and the clipped sum gets
# Gaussian noise of standard deviation `σ·C`. `dpjax.accounting` composes these events
# with Google's `dp_accounting` and reports ε at a chosen δ.
#
# This notebook shows
# 1. ε against the number of steps, for the PLD accountant (tight, the default) and RDP;
# 2. calibrating σ to reach a target ε;
# 3. the effect of batch size and epochs at a fixed ε — the lesson of Li et al. (ICLR
#    2022): a larger batch needs a larger σ, but *less noise per example*
#    (`σ/B` falls), which is why DP fine-tuning uses batches of ~1000.
#
# Set `DPJAX_FAST=1` for a quick run with fewer points (the test suite does).

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

FAST = os.environ.get("DPJAX_FAST", "0") == "1"  # tiny settings (used by the tests)
OUT = pathlib.Path(os.environ.get("DPJAX_COLAB_OUT", "colab_outputs/accounting"))
OUT.mkdir(parents=True, exist_ok=True)
print("dpjax", dpjax.__version__, "| FAST =", FAST, "| outputs in", OUT)

# %%
import json
import math

import matplotlib.pyplot as plt
import numpy as np

from dpjax import accounting

# %% [markdown]
# ## 1. ε against steps: PLD vs RDP
#
# An SST-2-sized training set (`n = 67,349`), logical batch 1024, σ = 0.7 and
# δ = 1/(2n). PLD (privacy loss distributions) is tight; RDP is an upper bound that is
# quick to compute, so its ε is always a little larger.

# %%
n, batch = 67_349, 1024
q = batch / n
delta = accounting.delta_for(n)  # 1/(2n)
sigma = 0.7
steps_per_epoch = math.ceil(n / batch)
step_grid = [10, 66, 198, 660] if FAST else [10, 25, 66, 132, 198, 330, 660, 1320]

eps_pld = [
    accounting.epsilon(noise_multiplier=sigma, sampling_rate=q, steps=s, delta=delta,
                       accountant="pld")
    for s in step_grid
]  # fmt: skip
eps_rdp = [
    accounting.epsilon(noise_multiplier=sigma, sampling_rate=q, steps=s, delta=delta,
                       accountant="rdp")
    for s in step_grid
]  # fmt: skip
print(f"q = {q:.4f}, delta = {delta:.2e}, {steps_per_epoch} steps per epoch")
for s, a, b in zip(step_grid, eps_pld, eps_rdp, strict=True):
    print(f"steps {s:5d} ({s / steps_per_epoch:5.1f} epochs): eps PLD {a:6.3f}   RDP {b:6.3f}")

# %%
fig, ax = plt.subplots(figsize=(6, 4))
ax.plot(step_grid, eps_pld, "o-", label="PLD (tight)")
ax.plot(step_grid, eps_rdp, "s--", label="RDP (upper bound)")
ax.set_xscale("log")
ax.set_xlabel("steps")
ax.set_ylabel(f"epsilon at delta = {delta:.1e}")
ax.set_title(f"sigma = {sigma}, q = {q:.4f}")
ax.legend()
fig.tight_layout()
fig.savefig(OUT / "eps_vs_steps.png", dpi=100)
plt.show()

# %% [markdown]
# ## 2. Calibrating σ for a target ε
#
# `calibrate_noise_multiplier` returns the smallest σ whose ε (with the same accountant
# settings you report with) is at most the target.

# %%
epochs = 3
steps = epochs * steps_per_epoch
targets = [3.0, 8.0] if FAST else [1.0, 3.0, 8.0]
calibration = []
for target in targets:
    s_cal = accounting.calibrate_noise_multiplier(
        target_epsilon=target, sampling_rate=q, steps=steps, delta=delta
    )
    e_cal = accounting.epsilon(noise_multiplier=s_cal, sampling_rate=q, steps=steps, delta=delta)
    calibration.append({"target": target, "sigma": s_cal, "epsilon": e_cal})
    print(f"target eps {target:4.1f}: sigma = {s_cal:.4f} -> eps = {e_cal:.4f} ({steps} steps)")

# %% [markdown]
# ## 3. Batch size and epochs at a fixed ε
#
# Fix ε = 8 and the number of epochs; vary the logical batch `B` (so the number of steps
# is `epochs · n / B`). σ must grow with `B`, but the noise that lands on the *averaged*
# gradient has standard deviation `σ·C / B`: it falls as the batch grows. Bigger batches
# buy a better signal-to-noise ratio per step (Li et al. 2022; paper 1 uses B = 1000).

# %%
target = 8.0
batch_grid = [256, 1024, 4096] if FAST else [128, 256, 512, 1024, 2048, 4096, 8192]
by_batch = []
for b in batch_grid:
    s_b = math.ceil(epochs * n / b)
    sig = accounting.calibrate_noise_multiplier(
        target_epsilon=target, sampling_rate=b / n, steps=s_b, delta=delta
    )
    by_batch.append({"batch": b, "steps": s_b, "sigma": sig, "sigma_over_batch": sig / b})
    print(
        f"B = {b:5d}: {s_b:5d} steps, sigma = {sig:6.3f}, noise per example sigma/B = {sig / b:.2e}"
    )

epoch_grid = [1, 3, 10] if FAST else [1, 2, 3, 5, 10, 20]
by_epochs = []
for e in epoch_grid:
    s_e = math.ceil(e * n / batch)
    sig = accounting.calibrate_noise_multiplier(
        target_epsilon=target, sampling_rate=q, steps=s_e, delta=delta
    )
    by_epochs.append({"epochs": e, "steps": s_e, "sigma": sig})
    print(f"{e:3d} epochs at B = {batch}: {s_e:5d} steps, sigma = {sig:.3f}")

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 4))
bs = [r["batch"] for r in by_batch]
axes[0].plot(bs, [r["sigma"] for r in by_batch], "o-", label="sigma")
axes[0].set_xscale("log", base=2)
axes[0].set_xlabel("logical batch size B")
axes[0].set_ylabel("noise multiplier sigma")
twin = axes[0].twinx()
twin.plot(bs, [r["sigma_over_batch"] for r in by_batch], "s--", color="C1", label="sigma / B")
twin.set_yscale("log")
twin.set_ylabel("noise per example, sigma / B")
axes[0].set_title(f"eps = {target}, {epochs} epochs")
axes[0].legend(loc="upper left")
twin.legend(loc="upper right")
axes[1].plot([r["epochs"] for r in by_epochs], [r["sigma"] for r in by_epochs], "o-")
axes[1].set_xlabel("epochs")
axes[1].set_ylabel("noise multiplier sigma")
axes[1].set_title(f"eps = {target}, B = {batch}")
fig.tight_layout()
fig.savefig(OUT / "batch_and_epochs.png", dpi=100)
plt.show()

# %% [markdown]
# The left panel: σ grows with B, but far more slowly than B, so σ/B — the noise on the
# averaged gradient — keeps falling. The right panel: more epochs at a fixed ε
# cost more noise per step.

# %% [markdown]
# ## 4. Is the implementation as private as the accountant says? Audit it
#
# ε above is a theorem about a mechanism; `dpjax.audit` checks the mechanism that runs.
# The *sensitivity replay* runs the real clipped sum on neighbouring batches and the real
# `privatize` with the same key: the noise-free sums may differ by at most the clip norm,
# the noise must not depend on the data, have the claimed std and be fresh every step.
# The *single-step audit* puts a canary in one step out of four, 4N times with the real
# noise, and turns how well it can be told apart into a lower bound ε̂ on ε (confidence
# 95 %), to compare with ε of one Gaussian step. A planted bug (noise scaled by 0.8)
# must fail both.

# %%
import contextlib

import jax.numpy as jnp

from dpjax import audit
from dpjax.audit import planted


def audit_loss(params, batch):  # a linear layer: each example's gradient is -x
    return -(batch["x"] @ params["w"])


audit_params = {"w": jnp.zeros(8)}
audit_d = {"x": np.full((16, 8), 2.0)}
canary = {"x": np.full((1, 8), -50.0)}
audit_grad = dpjax.clipped_grad(audit_loss, l2_clip=1.0)
trials = 20_000 if FAST else 100_000
audits = {}
for label, context in (
    ("correct", contextlib.nullcontext()),
    ("noise x 0.8", planted.noise_scale(0.8)),
):
    with context:
        replay = audit.sensitivity_replay(
            audit_grad, audit_params, audit_d, noise_multiplier=1.0, expected_batch_size=17,
            key=dpjax.secret_key(),
        )  # fmt: skip
        single = audit.single_step_audit(
            audit_grad, audit_params, audit_d, canary, noise_multiplier=1.0, trials=trials
        )
    audits[label] = {
        "replay_ok": replay.ok,
        "replay_max_ratio": replay.max_ratio,
        "noise_std_ratio": replay.noise_std_ratio,
        "epsilon_lower": single.epsilon_lower,
        "epsilon_claimed": single.epsilon_claimed,
        "single_step_passed": single.passed,
    }
    print(f"{label}: {replay.summary().splitlines()[-1]} | {single.summary()}")

# %%
results = {
    "n": n,
    "delta": delta,
    "sigma": sigma,
    "steps": step_grid,
    "eps_pld": eps_pld,
    "eps_rdp": eps_rdp,
    "calibration": calibration,
    "by_batch": by_batch,
    "by_epochs": by_epochs,
    "audits": audits,
    "plots": ["eps_vs_steps.png", "batch_and_epochs.png"],
}
(OUT / "results.json").write_text(json.dumps(results, indent=1))
print(json.dumps({k: results[k] for k in ("eps_pld", "eps_rdp")}, indent=1))
assert all(np.isfinite(eps_pld)) and all(a <= b for a, b in zip(eps_pld, eps_rdp, strict=True))
