"""What a run writes where others can read it: the diagnostics policy and ``results.json``.

A private run releases its parameters and what its ledger accounts, nothing else
computed from the private data:

* **Metrics** (``metrics.jsonl``, TensorBoard, the progress bar): the step, epsilon, the
  learning rate and the phase -- public quantities. The statistics of the private batch
  (mean loss, pre-clip norms, clipped fraction, the exact Poisson batch size) are written
  only when the user opts in with ``privacy.log_private_diagnostics=True``, with a
  warning that epsilon does not cover them. A loss curve can instead be *released* as a
  mechanism (``privacy.loss_noise_multiplier``): the clipped per-example losses summed
  with Gaussian noise, accounted in epsilon (``train/loss_dp``).
* **results.json**: epsilon, delta, sigma, the ledger and the plan; the noise seed is
  never written -- ``"noise_seed"`` says ``"secret (OS entropy)"`` or
  ``"user-supplied (not secret)"``, and the config's ``privacy.noise_seed`` is replaced
  by the latter.

Non-private runs write every statistic.

Example:
    >>> cfg = {"privacy": {"noise_seed": 7, "l2_clip": 0.1}, "seed": 0}
    >>> redact_config(cfg)["privacy"]["noise_seed"]
    'user-supplied (not secret)'
    >>> cfg["privacy"]["noise_seed"]  # the input is not modified
    7
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from typing import Any

from dpjax.randomness import RunSecrets
from dpjax.training.step import MicroStats

__all__ = ["PRIVATE_DIAGNOSTICS_WARNING", "metrics_row", "postfix", "redact_config"]

log = logging.getLogger(__name__)

PRIVATE_DIAGNOSTICS_WARNING = (
    "privacy.log_private_diagnostics=True: the per-step loss, pre-clip gradient norms, "
    "clipped fraction and batch size of the PRIVATE batches are written to metrics.jsonl "
    "and TensorBoard. They are NOT covered by the reported epsilon: do not publish them."
)


def redact_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``config`` with a user-supplied ``privacy.noise_seed`` replaced by a note."""
    out = copy.deepcopy(dict(config))
    privacy = out.get("privacy")
    if isinstance(privacy, Mapping) and privacy.get("noise_seed") is not None:
        privacy = dict(privacy)
        privacy["noise_seed"] = RunSecrets(0, user_supplied=True).describe()
        out["privacy"] = privacy
    return out


def metrics_row(
    stats: MicroStats,
    *,
    private: bool,
    log_private: bool,
    epsilon: float | None,
    lr: float,
    phase: int,
    released_loss: float | None,
) -> dict[str, float]:
    """The ``train/*`` record of one logged step under the diagnostics policy."""
    row = {
        "train/epsilon": epsilon if epsilon is not None else float("nan"),
        "train/lr": float(lr),
        "train/phase": phase,
    }
    if not private or log_private:
        row.update({f"train/{k}": v for k, v in stats.summary().items()})
    if released_loss is not None:
        row["train/loss_dp"] = released_loss
    return row


def postfix(row: Mapping[str, float], private: bool) -> dict[str, str]:
    """The progress bar's postfix: public values only in private runs."""
    out = {}
    if "train/loss" in row and not private:
        out["loss"] = f"{row['train/loss']:.4f}"
    if "train/loss_dp" in row:
        out["loss_dp"] = f"{row['train/loss_dp']:.4f}"
    eps = row.get("train/epsilon")
    out["eps"] = "-" if eps is None or eps != eps else f"{eps:.3f}"
    return out
