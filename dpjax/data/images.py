"""Image classification data: CIFAR-10/100 and CelebA on TFDS, plus preprocessing.

Images are kept as ``uint8`` NHWC arrays (cheap to cache); each gathered batch is
converted to float32 NHWC, resized to the model's resolution with ``jax.image.resize``
and normalised, at a fixed shape. With ``ImageConfig(on_device=True)`` ``take`` returns
the raw ``uint8`` batch and the training step applies ``preprocess_fn`` under ``jit``.

Example:
    >>> cfg = ImageConfig(resolution=64, normalize="minus_one_one")
    >>> fn = preprocess_fn(cfg, "cifar10")
    >>> fn(np.zeros((2, 32, 32, 3), np.uint8)).shape
    (2, 64, 64, 3)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dpjax.data import tfds_source
from dpjax.data.arrays import ArrayDataset, SourceDataset, cached

__all__ = [
    "CELEBA_ATTRIBUTES",
    "DATASET_STATS",
    "ImageConfig",
    "from_arrays",
    "load",
    "preprocess_fn",
]

#: Per-channel mean and std of the training split, on the [0, 1] scale.
DATASET_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "mnist_5k": ((0.1307,), (0.3081,)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
NORMALIZATIONS = ("minus_one_one", "dataset", "imagenet", "zero_one")
#: CelebA's 40 binary attributes, in the order of the label vector.
CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow",
    "Arched_Eyebrows",
    "Attractive",
    "Bags_Under_Eyes",
    "Bald",
    "Bangs",
    "Big_Lips",
    "Big_Nose",
    "Black_Hair",
    "Blond_Hair",
    "Blurry",
    "Brown_Hair",
    "Bushy_Eyebrows",
    "Chubby",
    "Double_Chin",
    "Eyeglasses",
    "Goatee",
    "Gray_Hair",
    "Heavy_Makeup",
    "High_Cheekbones",
    "Male",
    "Mouth_Slightly_Open",
    "Mustache",
    "Narrow_Eyes",
    "No_Beard",
    "Oval_Face",
    "Pale_Skin",
    "Pointy_Nose",
    "Receding_Hairline",
    "Rosy_Cheeks",
    "Sideburns",
    "Smiling",
    "Straight_Hair",
    "Wavy_Hair",
    "Wearing_Earrings",
    "Wearing_Hat",
    "Wearing_Lipstick",
    "Wearing_Necklace",
    "Wearing_Necktie",
    "Young",
)
_TFDS_CLASSES = {"cifar10": 10, "cifar100": 100}
_MAX_CACHE_BYTES = 2 << 30


@dataclasses.dataclass(frozen=True)
class ImageConfig:
    """How images become model inputs.

    Attributes:
      resolution: output side length (ViT: 224); None keeps the native size.
      normalize: ``"minus_one_one"`` (x*2-1), ``"dataset"`` (per-dataset mean/std),
        ``"imagenet"`` (ImageNet mean/std) or ``"zero_one"``.
      resize_method: a ``jax.image.resize`` method ("bilinear", "bicubic", "nearest").
      channels: 3 repeats grayscale to RGB; None keeps the dataset's channels.
      on_device: ``take`` returns raw uint8; apply ``preprocess_fn`` inside the step.
      cache: hold uint8 arrays in memory (True), read records per batch (False), or
        decide by size (None: cache when under 2 GiB; CelebA is read lazily).
      cache_dir: where uint8 arrays are cached as ``.npz`` (None: memory only).
    """

    resolution: int | None = 224
    normalize: str = "minus_one_one"
    resize_method: str = "bilinear"
    channels: int | None = None
    on_device: bool = False
    cache: bool | None = None
    cache_dir: str | None = None

    def __post_init__(self):
        if self.resolution is not None and (
            isinstance(self.resolution, bool)
            or not isinstance(self.resolution, int)
            or self.resolution < 1
        ):
            raise ValueError(f"resolution must be a positive int or None, got {self.resolution!r}")
        if self.normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {self.normalize!r}")
        if self.resize_method not in (
            "bilinear",
            "linear",
            "bicubic",
            "cubic",
            "nearest",
            "lanczos3",
        ):
            raise ValueError(f"unsupported resize_method {self.resize_method!r}")
        if self.channels not in (None, 1, 3):
            raise ValueError(f"channels must be None, 1 or 3, got {self.channels!r}")


def _mean_std(config: ImageConfig, dataset: str) -> tuple[np.ndarray, np.ndarray]:
    if config.normalize == "minus_one_one":
        return np.array([0.5], np.float32), np.array([0.5], np.float32)
    if config.normalize == "zero_one":
        return np.array([0.0], np.float32), np.array([1.0], np.float32)
    key = "imagenet" if config.normalize == "imagenet" else dataset
    if key not in DATASET_STATS:
        raise ValueError(
            f"no mean/std for dataset {dataset!r}; use normalize='minus_one_one' or one of "
            f"{sorted(DATASET_STATS)}"
        )
    mean, std = DATASET_STATS[key]
    return np.asarray(mean, np.float32), np.asarray(std, np.float32)


def preprocess_fn(config: ImageConfig, dataset: str) -> Callable[[Any], jax.Array]:
    """A jittable ``uint8 [B,H,W,C] -> float32 [B,R,R,C']`` (resize, then normalise)."""
    mean, std = _mean_std(config, dataset)

    def fn(images):
        x = jnp.asarray(images).astype(jnp.float32) / 255.0
        if config.channels == 3 and x.shape[-1] == 1:
            x = jnp.repeat(x, 3, axis=-1)
        if config.resolution is not None and x.shape[1:3] != (config.resolution,) * 2:
            shape = (x.shape[0], config.resolution, config.resolution, x.shape[-1])
            x = jax.image.resize(x, shape, method=config.resize_method)
        return (x - mean) / std

    return fn


def _transform(config: ImageConfig, dataset: str):
    if config.on_device:
        return None
    fn = jax.jit(preprocess_fn(config, dataset))

    def transform(batch):
        return {**batch, "image": np.asarray(fn(batch["image"]))}

    return transform


def from_arrays(
    images: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    config: ImageConfig,
    dataset: str,
    metadata: dict[str, Any] | None = None,
) -> ArrayDataset:
    """Wraps uint8 NHWC images and labels as a preprocessing ``ArrayDataset``."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"images must be uint8 [N,H,W,C], got {images.dtype} {images.shape}")
    meta = {"dataset": dataset, **(metadata or {})}
    arrays = {"image": images, "label": np.asarray(labels, np.int32)}
    return ArrayDataset(arrays, num_classes, meta, _transform(config, dataset))


def _labels(records: list[Any], dataset: str, attribute: str | None) -> np.ndarray:
    if dataset != "celeb_a":
        return np.asarray([int(r["label"]) for r in records], np.int32)
    names = CELEBA_ATTRIBUTES if attribute is None else (attribute,)
    table = np.asarray([[bool(r["attributes"][a]) for a in names] for r in records], np.int32)
    return table if attribute is None else table[:, 0]


def load(
    dataset: str,
    split: str,
    config: ImageConfig | None = None,
    *,
    attribute: str | None = "Smiling",
    data_dir: str | None = None,
) -> ArrayDataset | SourceDataset:
    """One split of ``cifar10``, ``cifar100`` or ``celeb_a`` from prepared TFDS data.

    Args:
      dataset: TFDS name.
      split: ``"train"``, ``"test"`` (CelebA also ``"validation"``).
      config: resolution, normalisation, caching.
      attribute: CelebA only: one of ``CELEBA_ATTRIBUTES`` (binary ``label`` [N]) or None
        for all 40 attributes as a multi-label ``label`` [N, 40] of 0/1.
      data_dir: prepared TFDS data (default ``$TFDS_DATA_DIR``).

    Raises:
      DatasetNotPreparedError: at once, with the ``tfds build`` command, if not prepared.
    """
    if dataset not in (*_TFDS_CLASSES, "celeb_a"):
        raise ValueError(f"unknown image dataset {dataset!r}; use cifar10, cifar100 or celeb_a")
    if dataset == "celeb_a" and attribute is not None and attribute not in CELEBA_ATTRIBUTES:
        raise ValueError(f"unknown CelebA attribute {attribute!r}; see CELEBA_ATTRIBUTES")
    config = config or ImageConfig()
    if dataset == "celeb_a":
        num_classes = 2 if attribute is not None else len(CELEBA_ATTRIBUTES)
        meta = {"attribute": attribute, "multi_label": attribute is None}
    else:
        num_classes, meta = _TFDS_CLASSES[dataset], {}
    meta["dataset"] = dataset
    source = tfds_source.open_split(dataset, split, data_dir)
    shape = np.shape(source[0]["image"])
    lazy = config.cache is False or (
        config.cache is None and len(source) * int(np.prod(shape)) > _MAX_CACHE_BYTES
    )
    if lazy:

        def decode(records):
            images = np.stack([np.asarray(r["image"], np.uint8) for r in records])
            return {"image": images, "label": _labels(records, dataset, attribute)}

        return SourceDataset(source, decode, num_classes, meta, _transform(config, dataset))

    def build() -> ArrayDataset:
        records = tfds_source.read_all(source)
        images = np.stack([np.asarray(r["image"], np.uint8) for r in records])
        return ArrayDataset(
            {"image": images, "label": _labels(records, dataset, attribute)}, num_classes, meta
        )

    key = {"dataset": dataset, "split": split, "attribute": attribute, "n": len(source)}
    name = f"{dataset}-{split}" + (f"-{attribute}" if dataset == "celeb_a" else "")
    return cached(config.cache_dir, name, key, build, _transform(config, dataset))
