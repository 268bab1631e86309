"""Opening TFDS splits as random-access data sources, never downloading.

``open_split`` builds the TFDS builder for a known dataset, checks that it was prepared
under ``data_dir`` in a random-access file format, and returns ``builder.as_data_source``.
An unprepared dataset fails at once (no download attempt, no network) with the exact
``tfds build`` command that prepares it. Inside ``tfds.testing.mock_data`` the check is
skipped and TFDS's mock records (real schema, random values) flow through.

Example:
    >>> open_split("glue/sst2", "train", data_dir="/nonexistent")  # doctest: +SKIP
    DatasetNotPreparedError: TFDS dataset 'glue/sst2' is not prepared under /nonexistent ...
"""

from __future__ import annotations

import importlib
import os
from typing import Any

__all__ = [
    "DatasetNotPreparedError",
    "KNOWN_DATASETS",
    "build_command",
    "open_builder",
    "open_split",
]

#: Dataset name (before any '/config') -> module that registers its TFDS builder.
KNOWN_DATASETS: dict[str, str] = {
    "glue": "tensorflow_datasets.text.glue",
    "cifar10": "tensorflow_datasets.image_classification.cifar",
    "cifar100": "tensorflow_datasets.image_classification.cifar",
    "celeb_a": "tensorflow_datasets.image.celeba",
    "e2e_cleaned": "tensorflow_datasets.structured.e2e_cleaned",
    "gem": "tensorflow_datasets.text.gem",
}
_RANDOM_ACCESS_FORMATS = ("array_record", "parquet")


class DatasetNotPreparedError(FileNotFoundError):
    """A TFDS dataset is not prepared locally (dpjax never downloads implicitly)."""


def _default_data_dir() -> str:
    return os.environ.get("TFDS_DATA_DIR") or os.path.join(
        os.path.expanduser("~"), "tensorflow_datasets"
    )


def build_command(name: str, data_dir: str | None = None) -> str:
    """The shell command that prepares ``name`` for random access under ``data_dir``."""
    data_dir = data_dir or _default_data_dir()
    return f"tfds build {name} --file_format=array_record --data_dir={data_dir}"


def _tfds_is_mocked() -> bool:
    """True inside ``tfds.testing.mock_data`` (the builder methods are TFDS's mocks)."""
    from tensorflow_datasets.core import dataset_builder

    method = dataset_builder.DatasetBuilder.as_data_source
    return getattr(method, "__module__", "") == "tensorflow_datasets.testing.mocking"


def open_builder(name: str, data_dir: str | None = None) -> Any:
    """Returns the TFDS builder of a known dataset, checked to be prepared.

    Raises:
      ValueError: ``name`` is not one of ``KNOWN_DATASETS`` (unknown names would make TFDS
        search its online community index).
      DatasetNotPreparedError: the dataset is not prepared under ``data_dir`` or is stored
        in a format without random access (TFRecord).
    """
    family = name.split("/")[0].split(":")[0]
    if family not in KNOWN_DATASETS:
        raise ValueError(f"unknown TFDS dataset {name!r}; dpjax knows {sorted(KNOWN_DATASETS)}")
    import tensorflow_datasets as tfds

    importlib.import_module(KNOWN_DATASETS[family])
    data_dir = data_dir or _default_data_dir()
    builder = tfds.builder(name, data_dir=data_dir)
    if _tfds_is_mocked():
        return builder
    if not builder.is_prepared():
        raise DatasetNotPreparedError(
            f"TFDS dataset {name!r} is not prepared under {data_dir} (looked for "
            f"{builder.data_dir}/dataset_info.json); dpjax never downloads implicitly. "
            f"Prepare it once with network access:\n    {build_command(name, data_dir)}\n"
            "or pass data_dir=... (or set TFDS_DATA_DIR) to where it is already prepared."
        )
    file_format = getattr(builder.info.file_format, "value", str(builder.info.file_format))
    if file_format not in _RANDOM_ACCESS_FORMATS:
        raise DatasetNotPreparedError(
            f"TFDS dataset {name!r} under {builder.data_dir} is stored as {file_format}, "
            f"which has no random access; rebuild it into another data_dir with:\n"
            f"    {build_command(name, data_dir)}"
        )
    return builder


def open_split(name: str, split: str, data_dir: str | None = None) -> Any:
    """Random-access source of one split: ``len(src)``, ``src[i]`` -> dict of numpy values.

    Args:
      name: TFDS name with config, e.g. ``"glue/sst2"``, ``"cifar10"``, ``"gem/dart"``.
      split: split name, e.g. ``"train"``, ``"validation_matched"``.
      data_dir: where prepared TFDS data lives (default ``$TFDS_DATA_DIR`` or
        ``~/tensorflow_datasets``).
    """
    builder = open_builder(name, data_dir)
    return builder.as_data_source(split=split)


def get_many(source: Any, keys: list[int]) -> list[Any]:
    """Records at ``keys``: one batched read where the source supports it.

    TFDS's mock source has a broken ``__getitems__``, so it is read item by item.
    """
    if hasattr(source, "__getitems__") and not _tfds_is_mocked():
        return list(source.__getitems__(keys))
    return [source[i] for i in keys]


def read_all(source: Any, chunk: int = 4096) -> list[Any]:
    """Every record of a random-access source, in index order (read in chunks)."""
    records: list[Any] = []
    for start in range(0, len(source), chunk):
        records.extend(get_many(source, list(range(start, min(start + chunk, len(source))))))
    return records
