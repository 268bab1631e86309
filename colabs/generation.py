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
# # DP table-to-text generation with GPT-2
#
# Li et al. (ICLR 2022) fine-tune GPT-2 with DP on E2E and DART: each training row is
# `table <sep> text <eos>`, and the loss is the next-token cross-entropy on the text
# only. This notebook does the same end to end, offline:
#
# * a small synthetic restaurant table-to-text set in the style of E2E (the real E2E and
#   DART load through `dpjax.data.table2text` with TFDS when you have internet);
# * a small **random-init** GPT-2 with a word-level vocabulary — or a pretrained GPT-2
#   when you point `DPJAX_GPT2_CHECKPOINT` at a Hugging Face folder (`config.json`,
#   `model.safetensors`, `vocab.json` + `merges.txt`);
# * DP full fine-tuning with ghost clipping (`dpjax.clipped_grad(method="ghost")`) and
#   DP-Adam, one `dpjax.Mechanism.logical_step` per logical batch, ε calibrated to 8;
# * decoding with `dpjax.models.greedy_generate` and `dpjax.models.beam_search`.
#
# `DPJAX_FAST=1` runs a handful of steps (the test suite does).

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
OUT = pathlib.Path(os.environ.get("DPJAX_COLAB_OUT", "colab_outputs/generation"))
OUT.mkdir(parents=True, exist_ok=True)
CHECKPOINT = os.environ.get("DPJAX_GPT2_CHECKPOINT")  # a pretrained GPT-2 folder, optional
print("dpjax", dpjax.__version__, "| FAST =", FAST, "| checkpoint:", CHECKPOINT)

# %%
import dataclasses
import itertools
import json
import secrets

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax

from dpjax import models
from dpjax.data.sampling import PoissonSampler

# %% [markdown]
# ## A synthetic table-to-text set
#
# Every combination of name × food × area × rating is one table; its reference text
# follows one of two templates. A random 80% of the tables train, the rest test, so the
# test tables are *unseen combinations* of seen values.

# %%
NAMES = ["Aromi", "The Eagle", "Zizzi", "Cotto", "Giraffe", "Alimentum", "Strada", "Wildwood"]
FOODS = ["Italian", "French", "Chinese", "Indian", "Japanese", "English"]
AREAS = ["riverside", "city centre"]
RATINGS = ["low", "average", "high"]


def table_of(name, food, area, rating):
    return f"name : {name} | food : {food} | area : {area} | rating : {rating}"


def text_of(name, food, area, rating, variant):
    if variant == 0:
        return f"{name} serves {food} food in the {area} area and has a {rating} rating ."
    return f"In the {area} area , {name} is a {food} place with a {rating} customer rating ."


rows = [
    (table_of(*r), text_of(*r, v), r)
    for r in itertools.product(NAMES, FOODS, AREAS, RATINGS)
    for v in (0, 1)
]
tables = sorted({t for t, _, _ in rows})
perm = np.random.default_rng(0).permutation(len(tables))
test_tables = {tables[i] for i in perm[: len(tables) // 5]}
train_rows = [r for r in rows if r[0] not in test_tables]
test_rows = [r for r in rows if r[0] in test_tables and r[1].startswith(r[2][0])]  # template 0
print(f"{len(train_rows)} training pairs, {len(test_rows)} test tables")
print(train_rows[0][0], "->", train_rows[0][1])

# %% [markdown]
# ## Tokenizer and model
#
# Without a checkpoint: a word-level vocabulary and a 2-layer GPT-2 (`gpt2-tiny` widened
# a little) with random weights. With `DPJAX_GPT2_CHECKPOINT`: `models.from_pretrained`
# and the checkpoint's byte-level BPE tokenizer.

# %%
if CHECKPOINT:
    from dpjax.data import tokenizers

    tok = tokenizers.from_pretrained(CHECKPOINT, kind="gpt2")
    model, params = models.from_pretrained(CHECKPOINT, head="lm")
    SEP = EOS = PAD = tok.eos_id

    def encode(text):
        return list(tok.encode(" " + text))

    def decode(ids):
        return tok.decode(ids).strip()

else:
    words = sorted({w for t, x, _ in rows for w in (t + " " + x).split()})
    vocab = ["<pad>", "<sep>", "<eos>", *words]
    index = {w: i for i, w in enumerate(vocab)}
    PAD, SEP, EOS = 0, 1, 2

    def encode(text):
        return [index[w] for w in text.split()]

    def decode(ids):
        return " ".join(vocab[i] for i in ids if i > EOS)

    config = dataclasses.replace(
        models.get_config("gpt2-tiny"),
        vocab_size=len(vocab), n_positions=64, n_embd=64, n_head=4, n_layer=2,
        bos_token_id=SEP, eos_token_id=EOS,
    )  # fmt: skip
    model = models.create_model(config, head="lm")
    params = model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]

prompt_ids = [encode(t) + [SEP] for t, _, _ in train_rows]
target_ids = [encode(x) + [EOS] for _, x, _ in train_rows]
max_len = max(len(a) + len(b) for a, b in zip(prompt_ids, target_ids, strict=True))
n = len(train_rows)
ids = np.full((n, max_len), PAD, np.int32)
loss_mask = np.zeros((n, max_len), np.float32)
attention = np.zeros((n, max_len), np.int32)
for i, (a, b) in enumerate(zip(prompt_ids, target_ids, strict=True)):
    ids[i, : len(a) + len(b)] = a + b
    attention[i, : len(a) + len(b)] = 1
    loss_mask[i, len(a) : len(a) + len(b)] = 1  # predict the text and eos only
data = {"input_ids": ids, "attention_mask": attention, "loss_mask": loss_mask}
print(f"sequence length {max_len}, {sum(x.size for x in jax.tree.leaves(params)):,} parameters")


def loss_fn(params, batch):
    """Per-example mean next-token cross-entropy over the text tokens: shape [B]."""
    logits = model.apply({"params": params}, batch["input_ids"], batch["attention_mask"])
    ce = optax.softmax_cross_entropy_with_integer_labels(
        logits[:, :-1].astype(jnp.float32), batch["input_ids"][:, 1:]
    )
    m = batch["loss_mask"][:, 1:]
    return jnp.sum(ce * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1.0)


# %% [markdown]
# ## DP fine-tuning
#
# Poisson sampling with expected batch 64, clip 0.1 (paper 2's setting), σ calibrated for
# ε = 8 at δ = 1/(2n), DP-Adam. The clipped sums come from the ghost engine: one backward
# pass, no per-example gradients (the vmap engine gives the same numbers). A
# `dpjax.Mechanism` binds the clipped gradient, the noise, Adam and the accounting:
# `mech.logical_step` sums the clipped sums of a draw's micro-batches, adds the noise
# once, updates, and records the step in the ledger that gives ε.

# %%
batch_size, physical, clip, target_eps = 64, 32, 0.1, 8.0
steps = 30 if FAST else 300
delta = 1 / (2 * n)
sigma = dpjax.accounting.calibrate_noise_multiplier(
    target_epsilon=target_eps, sampling_rate=batch_size / n, steps=steps, delta=delta
)
grad_fn = dpjax.clipped_grad(loss_fn, l2_clip=clip, method="ghost")
sampler = PoissonSampler(
    n, expected_batch_size=batch_size, physical_batch_size=physical, seed=secrets.randbits(64)
)
mech = dpjax.Mechanism(
    grad_fn, optax.adam(optax.linear_schedule(3e-3 if CHECKPOINT else 1e-2, 1e-4, steps)),
    noise_multiplier=sigma, expected_batch_size=batch_size, key=dpjax.secret_key(),
    sampling=sampler.accounting_kwargs(),
)  # fmt: skip


@jax.jit
def mean_loss(params):
    return jnp.mean(loss_fn(params, {k: jnp.asarray(v) for k, v in data.items()}))


def micro_batches(step):
    """Logical step ``step``'s Poisson draw as fixed-shape micro-batches (padding masked)."""
    for idx, mask in sampler.sample(step):
        yield {k: v[idx] for k, v in data.items()} | {"mask": mask}


state, ledger = mech.init(params), dpjax.accounting.PrivacyLedger()
losses = [float(mean_loss(state.params))]
for step in range(steps):
    state, _ = mech.logical_step(state, micro_batches(step), ledger=ledger)  # noise once
    if (step + 1) % max(steps // 10, 1) == 0:
        losses.append(float(mean_loss(state.params)))
        print(f"step {step + 1:4d}: training loss {losses[-1]:.3f}")
params = state.params  # the fine-tuned model, decoded below
eps = ledger.epsilon(delta)
print(f"sigma = {sigma:.3f}, epsilon = {eps:.3f} at delta = {delta:.2e} ({ledger.steps} steps)")

# %%
fig, ax = plt.subplots(figsize=(6, 4))
ax.plot(np.linspace(0, steps, len(losses)), losses, "o-")
ax.set_xlabel("step")
ax.set_ylabel("training loss (text tokens)")
ax.set_title(f"DP fine-tuning, eps = {eps:.1f}")
fig.tight_layout()
fig.savefig(OUT / "training_loss.png", dpi=100)
plt.show()

# %% [markdown]
# ## Decoding: greedy and beam search
#
# Prompts are left-padded (`attention_mask` 0 on the left). Both decoders are one
# compiled program with a KV cache; beam search keeps `num_beams` hypotheses per prompt.
# With `length_penalty=0` the beam score is the plain log-probability of the output,
# which can only match or beat greedy decoding's.

# %%
num_decode = 8 if FAST else len(test_rows)
prompts = [encode(t) + [SEP] for t, _, _ in test_rows[:num_decode]]
width = max(map(len, prompts))
prompt_ids = np.full((len(prompts), width), PAD, np.int32)
prompt_mask = np.zeros((len(prompts), width), np.int32)
for i, p in enumerate(prompts):
    prompt_ids[i, width - len(p) :], prompt_mask[i, width - len(p) :] = p, 1
new_tokens = max(len(encode(x)) for _, x, _ in test_rows) + 2
greedy = models.greedy_generate(model, params, prompt_ids, prompt_mask,
                                max_new_tokens=new_tokens, eos_id=EOS, pad_id=PAD)  # fmt: skip
beam, beam_scores = models.beam_search(model, params, prompt_ids, prompt_mask, num_beams=4,
                                       max_new_tokens=new_tokens, eos_id=EOS, pad_id=PAD,
                                       length_penalty=0.0)  # fmt: skip
beam1, _ = models.beam_search(model, params, prompt_ids, prompt_mask, num_beams=1,
                              max_new_tokens=new_tokens, eos_id=EOS, pad_id=PAD)  # fmt: skip


def sequence_logprob(params, prompt_ids, prompt_mask, generated):
    """log p(generated | prompt), summed up to and including the first eos."""
    full = jnp.concatenate([prompt_ids, generated], axis=1)
    gen_mask = jnp.cumsum(jnp.cumsum(generated == EOS, axis=1), axis=1) <= 1
    mask = jnp.concatenate([prompt_mask, gen_mask.astype(jnp.int32)], axis=1)
    positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
    logits = model.apply({"params": params}, full, mask, position_ids=positions)
    logp = jax.nn.log_softmax(logits[:, width - 1 : -1].astype(jnp.float32))
    token_logp = jnp.take_along_axis(logp, generated[..., None], axis=-1)[..., 0]
    return jnp.sum(jnp.where(gen_mask, token_logp, 0.0), axis=1)


greedy_scores = sequence_logprob(params, prompt_ids, prompt_mask, greedy)


def cut(ids_row):
    ids_row = list(np.asarray(ids_row))
    return ids_row[: ids_row.index(EOS)] if EOS in ids_row else ids_row


decoded = []
for i, (table, reference, _) in enumerate(test_rows[:num_decode]):
    g_text, b_text = decode(cut(greedy[i])), decode(cut(beam[i]))
    decoded.append({"table": table, "reference": reference, "greedy": g_text, "beam": b_text})
    if i < 4:
        print(f"table:     {table}\nreference: {reference}")
        print(f"greedy:    {g_text}\nbeam(4):   {b_text}\n")
name_hits = np.mean([d["table"].split(" | ")[0][7:] in d["greedy"] for d in decoded])
print(f"greedy outputs naming the right restaurant: {name_hits:.2f}")
print("greedy log-prob:", np.round(np.asarray(greedy_scores), 3))
print("beam   log-prob:", np.round(np.asarray(beam_scores), 3))

# %%
results = {
    "fast": FAST,
    "pretrained": bool(CHECKPOINT),
    "steps": steps,
    "sigma": sigma,
    "epsilon": eps,
    "target_epsilon": target_eps,
    "losses": losses,
    "greedy_logprob": np.asarray(greedy_scores).tolist(),
    "beam_logprob": np.asarray(beam_scores).tolist(),
    "beam1_equals_greedy": bool(np.array_equal(np.asarray(beam1), np.asarray(greedy))),
    "greedy_shape": list(np.shape(greedy)),
    "name_hits": float(name_hits),
    "decoded": decoded,
    "plots": ["training_loss.png"],
}
(OUT / "results.json").write_text(json.dumps(results, indent=1))
print(json.dumps({k: v for k, v in results.items() if k != "decoded"}, indent=1))
