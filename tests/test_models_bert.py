"""BERT / RoBERTa: conventions, heads and the Hugging Face checkpoint round trip.

Oracles: hand-computed RoBERTa position ids (HF's rule), numpy re-implementations of the
heads from the parameter tree, Hugging Face tensor names and layouts written down from
the HF models' ``state_dict`` conventions, and strict loader errors.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import dpjax.models as M
from dpjax.models.bert import position_ids


def _init(model, ids, seed=0):
    return model.init(jax.random.key(seed), ids)["params"]


def _ids(config, shape=(3, 7), seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(3, config.vocab_size, shape).astype(np.int32)


def _gelu(x):
    from math import erf

    return 0.5 * x * (1 + np.vectorize(erf)(x / np.sqrt(2)))


def _ln(x, p, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * np.asarray(p["scale"]) + np.asarray(p["bias"])


def _dense(x, p):
    return x @ np.asarray(p["kernel"], np.float64) + np.asarray(p["bias"], np.float64)


def test_roberta_position_ids_follow_hf_padding_rule():
    cfg = M.get_config("roberta-tiny")  # pad_token_id = 1
    ids = jnp.array([[0, 5, 6, 1, 1], [1, 1, 0, 7, 1]])
    # HF: cumsum(ids != pad) * (ids != pad) + pad
    assert position_ids(ids, cfg).tolist() == [[2, 3, 4, 1, 1], [1, 1, 2, 3, 1]]
    bert = M.get_config("bert-tiny")
    assert position_ids(ids, bert).tolist() == [[0, 1, 2, 3, 4]] * 2


@pytest.mark.slow
def test_roberta_left_padding_does_not_change_real_tokens():
    cfg = M.get_config("roberta-tiny")
    model = M.BertModel(cfg)
    ids = np.array([[0, 9, 10, 11, 2]], np.int32)
    params = _init(model, ids)
    alone = model.apply({"params": params}, ids)
    padded = np.array([[1, 1, 0, 9, 10, 11, 2]], np.int32)
    mask = (padded != 1).astype(np.int32)
    out = model.apply({"params": params}, padded, attention_mask=mask)
    np.testing.assert_allclose(out[:, 2:], alone, atol=1e-5)


def test_mlm_head_is_tied_and_has_its_own_bias():
    cfg = M.get_config("bert-tiny")
    ids = _ids(cfg)
    model = M.BertModel(cfg, head="mlm")
    params = _init(model, ids)
    params["mlm_head"]["output"]["bias"] = jnp.linspace(-1, 1, cfg.vocab_size)
    assert set(params["mlm_head"]) == {"dense", "layer_norm", "output"}  # no decoder kernel
    logits = np.asarray(model.apply({"params": params}, ids), np.float64)
    body = {k: params[k] for k in ("embeddings", "encoder")}
    h = np.asarray(M.BertModel(cfg).apply({"params": body}, ids), np.float64)
    head = params["mlm_head"]
    t = _ln(_gelu(_dense(h, head["dense"])), head["layer_norm"], cfg.layer_norm_eps)
    emb = np.asarray(params["embeddings"]["word_embeddings"]["embedding"], np.float64)
    ref = t @ emb.T + np.asarray(head["output"]["bias"])
    np.testing.assert_allclose(logits, ref, atol=2e-4)


@pytest.mark.parametrize("name", ["bert-tiny", "roberta-tiny"])
def test_classification_heads_match_numpy(name):
    cfg = M.get_config(name)
    ids = _ids(cfg)
    model = M.BertModel(cfg, head="classification", num_labels=3)
    params = _init(model, ids)
    logits = np.asarray(model.apply({"params": params}, ids), np.float64)
    body = {k: params[k] for k in ("embeddings", "encoder")}
    h0 = np.asarray(M.BertModel(cfg).apply({"params": body}, ids), np.float64)[:, 0]
    if cfg.model_type == "bert":
        ref = _dense(np.tanh(_dense(h0, params["pooler"]["dense"])), params["classifier"])
    else:
        c = params["classifier"]
        ref = _dense(np.tanh(_dense(h0, c["dense"])), c["out_proj"])
    assert logits.shape == (3, 3)
    np.testing.assert_allclose(logits, ref, atol=1e-5)


# HF names and [out, in] shapes, written from the transformers state_dict conventions.
EXPECTED = {
    ("bert-tiny", "mlm"): {
        "bert.embeddings.word_embeddings.weight": (128, 16),
        "bert.encoder.layer.1.attention.self.query.weight": (16, 16),
        "bert.encoder.layer.0.intermediate.dense.weight": (32, 16),
        "bert.encoder.layer.0.output.LayerNorm.weight": (16,),
        "cls.predictions.transform.dense.weight": (16, 16),
        "cls.predictions.transform.LayerNorm.bias": (16,),
        "cls.predictions.bias": (128,),
    },
    ("bert-tiny", "classification"): {
        "bert.pooler.dense.weight": (16, 16),
        "classifier.weight": (3, 16),
        "classifier.bias": (3,),
    },
    ("roberta-tiny", "mlm"): {
        "roberta.embeddings.position_embeddings.weight": (34, 16),
        "roberta.embeddings.token_type_embeddings.weight": (1, 16),
        "lm_head.dense.weight": (16, 16),
        "lm_head.layer_norm.weight": (16,),
        "lm_head.bias": (128,),
    },
    ("roberta-tiny", "classification"): {
        "classifier.dense.weight": (16, 16),
        "classifier.out_proj.weight": (3, 16),
        "roberta.encoder.layer.1.output.dense.weight": (16, 32),
    },
    ("roberta-tiny", None): {
        "encoder.layer.0.attention.output.dense.bias": (16,),
        "embeddings.LayerNorm.weight": (16,),
    },
}


@pytest.mark.parametrize(("name", "head"), sorted(EXPECTED, key=str))
def test_round_trip_names_params_outputs(tmp_path, name, head):
    cfg = M.get_config(name)
    ids = _ids(cfg)
    model = M.create_model(cfg, head, num_labels=3 if head == "classification" else 2)
    params = _init(model, ids, seed=1)
    M.save_pretrained(tmp_path, model, params)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    for key, shape in EXPECTED[(name, head)].items():
        assert tensors[key].shape == shape, key
    q = params["encoder"]["layer_0"]["attention"]["self"]["query"]["kernel"]
    prefix = "" if head is None else f"{cfg.model_type}."
    np.testing.assert_array_equal(
        tensors[f"{prefix}encoder.layer.0.attention.self.query.weight"], np.asarray(q).T
    )
    loaded_model, loaded = M.from_pretrained(tmp_path, head)
    assert loaded_model == model
    jax.tree.map(np.testing.assert_array_equal, loaded, params)
    mask = np.ones(ids.shape, np.int32)
    mask[0, 4:] = 0
    np.testing.assert_array_equal(
        loaded_model.apply({"params": loaded}, ids, attention_mask=mask),
        model.apply({"params": params}, ids, attention_mask=mask),
    )


def _saved(tmp_path, name="roberta-tiny", head="mlm"):
    cfg = M.get_config(name)
    model = M.create_model(cfg, head)
    params = _init(model, _ids(cfg))
    M.save_pretrained(tmp_path, model, params)
    return tmp_path / "model.safetensors", load_file(str(tmp_path / "model.safetensors"))


def test_mismatch_lists_missing_unexpected_and_misshaped(tmp_path):
    path, tensors = _saved(tmp_path)
    del tensors["roberta.encoder.layer.1.attention.self.key.weight"]
    tensors["roberta.encoder.layer.0.attention.self.extra.weight"] = np.zeros((2, 2), np.float32)
    tensors["roberta.embeddings.LayerNorm.bias"] = np.zeros((17,), np.float32)
    save_file(tensors, str(path))
    with pytest.raises(M.CheckpointMismatchError) as err:
        M.from_pretrained(tmp_path, "mlm")
    msg = str(err.value)
    assert "encoder/layer_1/attention/self/key/kernel" in msg
    assert "encoder.layer.1.attention.self.key.weight" in msg
    assert "encoder.layer.0.attention.self.extra.weight" in msg
    assert "embeddings/LayerNorm/bias" in msg and "(17,)" in msg
    assert len(err.value.missing) == len(err.value.unexpected) == len(err.value.mis_shaped) == 1


def test_ignorable_tensors_are_reported_not_errors(tmp_path):
    path, tensors = _saved(tmp_path, "bert-tiny", "classification")
    tensors["bert.embeddings.position_ids"] = np.arange(32)[None]
    tensors["cls.seq_relationship.weight"] = np.zeros((2, 16), np.float32)
    save_file(tensors, str(path))
    # head=None: the pooler and the classifier are unused heads -> ignored, reported.
    _, _, report = M.from_pretrained(tmp_path, None, return_report=True)
    assert report.new == ()
    assert set(report.ignored) == {
        "embeddings.position_ids",
        "cls.seq_relationship.weight",
        "pooler.dense.weight",
        "pooler.dense.bias",
        "classifier.weight",
        "classifier.bias",
    }


def test_fresh_head_is_initialised_from_rng_and_reported(tmp_path):
    _saved(tmp_path, "roberta-tiny", None)
    model, p1, report = M.from_pretrained(
        tmp_path, "classification", num_labels=4, rng=3, return_report=True
    )
    assert sorted(report.new) == [
        "classifier/dense/bias",
        "classifier/dense/kernel",
        "classifier/out_proj/bias",
        "classifier/out_proj/kernel",
    ]
    _, p2 = M.from_pretrained(tmp_path, "classification", num_labels=4, rng=3)
    _, p3 = M.from_pretrained(tmp_path, "classification", num_labels=4, rng=4)
    k = ("classifier", "dense", "kernel")
    np.testing.assert_array_equal(p1[k[0]][k[1]][k[2]], p2[k[0]][k[1]][k[2]])
    assert not np.array_equal(p1[k[0]][k[1]][k[2]], p3[k[0]][k[1]][k[2]])
    ids = _ids(model.config)
    assert model.apply({"params": p1}, ids).shape == (3, 4)


def test_bfloat16_compute_keeps_float32_params():
    cfg = M.get_config("bert-tiny")
    ids = _ids(cfg)
    f32 = M.BertModel(cfg, head="mlm")
    params = _init(f32, ids)
    bf16 = dataclasses.replace(f32, dtype=jnp.bfloat16)
    out = bf16.apply({"params": params}, ids)
    assert out.dtype == jnp.bfloat16
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(_init(bf16, ids)))
    np.testing.assert_allclose(
        np.asarray(out, np.float32), f32.apply({"params": params}, ids), atol=0.15
    )


def test_examples_do_not_mix():
    cfg = M.get_config("roberta-tiny")
    model = M.BertModel(cfg, head="classification")
    ids = _ids(cfg, (4, 6))
    params = _init(model, ids)
    full = model.apply({"params": params}, ids)
    other = ids.copy()
    other[1:] = _ids(cfg, (3, 6), seed=5)
    np.testing.assert_allclose(model.apply({"params": params}, other)[0], full[0], atol=1e-6)


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("hidden_size", 18, "not divisible"),
        ("num_hidden_layers", 0, "num_hidden_layers"),
        ("hidden_act", "swishy", "swishy"),
        ("model_type", "gpt", "model_type"),
        ("pad_token_id", 500, "pad_token_id=500"),
        ("hidden_dropout_prob", 1.5, "hidden_dropout_prob"),
    ],
)
def test_config_validation(field, value, match):
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(M.get_config("bert-tiny"), **{field: value})


def test_unknown_head_rejected():
    cfg = M.get_config("bert-tiny")
    with pytest.raises(ValueError, match="head must be"):
        M.BertModel(cfg, head="lm").init(jax.random.key(0), _ids(cfg))
