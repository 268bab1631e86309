"""The bitfit engine against the vmap oracle (float64), plus coverage, self-check and cost."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import toy_models

import dpjax
from dpjax.check import EngineMismatchError, check_engine
from dpjax.engines import ENGINES, layers
from dpjax.engines.bitfit import BIAS, bitfit_engine, register_bias_layer
from dpjax.engines.tap_plan import plan_taps
from dpjax.partition import leaf_paths

BATCHED = "bitfit_test_batched"
VMAP = "bitfit_test_vmap"
ENGINES[BATCHED] = lambda *a, **k: bitfit_engine(*a, mode="batched", **k)
ENGINES[VMAP] = lambda *a, **k: bitfit_engine(*a, mode="vmap", **k)


def xent(model):
    """Per-example cross-entropy in the params' dtype (no float32 cast: float64 stays exact)."""

    def loss_fn(params, batch):
        logp = jax.nn.log_softmax(model.apply({"params": params}, batch["x"]))
        return -jnp.take_along_axis(logp, batch["y"][:, None], axis=1)[:, 0]

    return loss_fn


def assert_same(loss_fn, params, batch, method="bitfit", rtol=1e-9, atol=1e-12, **kw):
    """bitfit (``method``) == vmap restricted to the same trainable leaves."""
    # Wrapped in a function: a ClippedGrad holding a dict l2_clip is unhashable for jax.jit.
    got_fn, want_fn = (dpjax.clipped_grad(loss_fn, method=m, **kw) for m in (method, "vmap"))
    got, got_info = jax.jit(lambda p, b: got_fn(p, b))(params, batch)
    want, want_info = jax.jit(lambda p, b: want_fn(p, b))(params, batch)
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_allclose(np.asarray(g, np.float64), np.asarray(w, np.float64),
                                   rtol=rtol, atol=atol)  # fmt: skip
    for field in ("norms", "group_norms", "clip_factors", "loss"):
        np.testing.assert_allclose(np.asarray(getattr(got_info, field), np.float64),
                                   np.asarray(getattr(want_info, field), np.float64),
                                   rtol=rtol, atol=atol)  # fmt: skip
    assert int(got_info.num_nonfinite) == int(want_info.num_nonfinite)
    return got, got_info


def tap_plan(loss_fn, params, batch, trainable):
    train, _ = dpjax.partition(params, trainable)
    return plan_taps(loss_fn, params, batch, leaf_paths(train), BIAS), leaf_paths(train)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["mlp", "cnn", "block"])
@pytest.mark.parametrize("method", ["bitfit", VMAP])
def test_matches_vmap_bias_only(x64, kind, method):
    model, params, batch = toy_models.make(kind, dtype=jnp.float64)
    loss_fn = xent(model)
    tplan, paths = tap_plan(loss_fn, params, batch, dpjax.bias_only)
    assert tplan.direct == ()  # every bias is tapped: nothing falls back
    _, info = assert_same(loss_fn, params, batch, method, l2_clip=0.05, trainable=dpjax.bias_only)
    assert int(info.num_clipped) > 0


class Zoo(nn.Module):
    """Strided/padded convs, ConvTranspose, GroupNorm, multi-axis LayerNorm and DenseGeneral."""

    @nn.compact
    def __call__(self, x):  # x: [B, 6, 6, 2]
        x = nn.Conv(4, (3, 2), strides=(2, 1), padding=((1, 0), (0, 1)), name="conv")(x)
        x = nn.GroupNorm(num_groups=2, name="gn")(jnp.tanh(x))
        x = nn.ConvTranspose(4, (2, 2), strides=(2, 2), name="convt")(x)
        x = nn.Conv(4, (3, 3), feature_group_count=4, name="depthwise")(x)
        x = nn.LayerNorm(reduction_axes=(-2, -1), feature_axes=(-2, -1), name="ln2d")(x)
        x = nn.DenseGeneral((2, 3), axis=1, name="over_h")(jnp.tanh(x))  # [B, W, C, 2, 3]
        x = nn.DenseGeneral(3, axis=(1, 2, 3, 4), name="head")(x)
        return x


@pytest.mark.slow
def test_conv_zoo(x64):
    model = Zoo()
    x = jax.random.normal(jax.random.key(0), (5, 6, 6, 2), jnp.float64)
    params = jax.tree.map(lambda p: p.astype(jnp.float64),
                          model.init(jax.random.key(1), x)["params"])  # fmt: skip
    batch = {"x": x, "y": jnp.array([0, 1, 2, 1, 0])}
    loss_fn = xent(model)
    tplan, _ = tap_plan(loss_fn, params, batch, dpjax.bias_only)
    assert tplan.direct == ()
    axes = {u.key.split(":")[0]: u.axes for u in tplan.uses}
    assert axes["ln2d"] == (2, 3) and axes["over_h"] == (3, 4)
    assert_same(loss_fn, params, batch, l2_clip=0.1, trainable=dpjax.bias_only)  # batched


class SharedTied(nn.Module):
    """One Dense called twice (shared bias) and a tied embedding head."""

    @nn.compact
    def __call__(self, ids):
        emb = nn.Embed(9, 6, name="emb")
        shared = nn.Dense(6, name="shared")
        h = nn.LayerNorm(name="ln")(emb(ids))
        h = shared(jnp.tanh(shared(h)))
        return emb.attend(h).mean(axis=1)  # [B, 9] logits


@pytest.mark.slow
def test_shared_layer_sums_before_norm(x64):
    model = SharedTied()
    ids = jax.random.randint(jax.random.key(0), (6, 5), 0, 9)
    params = jax.tree.map(lambda p: p.astype(jnp.float64),
                          model.init(jax.random.key(1), ids)["params"])  # fmt: skip
    batch = {"x": ids, "y": jnp.arange(6) % 9}
    loss_fn = xent(model)
    tplan, paths = tap_plan(loss_fn, params, batch, dpjax.bias_only)
    shared_sites = [u for u in tplan.uses if paths[u.leaf] == ("shared", "bias")]
    assert len(shared_sites) == 2  # both calls feed the same leaf
    assert_same(loss_fn, params, batch, l2_clip=0.05, trainable=dpjax.bias_only)


class WithCls(nn.Module):
    """A ViT-like toy: cls token and position embedding params, a fresh classifier."""

    @nn.compact
    def __call__(self, x):  # [B, T, 4]
        h = nn.Dense(6, name="proj")(x)
        cls = self.param("cls", nn.initializers.normal(1.0), (1, 1, 6))
        h = jnp.concatenate([jnp.broadcast_to(cls, (h.shape[0], 1, 6)), h], axis=1)
        h = h + self.param("pos", nn.initializers.normal(1.0), (h.shape[1], 6))
        h = nn.LayerNorm(name="ln")(jnp.tanh(nn.Dense(6, name="mlp")(h)) + h)
        return nn.Dense(3, name="classifier")(h[:, 0])


def _with_cls(dtype=jnp.float64):
    model = WithCls()
    x = jax.random.normal(jax.random.key(0), (6, 3, 4), dtype)
    params = jax.tree.map(lambda p: p.astype(dtype), model.init(jax.random.key(1), x)["params"])
    return xent(model), params, {"x": x, "y": jnp.arange(6) % 3}


@pytest.mark.slow
def test_fresh_head_and_cls_token_with_biases(x64):
    loss_fn, params, batch = _with_cls()
    trainable = dpjax.named("classifier", "cls", "pos", base=dpjax.bias_only)
    tplan, paths = tap_plan(loss_fn, params, batch, trainable)
    assert sorted(paths[i] for i in tplan.direct) == [
        ("classifier", "kernel"), ("cls",), ("pos",)
    ]  # fmt: skip
    grads, _ = assert_same(loss_fn, params, batch, l2_clip=0.05, trainable=trainable)
    assert grads["proj"]["kernel"] is None and grads["cls"] is not None
    with pytest.raises(ValueError, match=r"classifier/kernel.*cls.*pos|cls.*classifier/kernel"):
        dpjax.clipped_grad(loss_fn, l2_clip=0.05, method=BATCHED, trainable=trainable)(
            params, batch
        )


@pytest.mark.slow
def test_mask_and_nan_rows(x64):
    model, params, batch = toy_models.make("block", dtype=jnp.float64)
    loss_fn = xent(model)
    batch["mask"] = jnp.array([True, True, False, True, False, True])
    batch["scale"] = jnp.array([1.0, 2.0, 1.0, jnp.nan, 1.0, 0.5])  # row 3: NaN gradient

    def nan_loss(p, b):
        return loss_fn(p, b) * b["scale"]

    grads, info = assert_same(nan_loss, params, batch, l2_clip=0.05, trainable=dpjax.bias_only)
    assert int(info.num_nonfinite) == 1 and int(info.num_valid) == 4
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))


def test_nan_input_row_batched(x64):
    model, params, batch = toy_models.make("mlp", dtype=jnp.float64)
    batch["x"] = batch["x"].at[2].set(jnp.nan)
    loss_fn = xent(model)
    grads, info = assert_same(loss_fn, params, batch, l2_clip=0.05, trainable=dpjax.bias_only)
    assert int(info.num_nonfinite) == 1
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))


@pytest.mark.slow
def test_group_clipping(x64):
    model, params, batch = toy_models.make("block", dtype=jnp.float64)
    loss_fn = xent(model)
    clips = {n: 0.02 for n in ["ln1", "query", "key", "value", "out", "ln2", "mlp1", "mlp2"]}
    clips["head"] = 0.1
    _, info = assert_same(loss_fn, params, batch, l2_clip=clips, trainable=dpjax.bias_only)
    assert info.group_norms.shape == (6, 9)


@pytest.mark.slow
def test_automatic_clipping_and_microbatches(x64):
    loss_fn, params, batch = _with_cls()
    trainable = dpjax.named("classifier", base=dpjax.bias_only)
    kw = {"l2_clip": 0.05, "trainable": trainable, "clip_fn": "automatic", "gamma": 0.01}
    assert_same(loss_fn, params, batch, **kw)
    assert_same(loss_fn, params, batch, microbatch_size=4, **kw)  # 6 rows: padded to 8


def test_bias_inside_scan_falls_back_exactly(x64):
    class Cell(nn.Module):
        @nn.compact
        def __call__(self, c, _):
            return jnp.tanh(nn.Dense(4, name="cell")(c)), None

    class Model(nn.Module):
        @nn.compact
        def __call__(self, x):
            scan = nn.scan(Cell, variable_axes={"params": 0}, split_rngs={"params": True},
                           length=3)  # fmt: skip
            h, _ = scan(name="layers")(nn.Dense(4, name="inp")(x), None)
            return nn.Dense(3, name="head")(h)

    model = Model()
    x = jax.random.normal(jax.random.key(0), (5, 4), jnp.float64)
    params = jax.tree.map(lambda p: p.astype(jnp.float64),
                          model.init(jax.random.key(1), x)["params"])  # fmt: skip
    batch = {"x": x, "y": jnp.arange(5) % 3}
    loss_fn = xent(model)
    tplan, paths = tap_plan(loss_fn, params, batch, dpjax.bias_only)
    assert [paths[i] for i in tplan.direct] == [("layers", "cell", "bias")]
    assert "lifted" in tplan.reasons[tplan.direct[0]]
    assert_same(loss_fn, params, batch, l2_clip=0.05, trainable=dpjax.bias_only)


@pytest.mark.slow
def test_bf16_model():
    model, params, batch = toy_models.make("block", dtype=jnp.bfloat16)
    loss_fn = xent(model)
    kw = {"l2_clip": 0.05, "trainable": dpjax.bias_only}
    got, info = jax.jit(dpjax.clipped_grad(loss_fn, method="bitfit", **kw))(params, batch)
    assert info.norms.dtype == jnp.float32 and info.clip_factors.dtype == jnp.float32
    assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(got))  # sums stay float32
    with jax.enable_x64(True):  # the float64 oracle on the same (bf16-rounded) params
        p64 = jax.tree.map(lambda p: p.astype(jnp.float64), params)
        want, want_info = dpjax.clipped_grad(loss_fn, method="vmap", **kw)(p64, batch)
        scale = max(float(jnp.max(jnp.abs(w))) for w in jax.tree.leaves(want))
        for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(np.asarray(g, np.float64), w, atol=0.03 * scale)
        np.testing.assert_allclose(info.norms, want_info.norms, rtol=0.03)


class ScaledBias(nn.Module):
    """A custom layer that uses its bias multiplicatively (not additive)."""

    @nn.compact
    def __call__(self, x):
        return x * (1.0 + self.param("bias", nn.initializers.normal(1.0), (x.shape[-1],)))


class AddBias(nn.Module):
    @nn.compact
    def __call__(self, x):
        return x + self.param("bias", nn.initializers.normal(1.0), (x.shape[-1],))


class Custom(nn.Module):
    layer: type

    @nn.compact
    def __call__(self, x):
        return nn.Dense(3, name="head")(self.layer(name="custom")(jnp.tanh(nn.Dense(4)(x))))


@pytest.mark.slow
@pytest.mark.parametrize("layer", [ScaledBias, AddBias])
def test_check_engine_on_custom_modules(layer):
    model = Custom(layer)
    x = jax.random.normal(jax.random.key(0), (4, 3))
    params = model.init(jax.random.key(1), x)["params"]
    batch = {"x": x, "y": jnp.arange(4) % 3}
    loss_fn = xent(model)
    kw = {"trainable": dpjax.bias_only, "l2_clip": 10.0}
    check_engine(loss_fn, params, batch, method="bitfit", **kw)  # unregistered: direct, exact
    register_bias_layer(layer)
    try:
        tplan, paths = tap_plan(loss_fn, params, batch, dpjax.bias_only)
        assert ("custom", "bias") not in [paths[i] for i in tplan.direct]
        if layer is AddBias:
            errors = check_engine(loss_fn, params, batch, method="bitfit", **kw)
            assert set(errors) >= {"custom/bias", "head/bias", "norms"}
        else:
            with pytest.raises(EngineMismatchError, match="custom/bias") as err:
                check_engine(loss_fn, params, batch, method="bitfit", **kw)
            assert "head/bias" not in str(err.value)
    finally:
        layers.LAYERS.pop(layer)


def _flops(fn, *args):
    compiled = jax.jit(fn).lower(*args).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost["flops"]), compiled.memory_analysis().temp_size_in_bytes


@pytest.mark.slow
def test_bitfit_step_cheaper_than_non_private_full_step():
    model = toy_models.Block(vocab=50, d=32, heads=4)
    ids = jax.random.randint(jax.random.key(0), (4, 32), 0, 50)
    params = model.init(jax.random.key(1), ids)["params"]
    batch = {"x": ids, "y": jnp.arange(4) % 3}
    loss_fn = xent(model)

    def full(p, b):
        return jax.grad(lambda q: loss_fn(q, b).sum())(p)

    bitfit = dpjax.clipped_grad(loss_fn, l2_clip=1.0, method="bitfit", trainable=dpjax.bias_only)
    dp_full = dpjax.clipped_grad(loss_fn, l2_clip=1.0, method="vmap")
    f_full, _ = _flops(full, params, batch)
    f_bitfit, m_bitfit = _flops(bitfit, params, batch)
    f_dp_full, m_dp_full = _flops(dp_full, params, batch)
    assert f_bitfit < 0.85 * f_full < f_dp_full
    assert m_bitfit < m_dp_full
