"""Toy config: a tiny MLP on synthetic, linearly separable data (CPU, seconds).

Targets no paper number: it exercises every method of the trainer (paper 1's DP-BiTFiT
and two-phase training, paper 2's DP full fine-tuning) for tests and smoke runs.

Run::

    python -m experiments.train --config=experiments/configs/toy.py:smoke --workdir=/tmp/toy
    python -m experiments.train --config=experiments/configs/toy.py:two_phase \\
        --workdir=/tmp/toy2 --config.optimizer.lr=1e-2

Variants (``toy.py:<variant>``): ``dp_full`` (default), ``dp_bitfit``, ``two_phase``,
``nonprivate_full``, ``nonprivate_bitfit``, ``smoke`` (3 DP-BiTFiT steps at sigma=1),
``dp_bitfit_add`` (DP-BiTFiT-Add: the MLP built bias-free, ``task.use_bias=False``, gets
zero-initialised biases on its Dense layers, :func:`dpjax.peft.add_biases`).
The DP variants calibrate sigma to epsilon=8 at delta=1/(2n) over 2 epochs (32 steps).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

import dpjax
from dpjax.data.arrays import ArrayDataset
from dpjax.tasks.classification import classification_task
from dpjax.training.schema import default_config
from dpjax.training.task import Task

VARIANTS = ("dp_full", "dp_bitfit", "two_phase", "nonprivate_full", "nonprivate_bitfit", "smoke",
            "dp_bitfit_add")  # fmt: skip


class ToyMLP(nn.Module):
    """Dense -> tanh -> LayerNorm -> Dense head (biases everywhere, or nowhere)."""

    hidden: int = 16
    classes: int = 2
    use_bias: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b = self.use_bias
        x = jnp.tanh(nn.Dense(self.hidden, use_bias=b, name="dense1")(x))
        x = nn.LayerNorm(use_bias=b, name="norm")(x)
        return nn.Dense(self.classes, use_bias=b, name="head")(x)


def _synthetic(n: int, dim: int, classes: int, seed: int) -> ArrayDataset:
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(1234).normal(0.0, 2.0, (classes, dim))
    y = rng.integers(0, classes, n)
    x = centers[y] + rng.normal(0.0, 1.0, (n, dim))
    return ArrayDataset({"x": x.astype(np.float32), "y": y.astype(np.int32)}, classes)


def build_task(cfg: ml_collections.ConfigDict) -> Task:
    """The toy task: MLP params (seeded), per-example cross-entropy, train/test splits."""
    model = ToyMLP(cfg.hidden, cfg.classes, use_bias=cfg.get("use_bias", True))
    train = _synthetic(cfg.num_train, cfg.dim, cfg.classes, cfg.data_seed)
    test = _synthetic(cfg.num_test, cfg.dim, cfg.classes, cfg.data_seed + 1)
    params = model.init(jax.random.key(cfg.init_seed), jnp.zeros((1, cfg.dim)))["params"]

    def logits(params, batch):
        return model.apply({"params": params}, batch["x"])

    return classification_task(
        logits,
        params=params,
        train=train,
        test=test,
        label="y",
        trainable_extra=dpjax.named("head"),
        name="toy",
    )


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Toy config; ``arg`` picks a variant (see the module docstring)."""
    variant = arg or "dp_full"
    if variant not in VARIANTS:
        raise ValueError(f"unknown toy variant {variant!r}; choose from {VARIANTS}")
    c = default_config()
    c.name = f"toy-{variant}"
    c.task = ml_collections.ConfigDict(
        dict(
            builder="experiments.configs.toy:build_task",
            num_train=1024,
            num_test=256,
            dim=8,
            hidden=16,
            classes=2,
            data_seed=0,
            init_seed=0,
        )
    )
    c.method = "dp_bitfit" if variant == "smoke" else variant
    if variant == "dp_bitfit_add":
        c.task.use_bias = False
    c.batch_size = 64
    c.physical_batch_size = 32
    c.epochs = 2.0
    c.optimizer.lr = 5e-3 if "bitfit" in variant or variant in ("two_phase", "smoke") else 5e-4
    if not variant.startswith("nonprivate"):
        c.privacy.target_epsilon = 8.0
        c.privacy.delta = "1/(2n)"
    c.eval_batch_size = 64
    c.log_every = 4
    if variant == "smoke":  # seconds: fixed sigma (no calibration), 3 steps
        c.steps = 3
        c.log_every = 1
        c.privacy.target_epsilon = None
        c.privacy.noise_multiplier = 1.0
    return c
