"""The tap mechanism (dpjax.engines.taps) against hand-written forward passes."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import toy_models

from dpjax.engines import layers, taps


class TwoLayer(nn.Module):
    """Dense -> tanh -> Dense, simple enough to write by hand in the oracle."""

    @nn.compact
    def __call__(self, x):
        return nn.Dense(2, name="out")(jnp.tanh(nn.Dense(4, name="inp")(x)))


def _two_layer(x64_dtype=jnp.float64):
    model = TwoLayer()
    x = jax.random.normal(jax.random.key(1), (3, 5, 6), x64_dtype)
    params = model.init(jax.random.key(0), x)
    params = jax.tree.map(lambda v: v.astype(x64_dtype), params)
    y = jax.random.normal(jax.random.key(2), (3, 5, 2), x64_dtype)
    batch = {"x": x, "y": y}

    def loss_fn(p, b):
        return jnp.sum((model.apply(p, b["x"]) - b["y"]) ** 2, axis=(1, 2))

    return params, batch, loss_fn


def _manual_forward(p, x, y, h_extra=0.0):
    p = p["params"]
    h = x @ p["inp"]["kernel"] + p["inp"]["bias"] + h_extra
    out = jnp.tanh(h) @ p["out"]["kernel"] + p["out"]["bias"]
    return jnp.sum((out - y) ** 2, axis=(1, 2))


def test_discover_keys_shapes_and_paths():
    model, params, batch = toy_models.make("block")
    loss_fn = toy_models.xent_loss(model)
    calls = taps.discover(loss_fn, params, batch)
    keys = [c.key for c in calls]
    assert keys == [
        "embed:__call__:0", "ln1:__call__:0", "query:__call__:0", "key:__call__:0",
        "value:__call__:0", "out:__call__:0", "ln2:__call__:0", "mlp1:__call__:0",
        "mlp2:__call__:0", "head:__call__:0",
    ]  # fmt: skip
    by_key = {c.key: c for c in calls}
    q = by_key["query:__call__:0"]
    assert q.module_type is nn.DenseGeneral and q.module.features == (2, 4)
    assert q.input_shape == (6, 7, 8) and q.output_shape == (6, 7, 2, 4)
    assert q.param_path("bias") == ("query", "bias")  # loss_fn wraps params in {"params": .}
    assert q.param_shape("kernel") == (8, 2, 4)
    assert not any(c.lifted for c in calls)
    assert by_key["ln1:__call__:0"].param_path("scale") == ("ln1", "scale")


class Shared(nn.Module):
    @nn.compact
    def __call__(self, ids):
        emb = nn.Embed(7, 4, name="emb")
        dense = nn.Dense(4, name="shared")
        h = dense(dense(emb(ids)))
        return emb.attend(h)


def test_shared_and_tied_calls_get_indices():
    model = Shared()
    ids = jnp.zeros((2, 3), jnp.int32)
    params = model.init(jax.random.key(0), ids)
    calls = taps.discover(lambda p, b: model.apply(p, b).sum((1, 2)), params, ids)
    assert [c.key for c in calls] == [
        "emb:__call__:0",
        "shared:__call__:0",
        "shared:__call__:1",
        "emb:attend:0",
    ]
    assert calls[3].output_shape == (2, 3, 7) and calls[3].method == "attend"
    assert (
        calls[1].param_path("bias") == calls[2].param_path("bias") == ("params", "shared", "bias")
    )


def test_zero_taps_leave_loss_unchanged_and_give_output_grads(x64):
    params, batch, loss_fn = _two_layer()
    calls = {c.key: c for c in taps.discover(loss_fn, params, batch)}
    full = {"inp:__call__:0": jnp.zeros(calls["inp:__call__:0"].output_shape)}
    loss, inputs = taps.tapped_loss(loss_fn, params, batch, full, record_inputs=True)
    np.testing.assert_allclose(loss, _manual_forward(params, batch["x"], batch["y"]), rtol=1e-12)
    np.testing.assert_array_equal(inputs["inp:__call__:0"], batch["x"])

    got = jax.grad(lambda t: taps.tapped_loss(loss_fn, params, batch, t)[0].sum())(full)
    want = jax.grad(lambda e: _manual_forward(params, batch["x"], batch["y"], e).sum())(
        jnp.zeros((3, 5, 4))
    )
    np.testing.assert_allclose(got["inp:__call__:0"], want, rtol=1e-10)


def test_bias_shaped_taps_give_per_example_bias_grads(x64):
    params, batch, loss_fn = _two_layer()
    tap = {"inp:__call__:0": jnp.zeros((3, 1, 4)), "out:__call__:0": jnp.zeros((3, 1, 2))}
    got = jax.grad(lambda t: taps.tapped_loss(loss_fn, params, batch, t)[0].sum())(tap)
    for i in range(3):  # naive per-example loop
        one = {k: v[i : i + 1] for k, v in batch.items()}
        g = jax.grad(lambda p: loss_fn(p, one)[0])(params)["params"]
        np.testing.assert_allclose(got["inp:__call__:0"][i, 0], g["inp"]["bias"], rtol=1e-10)
        np.testing.assert_allclose(got["out:__call__:0"][i, 0], g["out"]["bias"], rtol=1e-10)


def test_record_inputs_of_inner_layer(x64):
    params, batch, loss_fn = _two_layer()
    tap = {"out:__call__:0": jnp.zeros((1, 1, 2))}
    _, inputs = taps.tapped_loss(loss_fn, params, batch, tap, record_inputs=True)
    p = params["params"]["inp"]
    np.testing.assert_allclose(
        inputs["out:__call__:0"], jnp.tanh(batch["x"] @ p["kernel"] + p["bias"]), rtol=1e-12
    )
    assert set(inputs) == {"out:__call__:0"}


class Scanned(nn.Module):
    @nn.compact
    def __call__(self, x):
        class Cell(nn.Module):
            @nn.compact
            def __call__(self, c, _):
                return jnp.tanh(nn.Dense(3, name="cell_dense")(c)), None

        scan = nn.scan(Cell, variable_axes={"params": 0}, split_rngs={"params": True}, length=2)
        x, _ = scan(name="layers")(nn.Dense(3, name="first")(x), None)
        return x.sum(-1)


def test_lifted_calls_are_flagged_and_refused():
    model = Scanned()
    x = jnp.ones((2, 3))
    params = model.init(jax.random.key(0), x)
    loss_fn = lambda p, b: model.apply(p, b)  # noqa: E731
    calls = taps.discover(loss_fn, params, x)
    lifted = {c.key: c.lifted for c in calls}
    assert lifted["first:__call__:0"] is False
    assert lifted["layers/cell_dense:__call__:0"] is True
    with pytest.raises(taps.TapError, match="layers/cell_dense.*lifted"):
        taps.tapped_loss(loss_fn, params, x, {"layers/cell_dense:__call__:0": jnp.zeros(3)})
    loss, _ = taps.tapped_loss(loss_fn, params, x, {"first:__call__:0": jnp.zeros((2, 1))})
    np.testing.assert_allclose(loss, loss_fn(params, x), rtol=1e-6)


def test_bad_taps_raise():
    params, batch, loss_fn = _two_layer(jnp.float32)
    with pytest.raises(taps.TapError, match="did not happen"):
        taps.tapped_loss(loss_fn, params, batch, {"nope:__call__:0": jnp.zeros(4)})
    with pytest.raises(taps.TapError, match="broadcast"):
        taps.tapped_loss(loss_fn, params, batch, {"inp:__call__:0": jnp.zeros((2, 1, 1, 4))})


def test_resolve_by_suffix_and_ambiguity():
    model = TwoLayer()
    x = jnp.ones((2, 6))
    p = model.init(jax.random.key(0), x)["params"]
    two = {"a": {"params": p}, "b": {"params": p}}

    def cast_loss(params, b):  # casting breaks identity: resolution falls back to suffixes
        pa = jax.tree.map(lambda v: v * 1.0, params["a"])
        return model.apply(pa, b).sum(-1)

    (c0, _) = taps.discover(cast_loss, two, x)
    assert c0.param_path("bias") is None
    with pytest.raises(taps.TapError, match="several params leaves"):
        taps.resolve(two, c0, "bias")
    assert taps.resolve({"a": {"params": p}}, c0, "bias") == ("a", "params", "inp", "bias")
    assert taps.resolve({"a": {"params": p}}, c0, "missing") is None


class AddBias(nn.Module):
    @nn.compact
    def __call__(self, x):
        return x + self.param("bias", nn.initializers.zeros, (x.shape[-1],))


def test_register_custom_layer():
    x = jnp.ones((2, 3))
    model = AddBias()
    params = model.init(jax.random.key(0), x)
    loss_fn = lambda p, b: model.apply(p, b).sum(-1)  # noqa: E731
    assert taps.discover(loss_fn, params, x) == ()
    with pytest.raises(TypeError):
        taps.register_layer(int)
    taps.register_layer(AddBias)
    try:
        (call,) = taps.discover(loss_fn, params, x)
        assert call.module_type is AddBias and call.param_path("bias") == ("params", "bias")
    finally:
        layers.LAYERS.pop(AddBias)


# --- the shared plan and pass of the tap engines (dpjax.engines.tap_plan / tap_pass) ---


class SubDense(nn.Dense):
    """A subclass of a known layer: not tapped until registered itself (exact type match)."""


class WithPos(nn.Module):
    """A Dense applied to a parameter (no batch axis) and a Dense subclass."""

    @nn.compact
    def __call__(self, x):  # [B, 3, 4]
        pos = nn.Dense(4, name="pos_proj")(self.param("pos", nn.initializers.normal(1.0), (3, 4)))
        h = jnp.tanh(SubDense(4, name="sub")(x + pos))
        return nn.Dense(2, name="head")(h.mean(1))


def _with_pos():
    model = WithPos()
    x = jax.random.normal(jax.random.key(0), (4, 3, 4), jnp.float64)
    params = model.init(jax.random.key(1), x)["params"]
    params = jax.tree.map(lambda v: v.astype(jnp.float64), params)
    return toy_models.xent_loss(model), params, {"x": x, "y": jnp.array([0, 1, 1, 0])}


@pytest.mark.parametrize("method", ["bitfit", "ghost"])
def test_plan_sends_untappable_leaves_direct_and_stays_exact(x64, method):
    import dpjax
    from dpjax.engines.bitfit import BIAS
    from dpjax.engines.ghost import GHOST
    from dpjax.engines.tap_plan import plan_taps
    from dpjax.partition import leaf_paths, path_to_str

    loss_fn, params, batch = _with_pos()
    trainable = dpjax.bias_only if method == "bitfit" else None
    train, _ = dpjax.partition(params, trainable)
    paths = leaf_paths(train)
    plan = plan_taps(loss_fn, params, batch, paths, BIAS if method == "bitfit" else GHOST)
    reasons = {path_to_str(paths[i]): plan.reasons[i] for i in plan.direct}
    assert "not per-example" in reasons["pos_proj/bias"]  # applied to a parameter
    assert "recognised layer" in reasons["sub/bias"]  # a subclass is not in the table
    assert "head/bias" not in reasons
    assert "pos_proj/bias" in plan.describe(paths)
    got = dpjax.clipped_grad(loss_fn, l2_clip=0.1, method=method, trainable=trainable)
    want = dpjax.clipped_grad(loss_fn, l2_clip=0.1, method="vmap", trainable=trainable)
    (g, gi), (w, wi) = got(params, batch), want(params, batch)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(w), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(gi.norms, wi.norms, rtol=1e-9)
    layers.register_layer(SubDense, bias=layers.trailing_bias, ghost={"__call__": None})
    try:  # registered: now the subclass is tapped (bitfit; ghost has no adapter for it)
        plan = plan_taps(loss_fn, params, batch, paths, BIAS if method == "bitfit" else GHOST)
        direct = {path_to_str(paths[i]) for i in plan.direct}
        assert ("sub/bias" in direct) == (method == "ghost")
    finally:
        layers.LAYERS.pop(SubDense)


@pytest.mark.slow
@pytest.mark.parametrize(
    "method, trainable, mixes",
    [
        ("bitfit", "bias", False),  # batched pass: no vmap
        ("bitfit", "conv1", True),  # a direct conv kernel: vmapped, grouped convolution
        ("ghost", None, False),
        ("vmap", None, True),
    ],
)
def test_mixes_rows_flag(method, trainable, mixes):
    import dpjax
    from dpjax.clip_rules import clip_plan
    from dpjax.engines import get_engine

    model, params, batch = toy_models.make("cnn")
    pred = {"bias": dpjax.bias_only, "conv1": dpjax.named("conv1", base=dpjax.bias_only)}
    train, frozen = dpjax.partition(params, pred.get(trainable, dpjax.all_leaves))
    batch = {**batch, "mask": jnp.ones(6, bool)}
    engine = get_engine(method)
    result = engine(toy_models.xent_loss(model), train, frozen, batch, clip_plan(train, 1.0))
    assert result.mixes_rows is mixes
