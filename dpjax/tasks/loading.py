"""Shared pieces of the task builders: tokenizers, models (checkpoint or random), limits.

A task config names its model in one of two ways:

* ``checkpoint_dir``: a Hugging Face folder (``config.json`` + ``model.safetensors``,
  plus the tokenizer files for text) loaded with :func:`dpjax.models.from_pretrained`,
  or a Llama-family ``.gguf`` file (weights dequantised, tokenizer from its metadata)
  loaded with :func:`dpjax.models.from_gguf`; this is what real runs use.
* ``model``: a named configuration of :data:`dpjax.models.CONFIGS` with random weights
  (``init_seed``), for smoke runs and tests. Text models get the tokenizer's vocabulary
  size so any real tokenizer fits a tiny random encoder.

Example:
    >>> from dpjax.tasks.loading import package_dir
    >>> package_dir("json").name
    'json'
"""

from __future__ import annotations

import contextlib
import importlib.util
import pathlib
from collections.abc import Iterator
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dpjax import models
from dpjax.config_reader import cfg_get
from dpjax.data import tokenizers

__all__ = [
    "DTYPES",
    "limit",
    "load_model",
    "load_tokenizer",
    "maybe_mock_tfds",
    "package_dir",
    "resolve_path",
    "roberta_like_tokenizer",
]

#: Model dtypes by config name.
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def package_dir(name: str) -> pathlib.Path:
    """Folder of an installed package, located without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {name!r} is not installed")
    return pathlib.Path(spec.submodule_search_locations[0])


def resolve_path(spec: str | None) -> str | None:
    """``"pkg:<package>/<relative path>"`` -> a path inside an installed package; other
    strings are returned unchanged (lets configs name offline assets portably)."""
    if spec is None or not str(spec).startswith("pkg:"):
        return spec
    package, _, rest = str(spec)[4:].partition("/")
    return str(package_dir(package) / rest)


ROBERTA_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")


def roberta_like_tokenizer(gpt2_dir: str) -> tokenizers.Tokenizer:
    """GPT-2's byte-level BPE (``vocab.json`` + ``merges.txt`` in ``gpt2_dir``) with
    RoBERTa's special tokens appended (ids from the end of GPT-2's vocabulary): a
    RoBERTa-style tokenizer for smoke runs of random RoBERTa models (the real RoBERTa
    vocabulary is not offline). Built in memory; nothing is written to disk."""
    from tokenizers import models as bpe_models

    source = pathlib.Path(gpt2_dir)
    vocab, merges = bpe_models.BPE.read_file(str(source / "vocab.json"), str(source / "merges.txt"))
    for token in ROBERTA_SPECIALS:
        vocab.setdefault(token, len(vocab))
    return tokenizers.from_bpe(vocab, merges, kind="roberta")


def load_tokenizer(cfg: Any) -> tokenizers.Tokenizer:
    """Tokenizer from ``tokenizer`` (folder or ``.tiktoken`` file; ``pkg:`` paths allowed;
    ``roberta-like:<gpt2 folder>`` adds RoBERTa's specials to GPT-2's BPE, see
    :func:`roberta_like_tokenizer`), else from ``checkpoint_dir`` (a ``.gguf`` file gives
    the tokenizer in its metadata); ``tokenizer_kind`` forces bert/roberta/gpt2."""
    spec = cfg_get(cfg, "tokenizer")
    if spec is not None and str(spec).startswith("roberta-like:"):
        return roberta_like_tokenizer(resolve_path(str(spec)[len("roberta-like:") :]))
    where = resolve_path(spec) or resolve_path(cfg_get(cfg, "checkpoint_dir"))
    if where is None:
        raise ValueError("task config needs task.tokenizer or task.checkpoint_dir")
    if str(where).endswith(".gguf"):  # the tokenizer stored in a GGUF file's metadata
        return tokenizers.from_gguf(where)
    return tokenizers.from_pretrained(where, kind=cfg_get(cfg, "tokenizer_kind"))


def _text_overrides(name: str, tokenizer: Any) -> dict[str, Any]:
    if tokenizer is None:
        return {}
    config = models.get_config(name)
    if isinstance(config, models.BertConfig):
        # pad_token_id stays: RoBERTa offsets its position ids by it, so a large
        # tokenizer pad id would index past the position table.
        return {"vocab_size": tokenizer.vocab_size}
    if isinstance(config, (models.GPT2Config, models.LlamaConfig)):
        return {
            "vocab_size": tokenizer.vocab_size,
            "bos_token_id": tokenizer.bos_id,
            "eos_token_id": tokenizer.eos_id,
        }
    return {}


def load_model(
    cfg: Any,
    head: str | None,
    num_labels: int,
    *,
    tokenizer: Any = None,
    example: Any = None,
) -> tuple[nn.Module, Any]:
    """``(module, params)`` from ``cfg.checkpoint_dir`` or the random ``cfg.model``.

    Args:
      cfg: the task config (``checkpoint_dir`` | ``model``, ``model_overrides``,
        ``init_seed``, ``dtype``).
      head: model head (``None``, ``"mlm"``, ``"lm"``, ``"classification"``).
      num_labels: classes of a classification head.
      tokenizer: fits a random text model's vocabulary to it.
      example: a model input used to initialise random weights.
    """
    dtype = DTYPES[cfg_get(cfg, "dtype", "float32")]
    overrides = dict(cfg_get(cfg, "model_overrides", {}))
    seed = int(cfg_get(cfg, "init_seed", 0))
    checkpoint = resolve_path(cfg_get(cfg, "checkpoint_dir"))
    if checkpoint is not None and str(checkpoint).endswith(".gguf"):  # Llama family
        return models.from_gguf(checkpoint, head, num_labels=num_labels, dtype=dtype, rng=seed,
                                **overrides)  # fmt: skip
    if checkpoint is not None:
        return models.from_pretrained(
            checkpoint, head, num_labels=num_labels, dtype=dtype, rng=seed, **overrides
        )
    name = cfg_get(cfg, "model")
    if name is None:
        raise ValueError("task config needs task.checkpoint_dir (real runs) or task.model")
    config = models.get_config(name, **{**_text_overrides(name, tokenizer), **overrides})
    module = models.create_model(config, head, num_labels, dtype)
    if example is None:
        example = models.configs.dummy_inputs(config)
    params = module.init(jax.random.key(seed), jnp.asarray(example))["params"]
    return module, params


def vocab_sizes(module: Any, field: str = "input_ids") -> dict[str, int]:
    """``{field: V}`` for :attr:`dpjax.training.Task.vocab_sizes` from a text model's config
    (``module.config.vocab_size``, or its ``encoder``'s); empty when it has none."""
    for owner in (module, getattr(module, "encoder", None)):
        size = getattr(getattr(owner, "config", None), "vocab_size", None)
        if isinstance(size, int):
            return {field: size}
    return {}


def limit(dataset: Any, count: int | None) -> Any:
    """The first ``count`` rows of an ``ArrayDataset`` (all rows when ``count`` is falsy)."""
    if not count or count >= len(dataset):
        return dataset
    return dataset.subset(np.arange(int(count)))


@contextlib.contextmanager
def maybe_mock_tfds(num_examples: int | None) -> Iterator[None]:
    """``tfds.testing.mock_data(num_examples=...)`` when ``num_examples`` > 0, else nothing.

    Smoke configs set ``task.mock_examples`` so they run without prepared TFDS data:
    the records have the real schema and random values.
    """
    if not num_examples:
        yield
        return
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=int(num_examples)):
        yield
