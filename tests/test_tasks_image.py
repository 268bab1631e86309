"""Image-classification task builder on TFDS mock data and the offline Fashion-MNIST."""

from __future__ import annotations

import ml_collections
import numpy as np
import pytest

from dpjax.tasks import image_classification

tfds = pytest.importorskip("tensorflow_datasets")


def _cfg(**kw):
    base = dict(resolution=32, mock_examples=6, init_seed=0)
    return ml_collections.ConfigDict({**base, **kw})


@pytest.mark.slow
def test_cifar_vit_task_trains_the_new_head_with_biases():
    task = image_classification.build(_cfg(dataset="cifar100", model="vit-tiny"))
    batch = task.train_data.take(np.arange(6))
    assert batch["image"].shape == (6, 32, 32, 3) and batch["image"].dtype == np.float32
    assert batch["image"].min() >= -1.0 and batch["image"].max() <= 1.0
    loss = task.loss_fn(task.params, batch)
    assert loss.shape == (6,) and abs(float(loss.mean()) - np.log(100)) < 1.0
    assert task.params["classifier"]["kernel"].shape[-1] == 100
    assert task.trainable_extra(("classifier", "kernel"), None)
    assert not task.trainable_extra(("encoder", "layer_0", "attention"), None)


@pytest.mark.slow
@pytest.mark.parametrize("attribute,shape", [("Smiling", (6,)), (None, (6, 40))])
def test_celeba_resnet_add_biases_and_labels(attribute, shape):
    cfg = _cfg(dataset="celeb_a", model="resnet-tiny", attribute=attribute,
               model_overrides={"conv_bias": True})  # fmt: skip
    task = image_classification.build(cfg)
    batch = task.train_data.take(np.arange(6))
    assert batch["label"].shape == shape
    conv = task.params["embedder"]["embedder"]["convolution"]
    np.testing.assert_array_equal(conv["bias"], 0.0)  # DP-BiTFiT-Add: zero-initialised
    metrics = task.eval_fn(task.params, batch)
    assert np.all((metrics["accuracy"] >= 0) & (metrics["accuracy"] <= 1))
    assert np.all(np.isfinite(metrics["loss"]))
    without = image_classification.build(_cfg(dataset="celeb_a", model="resnet-tiny",
                                              attribute=attribute))  # fmt: skip
    assert "bias" not in without.params["embedder"]["embedder"]["convolution"]


def test_offline_fashion_mnist_task():
    pytest.importorskip("dpjax.data.offline")
    cfg = _cfg(dataset="fashion_mnist", model="resnet-tiny", train_limit=16, eval_limit=8)
    try:
        task = image_classification.build(cfg)
    except FileNotFoundError as e:
        pytest.skip(f"offline Fashion-MNIST not installed: {e}")
    assert (task.num_train, len(task.eval_data["test"])) == (16, 8)
    batch = task.train_data.take(np.arange(4))
    assert batch["image"].shape == (4, 32, 32, 3)  # grey repeated to RGB, resized
    assert np.all(np.isfinite(task.loss_fn(task.params, batch)))


def test_unknown_dataset_is_rejected():
    with pytest.raises(ValueError, match="task.dataset"):
        image_classification.build(_cfg(dataset="imagenet", model="vit-tiny"))
