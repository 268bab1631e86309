"""Measures issue 13's defects on whatever dpjax is importable: run it on two checkouts.

    PYTHONPATH=/path/to/old/checkout python tools/privacy_defects.py   # before
    python tools/privacy_defects.py                                     # after

Uses only APIs that exist before and after the privacy hardening (``clipped_grad``,
``check_engine``, the trainer and the toy config), and prints one line per defect with
the number that shows it: a contribution or a neighbouring difference in units of the
clip norm C, a relative error against the float64 ``vmap`` oracle, or what happened.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests")
)

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import dpjax  # noqa: E402

print("dpjax from", os.path.dirname(dpjax.__file__))


def norm(tree) -> float:
    return float(
        np.sqrt(sum(np.sum(np.asarray(x, np.float64) ** 2) for x in jax.tree.leaves(tree)))
    )


def diff(a, b) -> float:
    return norm(
        jax.tree.map(lambda x, y: np.asarray(x, np.float64) - np.asarray(y, np.float64), a, b)
    )


def xent(model):
    def loss_fn(p, b):
        logits = model.apply({"params": p}, b["x"]).astype(jnp.float32)
        return -jnp.take_along_axis(jax.nn.log_softmax(logits), b["y"][:, None], 1)[:, 0]

    return loss_fn


def report(name: str, value: str) -> None:
    print(f"{name:58s} {value}", flush=True)


# 1. public noise: two runs of the same config
def public_noise() -> None:
    from dpjax.training import Trainer
    from experiments.configs import toy

    finals = []
    for _ in range(2):
        cfg = toy.get_config("dp_full")
        cfg.steps, cfg.epochs = 2, None
        with tempfile.TemporaryDirectory() as tmp:
            t = Trainer(cfg, tmp, devices=jax.devices()[:1])
            res = t.run(progress=False)
            finals.append(jax.device_get(t.state.params))
            with open(os.path.join(tmp, "metrics.jsonl")) as f:
                keys = set().union(*(json.loads(line) for line in f))
    report("1. two runs of one config: max |param difference|", f"{diff(finals[0], finals[1]):.3g}")
    report("   results.json 'noise_seed'", str(res.get("noise_seed", "absent")))
    report("7. private metrics.jsonl keys", str(sorted(k for k in keys if k.startswith("train/"))))


class SubConv(nn.Conv):
    pass


class CNN(nn.Module):
    sub: bool = False

    @nn.compact
    def __call__(self, x):
        x = (SubConv if self.sub else nn.Conv)(4, (3, 3), name="conv1")(x)
        return nn.Dense(3, name="head")(nn.relu(x).mean((1, 2)))


# 3. a nan row under bitfit (direct conv leaf) and ghost (fallback conv)
def nan_row() -> None:
    with jax.enable_x64(True):
        for label, sub, kw in (
            ("bitfit, conv kernel as a direct leaf", False,
             dict(method="bitfit", trainable=dpjax.named("conv1", base=dpjax.bias_only))),
            ("ghost, conv subclass as a fallback", True, dict(method="ghost")),
        ):  # fmt: skip
            model = CNN(sub)
            x = np.random.default_rng(0).normal(size=(6, 6, 6, 2))
            params = jax.tree.map(
                lambda p: p.astype(jnp.float64), model.init(jax.random.key(1), x[:1])["params"]
            )
            y = np.array([0, 1, 2, 0, 1, 2])
            bad = x.copy()
            bad[2, 0, 0, 0] = np.nan
            fn = dpjax.clipped_grad(xent(model), l2_clip=0.1, **kw)
            got, _ = fn(params, {"x": bad, "y": y})
            keep = np.arange(6) != 2
            oracle = dpjax.clipped_grad(
                xent(model), l2_clip=0.1, method="vmap", trainable=kw.get("trainable")
            )
            want, _ = oracle(params, {"x": x[keep], "y": y[keep]})
            report(f"3. nan row, {label}: |S - S_oracle| / C", f"{diff(got, want) / 0.1:.3g}")


# 4. bf16 sums: one example's effect on the clipped sum
def bf16() -> None:
    import toy_models

    model, params, batch = toy_models.make("mlp", batch_size=64, dtype=jnp.bfloat16)
    batch = {"x": jnp.abs(batch["x"]) + 3.0, "y": jnp.zeros(64, jnp.int32)}
    fn = jax.jit(dpjax.clipped_grad(toy_models.xent_loss(model), l2_clip=1.0, method="vmap"))
    full, _ = fn(params, {**batch, "mask": np.ones(64, bool)})
    worst = 0.0
    for j in range(8):
        m = np.ones(64, bool)
        m[j] = False
        other, _ = fn(params, {**batch, "mask": m})
        worst = max(worst, diff(full, other))
    report("4. bf16 model: max ||S(D) - S(D - x_j)|| / C", f"{worst:.6f}")


# 5. ghost embeddings with id -1
def ids() -> None:
    import toy_models

    with jax.enable_x64(True):
        model = toy_models.Block(vocab=64)  # V = 64, T = 7: the Gram form (2 T^2 <= V d)
        one = {"x": np.array([[-1, 63, -1, 63, -1, 63, -1]]), "y": np.array([1])}
        params = model.init(jax.random.key(1), one["x"] % 64)["params"]
        params = jax.tree.map(lambda p: p.astype(jnp.float64), params)
        g, _ = dpjax.clipped_grad(toy_models.xent_loss(model), l2_clip=0.05, method="ghost")(
            params, one
        )
        report("5. ghost, ids -1 and V-1: one contribution / C", f"{norm(g) / 0.05:.4f}")


# 6. check_engine and a loss that mixes examples
def mixing() -> None:
    import toy_models

    model, params, batch = toy_models.make("mlp")
    base = toy_models.xent_loss(model)

    def centred(p, b):
        return base(p, {**b, "x": b["x"] - jnp.mean(b["x"], 0)})

    try:
        dpjax.check_engine(centred, params, batch, method="ghost", l2_clip=100.0)
        report("6. check_engine, batch-centred loss, ghost", "passed (not caught)")
    except AssertionError as e:
        report("6. check_engine, batch-centred loss, ghost", "raised: " + str(e)[:70])


class MaskedLN(nn.Module):
    @nn.compact
    def __call__(self, x, m):
        h = nn.LayerNorm(name="ln")(nn.Dense(6, name="inp")(x), mask=m)  # masks features
        return nn.Dense(2, name="head")(h.mean(1))


# 8. LayerNorm(mask=) under ghost
def ln_mask() -> None:
    with jax.enable_x64(True):
        model = MaskedLN()
        x = np.random.default_rng(0).normal(size=(5, 4, 3))
        m = np.random.default_rng(1).random((5, 4, 6)) > 0.3
        m[:, :, 0] = True
        params = jax.tree.map(
            lambda p: p.astype(jnp.float64), model.init(jax.random.key(1), x, m)["params"]
        )

        def loss_fn(p, b):
            logits = model.apply({"params": p}, b["x"], b["m"])
            return -jnp.take_along_axis(jax.nn.log_softmax(logits), b["y"][:, None], 1)[:, 0]

        batch = {"x": x, "m": m, "y": np.array([0, 1, 0, 1, 1])}
        g, _ = dpjax.clipped_grad(loss_fn, l2_clip=100.0, method="ghost")(params, batch)
        w, _ = dpjax.clipped_grad(loss_fn, l2_clip=100.0, method="vmap")(params, batch)
        err = diff(g["ln"]["scale"], w["ln"]["scale"]) / norm(w["ln"]["scale"])
        report("8. ghost LayerNorm(mask=) scale: rel. error vs vmap", f"{err:.3g}")


class ReadOutside(nn.Module):
    @nn.compact
    def __call__(self, x):
        head = nn.Dense(3, name="head")
        return head(jnp.tanh(nn.Dense(4, name="mid")(x))) + head.variables["params"]["bias"]


# 9. a bias read outside its layer call
def outside() -> None:
    with jax.enable_x64(True):
        model = ReadOutside()
        x = np.random.default_rng(0).normal(size=(5, 3))
        params = jax.tree.map(
            lambda p: p.astype(jnp.float64), model.init(jax.random.key(1), x)["params"]
        )
        batch = {"x": x, "y": np.array([0, 1, 2, 0, 1])}
        for method in ("bitfit", "ghost"):
            kw = dict(l2_clip=100.0, trainable=dpjax.bias_only if method == "bitfit" else None)
            g, _ = dpjax.clipped_grad(xent(model), method=method, **kw)(params, batch)
            w, _ = dpjax.clipped_grad(xent(model), method="vmap", **kw)(params, batch)
            err = diff(g["head"]["bias"], w["head"]["bias"]) / norm(w["head"]["bias"])
            report(f"9. {method}: head bias read outside, rel. error", f"{err:.3g}")


# 10-12 and the fixed-size accounting
def config_and_validation() -> None:
    from dpjax.accounting import Segment
    from dpjax.training import Trainer
    from dpjax.training.settings import TrainSettings
    from experiments.configs import toy

    cfg = toy.get_config("dp_full")
    try:
        cfg.privacy.delta = "1e-5"
        report("10. privacy.delta='1e-5' (from the command line)",
               repr(TrainSettings.from_config(cfg).privacy.delta))  # fmt: skip
    except Exception as e:  # noqa: BLE001
        report("10. privacy.delta='1e-5' (from the command line)", f"{type(e).__name__}: {e}"[:70])
    try:  # the fixed-size sampler's config name: "fixed" before the rename
        from dpjax.validate import SAMPLINGS

        fixed_size = SAMPLINGS[SAMPLINGS.index("without_replacement")]
    except ImportError:
        fixed_size = "fixed"
    cfg = toy.get_config("dp_full")
    cfg.sampler, cfg.privacy.accountant = fixed_size, "rdp"
    cfg.privacy.target_epsilon, cfg.privacy.noise_multiplier = None, 1.0
    cfg.steps, cfg.epochs = 2, None
    task = toy.build_task(cfg.task)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            res = Trainer(cfg, tmp, task=task, devices=jax.devices()[:1]).run(progress=False)
            report("    fixed-size sampler, sigma 1, 2 steps: epsilon", f"{res['epsilon']:.4f}")
        except Exception as e:  # noqa: BLE001
            report("    fixed-size sampler, sigma 1, 2 steps", f"{type(e).__name__}"[:70])
    prior = dataclasses.replace(task, prior_privacy=(Segment(20.0, 1.0, 1),))
    with tempfile.TemporaryDirectory() as tmp:
        try:
            res = Trainer(cfg, tmp, task=prior, devices=jax.devices()[:1]).run(progress=False)
            report(
                "11. fixed sampler + prior + explicit sigma", f"ran, epsilon {res['epsilon']:.4f}"
            )
        except Exception as e:  # noqa: BLE001
            report("11. fixed sampler + prior + explicit sigma", f"{type(e).__name__}: {e}"[:90])
    loss_fn = lambda p, b: (b["x"] @ p["w"]) ** 2  # noqa: E731
    for label, make in (
        ("l2_clip=np.float32(1.0)", lambda: dpjax.clipped_grad(loss_fn, l2_clip=np.float32(1.0))),
        ("l2_clip={}", lambda: dpjax.clipped_grad(loss_fn, l2_clip={}).sensitivity),
        ("privatize(key=batch of 4 keys)",
         lambda: dpjax.optim.privatize(noise_multiplier=1.0, l2_clip=1.0, expected_batch_size=4,
                                       key=jax.random.split(jax.random.key(0), 4))),
    ):  # fmt: skip
        try:
            out = make()
            report(f"12. {label}", f"accepted ({out if isinstance(out, float) else 'ok'})")
        except Exception as e:  # noqa: BLE001
            report(f"12. {label}", f"{type(e).__name__}: {e}"[:80])


if __name__ == "__main__":
    for fn in (public_noise, nan_row, bf16, ids, mixing, ln_mask, outside, config_and_validation):
        try:
            fn()
        except Exception as e:  # noqa: BLE001
            report(fn.__name__, f"error {type(e).__name__}: {e}"[:100])
