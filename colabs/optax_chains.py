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
# * `dpjax.optim.privatize(noise_multiplier=σ, l2_clip=C, expected_batch_size=B, key=key)`
#   is an ordinary Optax gradient transformation that adds `N(0, σ²C²)` once and divides
#   by the public expected batch size. It goes at the head of any Optax chain.
#
# `dpjax.Mechanism(grad_fn, optimizer, noise_multiplier=σ, ...)` binds the two: its `tx`
# is `chain(privatize(...), optimizer)` for **any** Optax `optimizer`, and
# `mech.logical_step(state, micro_batches, ledger=ledger)` sums the clipped sums of a
# logical batch's micro-batches, adds the noise once, applies one update and records
# the step in the privacy ledger.
#
# This notebook composes `privatize` by hand with AdamW and a schedule, and with
# `optax.masked` and `optax.multi_transform`; checks that the same chains, given to a
# `Mechanism` as its `optimizer`, are what it runs; trains with them; and checks
# numerically that `logical_step` adds the noise **once per logical batch**, for `k`
# micro-batches as for a Poisson draw's variable number. Last, a loss written by hand
# gives the same clipped sums under the `vmap`, `bitfit` and `ghost` engines.

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
# By hand, `privatize` heads the chain and AdamW follows. A `dpjax.Mechanism` given AdamW
# as its `optimizer` builds that same chain (`mech.tx`): fed the same clipped sum with the
# same key, the two give the same updates. Training runs `mech.logical_step`: a Poisson
# sampler draws each logical batch (expected size 256), every micro-batch of fixed size
# 128 goes through `grad_fn`, the clipped sums are added, and **one** update adds the
# noise; the ledger records each step and gives ε.


# %%
def flat(tree):
    return np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])


C, sigma, batch_size = 1.0, 1.0, 256
steps = 8 if FAST else 60
delta = 1 / (2 * n)
grad_fn = dpjax.clipped_grad(loss_fn, l2_clip=C)
schedule = optax.warmup_cosine_decay_schedule(0.0, 3e-3, max(steps // 10, 1), steps)
adamw = optax.adamw(schedule, weight_decay=1e-4)
key_adamw = dpjax.secret_key()
tx = optax.chain(  # by hand: the noise first, then any Optax chain
    dpjax.optim.privatize(
        noise_multiplier=sigma,
        l2_clip=grad_fn.sensitivity,
        expected_batch_size=batch_size,
        key=key_adamw,
    ),
    adamw,
)
sampler = PoissonSampler(
    n, expected_batch_size=batch_size, physical_batch_size=128, seed=secrets.randbits(64)
)
mech_adamw = dpjax.Mechanism(  # the same chain: mech_adamw.tx
    grad_fn, adamw, noise_multiplier=sigma, expected_batch_size=batch_size, key=key_adamw,
    sampling=sampler.accounting_kwargs(),
)  # fmt: skip


def micro_batches(sampler, step):
    """Logical step ``step``'s Poisson draw as fixed-shape micro-batches (padding masked)."""
    for idx, mask in sampler.sample(step):
        yield {"x": data["x"][idx], "y": data["y"][idx], "mask": mask}


def chain_vs_mechanism(tx_by_hand, mech, updates=3):
    """Largest |difference| between ``updates`` successive updates of a chain written by
    hand and of ``mech.tx``, on one clipped sum (same key: only the difference is shown)."""
    grads, _ = jax.jit(grad_fn)(params, next(micro_batches(sampler, 0)))
    state_a, state_b, worst = tx_by_hand.init(params), mech.tx.init(params), 0.0
    for _ in range(updates):  # the schedule starts at 0: the first update is 0 in both
        a, state_a = tx_by_hand.update(grads, state_a, params)
        b, state_b = mech.tx.update(grads, state_b, params)
        worst = max(worst, float(np.abs(flat(a) - flat(b)).max()))
    return worst


def train(mech):
    """``steps`` logical steps of ``mech`` from ``params``: (final state, its ledger)."""
    state, ledger = mech.init(params), dpjax.accounting.PrivacyLedger()
    for step in range(steps):
        state, _ = mech.logical_step(state, micro_batches(sampler, step), ledger=ledger)
    return state, ledger


diff_adamw = chain_vs_mechanism(tx, mech_adamw)
acc_before = accuracy(params)
state_adamw, ledger_adamw = train(mech_adamw)
acc_adamw = accuracy(state_adamw.params)
eps_adamw = ledger_adamw.epsilon(delta)
print(f"chain by hand vs mech.tx: largest update difference {diff_adamw}")
print(f"accuracy {acc_before:.3f} -> {acc_adamw:.3f} after {ledger_adamw.steps} DP-AdamW steps")
print(f"eps = {eps_adamw:.2f} at delta = 1/(2n)")

# %% [markdown]
# ## 2. `optax.masked` and `optax.multi_transform`
#
# `privatize` works on the whole gradient tree, so it goes **first**; everything after
# it sees an already private gradient and may treat leaves differently. Here: weight
# decay only on kernels (`optax.masked`), and a 10× larger learning rate on the biases
# (`optax.multi_transform` with labels from `dpjax.bias_only`). The part after
# `privatize` is, unchanged, the `optimizer` of a `Mechanism`.


# %%
def bias_label(key_path, leaf):  # dpjax predicates take a tuple of string keys
    return dpjax.bias_only(tuple(k.key for k in key_path), leaf)


is_bias = jax.tree_util.tree_map_with_path(bias_label, params)
labels_tree = jax.tree.map(lambda b: "bias" if b else "weight", is_bias)
decay_and_rates = optax.chain(
    optax.masked(optax.add_decayed_weights(1e-4), jax.tree.map(lambda b: not b, is_bias)),
    optax.multi_transform({"bias": optax.adam(1e-2), "weight": optax.adam(1e-3)}, labels_tree),
)
key_multi = dpjax.secret_key()
tx_multi = optax.chain(  # by hand
    dpjax.optim.privatize(
        noise_multiplier=sigma, l2_clip=C, expected_batch_size=batch_size, key=key_multi
    ),
    decay_and_rates,
)
mech_multi = dpjax.Mechanism(  # the same chain, as a mechanism
    grad_fn, decay_and_rates, noise_multiplier=sigma, expected_batch_size=batch_size,
    key=key_multi, sampling=sampler.accounting_kwargs(),
)  # fmt: skip
diff_multi = chain_vs_mechanism(tx_multi, mech_multi)
state_multi, ledger_multi = train(mech_multi)
acc_multi = accuracy(state_multi.params)
print("labels:", labels_tree)
print(f"chain by hand vs mech.tx: largest update difference {diff_multi}")
print(f"accuracy after {steps} steps with masked decay + per-group learning rates: {acc_multi:.3f}")
print(f"eps = {ledger_multi.epsilon(delta):.2f} at delta = 1/(2n)")

# %% [markdown]
# ## 3. One logical step, one noise draw
#
# A logical batch of expected size `B = 512` in micro-batches of 128: first `k = 4` full
# ones, then as many as a Poisson draw needs (4 or 5 here, the last one padded).
# `mech.logical_step` sums their clipped sums and runs `mech.tx` (noise included) once
# on the total. With `optimizer=optax.sgd(1.0)` the update is
# `-(Σ clipped + N(0, σ²C²)) / B`, so the *noise part* of the update — the difference
# between a mechanism with σ > 0 and the same mechanism with σ = 0, both stepping from
# the same parameters on the same micro-batches — has standard deviation exactly `σC/B`
# per coordinate, whatever the number of micro-batches. The noisy mechanism's `privatize`
# state counts its noise draws: one per logical step, as many as its ledger's steps.
#
# The mistake peers made (jax_privacy #234): noise added per micro-batch (at σ, or at
# σ/√k and then under-counted by the accountant). At σ per micro-batch the noise std is
# `√k` times too large; at σ/√k it looks right but ε is computed for the wrong event.

# %%
k, micro, B = 4, 128, 512
sigma_acc = 2.0
per_kind = 2 if FAST else 5  # logical steps of k micro-batches, then of Poisson draws
poisson = PoissonSampler(
    n, expected_batch_size=B, physical_batch_size=micro, seed=secrets.randbits(64)
)


def sgd_mechanism(noise):
    return dpjax.Mechanism(
        grad_fn, optax.sgd(1.0), noise_multiplier=noise, expected_batch_size=B,
        key=dpjax.secret_key(), sampling=poisson.accounting_kwargs(),
    )  # fmt: skip


def k_micro_batches(step):  # k full micro-batches of consecutive rows
    for j in range(k):
        idx = np.arange(micro) + micro * ((step * k + j) % (n // micro))
        yield {"x": data["x"][idx], "y": data["y"][idx], "mask": np.ones(micro, bool)}


logical_batches = [list(k_micro_batches(s)) for s in range(per_kind)]
logical_batches += [list(micro_batches(poisson, s)) for s in range(per_kind)]
counts = [len(batches) for batches in logical_batches]
mech_noisy, mech_clean = sgd_mechanism(sigma_acc), sgd_mechanism(0.0)
noisy, clean = mech_noisy.init(params), mech_clean.init(params)
ledger_acc = dpjax.accounting.PrivacyLedger()
noise_samples = []
for batches in logical_batches:
    # both step from `params` (fresh copies: logical_step donates the state's buffers)
    noisy = noisy.replace(train=jax.tree.map(jnp.array, params))
    clean = clean.replace(train=jax.tree.map(jnp.array, params))
    noisy, _ = mech_noisy.logical_step(noisy, batches, ledger=ledger_acc)
    clean, _ = mech_clean.logical_step(clean, batches)  # sigma = 0: nothing to account
    noise_samples.append(flat(noisy.train) - flat(clean.train))
noise = np.concatenate(noise_samples)
expected_std = sigma_acc * C / B
ratio_accumulated = float(noise.std() / expected_std)
ratio_k = float(np.concatenate(noise_samples[:per_kind]).std() / expected_std)
ratio_poisson = float(np.concatenate(noise_samples[per_kind:]).std() / expected_std)
noise_draws = int(noisy.opt_state[0].count)  # privatize's state: one per noise draw

# The wrong way: privatize every micro-batch at sigma and add the results.
tx_per_micro = dpjax.optim.privatize(
    noise_multiplier=sigma_acc, l2_clip=C, expected_batch_size=B, key=dpjax.secret_key()
)
s_pm, update_pm = tx_per_micro.init(params), jax.jit(tx_per_micro.update)
zeros = jax.tree.map(jnp.zeros_like, params)
wrong = []
for _step in range(len(logical_batches)):
    total = zeros
    for _ in range(k):
        u, s_pm = update_pm(zeros, s_pm, params)
        total = jax.tree.map(jnp.add, total, u)
    wrong.append(flat(total))
ratio_per_micro = float(np.concatenate(wrong).std() / expected_std)
print(f"{noise.size} noise coordinates; expected std sigma*C/B = {expected_std:.3e}")
print(f"micro-batches per logical step: {counts}")
print(f"logical_step:          std / (sigma C / B) = {ratio_accumulated:.4f}  (should be 1;"
      f" {ratio_k:.4f} with k = {k}, {ratio_poisson:.4f} with Poisson draws)")  # fmt: skip
print(
    f"per-micro-batch noise: std / (sigma C / B) = {ratio_per_micro:.4f}  (sqrt(k) = {k**0.5:.2f})"
)
print(f"{sum(counts)} micro-batches, {noise_draws} noise draws, {ledger_acc.steps} ledger steps")

# %%
fig, ax = plt.subplots(figsize=(6, 4))
bins = np.linspace(-5 * expected_std * k**0.5, 5 * expected_std * k**0.5, 81)
ax.hist(noise, bins=bins, density=True, alpha=0.6, label="Mechanism.logical_step: once per batch")
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
    "epsilon_multi_transform": ledger_multi.epsilon(delta),
    "mechanism_tx_vs_chain": max(diff_adamw, diff_multi),
    "noise_ratio_accumulated": ratio_accumulated,
    "noise_ratio_k_microbatches": ratio_k,
    "noise_ratio_poisson": ratio_poisson,
    "noise_ratio_per_microbatch": ratio_per_micro,
    "noise_coordinates": int(noise.size),
    "accumulate_k": k,
    "microbatch_counts": counts,
    "noise_draws": noise_draws,
    "ledger_steps": ledger_acc.steps,
    "engines": results_engines,
    "plots": ["accumulation_noise.png"],
}
(OUT / "results.json").write_text(json.dumps(results, indent=1))
print(json.dumps(results, indent=1))
