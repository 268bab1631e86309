"""Table-to-text (E2E, DART) for GPT-2: ``<table> <sep> <text> <eos>`` at a fixed length.

Tables are linearised to text (``"name : The Eagle | eatType : coffee shop"`` for E2E
meaning representations, ``"s p o | s p o"`` for DART triples). Training rows are
``table ids + [sep] + ids(" " + text) + [eos]`` padded to ``max_length``, with
``loss_mask`` 1 exactly on the text tokens and the eos (what ``losses.lm_loss`` scores).
Tables longer than ``max_length // 2`` tokens are cut; the text is cut to fit; the eos
is always kept. Evaluation rows hold the prompt only (``table + [sep]``, right-padded,
``prompt_length`` [N]) with every table's references grouped in ``metadata``.

Datasets: ``"e2e"`` (TFDS ``gem/e2e_nlg``), ``"e2e_cleaned"`` and ``"dart"``
(``gem/dart``); splits ``train``, ``validation``, ``test``.

Example:
    >>> linearize_mr("name[The Eagle], eatType[coffee shop]")
    'name : The Eagle | eatType : coffee shop'
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import numpy as np

from dpjax.data import tfds_source
from dpjax.data.arrays import ArrayDataset, cached
from dpjax.data.prompts import special_frame
from dpjax.data.text_encoding import tokenizer_fingerprint

__all__ = [
    "DATASETS",
    "Table2TextConfig",
    "encode_eval",
    "encode_train",
    "group_references",
    "linearize_mr",
    "load",
    "load_eval",
    "read_pairs",
]

#: Table-to-text sets: dpjax name -> TFDS name.
DATASETS = {"e2e": "gem/e2e_nlg", "e2e_cleaned": "e2e_cleaned", "dart": "gem/dart"}
_MR_SLOT = re.compile(r"\s*([^\[\],]+?)\s*\[(.*?)\]")


@dataclasses.dataclass(frozen=True)
class Table2TextConfig:
    """Lengths and caching.

    Attributes:
      max_length: tokens per training row (Li et al.: 100 for E2E, 120 for DART).
      max_prompt_length: tokens per evaluation prompt (table + separator).
      cache_dir: where encoded splits are cached as ``.npz`` (None: memory only).
    """

    max_length: int = 100
    max_prompt_length: int = 64
    cache_dir: str | None = None

    def __post_init__(self):
        for name in ("max_length", "max_prompt_length"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 4:
                raise ValueError(f"{name} must be an int >= 4, got {value!r}")


def linearize_mr(mr: str) -> str:
    """E2E meaning representation ``"k[v], k2[v2]"`` -> ``"k : v | k2 : v2"``."""
    slots = _MR_SLOT.findall(mr)
    if not slots:
        return mr.strip()
    return " | ".join(f"{k.strip()} : {v.strip()}" for k, v in slots)


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _table(dataset: str, record: dict[str, Any]) -> str:
    if dataset == "e2e":
        return linearize_mr(_text(record["meaning_representation"]))
    if dataset == "dart":
        return " | ".join(_text(t) for t in record["tripleset"])
    table = record["input_text"]["table"]
    pairs = zip(table["column_header"], table["content"], strict=False)
    return " | ".join(f"{_text(h)} : {_text(c)}" for h, c in pairs)


def read_pairs(dataset: str, split: str, data_dir: str | None = None):
    """(tables, targets, reference lists) of every record of one split."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown table-to-text dataset {dataset!r}; choose from {list(DATASETS)}")
    source = tfds_source.open_split(DATASETS[dataset], split, data_dir)
    records = tfds_source.read_all(source)
    tables = [_table(dataset, r) for r in records]
    key = "target_text" if dataset == "e2e_cleaned" else "target"
    targets = [_text(r[key]) for r in records]
    refs = [[_text(x) for x in r.get("references", [])] for r in records]
    return tables, targets, refs


def _ids(tokenizer: Any, texts: list[str], frame) -> list[list[int]]:
    pre, post = frame
    out = []
    for text in texts:
        ids = list(tokenizer.encode(text))
        out.append(ids[len(pre) : len(ids) - len(post)] if post else ids[len(pre) :])
    return out


def _sep_eos(tokenizer: Any) -> tuple[int, int]:
    sep = tokenizer.bos_id if tokenizer.bos_id is not None else tokenizer.sep_id
    if sep is None or tokenizer.eos_id is None:
        raise ValueError("table-to-text needs a tokenizer with bos (or sep) and eos ids")
    return sep, tokenizer.eos_id


def encode_train(tokenizer: Any, tables: list[str], targets: list[str], max_length: int):
    """``input_ids``, ``attention_mask``, ``loss_mask`` int32 [N, max_length]."""
    sep, eos = _sep_eos(tokenizer)
    frame = special_frame(tokenizer)
    table_ids = _ids(tokenizer, tables, frame)
    text_ids = _ids(tokenizer, [" " + t for t in targets], frame)
    n = len(tables)
    out = {k: np.zeros((n, max_length), np.int32) for k in ("attention_mask", "loss_mask")}
    out["input_ids"] = np.full((n, max_length), tokenizer.pad_id, np.int32)
    for i, (a, b) in enumerate(zip(table_ids, text_ids, strict=True)):
        a = a[: max(max_length // 2, max_length - 2 - len(b))]
        b = b[: max_length - 2 - len(a)]
        row = [*a, sep, *b, eos]
        out["input_ids"][i, : len(row)] = row
        out["attention_mask"][i, : len(row)] = 1
        out["loss_mask"][i, len(a) + 1 : len(row)] = 1
    return out


def group_references(tables: list[str], targets: list[str], refs: list[list[str]]):
    """Unique tables (first-seen order) and all distinct references of each."""
    groups: dict[str, list[str]] = {}
    for table, target, extra in zip(tables, targets, refs, strict=True):
        bucket = groups.setdefault(table, [])
        for ref in extra or [target]:
            if ref and ref not in bucket:
                bucket.append(ref)
    return list(groups), list(groups.values())


def encode_eval(tokenizer: Any, tables: list[str], max_prompt_length: int):
    """Prompt-only rows: ``input_ids``, ``attention_mask``, ``prompt_length``."""
    sep, _ = _sep_eos(tokenizer)
    n = len(tables)
    ids = np.full((n, max_prompt_length), tokenizer.pad_id, np.int32)
    att = np.zeros((n, max_prompt_length), np.int32)
    length = np.zeros((n,), np.int32)
    for i, a in enumerate(_ids(tokenizer, tables, special_frame(tokenizer))):
        row = [*a[: max_prompt_length - 1], sep]
        ids[i, : len(row)], att[i, : len(row)], length[i] = row, 1, len(row)
    return {"input_ids": ids, "attention_mask": att, "prompt_length": length}


def _key(dataset, split, tokenizer, config, kind):
    return {
        "dataset": DATASETS.get(dataset, dataset),
        "split": split,
        "kind": kind,
        "config": [config.max_length, config.max_prompt_length],
        "tokenizer": tokenizer_fingerprint(tokenizer),
    }


def load(
    dataset: str,
    split: str,
    tokenizer: Any,
    config: Table2TextConfig | None = None,
    data_dir: str | None = None,
) -> ArrayDataset:
    """Training rows of one split (one row per table/reference pair).

    Raises:
      DatasetNotPreparedError: at once, with the ``tfds build`` command, if not prepared.
    """
    config = config or Table2TextConfig()

    def build() -> ArrayDataset:
        tables, targets, _ = read_pairs(dataset, split, data_dir)
        arrays = encode_train(tokenizer, tables, targets, config.max_length)
        return ArrayDataset(arrays, None, {"dataset": dataset, "split": split})

    key = _key(dataset, split, tokenizer, config, "train")
    return cached(config.cache_dir, f"{dataset}-{split}-train", key, build)


def load_eval(
    dataset: str,
    split: str,
    tokenizer: Any,
    config: Table2TextConfig | None = None,
    data_dir: str | None = None,
) -> ArrayDataset:
    """One row per distinct table; ``metadata["references"][i]`` lists row i's references
    and ``metadata["tables"][i]`` its linearised table."""
    config = config or Table2TextConfig()

    def build() -> ArrayDataset:
        tables, targets, refs = read_pairs(dataset, split, data_dir)
        unique, grouped = group_references(tables, targets, refs)
        arrays = encode_eval(tokenizer, unique, config.max_prompt_length)
        meta = {"dataset": dataset, "split": split, "tables": unique, "references": grouped}
        return ArrayDataset(arrays, None, meta)

    key = _key(dataset, split, tokenizer, config, "eval")
    return cached(config.cache_dir, f"{dataset}-{split}-eval", key, build)
