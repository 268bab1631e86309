"""Measurements: XLA's compile-time figures, interleaved wall-clock, max batch in a budget.

* :func:`compile_stats`: ``jax.jit(step).lower(params, batch).compile()`` and XLA's own
  ``memory_analysis()`` (temp / argument / output / alias bytes) and ``cost_analysis()``
  (flops). Nothing runs, so abstract (``ShapeDtypeStruct``) inputs work for any size.
* :func:`time_steps`: median wall-clock of several steps measured *interleaved* (one call
  of each variant per round) in one process, so machine noise hits all of them alike.
* :func:`max_batch`: the largest batch whose XLA footprint (temp + argument + output -
  alias bytes) fits a budget, by compile-only probes (secant guesses, then bisection).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax

__all__ = ["compile_stats", "footprint", "max_batch", "time_steps"]

Step = Callable[[Any, Any], Any]


def _first(x: Any) -> Mapping[str, Any]:
    """``cost_analysis()`` is a dict in new JAX and a one-element list in older ones."""
    if isinstance(x, (list, tuple)):
        return x[0] if x else {}
    return x or {}


def compile_stats(step: Step, params: Any, batch: Any) -> dict[str, float]:
    """XLA's figures for ``jit(step)(params, batch)``: flops and memory in bytes."""
    start = time.perf_counter()
    compiled = jax.jit(step).lower(params, batch).compile()
    seconds = time.perf_counter() - start
    mem = compiled.memory_analysis()
    cost = _first(compiled.cost_analysis())
    out = {
        "flops": float(cost.get("flops", math.nan)),
        "bytes_accessed": float(cost.get("bytes accessed", math.nan)),
        "compile_s": seconds,
    }
    for field in ("temp", "argument", "output", "alias", "generated_code"):
        value = getattr(mem, f"{field}_size_in_bytes", None) if mem is not None else None
        out[f"{field}_bytes"] = float(value) if value is not None else math.nan
    out["footprint_bytes"] = footprint(out)
    return out


def footprint(stats: Mapping[str, float]) -> float:
    """Device bytes a step needs: temp + arguments + outputs, minus donated aliases."""
    alias = stats.get("alias_bytes", 0.0)
    alias = 0.0 if math.isnan(alias) else alias
    return stats["temp_bytes"] + stats["argument_bytes"] + stats["output_bytes"] - alias


def time_steps(
    steps: Mapping[str, Step],
    params: Any,
    batch: Any,
    repeats: int = 5,
    warmup: int = 1,
    log: Callable[[str], None] = lambda msg: None,
) -> dict[str, dict[str, float]]:
    """Median (and min / max) seconds per step of each function, interleaved rounds.

    Every function is compiled and run ``warmup`` times first; then ``repeats`` rounds
    each call every function once, in a rotating order. A function that fails to
    compile or run (out of memory) gets ``{"time_error": message}`` instead.
    """
    jitted, failed = {}, {}
    for name, fn in steps.items():
        try:
            jitted[name] = jax.jit(fn)
            start = time.perf_counter()
            for _ in range(warmup):
                jax.block_until_ready(jitted[name](params, batch))
            log(f"    warm-up {name}: {time.perf_counter() - start:.1f}s (compile + {warmup} run)")
        except Exception as e:  # e.g. out of device memory: report it, time the others
            jitted.pop(name, None)
            failed[name] = {"time_error": f"{type(e).__name__}: {str(e)[:200]}"}
    samples: dict[str, list[float]] = {name: [] for name in jitted}
    names = list(jitted)
    for r in range(repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            start = time.perf_counter()
            jax.block_until_ready(jitted[name](params, batch))
            samples[name].append(time.perf_counter() - start)
    return failed | {
        name: {"median_s": statistics.median(s), "min_s": min(s), "max_s": max(s), "n": len(s)}
        for name, s in samples.items()
    }


def max_batch(
    bytes_at: Callable[[int], float],
    budget_bytes: float,
    start: int = 8,
    limit: int = 1 << 16,
    rel_tol: float = 0.03,
    max_probes: int = 12,
) -> dict[str, Any]:
    """Largest ``B <= limit`` with ``bytes_at(B) <= budget_bytes`` (compile-only probes).

    ``bytes_at`` is close to affine in ``B``: each round solves the line through the two
    probes nearest the budget (secant), probes that guess and a point ``rel_tol`` past it
    on the other side, so the bracket ``[lo, hi)`` closes in a few compiles; bisection
    takes over when a guess falls outside the bracket. Stops when ``hi - lo`` is within
    ``rel_tol`` of ``lo`` (at least 1) or after ``max_probes`` compiles.

    Returns ``{"max_batch": lo, "upper": hi or None, "probes": {B: bytes}}``; ``lo`` is a
    batch that was compiled and fits (0 if even ``B = 1`` does not).
    """
    probes: dict[int, float] = {}
    state = {"lo": 0, "hi": None}

    def probe(b: int) -> None:
        if b in probes or len(probes) >= max_probes:
            return
        probes[b] = float(bytes_at(b))
        if probes[b] <= budget_bytes:
            state["lo"] = max(state["lo"], b)
        elif state["hi"] is None or b < state["hi"]:
            state["hi"] = b

    def done() -> bool:
        lo, hi = state["lo"], state["hi"]
        if len(probes) >= max_probes or lo >= limit:
            return True
        return hi is not None and hi - lo <= max(1, int(lo * rel_tol))

    probe(max(1, min(start, limit)))
    while not done():
        lo, hi = state["lo"], state["hi"]
        upper = hi if hi is not None else limit + 1
        guess = _secant(probes, budget_bytes)
        secant = guess is not None
        if guess is None:
            guess = 2 * lo if hi is None else (lo + hi) // 2
        elif hi is None:
            guess = min(guess, limit)
        if not lo < guess < upper or guess in probes:
            secant = False
            guess = (lo + upper) // 2 if hi is not None else min(max(2 * lo, 1), limit)
        if guess in probes or not lo < guess < upper:
            break
        before = len(probes)
        probe(guess)
        delta = max(1, int(guess * rel_tol))
        other = guess + delta if state["lo"] == guess else guess - delta
        if secant and state["lo"] < other < (state["hi"] or limit + 1):
            probe(other)
        if len(probes) == before:
            break
    return {"max_batch": state["lo"], "upper": state["hi"], "probes": dict(sorted(probes.items()))}


def _secant(probes: Mapping[int, float], target: float) -> int | None:
    """Where the line through the two probes nearest ``target`` crosses it."""
    pts = sorted(probes.items(), key=lambda kv: abs(kv[1] - target))[:2]
    if len(pts) < 2:
        return None
    (b1, y1), (b2, y2) = pts
    slope = (y2 - y1) / (b2 - b1)
    if not slope > 0:
        return None
    return int(b1 + (target - y1) / slope)
