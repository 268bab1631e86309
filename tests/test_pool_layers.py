"""Multi-layer mean pooling (``MeanPoolClassifier(layers=...)``) against oracles: each
hidden state recomputed by a truncated model, each feed-forward activation captured from
the plain model by flax, the pooled vector by numpy in float64, and the engines' clipped
gradients by ``vmap(grad)``."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dpjax
from dpjax.models import BertModel, get_config
from dpjax.tasks.text_models import MeanPoolClassifier

LAYERS = 2  # bert-tiny


def _inputs():
    ids = jax.random.randint(jax.random.key(3), (4, 7), 3, 90)
    att = jnp.asarray(np.arange(7)[None] < np.array([[7], [5], [2], [6]]), jnp.int32)
    return ids, att


def _truncated(params, k):
    """A ``k``-layer bert-tiny and its parameters: the oracle for hidden state ``k``."""
    model = BertModel(get_config("bert-tiny", num_hidden_layers=max(k, 1)), dtype=jnp.float64)
    enc = {f"layer_{i}": params["encoder"][f"layer_{i}"] for i in range(k)}
    return model, {**params, "encoder": enc}


@pytest.mark.slow
def test_hidden_states_equal_truncated_models(x64):
    ids, att = _inputs()
    full = BertModel(get_config("bert-tiny"), dtype=jnp.float64)
    params = full.init(jax.random.key(0), ids, att)["params"]
    states = full.clone(output_hidden_states=True).apply({"params": params}, ids, att)
    assert len(states) == LAYERS + 1
    np.testing.assert_array_equal(states[-1], full.apply({"params": params}, ids, att))
    emb = full.apply(
        {"params": params}, ids, method=lambda m, i: m.embeddings(i, jnp.zeros_like(i), True)
    )
    np.testing.assert_array_equal(states[0], emb)
    model, sub = _truncated(params, 1)
    np.testing.assert_allclose(states[1], model.apply({"params": sub}, ids, att), rtol=1e-12)
    with pytest.raises(ValueError, match="head='mlm'"):
        BertModel(get_config("bert-tiny"), head="mlm", output_hidden_states=True).init(
            jax.random.key(0), ids
        )


def test_ffn_states_equal_the_layers_captured_activations(x64):
    """``output_ffn_states`` returns ``hidden_act(intermediate.dense(...))`` of every
    layer: the plain model's captured pre-activations, activated by hand (tanh-free exact
    GELU, as ``hidden_act="gelu"`` in Hugging Face)."""
    from dpjax.models.bert import _Intermediate

    ids, att = _inputs()
    plain = BertModel(get_config("bert-tiny"), dtype=jnp.float64)
    params = plain.init(jax.random.key(0), ids, att)["params"]
    ffn = plain.clone(output_ffn_states=True).apply({"params": params}, ids, att)
    _, captured = plain.apply(
        {"params": params}, ids, att,
        capture_intermediates=lambda mdl, _: isinstance(mdl, _Intermediate),
        mutable=["intermediates"],
    )  # fmt: skip
    inter = captured["intermediates"]["encoder"]
    assert len(ffn) == LAYERS
    for i in range(LAYERS):
        pre = np.asarray(inter[f"layer_{i}"]["intermediate"]["__call__"][0], np.float64)
        want = 0.5 * pre * (1.0 + np.vectorize(math.erf)(pre / math.sqrt(2.0)))
        assert ffn[i].shape == (4, 7, plain.config.intermediate_size)
        np.testing.assert_allclose(ffn[i], want, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="output_ffn_states needs head=None"):
        plain.clone(output_ffn_states=True, output_hidden_states=True).init(jax.random.key(0), ids)


def _numpy_pool(h, att):
    h, w = np.asarray(h, np.float64), np.asarray(att, np.float64)[..., None]
    mean = (h * w).sum(1) / np.maximum(w.sum(1), 1.0)
    return mean / np.linalg.norm(mean, axis=-1, keepdims=True)


@pytest.mark.parametrize("layers", [(1, 2), (0, -1), (2,)])
def test_features_are_the_normalised_layer_means_concatenated(x64, layers):
    ids, att = _inputs()
    enc = BertModel(get_config("bert-tiny"), dtype=jnp.float64, output_hidden_states=True)
    model = MeanPoolClassifier(enc, num_labels=3, normalize=True, layers=layers)
    params = model.init(jax.random.key(0), ids, att)["params"]
    assert params["classifier"]["kernel"].shape == (model.feature_dim, 3)
    assert model.feature_dim == enc.config.hidden_size * len(layers)
    got = model.apply({"params": params}, ids, att, method="features")
    states = enc.apply({"params": params["encoder"]}, ids, att)
    want = np.concatenate([_numpy_pool(states[i], att) for i in layers], -1) / np.sqrt(len(layers))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)  # float32 pooling
    np.testing.assert_allclose(np.linalg.norm(got, axis=-1), 1.0, rtol=1e-6)
    logits = model.apply({"params": params}, ids, att)
    k, b = params["classifier"]["kernel"], params["classifier"]["bias"]
    np.testing.assert_allclose(logits, want @ np.asarray(k) + np.asarray(b), rtol=1e-5)


@pytest.mark.parametrize("layers", [(1, 2), (-1,)])
def test_ffn_features_are_the_normalised_activation_means_concatenated(x64, layers):
    ids, att = _inputs()
    enc = BertModel(get_config("bert-tiny"), dtype=jnp.float64, output_ffn_states=True)
    model = MeanPoolClassifier(enc, num_labels=2, normalize=True, layers=layers, source="ffn")
    params = model.init(jax.random.key(0), ids, att)["params"]
    assert model.feature_dim == enc.config.intermediate_size * len(layers)
    assert params["classifier"]["kernel"].shape == (model.feature_dim, 2)
    got = model.apply({"params": params}, ids, att, method="features")
    acts = enc.apply({"params": params["encoder"]}, ids, att)
    index = [i - 1 if i > 0 else i for i in layers]  # layer i is activation i - 1
    want = np.concatenate([_numpy_pool(acts[i], att) for i in index], -1) / np.sqrt(len(layers))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_mismatched_encoder_and_layers_are_named():
    ids, att = _inputs()
    plain = MeanPoolClassifier(BertModel(get_config("bert-tiny")), layers=(1, 2))
    with pytest.raises(ValueError, match=r"layers=\(1, 2\) needs an encoder"):
        plain.init(jax.random.key(0), ids, att)
    enc = BertModel(get_config("bert-tiny"), output_hidden_states=True)
    with pytest.raises(ValueError, match="layer 5 out of range for 3"):
        MeanPoolClassifier(enc, layers=(1, 5)).init(jax.random.key(0), ids, att)
    with pytest.raises(ValueError, match="needs `layers` set"):
        MeanPoolClassifier(enc).init(jax.random.key(0), ids, att)
    ffn = BertModel(get_config("bert-tiny"), output_ffn_states=True)
    with pytest.raises(ValueError, match="needs an encoder built with output_hidden_states"):
        MeanPoolClassifier(ffn, layers=(1,)).init(jax.random.key(0), ids, att)
    with pytest.raises(ValueError, match="needs an encoder built with output_ffn_states"):
        MeanPoolClassifier(enc, layers=(1,), source="ffn").init(jax.random.key(0), ids, att)
    with pytest.raises(ValueError, match="layer 0 out of range for FFN activations 1-2"):
        MeanPoolClassifier(ffn, layers=(0,), source="ffn").init(jax.random.key(0), ids, att)
    with pytest.raises(ValueError, match="source must be one of .* got 'attn'"):
        MeanPoolClassifier(ffn, layers=(1,), source="attn")
    with pytest.raises(ValueError, match="source='ffn' needs `layers` set"):
        MeanPoolClassifier(ffn, source="ffn")


@pytest.mark.slow
@pytest.mark.parametrize("source", ["hidden", "ffn"])
@pytest.mark.parametrize("method", ["bitfit", "ghost"])
def test_engines_equal_vmap_through_every_pooled_layer(x64, method, source):
    """Every layer's biases reach the head by two paths (its own pooled state and the
    layers above); the engines' per-example clipped sums still equal vmap(grad)."""
    ids, att = _inputs()
    flag = "output_ffn_states" if source == "ffn" else "output_hidden_states"
    enc = BertModel(get_config("bert-tiny"), dtype=jnp.float64, **{flag: True})
    model = MeanPoolClassifier(enc, num_labels=2, normalize=True, feature_scale=3.0,
                               layers=(1, 2) if source == "ffn" else (0, 1, 2),
                               source=source)  # fmt: skip
    params = model.init(jax.random.key(0), ids, att)["params"]
    params = jax.tree.map(lambda x: x.astype(jnp.float64), params)
    batch = dict(ids=ids, att=att, y=jnp.array([0, 1, 1, 0]), m=jnp.array([1.0, 1, 0, 1]))

    def loss_fn(p, b):
        logits = model.apply({"params": p}, b["ids"], b["att"])
        nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), b["y"][:, None], 1)[:, 0]
        return nll * b["m"]

    trainable = dpjax.named("classifier", base=dpjax.bias_only)
    run = {
        m: jax.jit(dpjax.clipped_grad(loss_fn, l2_clip=0.05, method=m, trainable=trainable))(
            params, batch
        )
        for m in ("vmap", method)
    }
    (gv, iv), (gg, ig) = run["vmap"], run[method]
    np.testing.assert_allclose(ig.norms, iv.norms, rtol=1e-9)
    assert float(iv.norms[2]) == 0.0 and int(iv.num_clipped) > 0
    scale = max(float(np.max(np.abs(a))) for a in jax.tree.leaves(gv))
    assert jax.tree.structure(gv) == jax.tree.structure(gg)
    for a, b in zip(jax.tree.leaves(gv), jax.tree.leaves(gg), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-9 * scale)
    emb_ln = gv["encoder"]["embeddings"]["LayerNorm"]["bias"]
    assert float(np.max(np.abs(emb_ln))) > 0  # the embeddings' state is pooled directly
    inter = gv["encoder"]["encoder"]["layer_1"]["intermediate"]["dense"]["bias"]
    assert float(np.max(np.abs(inter))) > 0  # the last layer's activations reach the head
