"""Fixed-shape, random-access datasets: the object every loader returns.

A split is a dict of numpy arrays sharing a leading example axis, preprocessed once.
The training loop never iterates it: a sampler draws index arrays and ``take`` gathers
one padded batch of fixed shape. Rows whose index is negative, or whose ``mask`` entry is
False, are padding: they come back zero-filled with ``batch["mask"] == False``.

Example:
    >>> import numpy as np
    >>> ds = ArrayDataset({"x": np.arange(6).reshape(3, 2), "label": np.array([0, 1, 0])},
    ...                   num_classes=2)
    >>> batch = ds.take(np.array([2, 0, -1]))
    >>> batch["x"].tolist(), batch["mask"].tolist()
    ([[4, 5], [0, 1], [0, 0]], [True, True, False])
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ArrayDataset", "SourceDataset", "cached", "gather_mask"]

Batch = dict[str, np.ndarray]
Transform = Callable[[Batch], Batch]
_META_KEY = "__metadata__"


def gather_mask(indices: Any, mask: Any, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Validates sampler output; returns (safe row indices, boolean mask).

    Args:
      indices: integer array ``[B]``; negative entries mark padding rows.
      mask: optional boolean array ``[B]``; False marks padding rows.
      size: number of examples in the dataset.
    """
    idx = np.asarray(indices)
    if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"indices must be a 1-D integer array, got shape {idx.shape} {idx.dtype}")
    valid = idx >= 0
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != idx.shape:
            raise ValueError(f"mask shape {mask.shape} does not match indices shape {idx.shape}")
        valid = valid & mask.astype(bool)
    if np.any(idx[valid] >= size):
        bad = int(idx[valid].max())
        raise IndexError(f"index {bad} out of range for a dataset of {size} examples")
    return np.where(valid, idx, 0), valid


@dataclasses.dataclass(frozen=True, eq=False)
class ArrayDataset:
    """One preprocessed split held as numpy arrays.

    Attributes:
      arrays: name -> array with a leading example axis (all the same length).
      num_classes: number of classes of ``label`` (None for generation data).
      metadata: JSON-serialisable facts about the split (label names, label-word ids...).
      transform: optional function applied to each gathered batch (e.g. image resizing);
        it must keep fixed shapes.
    """

    arrays: Mapping[str, np.ndarray]
    num_classes: int | None = None
    metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    transform: Transform | None = None

    def __post_init__(self):
        if not self.arrays:
            raise ValueError("ArrayDataset needs at least one array")
        arrays = {k: np.asarray(v) for k, v in self.arrays.items()}
        lengths = {k: (v.shape[0] if v.ndim else None) for k, v in arrays.items()}
        if None in lengths.values() or len(set(lengths.values())) != 1:
            raise ValueError(f"arrays need one common leading length, got {lengths}")
        if "mask" in arrays:
            raise ValueError("'mask' is reserved for the padding mask that take() adds")
        if self.num_classes is not None and self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        object.__setattr__(self, "arrays", arrays)

    def __len__(self) -> int:
        return next(iter(self.arrays.values())).shape[0]

    def take(self, indices: Any, mask: Any = None) -> Batch:
        """Gathers a padded batch: every array at ``indices`` plus ``mask`` [B] bool."""
        safe, valid = gather_mask(indices, mask, len(self))
        batch = {}
        for name, array in self.arrays.items():
            rows = array[safe]
            rows[~valid] = 0
            batch[name] = rows
        batch["mask"] = valid
        return self.transform(batch) if self.transform is not None else batch

    def subset(self, indices: Sequence[int] | np.ndarray) -> ArrayDataset:
        """A new dataset holding the given rows (used for seeded splits)."""
        idx = np.asarray(indices, dtype=np.int64)
        return dataclasses.replace(self, arrays={k: v[idx] for k, v in self.arrays.items()})

    def save(self, path: str | os.PathLike) -> None:
        """Writes arrays and metadata to one ``.npz`` file (atomically)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"num_classes": self.num_classes, "metadata": dict(self.metadata)}
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, **self.arrays, **{_META_KEY: np.array(json.dumps(meta))})
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike, transform: Transform | None = None) -> ArrayDataset:
        """Reads a file written by ``save``."""
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files if k != _META_KEY}
            meta = json.loads(str(data[_META_KEY]))
        return cls(arrays, meta["num_classes"], meta["metadata"], transform)


@dataclasses.dataclass(frozen=True, eq=False)
class SourceDataset:
    """A lazily read split: random access to a source, decoded per batch.

    For data too large to hold in memory (CelebA at full resolution): ``take`` reads the
    records from ``source`` (anything with ``__len__`` and ``__getitem__``, such as a
    TFDS data source) and ``decode`` turns a list of records into fixed-shape arrays.
    """

    source: Any
    decode: Callable[[list[Any]], Batch]
    num_classes: int | None = None
    metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    transform: Transform | None = None

    def __len__(self) -> int:
        return len(self.source)

    def take(self, indices: Any, mask: Any = None) -> Batch:
        """Gathers a padded batch (same contract as ``ArrayDataset.take``)."""
        safe, valid = gather_mask(indices, mask, len(self))
        records = [self.source[int(i)] for i in safe]
        batch = self.decode(records)
        for rows in batch.values():
            rows[~valid] = 0
        batch["mask"] = valid
        return self.transform(batch) if self.transform is not None else batch


def cached(
    cache_dir: str | os.PathLike | None,
    name: str,
    key: Mapping[str, Any],
    build: Callable[[], ArrayDataset],
    transform: Transform | None = None,
) -> ArrayDataset:
    """Builds a split once; with ``cache_dir`` it is stored as ``.npz`` and reused.

    Args:
      cache_dir: directory for cached splits, or None to build in memory only.
      name: readable file-name prefix, e.g. ``"glue-sst2-train"``.
      key: everything the arrays depend on (tokenizer vocabulary, lengths, format...);
        its JSON hash names the file, so a changed setting never reads a stale cache.
      build: returns the split when no cached file exists.
      transform: per-batch transform attached to the returned dataset (not cached).
    """
    if cache_dir is None:
        return dataclasses.replace(build(), transform=transform)
    digest = hashlib.sha256(json.dumps(dict(key), sort_keys=True, default=str).encode())
    path = Path(cache_dir) / f"{name.replace('/', '-')}-{digest.hexdigest()[:16]}.npz"
    if path.exists():
        return ArrayDataset.load(path, transform)
    dataset = build()
    dataset.save(path)
    return dataclasses.replace(dataset, transform=transform)
