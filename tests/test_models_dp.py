"""Every tiny model through ``dpjax.clipped_grad``: the clipped sum equals a float64 loop.

Oracle: per example, ``jax.grad`` of that example's loss alone (a Python loop, no vmap),
clipped by ``min(1, C / ||g||)`` in numpy and summed in float64.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dpjax
import dpjax.models as M

B = 3
CLIP = 0.05


def _ce(logits, labels):
    logits = logits.astype(jnp.float64 if logits.dtype == jnp.float64 else jnp.float32)
    return -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[..., None], -1)[..., 0]


def _case(name, head):
    cfg = M.get_config(name)
    model = M.create_model(cfg, head, num_labels=3, dtype=jnp.float64)
    rng = np.random.default_rng(0)
    if name.startswith(("vit", "resnet")):
        x = rng.standard_normal((B, 32, 32, 3))
        batch = {"x": x, "y": rng.integers(0, 3, B)}

        def loss_fn(params, batch):
            return _ce(model.apply({"params": params}, batch["x"]), batch["y"])

    else:
        ids = rng.integers(3, cfg.vocab_size, (B, 6)).astype(np.int32)
        mask = np.ones((B, 6), np.int32)
        mask[0, 4:] = 0
        batch = {"ids": ids, "am": mask, "y": rng.integers(0, 3, B)}

        def loss_fn(params, batch):
            out = model.apply({"params": params}, batch["ids"], attention_mask=batch["am"])
            if head == "classification":
                return _ce(out, batch["y"])
            if head == "mlm":  # predict the ids themselves at real positions
                tok = _ce(out, batch["ids"]) * batch["am"]
                return tok.sum(-1) / batch["am"].sum(-1)
            tok = _ce(out[:, :-1], batch["ids"][:, 1:]) * batch["am"][:, 1:]  # causal LM
            return tok.sum(-1) / batch["am"][:, 1:].sum(-1)

    x0 = batch["x"] if "x" in batch else batch["ids"]
    params = model.init(jax.random.key(1), x0)["params"]
    return loss_fn, jax.tree.map(lambda p: jnp.asarray(p, jnp.float64), params), batch


def _naive(loss_fn, params, batch, trainable=None):
    total = None
    grad_one = jax.jit(jax.grad(lambda p, one: loss_fn(p, one)[0]))
    for i in range(B):
        g = grad_one(params, jax.tree.map(lambda x: x[i : i + 1], batch))
        mask = dpjax.partition(g, trainable)[0]
        leaves = [np.asarray(x, np.float64) for x in jax.tree.leaves(mask)]
        norm = np.sqrt(sum((x**2).sum() for x in leaves))
        c = min(1.0, CLIP / norm)
        scaled = jax.tree.map(lambda x: np.asarray(x, np.float64) * c, mask)
        total = scaled if total is None else jax.tree.map(np.add, total, scaled)
    return total


CASES = [
    ("bert-tiny", "mlm"),
    ("bert-tiny", "classification"),
    ("roberta-tiny", "classification"),
    ("gpt2-tiny", "lm"),
    ("vit-tiny", "classification"),
    ("resnet-tiny", "classification"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "head"), CASES)
def test_vmap_clipped_sum_matches_float64_loop(x64, name, head):
    loss_fn, params, batch = _case(name, head)
    grads, info = jax.jit(dpjax.clipped_grad(loss_fn, l2_clip=CLIP, method="vmap"))(params, batch)
    ref = _naive(loss_fn, params, batch)
    assert info.norms.shape == (B,) and bool(jnp.all(info.norms > CLIP))  # clipping active
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-10), grads, ref)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "head"), CASES)
def test_bitfit_matches_vmap(x64, name, head):
    loss_fn, params, batch = _case(name, head)
    kw = dict(l2_clip=CLIP, trainable=dpjax.bias_only)
    g_bitfit, i_bitfit = jax.jit(dpjax.clipped_grad(loss_fn, method="bitfit", **kw))(params, batch)
    g_vmap, i_vmap = jax.jit(dpjax.clipped_grad(loss_fn, method="vmap", **kw))(params, batch)
    np.testing.assert_allclose(i_bitfit.norms, i_vmap.norms, rtol=1e-7)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-12), g_bitfit, g_vmap
    )


@pytest.mark.slow
@pytest.mark.parametrize(("name", "head"), CASES)
def test_ghost_matches_float64_loop(x64, name, head):
    """DP full fine-tuning of every model under the ghost engine equals the naive loop."""
    loss_fn, params, batch = _case(name, head)
    fn = dpjax.clipped_grad(loss_fn, l2_clip=CLIP, method="ghost")
    grads, info = jax.jit(fn)(params, batch)
    ref = _naive(loss_fn, params, batch)
    assert bool(jnp.all(info.norms > CLIP))  # clipping active
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-10), grads, ref)
