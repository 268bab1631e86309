"""The ghost engine against the vmap oracle (float64) on tiny BERT, GPT-2, ViT and CNN models."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import toy_models

import dpjax
from dpjax.engines.ghost import GHOST
from dpjax.engines.tap_plan import plan_taps
from dpjax.partition import leaf_paths, path_to_str

V, D, T, H = 13, 8, 6, 2


class Attention(nn.Module):
    causal: bool = False
    dtype: object = None

    @nn.compact
    def __call__(self, x):
        mask = nn.make_causal_mask(jnp.ones(x.shape[:2])) if self.causal else None
        return nn.MultiHeadDotProductAttention(H, dtype=self.dtype, name="attn")(x, x, mask=mask)


class Layer(nn.Module):
    causal: bool = False
    dtype: object = None

    @nn.compact
    def __call__(self, x):
        x = x + Attention(self.causal, self.dtype, name="att")(nn.LayerNorm(dtype=self.dtype)(x))
        h = nn.Dense(2 * D, dtype=self.dtype, name="fc1")(nn.LayerNorm(dtype=self.dtype)(x))
        return x + nn.Dense(D, dtype=self.dtype, name="fc2")(nn.gelu(h))


class Bert(nn.Module):
    """Encoder with token/position/type embeddings and an MLM head tied to the tokens."""

    @nn.compact
    def __call__(self, ids, types):
        tok = nn.Embed(V, D, name="tok")
        pos = nn.Embed(T, D, name="pos")(jnp.arange(ids.shape[1])[None])  # no batch axis
        x = tok(ids) + pos + nn.Embed(2, D, name="type")(types)
        x = Layer(name="layer0")(nn.LayerNorm(name="ln_emb")(x))
        h = nn.LayerNorm(name="mlm_ln")(nn.gelu(nn.Dense(D, name="mlm_dense")(x)))
        return tok.attend(h) + self.param("mlm_bias", nn.initializers.normal(0.1), (V,))


class GPT2(nn.Module):
    """Causal decoder, learned positions, head tied to the token embedding."""

    dtype: object = None

    @nn.compact
    def __call__(self, ids):
        wte = nn.Embed(V, D, dtype=self.dtype, name="wte")
        positions = jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape)
        x = wte(ids) + nn.Embed(T, D, dtype=self.dtype, name="wpe")(positions)
        for i in range(2):
            x = Layer(causal=True, dtype=self.dtype, name=f"h{i}")(x)
        return wte.attend(nn.LayerNorm(dtype=self.dtype, name="ln_f")(x))


class ViT(nn.Module):
    """Patchify conv, cls token, position embeddings (params), one block, head."""

    @nn.compact
    def __call__(self, img):
        x = nn.Conv(D, (2, 2), strides=(2, 2), padding="VALID", name="patch")(img)
        x = x.reshape(x.shape[0], -1, D)
        cls = self.param("cls", nn.initializers.normal(0.5), (1, 1, D))
        x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, D)), x], axis=1)
        x = x + self.param("pos_embedding", nn.initializers.normal(0.5), (1, x.shape[1], D))
        x = Layer(name="block")(x)
        return nn.Dense(3, name="head")(nn.LayerNorm(name="ln")(x[:, 0]))


def lm_loss(model):
    def loss_fn(params, batch):
        logits = model.apply({"params": params}, *batch["inputs"]).astype(jnp.float32)
        logp = jax.nn.log_softmax(logits)
        nll = -jnp.take_along_axis(logp, batch["labels"][..., None], axis=-1)[..., 0]
        return jnp.mean(nll, axis=-1) * batch["scale"]

    return loss_fn


def make(kind, b=5, dtype=jnp.float64):
    """(loss_fn, params, batch); example 1 is masked out, example 2 has a NaN loss/input."""
    k1, k2, k3, k4 = jax.random.split(jax.random.key(0), 4)
    ids = jax.random.randint(k1, (b, T), 0, V).at[:, 2].set(3)  # repeated tokens
    labels = jax.random.randint(k2, (b, T), 0, V)
    scale = jnp.ones((b,), dtype).at[2].set(jnp.nan)
    mask = jnp.ones((b,), bool).at[1].set(False)
    if kind == "bert":
        model, inputs = Bert(), (ids, jax.random.randint(k3, (b, T), 0, 2))
        batch = {"inputs": inputs, "labels": labels, "scale": scale, "mask": mask}
        loss_fn = lm_loss(model)
    elif kind == "gpt2":
        model, inputs = GPT2(), (ids,)
        batch = {"inputs": inputs, "labels": labels, "scale": scale, "mask": mask}
        loss_fn = lm_loss(model)
    elif kind in ("vit", "cnn"):
        model = ViT() if kind == "vit" else toy_models.CNN()
        x = jax.random.normal(k3, (b, 6, 6, 3) if kind == "vit" else (b, 8, 8, 2), dtype)
        batch = {"x": x.at[2, 1, 1, 0].set(jnp.nan), "y": labels[:, 0] % 3, "mask": mask}
        inputs = (x[:1],)
        loss_fn = toy_models.xent_loss(model)
    params = model.init(k4, *(i[:1] for i in inputs))["params"]
    params = jax.tree.map(lambda p: p.astype(dtype), params)
    return loss_fn, params, batch


def both(loss_fn, params, batch, oracle_batch=None, **kw):
    """(vmap result on ``oracle_batch`` or ``batch``, ghost result on ``batch``), jitted."""
    want = jax.jit(lambda p, b: dpjax.clipped_grad(loss_fn, method="vmap", **kw)(p, b))
    got = jax.jit(lambda p, b: dpjax.clipped_grad(loss_fn, method="ghost", **kw)(p, b))
    return want(params, batch if oracle_batch is None else oracle_batch), got(params, batch)


def without_nan_row(batch, row=2):
    """The oracle's batch: the NaN row made finite and masked out.

    The vmap oracle itself cannot take a NaN row through a conv: JAX's batched conv
    gradient mixes examples, so one NaN example turns every example's kernel gradient NaN.
    """
    fix = {
        k: jnp.nan_to_num(v) if jnp.issubdtype(v.dtype, jnp.floating) else v
        for k, v in batch.items()
        if k != "inputs"
    }
    fix["mask"] = batch["mask"].at[row].set(False)
    return dict(batch, **fix)


def assert_same(want, got, rtol=1e-5, rows=slice(None)):
    (gv, iv), (gg, ig) = want, got
    assert jax.tree.structure(gv) == jax.tree.structure(gg)
    for path, a, b in zip(leaf_paths(gv), jax.tree.leaves(gv), jax.tree.leaves(gg), strict=True):
        scale = float(np.max(np.abs(a))) + 1e-30
        np.testing.assert_allclose(b, a, rtol=rtol, atol=rtol * scale, err_msg=path_to_str(path))
        assert a.dtype == b.dtype
    np.testing.assert_allclose(ig.norms[rows], iv.norms[rows], rtol=1e-6)
    np.testing.assert_allclose(ig.group_norms[rows], iv.group_norms[rows], rtol=1e-6)
    np.testing.assert_allclose(ig.loss[rows], iv.loss[rows], rtol=1e-10)


def fallback_names(loss_fn, params, batch):
    paths = leaf_paths(params)
    plan = plan_taps(loss_fn, params, batch, paths, GHOST)
    return {path_to_str(paths[i]) for i in plan.direct}


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["bert", "gpt2", "vit", "cnn"])
def test_ghost_matches_vmap(x64, kind):
    """Row 1 is masked out; row 2 has a NaN (loss scale or pixel) and must be dropped."""
    loss_fn, params, batch = make(kind)
    want, got = both(loss_fn, params, batch, without_nan_row(batch), l2_clip=0.3)
    assert_same(want, got, rows=np.array([0, 1, 3, 4]))
    info = got[1]
    assert int(info.num_nonfinite) == 1 and not np.isfinite(float(info.norms[2]))
    assert float(info.norms[1]) == 0.0 and float(info.clip_factors[2, 0]) == 0.0
    assert int(info.num_clipped) > 0  # the test exercises clipping, not just summation
    assert np.all(np.isfinite(np.concatenate([np.ravel(x) for x in jax.tree.leaves(got[0])])))


def test_coverage_plans(x64):
    """Which leaves take the exact fallback: only the ones that are not layer parameters."""
    assert fallback_names(*make("gpt2")) == set()  # all ghost, tied head included: batched
    assert fallback_names(*make("cnn")) == set()
    assert fallback_names(*make("vit")) == {"cls", "pos_embedding"}
    # mlm_bias is a raw param; pos is an Embed applied to positions without a batch axis
    assert fallback_names(*make("bert")) == {"mlm_bias", "pos/embedding"}


def test_gpt2_no_per_example_weight_gradients(x64):
    """fc1 (d=8, p=16, T=6: 2T^2 <= dp, Gram form): no [B, 8, 16] tensor in the ghost step."""
    loss_fn, params, batch = make("gpt2", b=7)
    batch = without_nan_row(batch)
    texts = {
        m: jax.jit(dpjax.clipped_grad(loss_fn, l2_clip=0.3, method=m))
        .lower(params, batch)
        .as_text()
        for m in ("vmap", "ghost")
    }
    assert "7x8x16xf64" in texts["vmap"]  # the oracle does build them: the check can fail
    assert "7x8x16xf64" not in texts["ghost"] and "7x1x8x16xf64" not in texts["ghost"]
    assert "7x16x8xf64" not in texts["ghost"]  # nor for fc2


@pytest.mark.slow
def test_group_clipping(x64):
    loss_fn, params, batch = make("vit")
    batch = without_nan_row(batch)
    groups = {k: 0.05 * (i + 1) for i, k in enumerate(params)}
    want, got = both(loss_fn, params, batch, l2_clip=groups)
    assert got[1].group_norms.shape == (5, len(groups))
    assert_same(want, got)


@pytest.mark.slow
def test_microbatches_and_automatic_clipping(x64):
    loss_fn, params, batch = make("bert", b=5)
    batch = without_nan_row(batch)
    want, got = both(
        loss_fn, params, batch, l2_clip=0.3, microbatch_size=2, clip_fn="automatic", gamma=0.01
    )
    assert_same(want, got)


@pytest.mark.slow
def test_partial_trainable_and_einsum_fallback(x64):
    """A frozen subset, and an nn.Einsum kernel (no ghost rule) taking the exact fallback."""

    class Model(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.Einsum((4, 5), "btd,df->btf", name="mix")(x)
            return nn.Dense(3, name="head")(jnp.tanh(x)).mean(1)

    model = Model()
    x = jax.random.normal(jax.random.key(1), (4, 3, 4))
    params = model.init(jax.random.key(2), x)["params"]
    batch = {"x": x, "y": jnp.array([0, 1, 2, 0])}
    loss_fn = toy_models.xent_loss(model)
    assert fallback_names(loss_fn, params, batch) == {"mix/kernel", "mix/bias"}
    for trainable in (None, dpjax.named("head", "kernel")):
        want, got = both(loss_fn, params, batch, l2_clip=0.2, trainable=trainable)
        assert_same(want, got)


@pytest.mark.slow
def test_bf16_close_to_float32_oracle():
    """bf16 compute: ghost's error w.r.t. the float32 oracle is like vmap's in bf16; norms f32."""
    loss_fn32, params, batch = make("gpt2", b=4, dtype=jnp.float32)
    batch = dict(batch, scale=jnp.ones(4))
    loss16 = lm_loss(GPT2(dtype=jnp.bfloat16))
    kw = dict(l2_clip=10.0)
    want = jax.jit(dpjax.clipped_grad(loss_fn32, method="vmap", **kw))(params, batch)
    v16 = jax.jit(dpjax.clipped_grad(loss16, method="vmap", **kw))(params, batch)
    got = jax.jit(dpjax.clipped_grad(loss16, method="ghost", **kw))(params, batch)
    assert got[1].norms.dtype == jnp.float32 and got[1].group_norms.dtype == jnp.float32
    np.testing.assert_allclose(got[1].norms, want[1].norms, rtol=2e-2)
    for a, b, c in zip(*(jax.tree.leaves(r[0]) for r in (want, got, v16)), strict=True):
        assert b.dtype == jnp.float32
        err_ghost = float(np.max(np.abs(b - a)))
        err_vmap = float(np.max(np.abs(c - a)))
        assert err_ghost <= 2 * err_vmap + 1e-3 * float(np.max(np.abs(a))), (err_ghost, err_vmap)
