"""Benchmark workloads: a model, its per-example loss, a batch and the BiTFiT trainable set.

Models come from :mod:`dpjax.models` (standard linen layers, random init):

* ``bert-base`` (any BERT/RoBERTa config name): sequence classification, 2 labels, CE on
  the pooled first token. Position embeddings grow to ``T`` when ``T`` exceeds them.
* ``gpt2`` (any GPT-2 config name): next-token LM loss with the tied head, mean over
  positions per example.
* ``vit-base`` (= ``vit-base-patch16-224``; any ViT config name): classification, 100
  labels; the fresh ``classifier`` head is trainable in BiTFiT. ``T`` is ignored (the
  image fixes it: 197 tokens at 224^2).
* ``smollm2-135m``, ``llama-1b`` (any Llama config name): next-token LM loss like GPT-2's
  (tied embeddings). Bias-free: its BiTFiT trainable set is empty, so the BiTFiT variants
  use DP-BiTFiT-Add (:func:`dpjax.peft.add_biases`, see :mod:`benchmarks.variants`).
* ``mlp``: a 2-layer MLP (784 -> 512 -> 10), the small model of the foundation section.

Every workload can be built abstractly (``jax.ShapeDtypeStruct`` leaves: compile-only
measurements, no memory used) or concretely (random values: timing runs).

Example:
    >>> w = make_workload("bert-tiny", batch=2, seq_len=8, concrete=True)
    >>> w.loss_fn(w.params, w.batch).shape
    (2,)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import dpjax
from dpjax.data.losses import cross_entropy
from dpjax.partition import Predicate

__all__ = ["ALIASES", "Workload", "make_workload", "tokens_of"]

ALIASES = {"vit-base": "vit-base-patch16-224", "vit-large": "vit-large-patch16-224"}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

LossFn = Callable[[Any, Any], jax.Array]


@dataclasses.dataclass(frozen=True)
class Workload:
    """One model shape at one batch size and sequence length.

    Attributes:
      name: model name as given (``bert-base``, ``gpt2``, ``vit-base``, ``mlp``...).
      kind: ``"bert"``, ``"gpt2"``, ``"vit"`` or ``"mlp"``.
      batch_size: ``B``.
      tokens: positions per example (``T``; patches + 1 for ViT, 1 for the MLP).
      loss_fn: ``loss_fn(params, batch) -> [B]``.
      params: the parameter tree (abstract or concrete).
      batch: the batch dict (abstract or concrete), with a ``mask``.
      bitfit_trainable: predicate of the BiTFiT trainable set (biases, plus a fresh head).
    """

    name: str
    kind: str
    batch_size: int
    tokens: int
    loss_fn: LossFn
    params: Any
    batch: dict[str, Any]
    bitfit_trainable: Predicate


class MLP(nn.Module):
    """Two dense layers with a ReLU: the small model of the foundation section."""

    hidden: int = 512
    classes: int = 10
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.relu(nn.Dense(self.hidden, dtype=self.dtype, name="dense_0")(x))
        return nn.Dense(self.classes, dtype=self.dtype, name="dense_1")(x)


def _kind(config: Any) -> str:
    from dpjax.models import BertConfig, GPT2Config, LlamaConfig, ViTConfig

    kinds = ((BertConfig, "bert"), (GPT2Config, "gpt2"), (LlamaConfig, "llama"), (ViTConfig, "vit"))
    for cls, kind in kinds:
        if isinstance(config, cls):
            return kind
    raise ValueError(f"no benchmark workload for config type {type(config).__name__}")


def _build(name: str, seq_len: int, batch: int, dtype: Any) -> tuple[str, nn.Module, dict, LossFn]:
    """(kind, module, batch shapes as ShapeDtypeStructs, loss_fn)."""
    i32 = jnp.int32
    if name == "mlp":
        model = MLP(dtype=dtype)
        shapes = {
            "x": jax.ShapeDtypeStruct((batch, 784), jnp.float32),
            "label": jax.ShapeDtypeStruct((batch,), i32),
        }

        def mlp_loss(params: Any, b: dict) -> jax.Array:
            return cross_entropy(model.apply({"params": params}, b["x"]), b["label"])

        return "mlp", model, shapes, mlp_loss

    from dpjax import models

    config = models.get_config(ALIASES.get(name, name))
    kind = _kind(config)
    if kind == "bert":
        if seq_len > config.max_position_embeddings:
            config = dataclasses.replace(config, max_position_embeddings=seq_len)
        model = models.create_model(config, head="classification", num_labels=2, dtype=dtype)
        shapes = {
            "input_ids": jax.ShapeDtypeStruct((batch, seq_len), i32),
            "label": jax.ShapeDtypeStruct((batch,), i32),
        }

        def bert_loss(params: Any, b: dict) -> jax.Array:
            logits = model.apply({"params": params}, b["input_ids"])
            return cross_entropy(logits, b["label"])

        return kind, model, shapes, bert_loss
    if kind in ("gpt2", "llama"):
        if kind == "gpt2" and seq_len > config.n_positions:
            config = dataclasses.replace(config, n_positions=seq_len)
        if kind == "llama" and seq_len > config.max_position_embeddings:
            config = dataclasses.replace(config, max_position_embeddings=seq_len)
        model = models.create_model(config, head="lm", dtype=dtype)
        shapes = {"input_ids": jax.ShapeDtypeStruct((batch, seq_len), i32)}

        def lm_loss(params: Any, b: dict) -> jax.Array:
            ids = b["input_ids"]
            logits = model.apply({"params": params}, ids)
            return jnp.mean(cross_entropy(logits[:, :-1], ids[:, 1:]), axis=-1)

        return kind, model, shapes, lm_loss
    model = models.create_model(config, head="classification", num_labels=100, dtype=dtype)
    size, ch = config.image_size, config.num_channels
    shapes = {
        "pixel_values": jax.ShapeDtypeStruct((batch, size, size, ch), jnp.float32),
        "label": jax.ShapeDtypeStruct((batch,), i32),
    }

    def vit_loss(params: Any, b: dict) -> jax.Array:
        logits = model.apply({"params": params}, b["pixel_values"])
        return cross_entropy(logits, b["label"])

    return kind, model, shapes, vit_loss


def tokens_of(kind: str, seq_len: int, name: str = "") -> int:
    """Positions per example the workload really has."""
    if kind == "vit":
        from dpjax import models

        config = models.get_config(ALIASES.get(name, name))
        return config.num_patches + 1
    return 1 if kind == "mlp" else seq_len


def _random_batch(shapes: dict, vocab: int, classes: int, seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {}
    for key, s in shapes.items():
        if key == "label":
            out[key] = jnp.asarray(rng.integers(0, classes, s.shape), s.dtype)
        elif key == "input_ids":
            out[key] = jnp.asarray(rng.integers(0, vocab, s.shape), s.dtype)
        else:
            out[key] = jnp.asarray(rng.standard_normal(s.shape), s.dtype)
    return out


def _random_params(abstract: Any, seed: int) -> Any:
    """Random parameters from numpy (no XLA compile: ``jit(init)`` of BERT-base takes minutes
    on a GPU): ``N(0, 0.02)`` everywhere, ones for norm scales, zeros for biases."""
    rng = np.random.default_rng(seed)

    def leaf(path: Any, s: jax.ShapeDtypeStruct) -> jax.Array:
        name = str(getattr(path[-1], "key", path[-1]))
        if name == "scale":
            return jnp.ones(s.shape, s.dtype)
        if name == "bias":
            return jnp.zeros(s.shape, s.dtype)
        return jnp.asarray(0.02 * rng.standard_normal(s.shape, np.float32), s.dtype)

    return jax.tree_util.tree_map_with_path(leaf, abstract)


def make_workload(
    name: str,
    batch: int,
    seq_len: int = 128,
    dtype: str = "float32",
    concrete: bool = False,
    seed: int = 0,
) -> Workload:
    """Builds the workload ``name`` at batch ``batch`` and length ``seq_len``.

    Args:
      name: ``mlp`` or a :func:`dpjax.models.get_config` name (or an alias in ``ALIASES``).
      batch: batch size ``B``.
      seq_len: tokens per example for text models (ignored by ViT and the MLP).
      dtype: compute dtype, ``"float32"`` or ``"bfloat16"`` (parameters stay float32).
      concrete: random parameters and inputs instead of abstract shapes.
      seed: init / data seed for concrete workloads.
    """
    kind, model, shapes, loss_fn = _build(name, seq_len, batch, DTYPES[dtype])
    shapes["mask"] = jax.ShapeDtypeStruct((batch,), jnp.bool_)
    model_inputs = [v for k, v in shapes.items() if k not in ("label", "mask")]
    dummy = [jnp.zeros((1,) + s.shape[1:], s.dtype) for s in model_inputs]

    def init() -> Any:
        return model.init(jax.random.key(seed), *dummy)["params"]

    if concrete:
        params = _random_params(jax.eval_shape(init), seed)
        vocab = getattr(getattr(model, "config", None), "vocab_size", 2)
        classes = getattr(model, "num_labels", getattr(model, "classes", 2))
        b = _random_batch({k: v for k, v in shapes.items() if k != "mask"}, vocab, classes, seed)
        b["mask"] = jnp.ones((batch,), bool)
    else:
        params = jax.eval_shape(init)
        b = dict(shapes)
    trainable = dpjax.named("classifier", base=dpjax.bias_only) if kind == "vit" else None
    trainable = trainable or dpjax.bias_only
    return Workload(
        name=name,
        kind=kind,
        batch_size=batch,
        tokens=tokens_of(kind, seq_len, name),
        loss_fn=loss_fn,
        params=params,
        batch=b,
        bitfit_trainable=trainable,
    )
