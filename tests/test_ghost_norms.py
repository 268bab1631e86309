"""Ghost-form layer math against explicit per-example gradients (vmap(grad), float64).

For each layer: a random cotangent ``w`` of the output shape defines per-example losses
``sum(y_i * w_i)``, so the output gradient is ``g = w``. The adapters turn ``(a, g)`` into
factored or explicit parts; their norms (Gram and direct forms) and clipped sums must
equal those of the explicit per-example gradients.
"""

import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dpjax.engines import ghost_layers as gl
from dpjax.engines import ghost_norms as gn
from dpjax.engines import layers


def layer_results(module, x, w, c, keep, adapter, method):
    """Oracle and ghost quantities of one layer, computed in one jitted function."""
    shapes = jax.eval_shape(lambda v: module.init(jax.random.key(1), v[:1], method=method), x)
    keys = iter(jax.random.split(jax.random.key(2), 8))
    params = jax.tree.map(lambda s: jax.random.normal(next(keys), s.shape), shapes["params"])

    @jax.jit
    def run(params, x, w, c):
        def one(p, xi, wi):  # per-example loss sum(y_i * w_i): output gradient g = w
            return jnp.sum(module.apply({"params": p}, xi[None], method=method)[0] * wi)

        want = jax.vmap(jax.grad(one), in_axes=(None, 0, 0))(params, x, w)
        # the last row's cotangent is NaN and outside keep: it must add exactly 0
        parts = adapter(types.SimpleNamespace(module=module), x, w.at[-1].set(jnp.nan), {})
        got = {}
        for name, part in parts.items():
            if isinstance(part, gl.FactoredPart):
                f = part.factored
                sq = (gn.sq_norm([f], ghost=True), gn.sq_norm([f], ghost=False))
                total = part.layout.to_leaf(gn.clipped_sum([f], c, keep))
            else:
                sq = (gn.explicit_sq_norm(part.value),)
                total = gn.explicit_clipped_sum(part.value, c, keep)
            got[name] = (sq, total)
        return want, got

    return run(params, x, w, c)


def run_layer(module, x, adapter, names, method="__call__"):
    """Checks one layer's norms (both forms) and clipped sum against vmap(grad)."""
    y = jax.eval_shape(lambda v: module.init_with_output(jax.random.key(1), v, method=method)[0], x)
    b = x.shape[0]
    w = jax.random.normal(jax.random.key(3), y.shape)
    c = jax.random.uniform(jax.random.key(4), (b,), minval=0.1, maxval=1.0)
    keep = np.arange(b) < b - 1
    want, got = layer_results(module, x, w, c, keep, adapter, method)
    assert set(got) == set(names), (set(got), names)
    kc = np.where(keep, c, 0.0)
    for name, (sqs, total) in got.items():
        ref = np.asarray(want[name])
        ref_sq = np.sum(ref.reshape(b, -1) ** 2, axis=1)
        for sq in sqs:
            assert not np.isfinite(sq[-1]), name  # the NaN row is detected ...
            np.testing.assert_allclose(sq[:-1], ref_sq[:-1], rtol=1e-10, err_msg=name)
        ref_sum = np.einsum("b,b...->...", kc, ref)
        total = np.asarray(total).reshape(ref.shape[1:])  # ... and adds exactly 0
        np.testing.assert_allclose(total, ref_sum, rtol=1e-10, atol=1e-12, err_msg=name)
        assert np.asarray(got[name][1]).shape == ref.shape[1:]
    return got


def normal(shape, seed=0):
    return jax.random.normal(jax.random.key(seed), shape)


@pytest.mark.parametrize("shape", [(5, 4), (4, 2, 3, 4)])
def test_dense(x64, shape):
    run_layer(nn.Dense(6), normal(shape), gl.dense, {"kernel", "bias"})


def test_dense_no_bias(x64):
    run_layer(nn.Dense(6, use_bias=False), normal((4, 3, 5)), gl.dense, {"kernel"})


@pytest.mark.parametrize(
    "kw,shape",
    [
        (dict(features=(2, 3)), (4, 5, 7)),
        (dict(features=5, axis=(-2, -1)), (4, 3, 2, 4)),
        (dict(features=(2, 2), axis=(1, 3)), (4, 3, 5, 2)),
    ],
)
def test_dense_general(x64, kw, shape):
    run_layer(nn.DenseGeneral(**kw), normal(shape), gl.dense_general, {"kernel", "bias"})


CONVS = {
    "same_strided": (dict(features=4, kernel_size=(3, 3), strides=(2, 2)), (3, 7, 6, 2)),
    "valid_dilated": (
        dict(features=3, kernel_size=(2, 3), padding="VALID", kernel_dilation=(2, 1)),
        (3, 6, 6, 2),
    ),
    "explicit_pad": (dict(features=3, kernel_size=(3, 3), padding=((1, 0), (2, 1))), (3, 5, 5, 2)),
    "grouped_strided": (
        dict(features=6, kernel_size=(3, 3), strides=2, feature_group_count=2),
        (3, 5, 5, 4),
    ),
    "input_dilated": (
        dict(features=3, kernel_size=(2, 2), input_dilation=2, padding=1),
        (3, 4, 4, 2),
    ),
    "circular": (dict(features=3, kernel_size=(3, 3), padding="CIRCULAR"), (3, 4, 5, 2)),
    "causal_1d_int": (dict(features=3, kernel_size=3, padding="CAUSAL"), (3, 7, 2)),
    "patchify": (
        dict(features=5, kernel_size=(2, 2), strides=(2, 2), padding="VALID"),
        (3, 6, 4, 3),
    ),
    "patchify_crop": (
        dict(features=5, kernel_size=(2, 3), strides=(2, 3), padding="VALID"),
        (3, 5, 7, 2),
    ),
    "patchify_same": (dict(features=5, kernel_size=(2, 2), strides=(2, 2)), (3, 4, 6, 2)),
    "extra_batch_dim": (dict(features=3, kernel_size=(3,)), (3, 2, 6, 2)),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CONVS))
def test_conv(x64, name):
    kw, shape = CONVS[name]
    run_layer(nn.Conv(**kw), normal(shape), gl.conv, {"kernel", "bias"})


def test_patchify_uses_reshape_path(x64):
    """kernel == stride gives the same patches as the general conv-patches path."""
    x = normal((2, 6, 4, 3))
    m = nn.Conv(5, (2, 2), strides=(2, 2), padding="VALID")
    fast = gl.conv_patches(m, x)
    general = gl.conv_patches(m.clone(strides=(2, 2), padding=((0, 0), (0, 1))), x)
    # with one column of padding the general path has one more output column
    np.testing.assert_allclose(fast, general[:, :, :2], rtol=1e-12)
    jaxpr = str(jax.make_jaxpr(lambda v: gl.conv_patches(m, v))(x))
    assert "conv_general_dilated" not in jaxpr


def test_embed_repeated_tokens(x64):
    ids = jnp.array([[1, 3, 1, 1, 0], [2, 2, 2, 2, 2], [0, 1, 2, 3, 4], [4, 4, 1, 0, 4]])
    run_layer(nn.Embed(5, 3), ids, gl.embed_lookup, {"embedding"})
    part = gl.embed_lookup(
        types.SimpleNamespace(module=nn.Embed(5, 3)), ids, jnp.zeros(ids.shape + (3,)), {}
    )["embedding"]
    assert part.factored.is_ids  # no one-hot over the vocabulary


def test_embed_attend(x64):
    run_layer(nn.Embed(7, 4), normal((3, 5, 4)), gl.embed_attend, {"embedding"}, method="attend")


@pytest.mark.parametrize(
    "module",
    [
        nn.LayerNorm(),
        nn.LayerNorm(use_bias=False, epsilon=1e-2),
        nn.RMSNorm(),
        nn.LayerNorm(reduction_axes=(-2, -1), feature_axes=-1),
        nn.GroupNorm(num_groups=2),
    ],
    ids=["ln", "ln_scale_only", "rms", "ln_2axes", "gn"],
)
def test_norm_layers(x64, module):
    x = normal((4, 3, 6)) * 3 + 1
    adapter = layers.lookup(type(module)).adapter("__call__")
    names = {"scale"} | ({"bias"} if getattr(module, "use_bias", False) else set())
    run_layer(module, x, adapter, names)


@pytest.mark.slow
def test_tied_embedding_cross_term(x64):
    """Lookup + attend on one table: the norm of the SUM of both uses, cross term included."""
    v, d, b, t = 6, 4, 4, 5
    table = normal((v, d), 7)
    ids = jnp.array([[1, 3, 1, 5, 0], [2, 2, 2, 2, 2], [0, 1, 2, 3, 4], [4, 4, 1, 0, 4]])
    w = normal((b, t, v), 8)

    def forward(e, ids):
        x = e[ids]
        h = jnp.tanh(x)
        return x, h, h @ e.T

    def one(e, ids_i, w_i):
        return jnp.sum(forward(e, ids_i[None])[2][0] * w_i)

    per_ex = jax.vmap(jax.grad(one), in_axes=(None, 0, 0))(table, ids, w)
    x, h, _ = forward(table, ids)
    g_lookup = (w @ table) * (1 - jnp.tanh(x) ** 2)
    lookup = gn.Factored(ids, g_lookup[:, :, None], v)
    attend = gn.Factored(w[:, :, None], h[:, :, None], v)
    ref_sq = np.sum(np.asarray(per_ex) ** 2, axis=(1, 2))
    separate = gn.sq_norm([lookup]) + gn.sq_norm([attend])
    assert np.max(np.abs(separate - ref_sq) / ref_sq) > 1e-3  # the cross term matters
    for order in ([lookup, attend], [attend, lookup]):
        for ghost in (True, False):
            np.testing.assert_allclose(gn.sq_norm(order, ghost=ghost), ref_sq, rtol=1e-10)
    c = jnp.linspace(0.2, 1.0, b)
    keep = jnp.array([True, True, False, True])
    got = gn.clipped_sum([lookup, attend], c, keep)[0]
    want = np.einsum("b,bvd->vd", np.where(keep, c, 0.0), per_ex)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.slow
def test_shared_dense_two_calls(x64):
    """One kernel used at two sequence lengths: sum of both calls, cross term included."""
    k = normal((3, 4), 1)
    a1, a2 = normal((5, 2, 3), 2), normal((5, 6, 3), 3)
    w1, w2 = normal((5, 2, 4), 4), normal((5, 6, 4), 5)

    def one(k, a1, a2, w1, w2):
        return jnp.sum((a1 @ k) * w1) + jnp.sum(jnp.tanh(a2 @ k) * w2)

    per_ex = jax.vmap(jax.grad(one), in_axes=(None, 0, 0, 0, 0))(k, a1, a2, w1, w2)
    g2 = w2 * (1 - jnp.tanh(a2 @ k) ** 2)
    fs = [
        gn.Factored(a1[:, :, None], w1[:, :, None], 3),
        gn.Factored(a2[:, :, None], g2[:, :, None], 3),
    ]
    ref = np.sum(np.asarray(per_ex) ** 2, axis=(1, 2))
    for ghost in (True, False):
        np.testing.assert_allclose(gn.sq_norm(fs, ghost=ghost), ref, rtol=1e-10)


@pytest.mark.parametrize(
    "t,d,p,ghost",
    [
        (16, 8, 64, True),
        (32, 8, 64, False),
        (1, 1, 2, True),
        (128, 768, 768, True),
        (1024, 768, 768, False),
        (512, 768, 768, True),
        (543, 768, 768, True),
        (544, 768, 768, False),
    ],
)
def test_prefer_ghost_rule(t, d, p, ghost):
    f = gn.Factored(jnp.zeros((1, t, 1, d)), jnp.zeros((1, t, 1, p)), d)
    assert gn.prefer_ghost([f]) is ghost
    assert (2 * t * t <= d * p) is ghost
