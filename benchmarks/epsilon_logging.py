"""What a logged epsilon costs the training loop: recomputed per log vs the EpsilonCurve.

Run::

    python -m benchmarks.epsilon_logging --out benchmarks/results/epsilon_logging

The plan is the README main job's (q = 512/10202, 40 steps, log every 5 steps, delta =
1/(2n), the noisy feature mean as prior, sigma calibrated to epsilon 8), built without the
model; a second plan also releases the loss at every log step (two interleaved events).
For each log step it times (a) ``plan.epsilon(ledger)`` as the trainer called it before
(module caches cleared first: in a run every log step has a new step count, so the
cache never answers) and (b) ``EpsilonCurve.get(ledger)`` after ``--step_seconds`` of
simulated training per logged interval (the curve works in a background thread
meanwhile). Prints medians and their ratio; writes ``epsilon_logging.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

from dpjax import accounting
from dpjax.accounting import PrivacyLedger, Segment
from dpjax.ledger import clear_caches
from dpjax.partition import all_leaves
from dpjax.training.epsilon_curve import EpsilonCurve
from dpjax.training.plan import Phase, RunPlan

N, BATCH, STEPS, LOG_EVERY = 10_202, 512, 40, 5


def main_job_plan(loss_noise_multiplier: float | None) -> RunPlan:
    """The main job's plan (no model needed), sigma calibrated to epsilon 8."""
    sampling = {"sampling_rate": BATCH / N, "sampling": "poisson", "dataset_size": N}
    prior = (Segment(20.0, 1.0, 1),)
    draft = RunPlan(
        (Phase("bitfit", 0, STEPS, all_leaves, "bitfit", 5e-5),),
        noise_multiplier=1.0,
        delta=1 / (2 * N),
        sampling=sampling,
        accountant="pld",
        max_epsilon=None,
        expected_batch_size=BATCH,
        prior=prior,
        loss_noise_multiplier=loss_noise_multiplier,
        log_every=LOG_EVERY,
    )
    sigma = accounting.calibrate_segments(
        lambda s: [*prior, *draft.segments(s, 0, STEPS)],
        target_epsilon=8.0,
        delta=draft.delta,
        accountant="pld",
        fixed=prior,
    )
    return RunPlan(**{**draft.__dict__, "noise_multiplier": sigma})


def _ledgers(plan: RunPlan) -> dict[int, PrivacyLedger]:
    """The ledger after each logged step, recorded one step at a time as in a run."""
    ledger, out = PrivacyLedger(), {}
    for done in range(1, STEPS + 1):
        seg = plan.segments(plan.noise_multiplier, done - 1, done)[0]
        ledger.record(**seg.__dict__)
        if done % LOG_EVERY == 0 or done == STEPS:
            out[done] = PrivacyLedger(ledger.segments)
    return out


def measure(plan: RunPlan, step_seconds: float) -> dict[str, object]:
    ledgers = _ledgers(plan)
    before = []
    for ledger in ledgers.values():
        clear_caches()
        t = time.perf_counter()
        plan.epsilon(ledger)
        before.append(time.perf_counter() - t)
    clear_caches()
    curve = EpsilonCurve(plan, ledgers)
    after, values = [], []
    for ledger in ledgers.values():
        time.sleep(step_seconds)  # the logged interval's training steps
        t = time.perf_counter()
        values.append(curve.get(ledger))
        after.append(time.perf_counter() - t)
    curve.close()
    exact = [plan.epsilon(ledger) for ledger in ledgers.values()]
    return {
        "log_steps": list(ledgers),
        "recompute_s": before,
        "curve_s": after,
        "median_recompute_s": statistics.median(before),
        "median_curve_s": statistics.median(after),
        "ratio": statistics.median(before) / max(statistics.median(after), 1e-9),
        "equal_to_exact": values == exact,
        "final_epsilon": exact[-1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/epsilon_logging")
    parser.add_argument("--step_seconds", type=float, default=2.0)
    args = parser.parse_args()
    rows = {}
    for name, s in (("main job", None), ("main job + loss release (s=4)", 4.0)):
        rows[name] = r = measure(main_job_plan(s), args.step_seconds)
        print(
            f"{name:32s} per-log epsilon: recompute median {r['median_recompute_s']:.3f} s, "
            f"curve median {r['median_curve_s'] * 1e3:.2f} ms ({r['ratio']:.0f}x); "
            f"equal to exact: {r['equal_to_exact']}; final eps {r['final_epsilon']:.4f}"
        )
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "epsilon_logging.json"), "w", encoding="utf-8") as f:
        json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
