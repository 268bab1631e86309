"""Task builder: image classification with ViT or ResNet (GroupNorm).

``task.builder = "dpjax.tasks.image_classification:build"``. Data: ``cifar10``,
``cifar100``, ``celeb_a`` (TFDS; ``attribute="Smiling"`` etc. for one binary label, or
``None`` for all 40 attributes as a multi-label problem) or the offline
``fashion_mnist`` / ``mnist_5k`` (grey images repeated to RGB unless ``channels=1``, for
the from-scratch ``cnn-fmnist`` models). Train on ``train``,
evaluate on ``test``. ``data_dir`` is TFDS's data folder for the TFDS sets and the dpjax
data folder for Fashion-MNIST (default ``$DPJAX_DATA_DIR``, else ``~/.cache/dpjax``).

The model comes from ``checkpoint_dir`` (a Hugging Face ViT / ResNet folder, e.g. ViT-base
at 224 pixels) or the random named ``model``; its ``classifier`` is new and trained
alongside the biases by BiTFiT. ``model_overrides={"conv_bias": True}`` gives ResNet's
bias-free convolutions zero-initialised biases ("DP-BiTFiT-Add", paper 1's CelebA rows).

``features="scattering"`` (default ``"pixels"``) replaces every preprocessed grey image
(``channels=1``) by its ScatterNet features (:func:`dpjax.models.scattering.scattering2d`,
``scatter_J`` scales, ``scatter_L`` orientations: ``[7, 7, 81]`` for 28 pixels), computed
once for both splits when the task is built; the transform is fixed and data-independent,
so it costs no privacy. Tramer & Boneh's ScatterNet CNN (``cnn-scatter``) trains on them.

Config keys (``task.*``): ``dataset``, ``attribute``, ``checkpoint_dir`` or ``model``
(+ ``model_overrides``, ``init_seed``, ``dtype``), ``resolution``, ``normalize``,
``channels`` (3, the default, or 1), ``features``, ``scatter_J``, ``scatter_L``,
``data_dir``, ``cache_dir``, ``split_seed``, ``mock_examples``, ``train_limit``,
``eval_limit``.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import Any

import jax
import numpy as np
import tqdm

import dpjax
from dpjax.config_reader import cfg_get
from dpjax.data import images, offline
from dpjax.data.arrays import ArrayDataset
from dpjax.models.scattering import scattering2d
from dpjax.tasks.classification import classification_task
from dpjax.tasks.loading import limit, load_model, maybe_mock_tfds
from dpjax.training.task import Task

__all__ = ["FEATURES", "TFDS_SETS", "build", "load_splits", "scattered"]

#: The image sets read from TFDS (the others are offline: :data:`dpjax.data.offline.IMAGE_SETS`).
TFDS_SETS = ("cifar10", "cifar100", "celeb_a")
#: Model inputs: the pixels, or their fixed scattering transform (no privacy cost).
FEATURES = ("pixels", "scattering")
_log = logging.getLogger(__name__)


def load_splits(cfg: Any) -> tuple[Any, Any]:
    """``(train, test)`` datasets of ``cfg.dataset``, preprocessed per batch."""
    dataset = cfg_get(cfg, "dataset")
    image_config = images.ImageConfig(
        resolution=cfg_get(cfg, "resolution", 224),
        normalize=cfg_get(cfg, "normalize", "minus_one_one"),
        channels=cfg_get(cfg, "channels", 3),
        cache_dir=cfg_get(cfg, "cache_dir"),
    )
    if dataset in TFDS_SETS:
        kwargs: dict[str, Any] = {"data_dir": cfg_get(cfg, "data_dir")}
        if dataset == "celeb_a":
            kwargs["attribute"] = cfg.get("attribute", "Smiling")
        with maybe_mock_tfds(cfg_get(cfg, "mock_examples", 0)):
            train = images.load(dataset, "train", image_config, **kwargs)
            test = images.load(dataset, "test", image_config, **kwargs)
    elif dataset in offline.IMAGE_SETS:
        seed = int(cfg_get(cfg, "split_seed", 0))
        where = cfg_get(cfg, "data_dir")  # None: $DPJAX_DATA_DIR or ~/.cache/dpjax
        train = offline.load_images(dataset, "train", image_config, seed=seed, data_dir=where)
        test = offline.load_images(dataset, "test", image_config, seed=seed, data_dir=where)
    else:
        raise ValueError(
            f"task.dataset must be one of {TFDS_SETS + offline.IMAGE_SETS}, got {dataset!r}"
        )
    return limit(train, cfg_get(cfg, "train_limit")), limit(test, cfg_get(cfg, "eval_limit"))


def scattered(
    dataset: Any, *, J: int = 2, L: int = 8, batch_size: int = 500, desc: str = "scattering"
) -> ArrayDataset:
    """``dataset`` with each preprocessed grey ``image`` replaced by its scattering features.

    Args:
      dataset: an in-memory ``ArrayDataset`` of ``[N, H, H, 1]`` images (its ``transform``
        is applied before the scattering, then dropped).
      J, L: scales and orientations of :func:`~dpjax.models.scattering.scattering2d`.
      batch_size: images per jitted call (the last batch is zero-padded: one compile).
      desc: label of the progress bar.

    Returns:
      An ``ArrayDataset`` with float32 ``image`` ``[N, H / 2^J, H / 2^J, C]``, the other
      arrays and metadata kept, no transform.

    Raises:
      ValueError: ``dataset`` is read lazily or its images are not grey.
    """
    if not isinstance(dataset, ArrayDataset):
        raise ValueError(f"features='scattering' needs in-memory data, got {type(dataset)}")
    fn = jax.jit(functools.partial(scattering2d, J=J, L=L))
    n, chunks, started = len(dataset), [], time.perf_counter()
    batch_size = max(1, min(batch_size, n))
    for start in tqdm.tqdm(range(0, n, batch_size), desc=desc, leave=False, disable=None):
        idx = np.arange(start, min(start + batch_size, n))
        image = np.asarray(dataset.take(idx)["image"], np.float32)
        if image.ndim != 4 or image.shape[-1] != 1:
            raise ValueError(f"scattering needs grey [B, H, H, 1] images, got {image.shape}")
        padded = np.zeros((batch_size, *image.shape[1:]), np.float32)
        padded[: len(idx)] = image
        chunks.append(np.asarray(fn(padded))[: len(idx)])
    _log.info("%s: %d images in %.1f s", desc, n, time.perf_counter() - started)
    arrays = {**dataset.arrays, "image": np.concatenate(chunks)}
    meta = {**dataset.metadata, "features": f"scattering(J={J}, L={L})"}
    return ArrayDataset(arrays, dataset.num_classes, meta)


def build(cfg: Any) -> Task:
    """The image-classification :class:`~dpjax.training.task.Task` of ``cfg``."""
    train, test = load_splits(cfg)
    features = cfg_get(cfg, "features", "pixels")
    if features not in FEATURES:
        raise ValueError(f"task.features must be one of {FEATURES}, got {features!r}")
    if features == "scattering":
        scales = dict(J=int(cfg_get(cfg, "scatter_J", 2)), L=int(cfg_get(cfg, "scatter_L", 8)))
        train = scattered(train, desc="scattering train", **scales)
        test = scattered(test, desc="scattering test", **scales)
    multi_label = bool(train.metadata.get("multi_label", False))
    classes = int(train.num_classes)
    example = train.take(np.zeros(1, np.int64))["image"]
    model, params = load_model(cfg, "classification", classes, example=example)

    def logits(params: Any, batch: Any) -> Any:
        return model.apply({"params": params}, batch["image"])

    return classification_task(
        logits,
        params=params,
        train=train,
        test=test,
        multi_label=multi_label,
        trainable_extra=dpjax.named("classifier"),
        name=f"{cfg_get(cfg, 'dataset')}-{type(model).__name__}",
    )
