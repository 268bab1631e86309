"""Prompt templates for classification as text infilling (LM-BFF style, Li et al. 2022).

A template is a string with sentence slots ``{s1}``/``{s2}`` and exactly one ``{mask}``;
the masked LM predicts a *label word* at the mask. Whitespace right before a placeholder
belongs to that placeholder: a slot after a space is encoded as ``" " + text`` and label
words after a space as ``" great"``, so byte-level BPE (RoBERTa) gets its ``Ġgreat`` token
while WordPiece (BERT) ignores the space. Pieces are encoded separately and only the
sentence slots are truncated (longest first) to fit ``max_length``: the template and the
mask always survive.

Example:
    >>> t = Template("{s1} It was {mask}.", ("terrible", "great"))
    >>> [kind for kind, _, _ in t.parts()], t.mask_has_space
    (['slot', 'text', 'mask', 'text'], True)
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["DEFAULT_TEMPLATES", "Template", "encode_prompts", "label_word_ids", "special_frame"]

_PLACEHOLDER = re.compile(r"\{(s1|s2|mask)\}")


@dataclasses.dataclass(frozen=True)
class Template:
    """A prompt: text with ``{s1}``, optional ``{s2}``, one ``{mask}``, and label words.

    Attributes:
      text: the template, e.g. ``"{s1}? {mask}, {s2}"``.
      label_words: one word per class, in label order (each must be a single token).
    """

    text: str
    label_words: tuple[str, ...]

    def __post_init__(self):
        names = _PLACEHOLDER.findall(self.text)
        if names.count("mask") != 1:
            raise ValueError(f"template must contain exactly one {{mask}}, got {self.text!r}")
        if "s1" not in names or any(names.count(s) > 1 for s in ("s1", "s2")):
            raise ValueError(f"template needs {{s1}} once (and {{s2}} at most once): {self.text!r}")
        stray = re.sub(_PLACEHOLDER, "", self.text)
        if "{" in stray or "}" in stray:
            raise ValueError(f"unknown placeholder in template {self.text!r}; use s1, s2, mask")
        words = tuple(self.label_words)
        if len(words) < 2 or any(not w.strip() for w in words) or len(set(words)) != len(words):
            raise ValueError(f"need >= 2 distinct non-empty label words, got {words!r}")
        object.__setattr__(self, "label_words", words)

    @property
    def num_slots(self) -> int:
        return 2 if "{s2}" in self.text else 1

    def parts(self) -> list[tuple[str, str, bool]]:
        """``(kind, value, space_before)`` pieces; kind is 'text', 'slot' or 'mask'."""
        pieces: list[tuple[str, str, bool]] = []
        pos = 0
        for match in _PLACEHOLDER.finditer(self.text):
            literal = self.text[pos : match.start()]
            space = literal[-1:].isspace()
            literal = literal.rstrip()
            if literal:
                pieces.append(("text", literal, False))
            kind = "mask" if match.group(1) == "mask" else "slot"
            pieces.append((kind, match.group(1), space))
            pos = match.end()
        if self.text[pos:].rstrip():
            pieces.append(("text", self.text[pos:].rstrip(), False))
        return pieces

    @property
    def mask_has_space(self) -> bool:
        return next(space for kind, _, space in self.parts() if kind == "mask")


#: Default templates per task, label words in the label order of each dataset.
DEFAULT_TEMPLATES: dict[str, Template] = {
    "sst2": Template("{s1} It was {mask}.", ("terrible", "great")),
    "rotten_tomatoes": Template("{s1} It was {mask}.", ("terrible", "great")),
    "qnli": Template("{s1}? {mask}, {s2}", ("Yes", "No")),  # entailment, not_entailment
    "qqp": Template("{s1} {mask}, {s2}", ("No", "Yes")),  # not_duplicate, duplicate
    "mnli": Template("{s1}? {mask}, {s2}", ("Yes", "Maybe", "No")),  # ent., neutral, contr.
    "sms_spam": Template("{s1} This message is {mask}.", ("fine", "junk")),  # ham, spam
    "trec": Template(
        "{s1} Answer: {mask}.",
        ("Description", "Entity", "Expression", "Human", "Number", "Location"),
    ),
}


def special_frame(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The special ids ``encode`` puts before and after a text, e.g. ([CLS], [SEP])."""
    empty = list(tokenizer.encode(""))
    probe = list(tokenizer.encode("a"))
    n = 0
    while n < len(empty) and n < len(probe) and empty[n] == probe[n]:
        n += 1
    return empty[:n], empty[n:]


def _strip(ids: Sequence[int], frame: tuple[list[int], list[int]]) -> list[int]:
    pre, post = frame
    ids = list(ids)
    return ids[len(pre) : len(ids) - len(post)] if post else ids[len(pre) :]


def label_word_ids(tokenizer: Any, template: Template) -> np.ndarray:
    """Token id of each label word (with a leading space when the mask follows one)."""
    frame = special_frame(tokenizer)
    out = []
    for word in template.label_words:
        text = (" " + word) if template.mask_has_space else word
        ids = _strip(tokenizer.encode(text), frame)
        if len(ids) != 1:
            raise ValueError(
                f"label word {text!r} is {len(ids)} tokens {ids} for this tokenizer; "
                "choose label words that are single tokens"
            )
        out.append(ids[0])
    if len(set(out)) != len(out):
        raise ValueError(f"label words {template.label_words} map to repeated ids {out}")
    return np.asarray(out, np.int32)


def _encode_slot(tokenizer: Any, texts: Sequence[str], space: bool, limit: int, frame) -> list:
    texts = [(" " + t if space else t) for t in texts]
    enc = tokenizer.encode_batch(list(texts), max_length=limit + len(frame[0]) + len(frame[1]))
    ids, lengths = np.asarray(enc["input_ids"]), np.asarray(enc["attention_mask"]).sum(-1)
    return [_strip(row[:n], frame) for row, n in zip(ids, lengths, strict=True)]


def _fit(lengths: list[int], budget: int) -> list[int]:
    """Longest-first truncation of one or two slot lengths to a total of ``budget``."""
    if sum(lengths) <= budget:
        return lengths
    if len(lengths) == 1:
        return [budget]
    a, b = lengths
    keep_a = min(a, max(budget - b, budget // 2))
    return [keep_a, min(b, budget - keep_a)]


def encode_prompts(
    tokenizer: Any,
    template: Template,
    first: Sequence[str],
    second: Sequence[str] | None,
    max_length: int,
    *,
    causal: bool = False,
) -> dict[str, np.ndarray]:
    """Tokenises every example into the template at a fixed length.

    Args:
      tokenizer: dpjax tokenizer (``encode``, ``encode_batch``, ``mask_id``, ``pad_id``).
      template: the prompt.
      first, second: sentence texts for ``{s1}`` and ``{s2}`` (``second`` None for one slot).
      max_length: output length L, special tokens included.
      causal: for a decoder, which reads the label word as the *next* token: the template
        must end with ``{mask}``, whose position holds ``tokenizer.pad_id`` (no mask token
        is needed; causal attention keeps it out of every earlier position).

    Returns:
      ``input_ids`` int32 [N, L], ``attention_mask`` int32 [N, L] and ``mask_position``
      int32 [N] (the one position holding ``tokenizer.mask_id``, or the pad placeholder
      with ``causal``).
    """
    if causal and template.parts()[-1][0] != "mask":
        raise ValueError(
            f"a causal prompt reads the label word as the next token: template {template.text!r} "
            "must end with {mask}"
        )
    mask_id = tokenizer.pad_id if causal else tokenizer.mask_id
    if mask_id is None:
        raise ValueError(
            "prompt format needs a tokenizer with a mask token (mask_id is None); "
            "a decoder uses format='causal'"
        )
    if (second is None) != (template.num_slots == 1):
        raise ValueError(f"template {template.text!r} needs {template.num_slots} text field(s)")
    frame = special_frame(tokenizer)
    parts = template.parts()
    fixed = {
        i: _strip(tokenizer.encode(v), frame) for i, (k, v, _) in enumerate(parts) if k == "text"
    }
    fixed_len = len(frame[0]) + len(frame[1]) + 1 + sum(len(v) for v in fixed.values())
    budget = max_length - fixed_len
    if budget < template.num_slots:
        raise ValueError(f"max_length={max_length} leaves no room for text in {template.text!r}")
    columns = {"s1": first} if second is None else {"s1": first, "s2": second}
    slot_ids = {
        name: _encode_slot(tokenizer, texts, space, budget, frame)
        for kind, name, space in parts
        if kind == "slot"
        for texts in [columns[name]]
    }
    n = len(first)
    input_ids = np.full((n, max_length), tokenizer.pad_id, np.int32)
    attention = np.zeros((n, max_length), np.int32)
    mask_position = np.zeros((n,), np.int32)
    names = [name for kind, name, _ in parts if kind == "slot"]
    for row in range(n):
        keep = dict(zip(names, _fit([len(slot_ids[s][row]) for s in names], budget), strict=True))
        ids = list(frame[0])
        for i, (kind, name, _) in enumerate(parts):
            if kind == "text":
                ids += fixed[i]
            elif kind == "mask":
                mask_position[row] = len(ids)
                ids.append(mask_id)
            else:
                ids += slot_ids[name][row][: keep[name]]
        ids += frame[1]
        input_ids[row, : len(ids)] = ids
        attention[row, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention, "mask_position": mask_position}
