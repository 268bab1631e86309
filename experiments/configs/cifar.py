"""CIFAR-10 / CIFAR-100 with a pretrained ViT: DP-BiTFiT (+ new head) vs DP full (paper 1).

Images are resized to 224 and scaled to [-1, 1]; the ``classifier`` is new (trained with
the biases by DP-BiTFiT). Hyperparameters: paper 1's defaults (DP-Adam, clip 0.1, logical
batch 1000, 3 epochs, lr 5e-3 DP-BiTFiT / 5e-4 DP full with ghost clipping, linear
decay), delta = 1e-5, epsilon in {1, 2, 8}. Test accuracy.

Real runs need the data prepared once, with network::

    tfds build cifar10 --file_format=array_record --data_dir=$TFDS_DATA_DIR   # or cifar100

and a Hugging Face ViT folder (``config.json`` + ``model.safetensors``) in
``task.checkpoint_dir``, default ``checkpoints/vit-base-patch16-224`` /
``checkpoints/vit-large-patch16-224`` (e.g. from ``google/vit-large-patch16-224-in21k``).
Smoke variants use TFDS mock records and a random ``vit-tiny`` at 32 pixels.

Run::

    python -m experiments.train \\
        --config=experiments/configs/cifar.py:cifar10,vit-large,dp_bitfit,eps2 \\
        --workdir=/tmp/cifar --config.task.checkpoint_dir=/data/vit-large
    python -m experiments.train --config=experiments/configs/cifar.py:cifar100,smoke \\
        --workdir=/tmp/s

Variants (``cifar.py:<dataset>,<model>,<method>,<eps>``) and paper targets (test
accuracy, %; "-" = no number recorded in PAPERS.md):

    - ``cifar10,vit-base,dp_bitfit,eps1``: -
    - ``cifar10,vit-base,dp_bitfit,eps2``: -
    - ``cifar10,vit-base,dp_bitfit,eps8``: -
    - ``cifar10,vit-base,dp_full,eps1``: -
    - ``cifar10,vit-base,dp_full,eps2``: -
    - ``cifar10,vit-base,dp_full,eps8``: -
    - ``cifar10,vit-large,dp_bitfit,eps1``: -
    - ``cifar10,vit-large,dp_bitfit,eps2``: 99.0 (paper 1)
    - ``cifar10,vit-large,dp_bitfit,eps8``: -
    - ``cifar10,vit-large,dp_full,eps1``: -
    - ``cifar10,vit-large,dp_full,eps2``: -
    - ``cifar10,vit-large,dp_full,eps8``: -
    - ``cifar100,vit-base,dp_bitfit,eps1``: -
    - ``cifar100,vit-base,dp_bitfit,eps2``: -
    - ``cifar100,vit-base,dp_bitfit,eps8``: -
    - ``cifar100,vit-base,dp_full,eps1``: -
    - ``cifar100,vit-base,dp_full,eps2``: -
    - ``cifar100,vit-base,dp_full,eps8``: -
    - ``cifar100,vit-large,dp_bitfit,eps1``: -
    - ``cifar100,vit-large,dp_bitfit,eps2``: 91.2 (paper 1)
    - ``cifar100,vit-large,dp_bitfit,eps8``: -
    - ``cifar100,vit-large,dp_full,eps1``: -
    - ``cifar100,vit-large,dp_full,eps2``: - (paper 1 quotes BEiT-large DP full: 88.7)
    - ``cifar100,vit-large,dp_full,eps8``: -
    - ``cifar10,smoke``: 2 DP-BiTFiT steps, random vit-tiny, mock data (no target)
    - ``cifar100,dp_full,smoke``: 2 DP full (ghost) steps, 100 classes
"""

from __future__ import annotations

import ml_collections

from experiments.configs._base import base_config, parse_arg, set_epsilon, smoke_run, task_config

DATASETS = ("cifar10", "cifar100")
MODELS = ("vit-base", "vit-large")
METHODS = ("dp_bitfit", "dp_full", "nonprivate_bitfit", "nonprivate_full")
EPSILONS = ("eps1", "eps2", "eps8")
DEFAULT = "cifar10,vit-base,dp_bitfit,eps2"
VARIANTS = tuple(
    f"{d},{m},{meth},{e}" for d in DATASETS for m in MODELS for meth in METHODS[:2]
    for e in EPSILONS
) + ("cifar10,smoke", "cifar100,dp_full,smoke")  # fmt: skip


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The CIFAR config of ``arg`` (see the module docstring)."""
    dataset, model, method, eps, *smoke = parse_arg(
        arg, DEFAULT, (DATASETS, MODELS, METHODS, EPSILONS)
    )
    task = task_config(
        "dpjax.tasks.image_classification:build",
        dataset,
        checkpoint_dir=f"checkpoints/{model}-patch16-224",
        model_overrides={},
        resolution=224,
        normalize="minus_one_one",
    )
    c = base_config(method, name=f"{dataset}-{model}-{method}-{eps}", task=task)
    c.description = f"{dataset}, {model}, {method}, epsilon {eps[3:]}"
    c.engine = "ghost"
    c.physical_batch_size = 25
    c.eval_batch_size = 100
    c.log_every = 10
    set_epsilon(c, eps, delta=1e-5)
    if smoke:
        smoke_run(c, "vit-tiny", resolution=32)
    return c
