"""Task builder: table-to-text generation (E2E, DART) with GPT-2 or a Llama-family decoder.

``task.builder = "dpjax.tasks.generation:build"``. Training rows are
``table <sep> text <eos>``; the loss is the next-token cross-entropy on the text and eos
tokens only (:func:`dpjax.data.losses.lm_loss`), averaged per example. The evaluation
split's rows give the ``eval/validation/loss``; the ``generation_eval`` hook decodes the
first ``generation.num_tables`` (0: all) distinct tables of ``generation.split`` (greedy, or beam
search with ``generation.num_beams > 1``) and scores BLEU and ROUGE-L (0-100) against
all references of each table.

Config keys (``task.*``): ``dataset`` (``e2e``, ``e2e_cleaned``, ``dart``),
``checkpoint_dir`` or ``model`` (+ ``model_overrides``, ``init_seed``, ``dtype``),
``tokenizer``, ``max_length``, ``max_prompt_length``, ``data_dir``, ``cache_dir``,
``mock_examples``, ``train_limit``, ``eval_limit``, and ``generation.{enabled, split,
num_tables, max_new_tokens, num_beams, length_penalty, batch_size}``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
import numpy as np

from dpjax.config_reader import cfg_get
from dpjax.data import generation_metrics, table2text
from dpjax.data.losses import lm_loss
from dpjax.models import LlamaModel, beam_search, greedy_generate
from dpjax.tasks.loading import (
    limit,
    load_model,
    load_tokenizer,
    maybe_mock_tfds,
    vocab_sizes,
)
from dpjax.training.task import Task

__all__ = ["build", "decode_texts", "decoder_for", "left_pad", "make_generation_eval"]


def left_pad(input_ids: np.ndarray, lengths: np.ndarray, pad_id: int):
    """Right-padded prompts -> left-padded ``(ids, attention_mask)`` (what decoding wants)."""
    n, width = input_ids.shape
    ids = np.full((n, width), pad_id, np.int32)
    mask = np.zeros((n, width), np.int32)
    for i, length in enumerate(np.asarray(lengths)):
        ids[i, width - length :] = input_ids[i, :length]
        mask[i, width - length :] = 1
    return ids, mask


def decode_texts(tokenizer: Any, generated: np.ndarray, eos_id: int | None) -> list[str]:
    """Generated ids ``[B, N]`` -> texts, each cut at its first ``eos_id``."""
    texts = []
    for row in np.asarray(generated):
        row = list(row)
        if eos_id is not None and eos_id in row:
            row = row[: row.index(eos_id)]
        texts.append(tokenizer.decode(row).strip())
    return texts


_ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
_MLP = ("gate_proj", "up_proj", "down_proj")


def decoder_for(model: Any, params: Any) -> tuple[Any, Any]:
    """``(model, params)`` that decode with any ``bias`` leaves merged into ``params``.

    DP-BiTFiT-Add's export (:meth:`dpjax.peft.AddedBiases.merge`) puts each added bias
    beside its layer's kernel; a bias-free Llama would ignore them. This turns on the
    Llama config's ``attention_bias`` / ``mlp_bias`` when any such layer has one and
    gives the others of that kind zero biases (the same function). Other models, and
    params without such leaves, are returned as they are.

    Raises:
      ValueError: a bias sits on a Llama layer that cannot take one (``lm_head``,
        ``score``).
    """
    if not isinstance(model, LlamaModel):
        return model, params
    c = model.config
    kinds = {"attention_bias": ("self_attn", _ATTENTION), "mlp_bias": ("mlp", _MLP)}
    for name in ("lm_head", "score"):
        if "bias" in params.get(name, {}):
            raise ValueError(f"a Llama decodes without a bias on {name!r}; do not add one there")
    turn_on = {}
    for flag, (block, names) in kinds.items():
        layers = [params[f"layers_{i}"][block] for i in range(c.num_hidden_layers)]
        if getattr(c, flag) or not any("bias" in p[n] for p in layers for n in names):
            continue
        turn_on[flag] = True
        params = dict(params)
        for i in range(c.num_hidden_layers):
            sub = dict(params[f"layers_{i}"][block])
            for n in names:
                if "bias" not in sub[n]:
                    kernel = sub[n]["kernel"]
                    sub[n] = {**sub[n], "bias": jnp.zeros(kernel.shape[-1], kernel.dtype)}
            params[f"layers_{i}"] = {**params[f"layers_{i}"], block: sub}
    if not turn_on:
        return model, params
    return model.clone(config=dataclasses.replace(c, **turn_on)), params


def make_generation_eval(model: Any, tokenizer: Any, prompts: Any, gen: Any):
    """The ``generation_eval(params, step)`` hook on the prompt rows ``prompts``; merged
    added biases in ``params`` are decoded too (:func:`decoder_for`)."""
    references = list(prompts.metadata["references"])
    ids, mask = left_pad(
        prompts.arrays["input_ids"], prompts.arrays["prompt_length"], tokenizer.pad_id
    )
    batch = int(cfg_get(gen, "batch_size", 16))
    beams = int(cfg_get(gen, "num_beams", 1))
    max_new = int(cfg_get(gen, "max_new_tokens", 64))
    eos = tokenizer.eos_id

    def generate(model_: Any, params: Any, rows: slice) -> np.ndarray:
        chunk_ids, chunk_mask = ids[rows], mask[rows]
        real = len(chunk_ids)
        if real < batch:  # fixed shapes: one compilation
            fill = batch - real
            chunk_ids = np.concatenate([chunk_ids, np.repeat(chunk_ids[:1], fill, 0)])
            chunk_mask = np.concatenate([chunk_mask, np.repeat(chunk_mask[:1], fill, 0)])
        if beams > 1:
            out, _ = beam_search(
                model_, params, chunk_ids, chunk_mask, num_beams=beams, max_new_tokens=max_new,
                eos_id=eos, pad_id=tokenizer.pad_id,
                length_penalty=float(cfg_get(gen, "length_penalty", 1.0)),
            )  # fmt: skip
        else:
            out = greedy_generate(
                model_, params, chunk_ids, chunk_mask, max_new_tokens=max_new, eos_id=eos,
                pad_id=tokenizer.pad_id,
            )  # fmt: skip
        return np.asarray(out)[:real]

    def hook(params: Any, step: int) -> dict[str, float]:
        del step
        decoder, params = decoder_for(model, params)  # once per evaluation
        outs = [generate(decoder, params, slice(s, s + batch)) for s in range(0, len(ids), batch)]
        hyps = decode_texts(tokenizer, np.concatenate(outs), eos)
        return {
            "bleu": generation_metrics.bleu(hyps, references),
            "rouge_l": generation_metrics.rouge_l(hyps, references),
        }

    return hook


def build(cfg: Any) -> Task:
    """The table-to-text :class:`~dpjax.training.task.Task` of ``cfg`` (``task.*``)."""
    tokenizer = load_tokenizer(cfg)
    dataset = cfg_get(cfg, "dataset", "e2e")
    gen = cfg_get(cfg, "generation", {})
    t2t = table2text.Table2TextConfig(
        max_length=int(cfg_get(cfg, "max_length", 100)),
        max_prompt_length=int(cfg_get(cfg, "max_prompt_length", 64)),
        cache_dir=cfg_get(cfg, "cache_dir"),
    )
    data_dir = cfg_get(cfg, "data_dir")
    gen_split = cfg_get(gen, "split", "validation")
    with maybe_mock_tfds(cfg_get(cfg, "mock_examples", 0)):
        train = table2text.load(dataset, "train", tokenizer, t2t, data_dir)
        valid = table2text.load(dataset, "validation", tokenizer, t2t, data_dir)
        prompts = table2text.load_eval(dataset, gen_split, tokenizer, t2t, data_dir)
    train = limit(train, cfg_get(cfg, "train_limit"))
    valid = limit(valid, cfg_get(cfg, "eval_limit"))
    prompts = limit(prompts, cfg_get(gen, "num_tables", 0))
    prompts = type(prompts)(
        prompts.arrays,
        None,
        {**prompts.metadata, "references": prompts.metadata["references"][: len(prompts)]},
    )
    example = train.take(np.zeros(1, np.int64))["input_ids"]
    model, params = load_model(cfg, "lm", 2, tokenizer=tokenizer, example=example)

    def loss_fn(params: Any, batch: Any) -> Any:
        out = model.apply({"params": params}, batch["input_ids"], batch["attention_mask"])
        return lm_loss(out, batch["input_ids"], batch["loss_mask"])

    def eval_fn(params: Any, batch: Any) -> dict[str, Any]:
        return {"loss": loss_fn(params, batch)}

    hook = None
    if cfg_get(gen, "enabled", True):
        hook = make_generation_eval(model, tokenizer, prompts, gen)
    return Task(
        params=params,
        loss_fn=loss_fn,
        train_data=train,
        eval_data={"validation": valid},
        eval_fn=eval_fn,
        generation_eval=hook,
        trainable_extra=None,
        vocab_sizes=vocab_sizes(model),
        model=model,
        name=f"{dataset}-gpt2",
    )
