"""dpjax: differentially private fine-tuning of foundation models in JAX/Flax.

Public names only; see README.md for a tour.
"""

from dpjax import accounting, optim
from dpjax.clipping import ClipInfo, ClippedGrad, clipped_grad
from dpjax.partition import all_leaves, bias_only, combine, named, partition

__version__ = "0.1.0"

__all__ = [
    "ClipInfo",
    "ClippedGrad",
    "accounting",
    "all_leaves",
    "bias_only",
    "clipped_grad",
    "combine",
    "named",
    "optim",
    "partition",
]
