"""CelebA with ResNet-18 (GroupNorm): DP-BiTFiT-Add vs DP full fine-tuning (paper 1).

"DP-BiTFiT-Add": ResNet's convolutions have no bias, so ``conv_bias=True`` adds
zero-initialised ones (the pretrained function is unchanged at step 0) and DP-BiTFiT
trains them with the GroupNorm shifts and the new ``classifier``. Labels: one attribute
(``smiling``, ``male``: binary) or all 40 (``multi``: multi-label, sigmoid loss, accuracy
averaged over attributes). Hyperparameters: paper 1's defaults (DP-Adam, clip 0.1, logical
batch 1000, 3 epochs, lr 5e-3 / 5e-4, linear decay), delta = 1e-5, epsilon 3 or 8; images
resized to 224.

Real runs need ``tfds build celeb_a --file_format=array_record --data_dir=$TFDS_DATA_DIR``
(once, with network; CelebA's manual-download rules apply) and a Hugging Face ResNet-18
folder in ``task.checkpoint_dir`` (default ``checkpoints/resnet-18``); its BatchNorm
affine parameters load into GroupNorm(32) (the running statistics are not used: batch
norm mixes examples, which per-example DP forbids). Smoke variants use TFDS mock records
and a random ``resnet-tiny`` at 32 pixels.

Run::

    python -m experiments.train --config=experiments/configs/celeba.py:smiling,dp_bitfit_add,eps8 \\
        --workdir=/tmp/celeba --config.task.checkpoint_dir=/data/resnet-18
    python -m experiments.train --config=experiments/configs/celeba.py:multi,smoke --workdir=/tmp/s

Variants (``celeba.py:<labels>,<method>,<eps>``) and paper targets (test accuracy, %;
"-" = no number recorded in PAPERS.md):

    - ``smiling,dp_bitfit_add,eps3``: -
    - ``smiling,dp_bitfit_add,eps8``: -
    - ``smiling,dp_full,eps3``: -
    - ``smiling,dp_full,eps8``: -
    - ``male,dp_bitfit_add,eps3``: -
    - ``male,dp_bitfit_add,eps8``: -
    - ``male,dp_full,eps3``: -
    - ``male,dp_full,eps8``: -
    - ``multi,dp_bitfit_add,eps3``: -
    - ``multi,dp_bitfit_add,eps8``: -
    - ``multi,dp_full,eps3``: -
    - ``multi,dp_full,eps8``: -
    - ``smiling,smoke``: 2 DP-BiTFiT-Add steps, random resnet-tiny, mock data (no target)
    - ``multi,smoke``: the same with 40 attributes (multi-label loss)
"""

from __future__ import annotations

import ml_collections
from ml_collections.config_dict import placeholder

from experiments.configs._base import base_config, parse_arg, set_epsilon, smoke_run, task_config

LABELS = {"smiling": "Smiling", "male": "Male", "multi": None}
METHODS = ("dp_bitfit_add", "dp_full", "nonprivate_bitfit_add", "nonprivate_full")
EPSILONS = ("eps3", "eps8")
DEFAULT = "smiling,dp_bitfit_add,eps8"
VARIANTS = tuple(f"{lab},{m},{e}" for lab in LABELS for m in METHODS[:2] for e in EPSILONS) + (
    "smiling,smoke",
    "multi,smoke",
)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The CelebA config of ``arg`` (see the module docstring)."""
    labels, method, eps, *smoke = parse_arg(arg, DEFAULT, (tuple(LABELS), METHODS, EPSILONS))
    add = method.endswith("_add")
    task = task_config(
        "dpjax.tasks.image_classification:build",
        "celeb_a",
        attribute=LABELS[labels] if LABELS[labels] else placeholder(str),
        checkpoint_dir="checkpoints/resnet-18",
        model_overrides={"conv_bias": add, "num_groups": 32},
        resolution=224,
        normalize="imagenet",
    )
    trainer_method = method.removesuffix("_add")
    c = base_config(trainer_method, name=f"celeba-{labels}-{method}-{eps}", task=task)
    c.description = f"CelebA {labels}, ResNet-18, {method}, epsilon {eps[3:]}"
    c.engine = "ghost"
    c.eval_batch_size = 100
    c.log_every = 10
    set_epsilon(c, eps, delta=1e-5)
    if smoke:
        smoke_run(c, "resnet-tiny", model_overrides={"conv_bias": add}, resolution=32)
    return c
