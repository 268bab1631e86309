"""Prompt classification mechanics on a tiny masked LM with a tied decoder."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import dpjax
from dpjax.data import losses

V, D, B, T = 40, 8, 5, 9
LABEL_WORDS = np.array([7, 11, 13], np.int32)
UNUSED = 39  # a token that is neither in the inputs nor a label word


class TinyMLM(nn.Module):
    """Embed -> Dense -> LayerNorm -> tied decoder (``Embed.attend``) + vocab bias."""

    @nn.compact
    def __call__(self, ids):
        embed = nn.Embed(V, D, name="embed")
        h = nn.gelu(nn.Dense(D, name="dense")(embed(ids)))
        h = nn.LayerNorm(name="ln")(h)
        return embed.attend(h) + self.param("decoder_bias", nn.initializers.normal(1.0), (V,))


def _setup():
    rng = np.random.default_rng(0)
    ids = rng.integers(0, UNUSED, size=(B, T)).astype(np.int32)
    pos = rng.integers(0, T, size=(B,)).astype(np.int32)
    ids[np.arange(B), pos] = 1  # the mask token
    batch = {
        "input_ids": ids,
        "mask_position": pos,
        "label": rng.integers(0, len(LABEL_WORDS), size=(B,)).astype(np.int32),
    }
    model = TinyMLM()
    params = model.init(jax.random.key(1), ids)["params"]
    params = jax.tree.map(lambda x: x.astype(jnp.float64), params)
    return model, params, batch


def _loss_fn(model):
    def loss_fn(params, batch):
        logits = model.apply({"params": params}, batch["input_ids"])
        return losses.prompt_loss(logits, batch["mask_position"], LABEL_WORDS, batch["label"])

    return loss_fn


def test_prompt_logits_is_the_naive_gather():
    logits = np.random.default_rng(1).normal(size=(B, T, V)).astype(np.float32)
    pos = np.array([0, 3, 8, 3, 1])
    got = np.asarray(losses.prompt_logits(jnp.asarray(logits), pos, LABEL_WORDS))
    want = np.array([[logits[b, pos[b], w] for w in LABEL_WORDS] for b in range(B)])
    np.testing.assert_array_equal(got, want)
    # The [B, d] hidden gather agrees with indexing too.
    np.testing.assert_array_equal(
        np.asarray(losses.mask_hidden(jnp.asarray(logits), pos)), logits[np.arange(B), pos]
    )
    # The loss is softmax cross-entropy over the C label words only.
    labels = np.array([0, 2, 1, 1, 0])
    shifted = want - want.max(1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
    np.testing.assert_allclose(
        np.asarray(losses.prompt_loss(jnp.asarray(logits), pos, LABEL_WORDS, labels)),
        -logp[np.arange(B), labels],
        rtol=1e-6,
    )


def _oracle(model, params, batch, clip):
    """Per-example grads one at a time with plain indexing, clipped and summed."""

    @jax.jit
    @jax.grad
    def single(p, ids, pos, label):
        logits = model.apply({"params": p}, ids[None])[0]
        row = logits[pos][LABEL_WORDS]
        return -jax.nn.log_softmax(row)[label]

    total, norms = None, []
    for i in range(B):
        g = single(params, batch["input_ids"][i], batch["mask_position"][i], batch["label"][i])
        g = jax.tree.map(np.asarray, g)
        norm = float(np.sqrt(sum(np.sum(x**2) for x in jax.tree.leaves(g))))
        norms.append(norm)
        g = jax.tree.map(lambda x, n=norm: x * min(1.0, clip / n), g)
        total = g if total is None else jax.tree.map(np.add, total, g)
    return total, np.array(norms)


def test_gradients_flow_through_tied_decoder_vmap(x64):
    model, params, batch = _setup()
    grad_fn = jax.jit(dpjax.clipped_grad(_loss_fn(model), l2_clip=0.5, method="vmap"))
    grads, info = grad_fn(params, batch)
    want, norms = _oracle(model, params, batch, 0.5)
    np.testing.assert_allclose(np.asarray(info.norms), norms, rtol=1e-9)
    for g, w in zip(jax.tree.leaves(grads), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-8, atol=1e-12)
    table = np.asarray(grads["embed"]["embedding"])
    assert np.all(np.abs(table[LABEL_WORDS]).sum(1) > 0)  # decoder rows of label words
    assert not table[UNUSED].any()  # no one-hot over V: other rows get exactly zero
    bias = np.asarray(grads["decoder_bias"])
    assert np.all(bias[LABEL_WORDS] != 0) and np.count_nonzero(bias) == len(LABEL_WORDS)


def test_bitfit_matches_vmap_on_bias_terms(x64):
    model, params, batch = _setup()
    loss_fn = _loss_fn(model)
    kw = {"l2_clip": 0.05, "trainable": dpjax.bias_only}
    got, got_info = jax.jit(dpjax.clipped_grad(loss_fn, method="bitfit", **kw))(params, batch)
    want, want_info = jax.jit(dpjax.clipped_grad(loss_fn, method="vmap", **kw))(params, batch)
    np.testing.assert_allclose(np.asarray(got_info.norms), np.asarray(want_info.norms), rtol=1e-9)
    for path in (("dense", "bias"), ("ln", "bias")):
        g, w = got[path[0]][path[1]], want[path[0]][path[1]]
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-9, atol=1e-14)
        assert np.abs(np.asarray(g)).sum() > 0


def test_other_losses_against_numpy():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(3, 4, 6))
    ids = rng.integers(0, 6, size=(3, 4))
    mask = np.array([[0, 1, 1, 0], [0, 0, 1, 1], [0, 0, 0, 0]])
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp[:, :-1], ids[:, 1:, None], -1)[..., 0]
    want_sum = (nll * mask[:, 1:]).sum(1)
    got_sum = losses.lm_loss(jnp.asarray(logits), ids, mask, reduction="sum")
    np.testing.assert_allclose(np.asarray(got_sum), want_sum, rtol=1e-5)
    got_mean = losses.lm_loss(jnp.asarray(logits), ids, mask)
    np.testing.assert_allclose(np.asarray(got_mean), want_sum / np.array([2, 2, 1]), rtol=1e-5)
    x, y = rng.normal(size=(2, 40)), rng.integers(0, 2, size=(2, 40))
    p = 1 / (1 + np.exp(-x))
    want = -(y * np.log(p) + (1 - y) * np.log(1 - p)).sum(1)
    np.testing.assert_allclose(
        np.asarray(losses.multilabel_loss(jnp.asarray(x), y)), want, rtol=1e-5
    )
