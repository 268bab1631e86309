"""Shared helpers of the experiment configs (not a config itself: no ``get_config``).

``base_config`` returns a complete trainer config for one method: the schema of
``dpjax.training.schema.default_config`` (every key the trainer validates) with the
papers' defaults; each experiment file fills ``task`` (``task_config`` adds the keys
every task builder shares) and its hyperparameters. ``parse_arg`` splits
``"sst2,roberta-base,dp_bitfit,eps8"`` into tokens and checks them against the allowed
values.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import ml_collections
from ml_collections.config_dict import placeholder

from dpjax.training.schema import default_config

__all__ = ["base_config", "parse_arg", "set_epsilon", "smoke_run", "smoke_sizes", "task_config"]

#: Learning rates of paper 1 (DP-BiTFiT) and paper 2 (DP full fine-tuning) with DP-Adam.
LR = {"dp_bitfit": 5e-3, "dp_full": 5e-4, "nonprivate_bitfit": 5e-3, "nonprivate_full": 5e-4}


def base_config(method: str, *, name: str, task: dict[str, Any]) -> ml_collections.ConfigDict:
    """A full trainer config for ``method`` with paper-1 defaults (clip 0.1, DP-Adam,
    linear decay, Poisson sampling, PLD accounting, epsilon 8, delta = 1/(2n))."""
    c = default_config()
    c.name = name
    c.task = ml_collections.ConfigDict(task)
    c.method = method
    c.batch_size = 1000
    c.physical_batch_size = 50
    c.epochs = 3.0
    c.optimizer.lr = LR.get(method, 5e-3)
    if not method.startswith("nonprivate"):
        c.privacy.target_epsilon = 8.0
        c.privacy.delta = "1/(2n)"
    return c


def task_config(builder: str, dataset: str, **keys: Any) -> dict[str, Any]:
    """A task section for ``builder`` on ``dataset``: ``keys`` plus the keys every
    TFDS-backed builder reads (no model override, default data and cache folders, no mock
    records, init seed 0, float32, no split limits)."""
    return dict(
        builder=builder,
        dataset=dataset,
        model=placeholder(str),
        data_dir=placeholder(str),
        cache_dir=placeholder(str),
        mock_examples=0,
        init_seed=0,
        dtype="float32",
        train_limit=0,
        eval_limit=0,
        **keys,
    )


def set_epsilon(c: ml_collections.ConfigDict, eps: str, delta: float | None = None) -> None:
    """A private config's target epsilon from an ``"eps8"`` token (and ``delta`` when
    given, else the base rule); non-private configs are left alone."""
    if c.privacy.target_epsilon is not None:
        c.privacy.target_epsilon = float(eps[3:])
        if delta is not None:
            c.privacy.delta = delta


def smoke_sizes(c: ml_collections.ConfigDict, *, steps: int = 2, batch: int = 16) -> None:
    """Shrinks a config to a CPU smoke run: ``steps`` logical steps of ``batch`` rows
    (physical 8, a multiple of the 8 simulated test devices), eval in batches of 8."""
    c.steps = steps
    c.batch_size = batch
    c.physical_batch_size = 8
    c.eval_batch_size = 8


def smoke_run(c: ml_collections.ConfigDict, model: str, **task: Any) -> None:
    """Turns a paper config into its smoke variant: a random ``model`` (no checkpoint), 24
    TFDS mock records, the ``task`` keys given, and :func:`smoke_sizes`."""
    c.name += "-smoke"
    c.task.checkpoint_dir = None
    c.task.model = model
    c.task.mock_examples = 24
    for key, value in task.items():  # replaced, not merged (``update`` merges sections)
        c.task[key] = value
    smoke_sizes(c)


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
