"""DART table-to-text with GPT-2: DP full fine-tuning (paper 2) and DP-BiTFiT (paper 1).

Li et al.'s setting: DP-Adam, clip 0.1, logical batch 1024, lr 5e-4 (DP full; DP-BiTFiT
5e-3), 15 epochs, max length 120, delta = 1e-5, linear decay; the loss covers the text
tokens only. The ``generation_eval`` hook beam-decodes (5 beams, 80 new tokens) every
test tripleset and reports BLEU and ROUGE-L against all its references.

Real runs need ``tfds build gem/dart --file_format=array_record
--data_dir=$TFDS_DATA_DIR`` (once, with network) and a Hugging Face GPT-2 folder in
``task.checkpoint_dir`` (default ``checkpoints/<model>``). Smoke variants use TFDS mock
records, a random ``gpt2-tiny`` and GPT-2's BPE ranks.

Run::

    python -m experiments.train --config=experiments/configs/dart.py:gpt2-medium,dp_full,eps8 \\
        --workdir=/tmp/dart --config.task.checkpoint_dir=/data/gpt2-medium
    python -m experiments.train --config=experiments/configs/dart.py:smoke --workdir=/tmp/s

Variants (``dart.py:<model>,<method>,<eps>``) and paper targets (test BLEU; "-" = no
number recorded in PAPERS.md; paper 2 reports DART for the GPT-2 family):

    - ``gpt2,dp_full,eps3``: -
    - ``gpt2,dp_full,eps8``: -
    - ``gpt2,dp_bitfit,eps3``: -
    - ``gpt2,dp_bitfit,eps8``: -
    - ``gpt2-medium,dp_full,eps3``: -
    - ``gpt2-medium,dp_full,eps8``: -
    - ``gpt2-medium,dp_bitfit,eps3``: -
    - ``gpt2-medium,dp_bitfit,eps8``: -
    - ``gpt2-large,dp_full,eps3``: -
    - ``gpt2-large,dp_full,eps8``: -
    - ``gpt2-large,dp_bitfit,eps3``: -
    - ``gpt2-large,dp_bitfit,eps8``: -
    - ``gpt2,dp_lora,eps3``: -
    - ``gpt2,dp_lora,eps8``: -
    - ``gpt2-medium,dp_lora,eps3``: -
    - ``gpt2-medium,dp_lora,eps8``: -
    - ``gpt2-large,dp_lora,eps3``: -
    - ``gpt2-large,dp_lora,eps8``: -
    - ``smoke``: 2 DP full (ghost) steps, random gpt2-tiny, mock data, greedy BLEU on 4
      tables (no target)

DP-LoRA rows (``dp_lora``; also ``dp_bitfit_lora``, ``nonprivate_lora``): LoRA rank 4,
alpha 8 on the fused attention projection ``c_attn`` (``dpjax.peft``) at the DP full
rows' rate, otherwise the setting above; no number measured or recorded yet.

Llama rows:

    - ``smollm2,dp_full,eps3``: -
    - ``smollm2,dp_full,eps8``: -
    - ``smollm2,dp_bitfit_add,eps3``: -
    - ``smollm2,dp_bitfit_add,eps8``: -
    - ``smollm2,dp_lora,eps3``: -
    - ``smollm2,dp_lora,eps8``: -
    - ``smollm2,smoke``: 2 DP full steps of a random ``llama-tiny`` (no target)
    - ``smollm2,dp_bitfit_add,smoke``: the same with DP-BiTFiT-Add (the generation hook
      decodes with the added biases merged)

The Llama rows are E2E's (``e2e.py``) on DART: SmolLM2-135M-Instruct from its GGUF file,
DP-BiTFiT-Add for its missing biases, DP-LoRA on ``q_proj`` / ``v_proj``::

    python -m experiments.train --config=experiments/configs/dart.py:smollm2,dp_lora,eps8 \\
        --workdir=/tmp/dart_smollm2
"""

from __future__ import annotations

import ml_collections

from experiments.configs._generation import (
    LLAMA_VARIANTS,
    LORA_VARIANTS,
    PAPER_VARIANTS,
    table2text_config,
)

VARIANTS = (
    *PAPER_VARIANTS,
    *LORA_VARIANTS,
    *LLAMA_VARIANTS,
    "smoke",
)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The DART config of ``arg`` (see the module docstring)."""
    return table2text_config(
        "dart", arg, delta=1e-5, full_lr=5e-4, epochs=15.0, max_length=120, max_new_tokens=80
    )
