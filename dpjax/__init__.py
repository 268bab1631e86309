"""dpjax: differentially private fine-tuning of foundation models in JAX/Flax.

Public names only; see README.md for a tour. Submodules ``accounting``, ``audit``,
``data``, ``models``, ``peft`` and ``training`` load on first use, so ``import dpjax``
stays light (no dp_accounting or TensorFlow Datasets import until they are needed).
"""

import importlib
from typing import Any

from dpjax import optim
from dpjax.check import EngineMismatchError, check_engine
from dpjax.clipping import ClipInfo, ClippedGrad, clipped_grad
from dpjax.mechanism import Mechanism, MicroStats
from dpjax.partition import all_leaves, bias_only, combine, named, partition
from dpjax.randomness import secret_key

__version__ = "0.1.0"

_LAZY = ("accounting", "audit", "data", "models", "peft", "training")

__all__ = [
    "ClipInfo",
    "ClippedGrad",
    "EngineMismatchError",
    "Mechanism",
    "MicroStats",
    "accounting",
    "all_leaves",
    "audit",
    "bias_only",
    "check_engine",
    "clipped_grad",
    "combine",
    "data",
    "models",
    "named",
    "optim",
    "partition",
    "peft",
    "secret_key",
    "training",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(f"dpjax.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'dpjax' has no attribute {name!r}")
