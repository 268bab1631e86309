"""One trainer for every method: DP full, DP-BiTFiT, two-phase and non-private baselines.

Example:
    >>> from dpjax import training
    >>> from experiments.configs import toy  # doctest: +SKIP
    >>> results = training.train(toy.get_config("smoke"), "runs/toy")  # doctest: +SKIP
"""

from dpjax.train_state import TrainState, init_state
from dpjax.training.checkpoint import Checkpointer, CheckpointError, fingerprint
from dpjax.training.loop import Trainer, make_sampler, train
from dpjax.training.plan import Phase, RunPlan, make_plan
from dpjax.training.settings import METHODS, ConfigError, TrainSettings
from dpjax.training.task import Dataset, Task, build_task

__all__ = [
    "METHODS",
    "CheckpointError",
    "Checkpointer",
    "ConfigError",
    "Dataset",
    "Phase",
    "RunPlan",
    "Task",
    "TrainSettings",
    "TrainState",
    "Trainer",
    "build_task",
    "fingerprint",
    "init_state",
    "make_plan",
    "make_sampler",
    "train",
]
