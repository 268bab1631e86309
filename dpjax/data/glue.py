"""GLUE loaders (SST-2, QNLI, QQP, MNLI) on TFDS random-access sources.

Records are read once from ``tfds.data_source`` (via ``dpjax.data.tfds_source``, which
fails at once when the data is not prepared), tokenised once and kept as arrays.

Example:
    >>> from dpjax.data import glue, tokenizers  # doctest: +SKIP
    >>> tok = tokenizers.from_pretrained("/path/to/roberta")  # doctest: +SKIP
    >>> ds = glue.load("sst2", "train", tok, glue.TextConfig(max_length=256))  # doctest: +SKIP
    >>> len(ds), ds.num_classes, sorted(ds.take(np.arange(8)))  # doctest: +SKIP
    (67349, 2, ['attention_mask', 'input_ids', 'label', 'mask', 'mask_position'])
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from dpjax.data import tfds_source
from dpjax.data.arrays import ArrayDataset, cached
from dpjax.data.text_encoding import TextConfig, encode_texts

__all__ = ["GLUE_TASKS", "GlueTask", "TextConfig", "load"]


class GlueTask(NamedTuple):
    """Where a GLUE task's fields live in the TFDS schema."""

    first: str
    second: str | None
    label_names: tuple[str, ...]
    splits: tuple[str, ...]


#: The GLUE tasks dpjax loads, by TFDS config name: input format, label names, splits.
GLUE_TASKS: dict[str, GlueTask] = {
    "sst2": GlueTask("sentence", None, ("negative", "positive"), ("train", "validation", "test")),
    "qnli": GlueTask(
        "question", "sentence", ("entailment", "not_entailment"), ("train", "validation", "test")
    ),
    "qqp": GlueTask(
        "question1", "question2", ("not_duplicate", "duplicate"), ("train", "validation", "test")
    ),
    "mnli": GlueTask(
        "premise",
        "hypothesis",
        ("entailment", "neutral", "contradiction"),
        ("train", "validation_matched", "validation_mismatched", "test_matched", "test_mismatched"),
    ),
}


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def read_records(task: str, split: str, data_dir: str | None = None):
    """Reads one split as (first texts, second texts or None, labels) lists."""
    spec = GLUE_TASKS[task]
    source = tfds_source.open_split(f"glue/{task}", split, data_dir)
    records = tfds_source.read_all(source)
    first = [_text(r[spec.first]) for r in records]
    second = None if spec.second is None else [_text(r[spec.second]) for r in records]
    labels = np.asarray([int(r["label"]) for r in records], np.int32)
    return first, second, labels


def load(
    task: str,
    split: str,
    tokenizer: Any,
    config: TextConfig | None = None,
    data_dir: str | None = None,
) -> ArrayDataset:
    """One GLUE split as a fixed-shape ``ArrayDataset``.

    Args:
      task: ``"sst2"``, ``"qnli"``, ``"qqp"`` or ``"mnli"``.
      split: e.g. ``"train"``, ``"validation"``; MNLI uses ``"validation_matched"`` /
        ``"validation_mismatched"``. Test splits are unlabeled (``label == -1``).
      tokenizer: dpjax tokenizer object.
      config: format (``"prompt"`` | ``"head"``), max length, cache dir.
      data_dir: prepared TFDS data (default ``$TFDS_DATA_DIR``).

    Raises:
      DatasetNotPreparedError: at once, with the ``tfds build`` command, if not prepared.
    """
    if task not in GLUE_TASKS:
        raise ValueError(f"unknown GLUE task {task!r}; choose from {sorted(GLUE_TASKS)}")
    spec = GLUE_TASKS[task]
    if split not in spec.splits:
        raise ValueError(f"GLUE {task} has splits {spec.splits}, got {split!r}")
    config = config or TextConfig()

    def build() -> ArrayDataset:
        first, second, labels = read_records(task, split, data_dir)
        return encode_texts(
            tokenizer,
            first,
            second,
            labels,
            config,
            task=task,
            num_classes=len(spec.label_names),
            label_names=spec.label_names,
        )

    key = {"dataset": f"glue/{task}", "split": split, **config.cache_key(task, tokenizer)}
    return cached(config.cache_dir, f"glue-{task}-{split}", key, build)
