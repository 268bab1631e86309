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
# # DP inside Optax chains
#
# dpjax splits DP training in two:
#
# * `dpjax.clipped_grad(loss_fn, l2_clip=C, method=...)` returns the **clipped sum**
#   `Σ_i c_i g_i` of per-example gradients (`c_i = min(1, C/‖g_i‖)`);
# * `dpjax.optim.privatize(σ, C, expected_batch_size, key)` is an ordinary Optax
#   gradient transformation that adds `N(0, σ²C²)` once and divides by the public
#   expected batch size. It goes at the head of any Optax chain.
#
# This notebook composes `privatize` with AdamW and a schedule, with `optax.masked` and
# `optax.multi_transform`, and with gradient accumulation (`dpjax.optim.accumulate`),
# and checks numerically that the noise is added **once per logical batch**. Last, a
# loss written by hand gives the same clipped sums under the `vmap`, `bitfit` and
# `ghost` engines.

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
OUT = pathlib.Path(os.environ.get("DPJAX_COLAB_OUT", "colab_outputs/optax_chains"))
OUT.mkdir(parents=True, exist_ok=True)
print("dpjax", dpjax.__version__, "| FAST =", FAST, "| outputs in", OUT)

# %%
import json
import secrets

import flax.linen as nn
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax

from dpjax.data.sampling import PoissonSampler

# %% [markdown]
# ## A model and a per-example loss
#
# dpjax's one loss contract: `loss_fn(params, batch) -> [B]` per-example losses. The
# batch carries a boolean `mask` (padding rows from Poisson sampling contribute zero).


# %%
class MLP(nn.Module):
    hidden: int = 128
    classes: int = 4

    @nn.compact
    def __call__(self, x):
        x = nn.gelu(nn.Dense(self.hidden, name="dense1")(x))
        x = nn.LayerNorm(name="norm")(x)
        return nn.Dense(self.classes, name="head")(x)


rng = np.random.default_rng(0)
n, dim, classes = 2048, 32, 4
centers = rng.normal(0.0, 1.5, (classes, dim))
labels = rng.integers(0, classes, n)
features = (centers[labels] + rng.normal(0.0, 1.0, (n, dim))).astype(np.float32)
data = {"x": features, "y": labels.astype(np.int32)}

model = MLP()
params = model.init(jax.random.key(0), jnp.zeros((1, dim)))["params"]


def loss_fn(params, batch):
    logits = model.apply({"params": params}, batch["x"])
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"])


def accuracy(params):
    logits = model.apply({"params": params}, data["x"])
    return float(jnp.mean(jnp.argmax(logits, -1) == data["y"]))


print("parameters:", sum(x.size for x in jax.tree.leaves(params)))

# %% [markdown]
# ## 1. `privatize` + AdamW + a warm-up/cosine schedule
#
# A Poisson sampler draws each logical batch (expected size 256); every micro-batch of
# fixed size 128 goes through `grad_fn`, the clipped sums are added, and **one**
# `tx.update` adds the noise.

# %%
C, sigma, batch_size = 1.0, 1.0, 256
steps = 8 if FAST else 60
grad_fn = dpjax.clipped_grad(loss_fn, l2_clip=C)
schedule = optax.warmup_cosine_decay_schedule(0.0, 3e-3, max(steps // 10, 1), steps)
tx = optax.chain(
    dpjax.optim.privatize(
        noise_multiplier=sigma,
        l2_clip=grad_fn.sensitivity,
        expected_batch_size=batch_size,
        key=dpjax.secret_key(),
    ),
    optax.adamw(schedule, weight_decay=1e-4),
)
sampler = PoissonSampler(
    n, expected_batch_size=batch_size, physical_batch_size=128, seed=secrets.randbits(64)
)
step_fn = jax.jit(grad_fn)


def logical_batch_grads(params, step):
    """Sum of the clipped sums of one logical batch's micro-batches."""
    total = None
    for idx, mask in sampler.sample(step):
        g, _ = step_fn(params, {"x": data["x"][idx], "y": data["y"][idx], "mask": mask})
        total = g if total is None else jax.tree.map(jnp.add, total, g)
    return total


@jax.jit
def apply(params, opt_state, grads):
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state


p, opt_state = params, tx.init(params)
acc_before = accuracy(p)
for step in range(steps):
    p, opt_state = apply(p, opt_state, logical_batch_grads(p, step))
acc_adamw = accuracy(p)
eps_adamw = dpjax.accounting.epsilon(
    noise_multiplier=sigma, sampling_rate=batch_size / n, steps=steps, delta=1 / (2 * n)
)
print(f"accuracy {acc_before:.3f} -> {acc_adamw:.3f} after {steps} DP-AdamW steps")
print(f"eps = {eps_adamw:.2f} at delta = 1/(2n)")

# %% [markdown]
# ## 2. `optax.masked` and `optax.multi_transform`
#
# `privatize` works on the whole gradient tree, so it goes **first**; everything after
# it sees an already private gradient and may treat leaves differently. Here: weight
# decay only on kernels (`optax.masked`), and a 10× larger learning rate on the biases
# (`optax.multi_transform` with labels from `dpjax.bias_only`).


# %%
def bias_label(key_path, leaf):  # dpjax predicates take a tuple of string keys
    return dpjax.bias_only(tuple(k.key for k in key_path), leaf)


is_bias = jax.tree_util.tree_map_with_path(bias_label, params)
labels_tree = jax.tree.map(lambda b: "bias" if b else "weight", is_bias)
tx_multi = optax.chain(
    dpjax.optim.privatize(
        noise_multiplier=sigma, l2_clip=C, expected_batch_size=batch_size, key=dpjax.secret_key()
    ),
    optax.masked(optax.add_decayed_weights(1e-4), jax.tree.map(lambda b: not b, is_bias)),
    optax.multi_transform({"bias": optax.adam(1e-2), "weight": optax.adam(1e-3)}, labels_tree),
)


@jax.jit
def apply_multi(params, opt_state, grads):
    updates, opt_state = tx_multi.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state


p, state_multi = params, tx_multi.init(params)
for step in range(steps):
    p, state_multi = apply_multi(p, state_multi, logical_batch_grads(p, step))
acc_multi = accuracy(p)
print("labels:", labels_tree)
print(f"accuracy after {steps} steps with masked decay + per-group learning rates: {acc_multi:.3f}")

# %% [markdown]
# ## 3. Gradient accumulation: noise once per logical batch
#
# A logical batch of `B = 512` examples processed as `k = 4` micro-batches of 128.
# `dpjax.optim.accumulate(inner, k)` sums `k` successive clipped sums and runs `inner`
# (noise included) once on the total. With `inner = chain(privatize, sgd(1))` the
# update is `-(Σ clipped + N(0, σ²C²)) / B`, so the *noise part* of the update —
# the difference between a run with σ > 0 and the same run with σ = 0 — has standard
# deviation exactly `σC/B` per coordinate.
#
# The mistake peers made (jax_privacy #234): noise added per micro-batch (at σ, or at
# σ/√k and then under-counted by the accountant). At σ per micro-batch the noise std is
# `√k` times too large; at σ/√k it looks right but ε is computed for the wrong event.

# %%
k, micro, B = 4, 128, 512
sigma_acc = 2.0
logical_steps = 3 if FAST else 10


def make_tx(noise, seed=3):
    inner = optax.chain(
        dpjax.optim.privatize(
            noise_multiplier=noise, l2_clip=C, expected_batch_size=B, key=dpjax.secret_key()
        ),
        optax.sgd(1.0),
    )
    return dpjax.optim.accumulate(inner, k)


def flat(tree):
    return np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])


tx_noisy, tx_clean = make_tx(sigma_acc), make_tx(0.0)
update_noisy, update_clean = jax.jit(tx_noisy.update), jax.jit(tx_clean.update)
s_noisy, s_clean = tx_noisy.init(params), tx_clean.init(params)
noise_samples, intermediate_max = [], 0.0
for step in range(logical_steps):
    for j in range(k):  # k micro-batches of one logical batch
        idx = np.arange(micro) + micro * ((step * k + j) % (n // micro))
        g, _ = step_fn(params, {"x": data["x"][idx], "y": data["y"][idx]})
        u_noisy, s_noisy = update_noisy(g, s_noisy, params)
        u_clean, s_clean = update_clean(g, s_clean, params)
        if j < k - 1:  # accumulating: no update (and no noise) yet
            intermediate_max = max(intermediate_max, float(np.abs(flat(u_noisy)).max()))
    noise_samples.append(flat(u_noisy) - flat(u_clean))
noise = np.concatenate(noise_samples)
expected_std = sigma_acc * C / B
ratio_accumulated = float(noise.std() / expected_std)

# The wrong way: privatize every micro-batch at sigma and add the results.
tx_per_micro = dpjax.optim.privatize(
    noise_multiplier=sigma_acc, l2_clip=C, expected_batch_size=B, key=dpjax.secret_key()
)
s_pm, update_pm = tx_per_micro.init(params), jax.jit(tx_per_micro.update)
zeros = jax.tree.map(jnp.zeros_like, params)
wrong = []
for _step in range(logical_steps):
    total = zeros
    for _ in range(k):
        u, s_pm = update_pm(zeros, s_pm, params)
        total = jax.tree.map(jnp.add, total, u)
    wrong.append(flat(total))
ratio_per_micro = float(np.concatenate(wrong).std() / expected_std)
print(f"{noise.size} noise coordinates; expected std sigma*C/B = {expected_std:.3e}")
print(f"accumulate(privatize): std / (sigma C / B) = {ratio_accumulated:.4f}  (should be 1)")
print(
    f"per-micro-batch noise:  std / (sigma C / B) = {ratio_per_micro:.4f}  (sqrt(k) = {k**0.5:.2f})"
)
print(f"largest intermediate update while accumulating: {intermediate_max}")

# %%
fig, ax = plt.subplots(figsize=(6, 4))
bins = np.linspace(-5 * expected_std * k**0.5, 5 * expected_std * k**0.5, 81)
ax.hist(noise, bins=bins, density=True, alpha=0.6, label="accumulate(privatize): once per batch")
ax.hist(np.concatenate(wrong), bins=bins, density=True, alpha=0.6, label="noise per micro-batch")
grid = np.linspace(bins[0], bins[-1], 400)
ax.plot(grid, np.exp(-0.5 * (grid / expected_std) ** 2) / (expected_std * np.sqrt(2 * np.pi)),
        "k--", label="N(0, (sigma C / B)^2)")  # fmt: skip
ax.set_xlabel("noise in one update coordinate")
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(OUT / "accumulation_noise.png", dpi=100)
plt.show()

# %% [markdown]
# ## 4. A hand-written loss under every engine
#
# A small "token classifier" written by hand: an embedding lookup, a Dense layer with
# LayerNorm, mean pooling over positions and a Dense head. The three engines must return
# the same clipped sums and norms:
#
# * `vmap`: `vmap(grad)` per example — the reference (oracle);
# * `ghost`: book-keeping ghost clipping, one backward pass, no per-example gradients;
# * `bitfit`: bias-only gradients from output gradients (compare with `vmap` restricted
#   to the same trainable set, `trainable=dpjax.bias_only`).


# %%
class TokenClassifier(nn.Module):
    vocab: int = 50
    width: int = 32

    @nn.compact
    def __call__(self, ids):
        h = nn.Embed(self.vocab, self.width, name="embed")(ids)
        h = nn.LayerNorm(name="norm")(nn.gelu(nn.Dense(self.width, name="dense")(h)))
        return nn.Dense(3, name="head")(h.mean(axis=1))


tc = TokenClassifier()
ids = jnp.asarray(rng.integers(0, 50, (16, 12)), jnp.int32)
tc_batch = {"ids": ids, "y": jnp.asarray(rng.integers(0, 3, 16), jnp.int32)}
tc_batch["mask"] = jnp.arange(16) < 14  # two padding rows
tc_params = tc.init(jax.random.key(5), ids)["params"]


def tc_loss(params, batch):
    logits = tc.apply({"params": params}, batch["ids"])
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"])


def max_rel_diff(a, b):
    a, b = flat(a), flat(b)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


clip = 0.5
results_engines = {}
g_vmap, i_vmap = jax.jit(dpjax.clipped_grad(tc_loss, l2_clip=clip, method="vmap"))(
    tc_params, tc_batch
)
g_ghost, i_ghost = jax.jit(dpjax.clipped_grad(tc_loss, l2_clip=clip, method="ghost"))(
    tc_params, tc_batch
)
results_engines["ghost_vs_vmap_grads"] = max_rel_diff(g_ghost, g_vmap)
results_engines["ghost_vs_vmap_norms"] = max_rel_diff(i_ghost.norms, i_vmap.norms)

bias_kw = dict(l2_clip=clip, trainable=dpjax.bias_only)
g_vb, i_vb = jax.jit(dpjax.clipped_grad(tc_loss, method="vmap", **bias_kw))(tc_params, tc_batch)
g_bf, i_bf = jax.jit(dpjax.clipped_grad(tc_loss, method="bitfit", **bias_kw))(tc_params, tc_batch)
results_engines["bitfit_vs_vmap_grads"] = max_rel_diff(g_bf, g_vb)
results_engines["bitfit_vs_vmap_norms"] = max_rel_diff(i_bf.norms, i_vb.norms)
results_engines["clipped_rows"] = int(i_vmap.num_clipped)
results_engines["padding_norms"] = float(np.abs(np.asarray(i_vmap.norms)[14:]).max())
results_engines["frozen_leaves_are_none"] = g_bf["embed"]["embedding"] is None
for key, value in results_engines.items():
    print(f"{key:24s} {value}")
print("per-example norms (vmap):", np.round(np.asarray(i_vmap.norms), 3))

# %%
results = {
    "accuracy_before": acc_before,
    "accuracy_adamw": acc_adamw,
    "accuracy_multi_transform": acc_multi,
    "epsilon_adamw": eps_adamw,
    "noise_ratio_accumulated": ratio_accumulated,
    "noise_ratio_per_microbatch": ratio_per_micro,
    "noise_coordinates": int(noise.size),
    "accumulate_k": k,
    "intermediate_update_max": intermediate_max,
    "engines": results_engines,
    "plots": ["accumulation_noise.png"],
}
(OUT / "results.json").write_text(json.dumps(results, indent=1))
print(json.dumps(results, indent=1))
