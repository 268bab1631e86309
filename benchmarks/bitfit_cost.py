"""XLA cost of one step: non-private full / BiTFiT vs DP full (vmap) / DP-BiTFiT.

Compile-only (abstract inputs, nothing runs): FLOPs from ``compiled.cost_analysis()`` and
temporary memory from ``compiled.memory_analysis().temp_size_in_bytes``, as ratios to the
non-private full fine-tuning step. The encoder is BERT-shaped and built from plain linen
layers here (post-LN, learned positions, CLS pooler, fresh 2-way head).

Usage::

    python benchmarks/bitfit_cost.py --seq 128 --batch 8            # BERT-base
    python benchmarks/bitfit_cost.py --layers 2 --d 64 --mlp 128 --vocab 100 --seq 16
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

import dpjax
from dpjax.engines import ENGINES
from dpjax.engines.bitfit import bitfit_engine


@dataclasses.dataclass(frozen=True)
class Config:
    layers: int = 12
    d: int = 768
    heads: int = 12
    mlp: int = 3072
    vocab: int = 30522
    seq: int = 128
    batch: int = 8
    classes: int = 2


class Layer(nn.Module):
    cfg: Config

    @nn.compact
    def __call__(self, x):
        c = self.cfg
        hd = c.d // c.heads
        q = nn.DenseGeneral((c.heads, hd), name="query")(x)
        k = nn.DenseGeneral((c.heads, hd), name="key")(x)
        v = nn.DenseGeneral((c.heads, hd), name="value")(x)
        att = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(hd))
        o = jnp.einsum("bhqk,bkhd->bqhd", att, v)
        x = nn.LayerNorm(name="ln_att")(x + nn.DenseGeneral(c.d, axis=(-2, -1), name="out")(o))
        h = nn.Dense(c.d, name="mlp_out")(nn.gelu(nn.Dense(c.mlp, name="mlp_in")(x)))
        return nn.LayerNorm(name="ln_mlp")(x + h)


class Encoder(nn.Module):
    cfg: Config

    @nn.compact
    def __call__(self, ids):
        c = self.cfg
        x = nn.Embed(c.vocab, c.d, name="tok")(ids) + nn.Embed(c.seq, c.d, name="pos")(
            jnp.arange(ids.shape[1])
        )
        x = nn.LayerNorm(name="ln_emb")(x)
        for i in range(c.layers):
            x = Layer(c, name=f"layer_{i}")(x)
        pooled = jnp.tanh(nn.Dense(c.d, name="pooler")(x[:, 0]))
        return nn.Dense(c.classes, name="classifier")(pooled)


def setup(cfg: Config) -> tuple[Callable[..., jax.Array], Any, Any]:
    """(loss_fn, abstract params, abstract batch)."""
    model = Encoder(cfg)
    ids = jax.ShapeDtypeStruct((cfg.batch, cfg.seq), jnp.int32)
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(ids.shape, jnp.int32)))
    batch = {"x": ids, "y": jax.ShapeDtypeStruct((cfg.batch,), jnp.int32)}

    def loss_fn(p, b):
        logp = jax.nn.log_softmax(model.apply(p, b["x"]))
        return -jnp.take_along_axis(logp, b["y"][:, None], axis=1)[:, 0]

    return loss_fn, params, batch


def steps(loss_fn: Callable[..., jax.Array]) -> dict[str, Callable[..., Any]]:
    """The step functions compared, each ``f(params, batch)``."""

    def full(p, b):
        return jax.grad(lambda q: loss_fn(q, b).sum())(p)

    def bitfit(p, b):
        train, frozen = dpjax.partition(p, dpjax.bias_only)
        return jax.grad(lambda t: loss_fn(dpjax.combine(t, frozen), b).sum())(train)

    ENGINES.setdefault("bitfit_vmap", lambda *a, **k: bitfit_engine(*a, mode="vmap", **k))
    clip = 1.0
    return {
        "nonprivate_full": full,
        "nonprivate_bitfit": bitfit,
        "dp_full_vmap": dpjax.clipped_grad(loss_fn, l2_clip=clip, method="vmap"),
        "dp_bitfit": dpjax.clipped_grad(
            loss_fn, l2_clip=clip, method="bitfit", trainable=dpjax.bias_only
        ),
        "dp_bitfit_vmap_mode": dpjax.clipped_grad(
            loss_fn, l2_clip=clip, method="bitfit_vmap", trainable=dpjax.bias_only
        ),
        "dp_bias_only_vmap_engine": dpjax.clipped_grad(
            loss_fn, l2_clip=clip, method="vmap", trainable=dpjax.bias_only
        ),
    }


def xla_cost(fn: Callable[..., Any], *args: Any) -> dict[str, float]:
    """FLOPs and temp bytes of ``jax.jit(fn)`` compiled for ``args`` (nothing runs)."""
    compiled = jax.jit(fn).lower(*args).compile()
    cost = compiled.cost_analysis()
    if isinstance(cost, list):
        cost = cost[0]
    mem = compiled.memory_analysis()
    return {"flops": float(cost.get("flops", 0.0)), "temp_bytes": float(mem.temp_size_in_bytes)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for f in dataclasses.fields(Config):
        parser.add_argument(f"--{f.name}", type=int, default=f.default)
    parser.add_argument("--only", default="", help="comma-separated subset of steps")
    args = parser.parse_args()
    cfg = Config(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Config)})
    loss_fn, params, batch = setup(cfg)
    wanted = set(filter(None, args.only.split(",")))
    rows = {}
    for name, fn in steps(loss_fn).items():
        if wanted and name not in wanted:
            continue
        rows[name] = xla_cost(fn, params, batch)
        print(name, rows[name], flush=True)
    base = rows.get("nonprivate_full")
    if base:
        for r in rows.values():
            r["flops_ratio"] = r["flops"] / base["flops"]
            r["temp_ratio"] = r["temp_bytes"] / max(base["temp_bytes"], 1.0)
    print(json.dumps({"config": dataclasses.asdict(cfg), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
