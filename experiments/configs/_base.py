"""Shared skeleton of the experiment configs (not a config itself: no ``get_config``).

``base_config`` returns a complete trainer config (every key the trainer validates, see
``dpjax/training/settings.py``) for one method; each experiment file fills ``task`` and
the paper's hyperparameters. ``parse_arg`` splits ``"sst2,roberta-base,dp_bitfit,eps8"``
into tokens and checks them against the allowed values.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import ml_collections
from ml_collections.config_dict import placeholder

__all__ = ["base_config", "parse_arg", "smoke_sizes"]

#: Learning rates of paper 1 (DP-BiTFiT) and paper 2 (DP full fine-tuning) with DP-Adam.
LR = {"dp_bitfit": 5e-3, "dp_full": 5e-4, "nonprivate_bitfit": 5e-3, "nonprivate_full": 5e-4}


def base_config(method: str, *, name: str, task: dict[str, Any]) -> ml_collections.ConfigDict:
    """A full trainer config for ``method`` with paper-1 defaults (clip 0.1, DP-Adam,
    linear decay, Poisson sampling, PLD accounting, delta = 1/(2n))."""
    c = ml_collections.ConfigDict()
    c.name = name
    c.description = ""
    c.task = ml_collections.ConfigDict(task)
    c.method = method
    c.engine = "vmap"
    c.seed = 0
    c.batch_size = 1000
    c.physical_batch_size = 50
    c.sampler = "poisson"
    c.epochs = 3.0
    c.steps = placeholder(int)
    c.optimizer = ml_collections.ConfigDict(
        dict(name="adam", lr=LR.get(method, 5e-3), schedule="linear", warmup_steps=0, b1=0.9,
             b2=0.999, eps=1e-8, weight_decay=0.0, momentum=placeholder(float))
    )  # fmt: skip
    c.privacy = ml_collections.ConfigDict(
        dict(l2_clip=0.1, clip_fn="abadi", gamma=placeholder(float),
             noise_multiplier=placeholder(float), target_epsilon=placeholder(float),
             max_epsilon=placeholder(float), delta=placeholder(str), accountant="pld",
             noise_seed=placeholder(int), log_private_diagnostics=False,
             loss_noise_multiplier=placeholder(float), loss_clip=10.0)
    )  # fmt: skip
    if not method.startswith("nonprivate"):
        c.privacy.target_epsilon = 8.0
        c.privacy.delta = "1/(2n)"
    c.two_phase = ml_collections.ConfigDict(dict(full_epochs=1.0, full_lr=5e-4, full_engine="vmap"))
    c.mesh = ml_collections.ConfigDict(dict(data=-1, model=1, fsdp=False))
    c.eval_every = 0
    c.eval_batch_size = placeholder(int)
    c.log_every = 1
    c.checkpoint_every = 0
    c.keep_checkpoints = 2
    c.distributed = ml_collections.ConfigDict(
        dict(coordinator_address=placeholder(str), num_processes=1, process_id=0)
    )
    return c


def set_delta(c: ml_collections.ConfigDict, delta: float | str) -> None:
    """Sets ``privacy.delta`` (a number or a rule), keeping its ``str`` placeholder type
    out of the way: the field is re-created to hold a float."""
    privacy = c.privacy.to_dict()
    privacy["delta"] = delta
    c.privacy = ml_collections.ConfigDict(privacy)


def smoke_sizes(c: ml_collections.ConfigDict, *, steps: int = 2, batch: int = 16) -> None:
    """Shrinks a config to a CPU smoke run: ``steps`` logical steps of ``batch`` rows
    (physical 8, a multiple of the 8 simulated test devices), eval in batches of 8."""
    c.steps = steps
    c.batch_size = batch
    c.physical_batch_size = 8
    c.eval_batch_size = 8


def parse_arg(arg: str | None, default: str, choices: Sequence[Sequence[str]]) -> list[str]:
    """Tokens of a comma-separated variant, one per choice group (``smoke`` allowed last).

    Raises:
      ValueError: a token is unknown or a group is given twice.
    """
    tokens = [t.strip() for t in (arg or default).split(",") if t.strip()]
    picked: list[str | None] = [None] * len(choices)
    smoke = False
    for token in tokens:
        if token == "smoke":
            smoke = True
            continue
        groups = [i for i, group in enumerate(choices) if token in group]
        if not groups:
            allowed = sorted({t for g in choices for t in g} | {"smoke"})
            raise ValueError(f"unknown variant token {token!r} in {arg!r}; allowed: {allowed}")
        if picked[groups[0]] is not None:
            raise ValueError(f"variant {arg!r} gives two values for {list(choices[groups[0]])}")
        picked[groups[0]] = token
    defaults = default.split(",")
    out = [p if p is not None else defaults[i] for i, p in enumerate(picked)]
    return [*out, "smoke"] if smoke else out
