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
import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

import jax

from dpjax.config_reader import cfg_get
from dpjax.mechanism import MicroStats
from dpjax.randomness import RunSecrets
from dpjax.training.optimizer import make_schedule
from dpjax.training.sharding import to_host

__all__ = [
    "PRIVATE_DIAGNOSTICS_WARNING",
    "log_row",
    "metrics_row",
    "postfix",
    "redact_config",
    "results",
]

log = logging.getLogger(__name__)

#: The warning a run logs when it writes diagnostics of the private batches.
PRIVATE_DIAGNOSTICS_WARNING = (
    "privacy.log_private_diagnostics=True: the per-step loss, pre-clip gradient norms, "
    "clipped fraction and batch size of the PRIVATE batches are written to metrics.jsonl "
    "and TensorBoard. They are NOT covered by the reported epsilon: do not publish them."
)


def redact_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``config`` with a user-supplied ``privacy.noise_seed`` replaced by a note."""
    out = copy.deepcopy(dict(config))
    if cfg_get(out.get("privacy"), "noise_seed") is not None:
        privacy = dict(out["privacy"])
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


def log_row(
    plan: Any,
    settings: Any,
    secrets: RunSecrets | None,
    stats: MicroStats,
    ledger: Any,
    done: int,
    phase: int,
    epsilon: float | None = None,
) -> dict[str, float]:
    """The ``train/*`` row after step ``done``: public values, the released loss if any.

    ``epsilon`` is the ledger's epsilon when the caller has it already (the trainer's
    :class:`~dpjax.training.epsilon_curve.EpsilonCurve`); otherwise it is computed.
    """
    p = plan.phases[phase]
    lr = make_schedule(settings.optimizer, p.lr, p.steps)(max(done - 1 - p.start, 0))
    released = None
    if plan.releases_loss(done):
        clip, sigma = settings.privacy.loss_clip, plan.loss_noise_multiplier
        noise = secrets.numpy_rng(f"loss/{done}").standard_normal() * sigma * clip
        released = (float(to_host(stats.clipped_loss_sum)) + noise) / plan.expected_batch_size
    return metrics_row(
        stats,
        private=plan.private,
        log_private=settings.privacy.log_private_diagnostics,
        epsilon=plan.epsilon(ledger) if epsilon is None else epsilon,
        lr=float(lr),
        phase=phase,
        released_loss=released,
    )


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


def results(
    plan: Any,
    settings: Any,
    secrets: RunSecrets | None,
    ledger: Any,
    *,
    steps: int,
    stopped: str | None,
    evals: Mapping[str, float],
    wall: float,
    mesh_shape: Mapping[str, int],
    config: Mapping[str, Any],
) -> dict[str, Any]:
    """The content of ``results.json`` (what :meth:`Trainer.run` returns)."""
    privacy: dict[str, Any] = {}
    if plan.private:
        privacy["noise_seed"] = secrets.describe()
        if plan.loss_noise_multiplier is not None:
            privacy["loss_release"] = {
                "noise_multiplier": plan.loss_noise_multiplier,
                "loss_clip": settings.privacy.loss_clip,
                "log_every": plan.log_every,
            }
    return {
        "method": settings.method,
        "private": plan.private,
        "epsilon": plan.epsilon(ledger),
        "delta": plan.delta,
        "noise_multiplier": plan.noise_multiplier,
        **privacy,
        "accountant": plan.accountant,
        "sampling": plan.sampling,
        "expected_batch_size": plan.expected_batch_size,
        "steps": steps,
        "planned_steps": plan.total_steps,
        "stopped_early": stopped,
        "phases": [
            {"name": p.name, "start": p.start, "stop": p.stop, "engine": p.engine, "lr": p.lr}
            for p in plan.phases
        ],
        "ledger": ledger.to_dict(),
        "prior_privacy": [dataclasses.asdict(seg) for seg in plan.prior],
        "eval": dict(evals),
        "wall_time_s": wall,
        "devices": {"mesh": dict(mesh_shape), "processes": jax.process_count()},
        "config": redact_config(config),
    }
