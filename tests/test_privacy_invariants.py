"""The invariants every engine keeps on every path (issue 13's defects, one test each).

Oracles: ``vmap`` on the batch without the bad row in float64, the sensitivity replay
(``||S(D) - S(D')|| <= C``), and hand-built models whose failure mode is known.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import toy_models
from test_clipping import assert_tree_close

import dpjax
from dpjax import audit
from dpjax.audit import planted
from dpjax.training.task import Task


class SubConv(nn.Conv):
    """A Conv subclass: not in the layer table (exact type match), so it takes the exact path."""


class FallbackCNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = SubConv(4, (3, 3), name="conv1")(x)
        x = nn.relu(x).mean(axis=(1, 2))
        return nn.Dense(3, name="head")(x)


def _cnn(kind):
    if kind == "fallback":
        model = FallbackCNN()
        x = jax.random.normal(jax.random.key(0), (6, 6, 6, 2), jnp.float64)
        params = model.init(jax.random.key(1), x[:1])["params"]
        params = jax.tree.map(lambda p: p.astype(jnp.float64), params)
        y = jnp.array([0, 1, 2, 0, 1, 2])
        return model, params, {"x": x, "y": y}
    return toy_models.make(kind, dtype=jnp.float64)


# Every path that runs vmap(grad) somewhere on a conv model: the vmap engine, bitfit with a
# conv kernel as a direct leaf, ghost with a direct conv (a subclass is not tapped).
PATHS = {
    "vmap": ("cnn", dict(method="vmap")),
    "bitfit-direct-conv": (
        "cnn",
        dict(method="bitfit", trainable=dpjax.named("conv1", base=dpjax.bias_only)),
    ),
    "ghost-fallback-conv": ("fallback", dict(method="ghost")),
    "ghost-batched": ("cnn", dict(method="ghost")),
    # no grouped convolution: the paths run without isolation and must stay exact anyway
    "vmap-mlp": ("mlp", dict(method="vmap")),
    "bitfit-direct-mlp": (
        "mlp",
        dict(method="bitfit", trainable=dpjax.named("dense1", base=dpjax.bias_only)),
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("path", sorted(PATHS))
@pytest.mark.parametrize("where", ["forward", "backward-only", "padding"])
def test_a_bad_row_leaves_every_other_row_exact(x64, path, where):
    """One non-finite example (in the forward pass, only in the backward pass, or in a
    masked padding row) never changes another example's contribution."""
    kind, kw = PATHS[path]
    model, params, batch = _cnn(kind)
    base = toy_models.xent_loss(model)
    x = np.array(batch["x"])
    mask = np.ones(6, bool)
    if where == "backward-only":
        x[2] = 0.0  # a finite loss whose gradient is nan: sqrt'(0) = inf times 0

        def loss_fn(p, b):
            logits = model.apply({"params": p}, b["x"])
            s = jnp.sum(b["x"].reshape(len(logits), -1) ** 2, axis=1, keepdims=True)
            s = s.astype(logits.dtype)
            return base(p, b) + 1e-3 * jnp.sqrt(jnp.sum((logits * s) ** 2, axis=1))
    else:
        x.reshape(6, -1)[2, 0] = np.nan
        loss_fn = base
        if where == "padding":
            mask[2] = False
    bad = {**batch, "x": x, "mask": mask}
    grads, info = jax.jit(dpjax.clipped_grad(loss_fn, l2_clip=0.1, **kw))(params, bad)
    keep = np.arange(6) != 2
    clean = {k: np.asarray(v)[keep] for k, v in batch.items()}
    want, want_info = dpjax.clipped_grad(loss_fn, l2_clip=0.1, method="vmap",
                                         trainable=kw.get("trainable"))(params, clean)  # fmt: skip
    assert_tree_close(grads, want, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(np.asarray(info.norms)[keep], want_info.norms, rtol=1e-8)
    assert int(info.num_nonfinite) == (0 if where == "padding" else 1)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["vmap", "bitfit", "ghost"])
def test_bf16_model_sensitivity_within_float32_rounding(method):
    """bf16 model, 64 aligned examples (large sums): adding, masking or removing one moves
    the clipped sum by at most C (1 + 1e-6 + float32 rounding of the sum) -- the old bf16
    sums moved it by up to 4 C."""
    model, params, batch = toy_models.make("mlp", batch_size=64, dtype=jnp.bfloat16)
    batch = {**batch, "x": jnp.abs(batch["x"]) + 3.0, "y": jnp.zeros(64, jnp.int32)}
    trainable = dpjax.bias_only if method == "bitfit" else None
    grad_fn = dpjax.clipped_grad(
        toy_models.xent_loss(model), l2_clip=1.0, method=method, trainable=trainable
    )
    report = audit.sensitivity_replay(grad_fn, params, batch, rows=4, rtol=1e-6)
    assert report.ok, report.summary()
    if method != "vmap":
        return
    # the same replay catches the old behaviour (sums rounded to bf16 before the noise)
    with planted.bf16_sum():
        bad = audit.sensitivity_replay(
            grad_fn, params, batch, rows=2, noise_multiplier=1.0, expected_batch_size=64,
            key=jax.random.key(0),
        )  # fmt: skip
    assert not bad.ok and "depends on the data" in " ".join(bad.failures)


def test_privatize_adds_noise_in_float32_and_casts_after():
    tx = dpjax.optim.privatize(noise_multiplier=0.0, l2_clip=1.0, expected_batch_size=1.0,
                               key=jax.random.key(0))  # fmt: skip
    params = {"w": jnp.zeros(3, jnp.bfloat16)}
    total = {"w": jnp.array([256.0, 1.0, 0.0], jnp.float32) + jnp.array([1.0, 0.0, 0.0])}
    out, _ = tx.update(total, tx.init(params), params)
    assert out["w"].dtype == jnp.bfloat16  # cast to the parameter dtype, after the noise
    out32, _ = tx.update(total, tx.init(params))  # without params: the sum's own dtype
    assert out32["w"].dtype == jnp.float32 and float(out32["w"][0]) == 257.0


@pytest.mark.slow
@pytest.mark.parametrize("method", ["vmap", "bitfit", "ghost"])
def test_out_of_range_token_ids_behave_alike_under_every_engine(x64, method):
    """id -1 is row V-1 to the forward pass (jnp.take wraps it): ghost's equal-token pairs
    read it the same way (its norm was too small); id V gives nan and is dropped. V = 64,
    T = 7: ghost takes the Gram form for the embedding (2 T^2 <= V d)."""
    model = toy_models.Block(vocab=64)
    ids = np.asarray(jax.random.randint(jax.random.key(0), (6, 7), 0, 64))
    params = model.init(jax.random.key(1), ids[:1])["params"]
    params = jax.tree.map(lambda p: p.astype(jnp.float64), params)
    batch = {"x": ids, "y": jnp.array([0, 1, 2, 0, 1, 2])}
    ids = ids.copy()
    ids[1] = [-1, 63, -1, 63, -1, 63, -1]  # -1 == 63 == V - 1: one token seven times
    ids[4, 0] = 64  # outside [-V, V): the forward pass gives nan
    loss_fn = toy_models.xent_loss(model)
    trainable = dpjax.bias_only if method == "bitfit" else None
    kw = dict(l2_clip=0.05, trainable=trainable)
    got, info = jax.jit(dpjax.clipped_grad(loss_fn, method=method, **kw))(
        params, {**batch, "x": ids}
    )
    want, want_info = dpjax.clipped_grad(loss_fn, method="vmap", **kw)(params, {**batch, "x": ids})
    assert_tree_close(got, want, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(info.norms, want_info.norms, rtol=1e-8)
    assert int(info.num_nonfinite) == 1  # row 4, under every engine
    if method == "ghost":  # the engine whose norms read the ids
        report = audit.sensitivity_replay(
            dpjax.clipped_grad(loss_fn, method=method, **kw), params, {**batch, "x": ids}, rows=2
        )
        assert report.ok, report.summary()


def test_the_data_path_names_an_out_of_range_token_id():
    data = {"input_ids": np.array([[1, 2], [3, 30522]]), "mask": np.array([True, True])}
    task = Task(params={"w": jnp.zeros(1)}, loss_fn=lambda p, b: b["w"],
                train_data=_Data(), vocab_sizes={"input_ids": 30522})  # fmt: skip
    with pytest.raises(ValueError, match=r"example 17 holds token id 30522.*\[0, 30522\)"):
        task.check_token_ids(data, np.array([16, 17]))
    task.check_token_ids({**data, "mask": np.array([True, False])}, np.array([16, 17]))  # padding


class _Data:
    def __len__(self):
        return 2

    def take(self, indices, mask=None):
        return {}


class MaskedNorms(nn.Module):
    """Norm layers whose statistics skip masked features (``mask=`` varies along the
    normalised axis, so the mask changes every position's statistics)."""

    @nn.compact
    def __call__(self, x, m):
        x = nn.Dense(6, name="inp")(x)
        x = nn.LayerNorm(name="ln")(x, mask=m)
        x = nn.RMSNorm(name="rms")(x, mask=m)
        return nn.Dense(2, name="head")(x.mean(1))


@pytest.mark.slow
def test_norm_layers_called_with_mask_are_exact_under_ghost(x64):
    model = MaskedNorms()
    x = jax.random.normal(jax.random.key(0), (5, 4, 3), jnp.float64)
    m = jnp.array(np.random.default_rng(0).random((5, 4, 6)) > 0.3).at[:, :, 0].set(True)
    params = jax.tree.map(
        lambda p: p.astype(jnp.float64), model.init(jax.random.key(1), x, m)["params"]
    )
    y = jnp.array([0, 1, 0, 1, 1])

    def loss_fn(p, b):
        logits = model.apply({"params": p}, b["x"], b["m"])
        return -jnp.take_along_axis(jax.nn.log_softmax(logits), b["y"][:, None], 1)[:, 0]

    batch = {"x": x, "m": m, "y": y}
    got = dpjax.clipped_grad(loss_fn, l2_clip=100.0, method="ghost")(params, batch)
    want = dpjax.clipped_grad(loss_fn, l2_clip=100.0, method="vmap")(params, batch)
    assert_tree_close(got[0], want[0], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(got[1].norms, want[1].norms, rtol=1e-9)


class ReadOutside(nn.Module):
    """The head's bias is also added by hand, and the embedding table is reused by hand."""

    @nn.compact
    def __call__(self, ids):
        embed = nn.Embed(7, 4, name="embed")
        h = jnp.tanh(nn.Dense(4, name="mid")(embed(ids)))
        head = nn.Dense(3, name="head")
        out = head(h.mean(1)) + head.variables["params"]["bias"]
        return out + (h.mean(1) @ embed.embedding.T)[:, :3]


@pytest.mark.parametrize("method", ["bitfit", "ghost"])
def test_parameters_read_outside_their_layer_take_the_exact_path(x64, method):
    model = ReadOutside()
    ids = jax.random.randint(jax.random.key(0), (5, 6), 0, 7)
    params = jax.tree.map(
        lambda p: p.astype(jnp.float64), model.init(jax.random.key(1), ids)["params"]
    )
    loss_fn = toy_models.xent_loss(model)
    batch = {"x": ids, "y": jnp.array([0, 1, 2, 0, 1])}
    trainable = dpjax.bias_only if method == "bitfit" else None
    got = dpjax.clipped_grad(loss_fn, l2_clip=100.0, method=method, trainable=trainable)(
        params, batch
    )
    want = dpjax.clipped_grad(loss_fn, l2_clip=100.0, method="vmap", trainable=trainable)(
        params, batch
    )
    assert_tree_close(got[0], want[0], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(got[1].norms, want[1].norms, rtol=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["bitfit", "ghost"])
def test_check_engine_catches_a_loss_that_mixes_examples(method):
    model, params, batch = toy_models.make("mlp")
    loss_fn = toy_models.xent_loss(model)
    trainable = dpjax.bias_only if method == "bitfit" else None
    kw = dict(method=method, trainable=trainable, l2_clip=100.0, num_examples=3)
    dpjax.check_engine(loss_fn, params, batch, **kw)  # independent examples pass
    with pytest.raises(dpjax.EngineMismatchError, match=r"not independent.*example \d"):
        dpjax.check_engine(planted.mixing_loss(loss_fn), params, batch, **kw)
    # the vmap engine runs each example alone: the same loss cannot mix there
    dpjax.check_engine(
        planted.mixing_loss(loss_fn), params, batch, method="vmap", l2_clip=100.0, num_examples=3
    )


def test_clip_and_key_arguments_are_validated_with_the_value_named():
    loss_fn = lambda p, b: (b["x"] @ p["w"]) ** 2  # noqa: E731
    params, batch = {"w": jnp.ones(2)}, {"x": jnp.ones((3, 2))}
    g, _ = dpjax.clipped_grad(loss_fn, l2_clip=np.float32(1.0))(params, batch)  # accepted
    assert dpjax.clipped_grad(loss_fn, l2_clip=np.float32(0.5)).sensitivity == 0.5
    with pytest.raises(ValueError, match="empty mapping"):
        dpjax.clipped_grad(loss_fn, l2_clip={})
    with pytest.raises(TypeError, match="real number.*'1.0'"):
        dpjax.clipped_grad(loss_fn, l2_clip="1.0")
    with pytest.raises(ValueError, match=r"nan"):
        dpjax.clipped_grad(loss_fn, l2_clip={"w": float("nan")})
    keys = jax.random.split(jax.random.key(0), 4)
    with pytest.raises(TypeError, match=r"batch of keys of shape \(4,\)"):
        dpjax.optim.privatize(
            noise_multiplier=1.0, l2_clip=np.float32(1.0), expected_batch_size=4, key=keys
        )
    tx = dpjax.optim.privatize(
        noise_multiplier=1.0, l2_clip=np.float64(1.0), expected_batch_size=np.int64(4), key=keys[0]
    )
    tx.update(g, tx.init(g))
