"""Hugging Face tensor names for dpjax parameter paths, per architecture.

The dpjax module trees mirror Hugging Face's, so most names follow one rule:

* join the path with ``.``; a list entry ``layer_3`` / ``h_3`` / ``stages_1`` /
  ``layers_0`` becomes ``layer.3`` / ``h.3`` / ``stages.1`` / ``layers.0``;
* leaf ``kernel`` / ``scale`` / ``embedding`` -> ``weight``; ``bias`` and raw params
  (ViT ``cls_token``, ``position_embeddings``) keep their name;
* tensors: a Dense ``kernel`` ``[in, out]`` is HF's Linear ``weight.T`` ``[out, in]``
  (``"linear"``), except GPT-2's Conv1D modules (``c_attn``, ``c_proj``, ``c_fc``),
  stored ``[in, out]`` already (``"copy"``); a Conv ``kernel`` HWIO is HF's OIHW
  (``"conv"``);
* body modules get the base-model prefix in checkpoints of models with a head
  (``bert.``, ``roberta.``, ``transformer.``, ``model.``, ``vit.``, ``resnet.``); loading
  accepts both the prefixed and the bare form.

Head renames (dpjax path -> HF name):

===========  =======================  ============================================
model_type   dpjax                    Hugging Face
===========  =======================  ============================================
bert         mlm_head/dense           cls.predictions.transform.dense
bert         mlm_head/layer_norm      cls.predictions.transform.LayerNorm
bert         mlm_head/output/bias     cls.predictions.bias
bert         classifier               classifier            (after pooler.dense)
roberta      mlm_head/*               lm_head.{dense, layer_norm, bias}
roberta      classifier/*             classifier.{dense, out_proj}
llama        lm_head                  lm_head               (untied embeddings only)
llama        score                    score                 (sequence classification)
vit          classifier               classifier
resnet       classifier               classifier.1          (HF: Flatten, Linear)
===========  =======================  ============================================

Ignorable checkpoint tensors (present but not used; reported, never an error):

* always: buffers (``embeddings.position_ids``, GPT-2 ``attn.bias`` / ``attn.masked_bias``,
  BatchNorm ``running_mean`` / ``running_var`` / ``num_batches_tracked``) and the tied
  decoder copies (``cls.predictions.decoder.*``, ``lm_head.decoder.*``, GPT-2
  ``lm_head.weight``);
* BERT's next-sentence head ``cls.seq_relationship.*``; Llama's rotary buffers
  ``*.rotary_emb.inv_freq``;
* heads the model was not built with: ``pooler.*``, the masked-LM head, ``classifier.*``.

ResNet: Hugging Face's BatchNorm ``weight`` / ``bias`` load into GroupNorm ``scale`` /
``bias`` (same shapes, a different normalisation: fine-tune before use).
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

__all__ = ["NameMap", "get_name_map"]

_LIST = re.compile(r"^(layer|h|stages|layers)_(\d+)$")
_LEAF = {"kernel": "weight", "scale": "weight", "embedding": "weight"}


@dataclasses.dataclass(frozen=True)
class NameMap:
    """How one architecture's parameters are named in Hugging Face checkpoints.

    Attributes:
      prefix: base-model prefix used by HF models with a head.
      head_modules: top-level dpjax modules that are heads (no base-model prefix).
      renames: ``(dpjax dotted prefix, HF dotted prefix)`` pairs for head modules.
      conv1d: module names whose 2-D kernels are stored ``[in, out]`` (no transpose).
      always_ignorable: regexes of HF names that are never used.
      head_patterns: per built head, regexes of HF names that head consumes; the other
        heads' patterns are ignorable.
    """

    prefix: str
    head_modules: frozenset[str] = frozenset({"classifier"})
    renames: tuple[tuple[str, str], ...] = ()
    conv1d: frozenset[str] = frozenset()
    always_ignorable: tuple[str, ...] = ()
    head_patterns: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def to_hf(self, path: tuple[str, ...], ndim: int) -> tuple[str, str]:
        """``(HF name without prefix, transform)`` for a dpjax leaf path."""
        parts = [_LIST.sub(r"\1.\2", p) for p in path[:-1]]
        leaf = path[-1]
        parts.append(_LEAF.get(leaf, leaf))
        name = ".".join(parts)
        for ours, theirs in self.renames:
            if name == ours or name.startswith(ours + "."):
                name = theirs + name[len(ours) :]
                break
        if leaf == "kernel" and ndim == 4:
            return name, "conv"
        if leaf == "kernel" and ndim == 2 and path[-2] not in self.conv1d:
            return name, "linear"
        return name, "copy"

    def ignorable(self, hf_name: str, heads_built: frozenset[str]) -> bool:
        """Whether an unused checkpoint tensor may be skipped (see the module docstring)."""
        patterns = list(self.always_ignorable)
        for head, pats in self.head_patterns:
            if head not in heads_built:
                patterns.extend(pats)
        return any(re.fullmatch(p, hf_name) for p in patterns)


def to_hf_tensor(x: np.ndarray, transform: str) -> np.ndarray:
    """dpjax layout -> HF layout."""
    if transform == "linear":
        return np.ascontiguousarray(x.T)
    if transform == "conv":
        return np.ascontiguousarray(np.transpose(x, (3, 2, 0, 1)))
    return np.ascontiguousarray(x)


def from_hf_tensor(x: np.ndarray, transform: str) -> np.ndarray:
    """HF layout -> dpjax layout."""
    if transform == "linear":
        return x.T
    if transform == "conv":
        return np.transpose(x, (2, 3, 1, 0))
    return x


_BERT_HEADS = (
    ("pooler", (r"pooler\..*",)),
    ("mlm", (r"cls\.predictions\..*", r"lm_head\..*")),
    ("classification", (r"classifier\..*",)),
)
_BERT_ALWAYS = (
    r"embeddings\.position_ids",
    r"cls\.predictions\.decoder\.(weight|bias)",
    r"lm_head\.decoder\.(weight|bias)",
    r"cls\.seq_relationship\..*",
)
_BERT_HEAD_MODULES = frozenset({"mlm_head", "classifier"})

_MAPS = {
    "bert": NameMap(
        prefix="bert",
        head_modules=_BERT_HEAD_MODULES,
        renames=(
            ("mlm_head.dense", "cls.predictions.transform.dense"),
            ("mlm_head.layer_norm", "cls.predictions.transform.LayerNorm"),
            ("mlm_head.output.bias", "cls.predictions.bias"),
        ),
        always_ignorable=_BERT_ALWAYS,
        head_patterns=_BERT_HEADS,
    ),
    "roberta": NameMap(
        prefix="roberta",
        head_modules=_BERT_HEAD_MODULES,
        renames=(
            ("mlm_head.output.bias", "lm_head.bias"),
            ("mlm_head", "lm_head"),
        ),
        always_ignorable=_BERT_ALWAYS,
        head_patterns=_BERT_HEADS,
    ),
    "gpt2": NameMap(
        prefix="transformer",
        head_modules=frozenset(),
        conv1d=frozenset({"c_attn", "c_proj", "c_fc"}),
        always_ignorable=(r"h\.\d+\.attn\.(bias|masked_bias)", r"lm_head\.weight"),
        head_patterns=(("classification", (r"score\..*",)),),
    ),
    "llama": NameMap(
        prefix="model",
        head_modules=frozenset({"lm_head", "score"}),
        always_ignorable=(r"(layers\.\d+\.self_attn\.)?rotary_emb\.inv_freq",),
        head_patterns=(("lm", (r"lm_head\..*",)), ("classification", (r"score\..*",))),
    ),
    "vit": NameMap(
        prefix="vit",
        head_patterns=(
            ("pooler", (r"pooler\..*",)),
            ("classification", (r"classifier\..*",)),
        ),
    ),
    "resnet": NameMap(
        prefix="resnet",
        renames=(("classifier", "classifier.1"),),
        always_ignorable=(r".*\.normalization\.(running_mean|running_var|num_batches_tracked)",),
        head_patterns=(("classification", (r"classifier\..*",)),),
    ),
}


def get_name_map(model_type: str) -> NameMap:
    """The :class:`NameMap` for a Hugging Face ``model_type``."""
    if model_type not in _MAPS:
        raise ValueError(f"no name map for model_type {model_type!r}; known: {sorted(_MAPS)}")
    return _MAPS[model_type]
