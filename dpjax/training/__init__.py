"""One trainer for every method: DP full, DP-BiTFiT, two-phase and non-private baselines.

Names load on first use, so an experiment config that imports
``dpjax.training.schema`` does not import the trainer (orbax, TensorBoard, the tasks).

``training.train(config, workdir)`` trains; the trainer guide of the docs runs it on the
config of this example.

Example:
    >>> from dpjax import training
    >>> from experiments.configs import toy
    >>> training.TrainSettings.from_config(toy.get_config("smoke")).method  # validated
    'dp_bitfit'
"""

import importlib
from typing import Any

_WHERE = {
    "METHODS": "dpjax.training.settings",
    "CheckpointError": "dpjax.training.checkpoint",
    "Checkpointer": "dpjax.training.checkpoint",
    "ConfigError": "dpjax.training.settings",
    "Dataset": "dpjax.training.task",
    "Phase": "dpjax.training.plan",
    "RunPlan": "dpjax.training.plan",
    "Task": "dpjax.training.task",
    "TrainSettings": "dpjax.training.settings",
    "TrainState": "dpjax.train_state",
    "Trainer": "dpjax.training.loop",
    "build_task": "dpjax.training.task",
    "fingerprint": "dpjax.training.checkpoint",
    "init_state": "dpjax.train_state",
    "make_plan": "dpjax.training.plan",
    "make_sampler": "dpjax.training.plan",
    "train": "dpjax.training.loop",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'dpjax.training' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
