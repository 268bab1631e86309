"""Image loaders on TFDS mock data: shapes, labels, normalisation, resizing, laziness."""

import jax
import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from dpjax.data import images  # noqa: E402
from dpjax.data.arrays import ArrayDataset, SourceDataset  # noqa: E402
from dpjax.data.images import ImageConfig  # noqa: E402

N = 6


def _raw(name, split):
    import tensorflow_datasets.image.celeba  # noqa: F401
    import tensorflow_datasets.image_classification.cifar  # noqa: F401

    src = tfds.data_source(name, split=split, download=False)
    return [src[i] for i in range(len(src))]


@pytest.mark.parametrize("name,classes", [("cifar10", 10), ("cifar100", 100)])
def test_cifar_dataset_normalisation_exact(name, classes):
    cfg = ImageConfig(resolution=None, normalize="dataset")
    with tfds.testing.mock_data(num_examples=N):
        ds = images.load(name, "train", cfg)
        raw = _raw(name, "train")
    assert isinstance(ds, ArrayDataset) and len(ds) == N and ds.num_classes == classes
    batch = ds.take(np.arange(N))
    assert batch["image"].shape == (N, 32, 32, 3) and batch["image"].dtype == np.float32
    mean, std = (np.asarray(v, np.float32) for v in images.DATASET_STATS[name])
    want = (np.stack([r["image"] for r in raw]).astype(np.float32) / 255 - mean) / std
    np.testing.assert_allclose(batch["image"], want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(batch["label"], [int(r["label"]) for r in raw])
    assert np.all((batch["label"] >= 0) & (batch["label"] < classes))


def test_resize_to_model_resolution():
    with tfds.testing.mock_data(num_examples=N):
        near = images.load("cifar10", "test", ImageConfig(resolution=64, resize_method="nearest"))
        bil = images.load("cifar10", "test", ImageConfig(resolution=224))
        raw = _raw("cifar10", "test")
    x = np.stack([r["image"] for r in raw]).astype(np.float32) / 255 * 2 - 1
    want = np.repeat(np.repeat(x, 2, axis=1), 2, axis=2)  # integer nearest upsampling
    got = near.take(np.arange(N))["image"]
    assert got.shape == (N, 64, 64, 3)
    np.testing.assert_allclose(got, want, atol=1e-6)
    big = bil.take(np.arange(N), np.array([1, 1, 1, 1, 1, 0], bool))
    assert big["image"].shape == (N, 224, 224, 3) and big["mask"].tolist() == [1] * 5 + [0]
    assert big["image"].min() >= -1 - 1e-5 and big["image"].max() <= 1 + 1e-5
    # Bilinear resizing keeps each image's mean (up to boundary effects).
    np.testing.assert_allclose(big["image"][:5].mean((1, 2)), x[:5].mean((1, 2)), atol=0.02)


def test_on_device_mode_returns_raw_uint8_and_a_jittable_fn():
    cfg = ImageConfig(resolution=48, on_device=True, channels=3)
    with tfds.testing.mock_data(num_examples=N):
        ds = images.load("cifar100", "train", cfg)
    batch = ds.take(np.arange(3))
    assert batch["image"].dtype == np.uint8 and batch["image"].shape == (3, 32, 32, 3)
    out = jax.jit(images.preprocess_fn(cfg, "cifar100"))(batch["image"])
    assert out.shape == (3, 48, 48, 3) and out.dtype == np.float32
    gray = images.preprocess_fn(cfg, "mnist_5k")(np.zeros((2, 28, 28, 1), np.uint8))
    assert gray.shape == (2, 48, 48, 3)


def test_celeba_single_attribute_and_multilabel_lazy_and_cached():
    cfg_lazy = ImageConfig(resolution=32, cache=False)
    with tfds.testing.mock_data(num_examples=N):
        one = images.load("celeb_a", "train", cfg_lazy, attribute="Smiling")
        every_lazy = images.load("celeb_a", "validation", cfg_lazy, attribute=None)
        every = images.load("celeb_a", "validation", ImageConfig(resolution=32), attribute=None)
        raw = _raw("celeb_a", "validation")
        raw_train = _raw("celeb_a", "train")
        idx = np.array([4, 1, 0])
        lazy_batch = every_lazy.take(idx, np.array([True, True, False]))
        one_batch = one.take(np.arange(N))
    assert isinstance(one, SourceDataset) and one.num_classes == 2
    np.testing.assert_array_equal(
        one_batch["label"], [int(r["attributes"]["Smiling"]) for r in raw_train]
    )
    assert every.num_classes == 40 and every.metadata["multi_label"]
    want = np.array([[int(r["attributes"][a]) for a in images.CELEBA_ATTRIBUTES] for r in raw])
    np.testing.assert_array_equal(every.arrays["label"], want)
    cached = every.take(idx, np.array([True, True, False]))
    assert cached["image"].shape == (3, 32, 32, 3) and cached["label"].shape == (3, 40)
    for k in ("image", "label", "mask"):
        np.testing.assert_allclose(lazy_batch[k], cached[k], atol=1e-6)
    assert not lazy_batch["label"][2].any()


def test_config_validation():
    with pytest.raises(ValueError, match="normalize must be one of"):
        ImageConfig(normalize="standard")
    with pytest.raises(ValueError, match="resolution must be a positive int or None, got 0"):
        ImageConfig(resolution=0)
    with pytest.raises(ValueError, match="unknown CelebA attribute 'Happy'"):
        images.load("celeb_a", "train", attribute="Happy")
    with pytest.raises(ValueError, match="no mean/std for dataset 'celeb_a'"):
        images.preprocess_fn(ImageConfig(normalize="dataset"), "celeb_a")
