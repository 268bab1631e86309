"""Audits of a configured run: the trainer's own micro-step, accumulation and privatizer.

:func:`replay_trainer` replays logical step ``step`` of a :class:`dpjax.training.Trainer`
-- the sampler's micro-batches, the jitted micro-step of the phase (its engine, clipping
and trainable set), the on-device accumulation, and :func:`dpjax.optim.privatize` with
the noise key of the trainer's optimizer state -- on neighbouring batches (see
:mod:`dpjax.audit.replay`). :func:`single_step_trainer` runs the single-step audit on
the trainer's loss, engine and clip norm, with the first drawn micro-batch as ``D`` and
the next training example as the canary.

Example::

    trainer = dpjax.training.Trainer(config, "runs/toy")
    print(dpjax.audit.replay_trainer(trainer).summary())
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dpjax.audit.replay import ReplayReport, derived_canaries, privatize_replayer, replay
from dpjax.audit.single_step import AuditResult, single_step_audit
from dpjax.clip_rules import sum_dtype

__all__ = ["replay_trainer", "single_step_trainer"]


def _host_batches(trainer: Any, step: int) -> list[dict[str, np.ndarray]]:
    if jax.process_count() > 1:
        raise NotImplementedError("audits of a trainer run in a single process")
    out = []
    for mb in trainer.sampler.sample(step):
        batch = {
            k: np.asarray(v) for k, v in trainer.task.train_data.take(mb.indices, mb.mask).items()
        }
        batch["mask"] = np.asarray(batch["mask"], bool) & mb.mask
        out.append(batch)
    return out


def replay_trainer(
    trainer: Any, step: int = 0, *, state: Any = None, rows: int = 8, rtol: float = 1e-5
) -> ReplayReport:
    """Replays logical step ``step`` of ``trainer`` on neighbouring batches.

    Args:
      trainer: a :class:`dpjax.training.Trainer` of a private run.
      step: the logical step whose sampled micro-batches form ``D``.
      state: the training state (default: the initial state of the step's phase).
      rows: how many real examples to mask out, one at a time.
      rtol: tolerance on ``||dS|| / Delta``.
    """
    from dpjax.training.optimizer import find_privatize_state
    from dpjax.training.sharding import global_batch

    plan = trainer.plan
    if not plan.private:
        raise ValueError("replay_trainer audits private runs; this config is non-private")
    index = plan.phase_index(step)
    if state is None:
        state = trainer.initial_state(index)
    mech = trainer.mechanism(index)
    micro = mech.jitted.micro_step
    batches = _host_batches(trainer, step)
    size = len(batches[0]["mask"])

    def sum_fn(micro_batches: Sequence[dict[str, np.ndarray]]) -> Any:
        total = None
        for b in micro_batches:
            g, _ = micro(state.train, state.frozen, global_batch(b, trainer.mesh, size))
            total = g if total is None else jax.tree.map(jnp.add, total, g)
        return total

    key = find_privatize_state(state.opt_state).key
    targets = jax.tree.map(lambda x: jnp.zeros(jnp.shape(x), sum_dtype(x.dtype)), state.train)
    privatizer = privatize_replayer(
        mech.noise_multiplier, mech.sensitivity, mech.expected_batch_size, key, targets
    )
    canaries = derived_canaries(batches[0], trainer.task.vocab_sizes)
    return replay(
        sum_fn,
        batches,
        mech.sensitivity,
        canaries=canaries,
        rows=rows,
        fixed_shapes=True,
        rtol=rtol,
        privatizer=privatizer,
        noise_std=mech.noise_std,
        expected_batch_size=mech.expected_batch_size,
    )


def single_step_trainer(
    trainer: Any, *, trials: int = 20_000, alpha: float = 0.05, delta: float | None = None
) -> AuditResult:
    """The single-step audit with the trainer's loss, engine, trainable set and clip norm.

    ``D`` is the real rows of the first micro-batch of step 0; the canary is the first
    training example not in ``D``; ``delta`` defaults to the run's.
    """
    plan = trainer.plan
    if not plan.private:
        raise ValueError("single_step_trainer audits private runs; this config is non-private")
    batch = _host_batches(trainer, 0)[0]
    real = batch["mask"]
    d = {k: v[real] for k, v in batch.items() if k != "mask"}
    chosen = set(trainer.sampler.sample(0)[0].indices[real].tolist())
    outside = next(i for i in range(trainer.task.num_train) if i not in chosen)
    row = trainer.task.train_data.take(np.array([outside]))
    canary = {k: np.asarray(v) for k, v in row.items() if k != "mask"}
    mech = trainer.mechanism(0)
    grad_fn = dataclasses.replace(mech.grad_fn, spmd_axis_name=None)
    params = trainer.initial_state(0).params
    return single_step_audit(
        grad_fn,
        params,
        d,
        canary,
        noise_multiplier=mech.noise_multiplier,
        expected_batch_size=mech.expected_batch_size,
        trials=trials,
        alpha=alpha,
        delta=plan.delta if delta is None else delta,
    )
