"""Per-device memory of one FSDP micro-step on N = 1, 2, 4, 8 devices: compile only.

The step compiled is the trainer's own: :meth:`dpjax.Mechanism.micro_step` (the clipped
sum of one micro-batch, or the plain gradient sum for ``nonprivate_*``), with the
parameters FSDP-sharded on ``"data"`` exactly as :func:`dpjax.training.sharding.param_shardings`
places them for the trainer, the batch sharded on ``"data"``, and the adapters' gradient
sum sharded like its parameters. Every input is a ``jax.ShapeDtypeStruct``: nothing is
allocated or run, so a 1B-parameter model compiles on a laptop (simulated CPU devices).

XLA's ``memory_analysis()`` of an SPMD executable is per device: arguments (the parameter
shards and the batch shard) + temp (gathered weights, activations, the gradient sums).
XLA's partitioner gathers each weight where its layer runs and reuses one buffer for the
gathered weights of successive layers: wrapping every layer in ``jax.checkpoint`` (so
that the backward pass re-gathers instead of keeping the forward's copy) gave identical
bytes for a 1B Llama, so the trainer needs no per-layer gather code of its own.

Usage (8 simulated devices)::

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m benchmarks.fsdp_memory \
        --model llama-1b --seq-len 128 --batch 8 --variants dp_ghost,dp_lora_ghost

prints a table of arguments + temp per device and its ratio to N = 1, and writes
``results.json`` and ``tables.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import dpjax
from benchmarks.measure import compile_stats
from benchmarks.shapes import make_workload
from benchmarks.variants import BIAS_FREE, L2_CLIP, LORA_RANK, LORA_TARGETS
from dpjax import peft
from dpjax.training.settings import MeshSettings
from dpjax.training.sharding import DATA, make_mesh, param_shardings

__all__ = ["VARIANTS", "measure", "micro_step"]

VARIANTS = ("nonprivate_full", "dp_ghost", "nonprivate_lora", "dp_lora_ghost", "dp_bitfit")
GIB = 2**30


def micro_step(variant: str, work: Any) -> tuple[Any, Any, Any]:
    """``(step(train, frozen, batch), train, frozen)``: the mechanism's micro-step and the
    abstract split of the params (adapters or added biases included)."""
    loss_fn, params, trainable = work.loss_fn, work.params, dpjax.all_leaves
    if "lora" in variant:
        spec = peft.lora(LORA_RANK, targets=LORA_TARGETS.get(work.kind, "."))
        adapters = jax.eval_shape(lambda p, b: spec.init(jax.random.key(0), loss_fn, p, b),
                                  params, work.batch)  # fmt: skip
        loss_fn, params, trainable = (
            spec.apply(loss_fn),
            {**params, peft.KEY: adapters},
            peft.is_adapter,
        )
    elif variant == "dp_bitfit":
        trainable = work.bitfit_trainable
        if work.kind in BIAS_FREE:  # DP-BiTFiT-Add: zero biases on every Dense
            spec = peft.add_biases(".")
            added = jax.eval_shape(lambda p, b: spec.init(None, loss_fn, p, b), params, work.batch)
            loss_fn, params = spec.apply(loss_fn), {**params, peft.biases.KEY: added}
    method = "bitfit" if variant == "dp_bitfit" else "ghost"
    grad_fn = dpjax.clipped_grad(loss_fn, l2_clip=L2_CLIP, method=method, trainable=trainable)
    private = variant.startswith("dp_")
    mech = dpjax.Mechanism(
        grad_fn,
        optax.adam(1e-3),
        noise_multiplier=1.0 if private else None,
        expected_batch_size=work.batch_size,
        key=jax.random.key(0) if private else None,
        sampling={"sampling_rate": 0.01} if private else None,
    )
    train, frozen = dpjax.partition(params, trainable)
    return mech.micro_step, train, frozen


def _sharded(tree: Any, shardings: Any) -> Any:
    return jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), tree, shardings
    )


def measure(variant: str, work: Any, n: int) -> dict[str, float]:
    """XLA's per-device figures of ``variant``'s micro-step on the first ``n`` devices."""
    mesh = make_mesh(MeshSettings(data=n, model=1), jax.devices()[:n])
    step, train, frozen = micro_step(variant, work)
    train_sh = param_shardings(mesh, train, fsdp=True)
    frozen_sh = param_shardings(mesh, frozen, fsdp=True)
    batch = _sharded(work.batch, jax.tree.map(lambda _: NamedSharding(mesh, P(DATA)), work.batch))
    train, frozen = _sharded(train, train_sh), _sharded(frozen, frozen_sh)

    def constrained(t: Any, f: Any, b: Any) -> Any:
        grads, stats = step(t, f, b)
        return jax.lax.with_sharding_constraint(grads, train_sh), stats

    return compile_stats(lambda p, b: constrained(p[0], p[1], b), (train, frozen), batch)


def _table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| model | T | B | variant | N | arguments GiB | temp GiB | args + temp GiB | x N=1 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    base: dict[str, float] = {}
    for r in rows:
        total = r["argument_bytes"] + r["temp_bytes"]
        base.setdefault(r["variant"], total if r["n"] == 1 else math.nan)
        lines.append(
            f"| {r['model']} | {r['seq_len']} | {r['batch']} | {r['variant']} | {r['n']} | "
            f"{r['argument_bytes'] / GIB:.3f} | {r['temp_bytes'] / GIB:.3f} | {total / GIB:.3f} | "
            f"{total / base[r['variant']]:.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gpt2")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--devices", default="1,2,4,8")
    parser.add_argument("--variants", default="dp_ghost,dp_lora_ghost")
    parser.add_argument("--out", default="benchmarks/results/fsdp_memory")
    args = parser.parse_args()
    counts = [int(x) for x in args.devices.split(",")]
    if max(counts) > jax.device_count():
        raise SystemExit(
            f"--devices {args.devices} needs {max(counts)} devices, have {jax.device_count()}: "
            "set XLA_FLAGS=--xla_force_host_platform_device_count=8"
        )
    variants = args.variants.split(",")
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"unknown --variants {unknown}; choose from {VARIANTS}")
    work = make_workload(args.model, batch=args.batch, seq_len=args.seq_len)
    n_params = sum(math.prod(x.shape) for x in jax.tree.leaves(work.params))
    print(f"{args.model}: {n_params / 1e6:.1f}M parameters, T={args.seq_len}, B={args.batch}")
    rows = []
    for variant in variants:
        for n in counts:
            start = time.perf_counter()
            stats = measure(variant, work, n)
            row = dict(model=args.model, seq_len=args.seq_len, batch=args.batch,
                       variant=variant, n=n, parameters=n_params, **stats)  # fmt: skip
            rows.append(row)
            total = (stats["argument_bytes"] + stats["temp_bytes"]) / GIB
            print(f"  {variant:16s} N={n}: args+temp {total:.3f} GiB per device "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)  # fmt: skip
    table = _table(rows)
    print(table)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(rows, indent=1))
    header = f"# FSDP per-device memory (compile only, {jax.devices()[0].platform})\n\n"
    (out / "tables.md").write_text(header + table + "\n")
    print(f"wrote {out}/results.json and tables.md")


if __name__ == "__main__":
    jnp.zeros(())  # backend up before the first compile
    main()
