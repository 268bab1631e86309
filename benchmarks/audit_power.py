"""The audits' power: each audit on the correct mechanism and on every planted bug.

Run::

    python -m benchmarks.audit_power --out benchmarks/results/audit_power

Rows: the correct implementation and six planted bugs (:mod:`dpjax.audit.planted`; the
mixing loss wraps the harness loss and runs on the ``ghost`` engine, which evaluates
the batched loss). Columns: the sensitivity replay (max ``||dS|| / Delta`` and what
failed), the single-step audit (``eps_hat`` vs the claimed epsilon of one step) and the
one-run audit (``eps_hat`` vs the run's claimed epsilon). Prints a markdown table and
writes ``audit_power.json`` / ``audit_power.md`` under ``--out``.

The harness (also used by ``tests/test_audit.py``) is a linear layer, ``loss = -Dense(x)``,
so that every example's gradient is ``-x``: rows of ``D`` have norm 5 along one unit
direction ``u`` (clipped to ``C = 1``) and the canary is ``-100 u`` (clipped, it moves
the sum by exactly ``C``). Two bugs need a crafted ``D`` to be visible at all:

* ``bf16_sum``: 2044 clipped rows plus one of norm 0.4 put every coordinate of the sum at
  -511.1, just past the bfloat16 rounding midpoint -511, so that the canary's +0.25 flips
  the rounded sum from -512 to -510 (8 C instead of C);
* ``mixing``: 32 identical rows have zero gradient once centred by the batch mean; the
  canary shifts the mean and with it all 32 (now clipped) gradients.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import dpjax
from dpjax import audit
from dpjax.audit import planted

DIM = 16
BUGS = ("correct", "no_clipping", "noise_tenth", "noise_0.8", "reused_key", "bf16_sum", "mixing")
SIGMA = 1.0


def harness(bug: str) -> tuple[Any, Any, dict, dict]:
    """``(grad_fn, params, D, canary)`` of the single-step / replay harness for ``bug``."""
    model = nn.Dense(1, use_bias=False)
    params = {"kernel": jnp.zeros((DIM, 1))}
    u = np.full(DIM, 1 / math.sqrt(DIM), np.float32)

    def loss_fn(p: Any, b: Any) -> jax.Array:
        return -model.apply({"params": p}, b["x"])[:, 0]

    if bug == "bf16_sum":
        x = np.tile(5 * u, (2045, 1))
        x[-1] = 0.4 * u
    elif bug == "mixing":
        x = np.tile(0.05 * u, (32, 1))
    else:
        x = np.tile(5 * u, (32, 1))
    method = "vmap"
    if bug == "mixing":
        loss_fn, method = planted.mixing_loss(loss_fn), "ghost"
    grad_fn = dpjax.clipped_grad(loss_fn, l2_clip=1.0, method=method)
    return grad_fn, params, {"x": x}, {"x": (-100 * u)[None]}


def plant(bug: str) -> contextlib.AbstractContextManager:
    if bug in planted.PLANTS:
        return planted.PLANTS[bug]()
    return contextlib.nullcontext()


def run_replay(bug: str) -> dict[str, Any]:
    grad_fn, params, d, canary = harness(bug)
    with plant(bug):
        rep = audit.sensitivity_replay(
            grad_fn, params, d, canaries={"canary": canary}, rows=4,
            noise_multiplier=SIGMA, expected_batch_size=len(d["x"]), key=jax.random.key(1),
        )  # fmt: skip
    return {"passed": rep.ok, "max_ratio": rep.max_ratio, "failures": list(rep.failures)}


def run_single(bug: str, trials: int) -> dict[str, Any]:
    grad_fn, params, d, canary = harness(bug)
    with plant(bug):
        res = audit.single_step_audit(
            grad_fn, params, d, canary, noise_multiplier=SIGMA, trials=trials
        )
    return {
        "passed": res.passed,
        "epsilon_lower": res.epsilon_lower,
        "epsilon_claimed": res.epsilon_claimed,
        "N": trials,
        "alpha": res.alpha,
    }


def run_one_run(bug: str, m: int) -> dict[str, Any]:
    kw: dict[str, Any] = {"m": m}
    if bug == "mixing":
        kw.update(engine="ghost", loss_wrapper=planted.mixing_loss)
    with plant(bug):
        res = audit.one_run_audit(**kw)
    return {
        "passed": res.passed,
        "epsilon_lower": res.epsilon_lower,
        "epsilon_claimed": res.epsilon_claimed,
        "m": m,
        "alpha": res.alpha,
    }


def table(rows: dict[str, dict[str, Any]]) -> str:
    out = [
        "| mechanism | replay: max ‖dS‖/C | replay verdict | single-step ε̂ (claimed) | "
        "one-run ε̂ (claimed) |",
        "|---|---|---|---|---|",
    ]
    reasons = {
        "x the sensitivity": "sensitivity",
        "noise std": "noise std",
        "correlation": "noise reused",
        "depends on the data": "noise depends on data",
    }
    for bug, r in rows.items():
        rp, ss, orun = r["replay"], r["single"], r["one_run"]

        def verdict(x: dict) -> str:
            return "pass" if x["passed"] else "**FAIL**"

        why = sorted({v for f in rp["failures"] for k, v in reasons.items() if k in f})
        replay = verdict(rp) + (f" ({', '.join(why)})" if why else "")
        out.append(
            f"| {bug} | {rp['max_ratio']:.4g} | {replay} | "
            f"{ss['epsilon_lower']:.2f} ({ss['epsilon_claimed']:.2f}) {verdict(ss)} | "
            f"{orun['epsilon_lower']:.2f} ({orun['epsilon_claimed']:.2f}) {verdict(orun)} |"
        )
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="benchmarks/results/audit_power")
    parser.add_argument("--trials", type=int, default=100_000)
    parser.add_argument("--m", type=int, default=1000)
    args = parser.parse_args()
    rows, start = {}, time.time()
    for bug in BUGS:
        rows[bug] = {
            "replay": run_replay(bug),
            "single": run_single(bug, args.trials),
            "one_run": run_one_run(bug, args.m),
        }
        print(bug, json.dumps(rows[bug], default=float), flush=True)
    text = table(rows)
    print(text)
    print(
        f"N = {args.trials}, m = {args.m}, alpha = 0.05, delta = 1e-5 ({time.time() - start:.0f} s)"
    )
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "audit_power.json"), "w", encoding="utf-8") as f:
        json.dump({"trials": args.trials, "m": args.m, "rows": rows}, f, indent=2, default=float)
    with open(os.path.join(args.out, "audit_power.md"), "w", encoding="utf-8") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main()
