"""The host loop: one trainer for every method (config choices, not scripts).

Per logical step ``t``: the sampler (stateless in ``(seed, t)``) gives fixed-shape
micro-batches; each host loads its slice of each; the phase's :class:`dpjax.Mechanism`
runs its ``logical_step`` on them (clipped sums accumulated on device, the noise added
once, one optimizer update, one ledger record). Logging, evaluation and checkpoints run on
their schedules, and a run resumed from its workdir continues step count and epsilon.

A private run's noise keys and sampler seed derive from one :class:`RunSecrets`
(OS entropy unless ``privacy.noise_seed`` is given), kept in the checkpoint and never
written anywhere else; what the run writes follows :mod:`dpjax.training.release`. A run
that fails after training saves a checkpoint and a ``results.json`` naming the failure.

Example (the toy config's smoke run):
    >>> import tempfile
    >>> from experiments.configs import toy
    >>> results = train(toy.get_config("smoke"), tempfile.mkdtemp(), progress=False)
    >>> results["steps"], results["private"]
    (3, True)
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import numpy as np
import tqdm

from dpjax.accounting import PrivacyLedger
from dpjax.clipping import clipped_grad
from dpjax.data import lengths as padding
from dpjax.data.sampling import host_slice
from dpjax.mechanism import Mechanism, MicroStats
from dpjax.randomness import RunSecrets
from dpjax.train_state import TrainState
from dpjax.training import release
from dpjax.training.adapters import with_added_biases, with_lora
from dpjax.training.checkpoint import Checkpointer, CheckpointError, base_digest, fingerprint
from dpjax.training.epsilon_curve import EpsilonCurve
from dpjax.training.evaluation import Evaluator
from dpjax.training.metrics import MetricWriter
from dpjax.training.optimizer import make_optimizer
from dpjax.training.plan import RunPlan, check_biases, check_freeze, make_plan, make_sampler
from dpjax.training.secrets import run_secrets
from dpjax.training.settings import ConfigError, TrainSettings
from dpjax.training.sharding import (
    DATA,
    global_batch,
    make_mesh,
    param_shardings,
    place,
    replicated,
    to_host,
)
from dpjax.training.task import Task, build_task
from dpjax.validate import BIAS_ADD_METHODS, LORA_METHODS

__all__ = ["Hook", "Trainer", "train"]

log = logging.getLogger(__name__)

#: ``hook(step, state)`` after every logical step (``step`` = steps done).
Hook = Callable[[int, TrainState], None]


def _config_dict(config: Any) -> dict[str, Any]:
    return config.to_dict() if hasattr(config, "to_dict") else dict(config)


def _check_divisible(name: str, rows: int, mesh_rows: int, processes: int) -> None:
    for what, k in (("the mesh data axis", mesh_rows), ("the process count", processes)):
        if rows % k:
            raise ConfigError(f"config.{name}={rows} is not divisible by {what} ({k})")


class Trainer:
    """Builds everything for a run from a config and a task; :meth:`run` trains.

    Args:
      config: ml_collections config (validated here, before any compilation).
      workdir: run directory (metrics, checkpoints, results.json).
      task: the :class:`Task`; built from ``config.task.builder`` when ``None``.
      devices: devices of the mesh (default: all).
    """

    def __init__(
        self,
        config: Any,
        workdir: str,
        *,
        task: Task | None = None,
        devices: Sequence[Any] | None = None,
    ) -> None:
        self.settings = TrainSettings.from_config(config)
        self.config = _config_dict(config)
        self.workdir = os.path.abspath(workdir)
        s = self.settings
        #: The run's secret (``None`` for non-private runs): never logged or written
        #: anywhere but the checkpoint.
        self.secrets: RunSecrets | None = None
        if s.private:
            directory = os.path.join(self.workdir, "checkpoints")
            self.secrets = run_secrets(directory, fingerprint(self.config), s.privacy.noise_seed)
        self.task = task if task is not None else build_task(config.task, secrets=self.secrets)
        if s.method in LORA_METHODS:  # adapters on the task's layers (dpjax.peft)
            self.task = with_lora(self.task, s.peft, seed=s.seed)
        if s.method in BIAS_ADD_METHODS:  # zero biases on bias-free layers (dpjax.peft)
            self.task = with_added_biases(self.task, s.peft)
        self.mesh = make_mesh(s.mesh, devices)
        self.eval_batch_size = s.eval_batch_size or s.physical_batch_size
        procs = jax.process_count()
        _check_divisible("physical_batch_size", s.physical_batch_size, self.mesh.shape[DATA], procs)
        _check_divisible("eval_batch_size", self.eval_batch_size, self.mesh.shape[DATA], procs)
        sampler_seed = None if self.secrets is None else self.secrets.seed("sampler")
        self.sampler = make_sampler(s, self.task.num_train, seed=sampler_seed)
        self.plan: RunPlan = make_plan(
            s, self.sampler, self.task.trainable_extra, self.task.prior_privacy
        )
        check_biases(self.plan, self.task.params, s.method, self.task.name)
        check_freeze(s, self.plan, self.task.params)
        self._mechanism: tuple[int, Mechanism] | None = None
        self._base_digest: str | None = None
        #: Real tokens of every training row when micro-batches are cut to their longest
        #: row (``config.trim_padding`` and a task with ``padded_keys``), else ``None``.
        self.row_lengths: np.ndarray | None = None
        if s.trim_padding and self.task.padded_keys:
            mask = self.task.train_data.arrays["attention_mask"]
            self.row_lengths = padding.row_lengths(mask)
        self.is_main = jax.process_index() == 0

    # ------------------------------------------------------------------ streams
    def _checkpointer(self) -> Checkpointer:
        return Checkpointer(
            os.path.join(self.workdir, "checkpoints"),
            keep=self.settings.keep_checkpoints,
            fingerprint=fingerprint(self.config),
        )

    def noise_key(self, index: int) -> jax.Array:
        """The noise key of phase ``index`` (a secret stream; private runs only)."""
        if self.secrets is None:
            raise ValueError("a non-private run has no noise key")
        return self.secrets.key(f"noise/phase{index}")

    # ------------------------------------------------------------------ pieces
    def mechanism(self, index: int) -> Mechanism:
        """The :class:`~dpjax.Mechanism` of phase ``index`` (cached for the current phase).

        The clip norm(s) of ``config.privacy.l2_clip`` enter only ``clipped_grad``; the
        noise std is the mechanism's ``noise_multiplier * grad_fn.sensitivity``.
        """
        if self._mechanism is not None and self._mechanism[0] == index:
            return self._mechanism[1]
        phase, plan, priv = self.plan.phases[index], self.plan, self.settings.privacy
        groups = priv.clip_groups  # per-layer clipping: {top-level module: norm}
        grad_fn = clipped_grad(
            self.task.loss_fn,
            l2_clip=priv.l2_clip if groups is None else groups,
            method=phase.engine or "vmap",
            trainable=phase.trainable,
            clip_fn=priv.clip_fn,
            gamma=priv.gamma,
            spmd_axis_name=DATA,
        )
        releases = phase.private and plan.loss_noise_multiplier is not None
        mech = Mechanism(
            grad_fn,
            make_optimizer(self.settings.optimizer, lr=phase.lr, steps=phase.steps),
            noise_multiplier=plan.noise_multiplier if phase.private else None,
            expected_batch_size=plan.expected_batch_size,
            key=self.noise_key(index) if phase.private else None,
            sampling=plan.sampling if phase.private else None,
            loss_clip=priv.loss_clip if releases else None,
            loss_noise_multiplier=plan.loss_noise_multiplier if releases else None,
        )
        self._mechanism = (index, mech)
        return mech

    def initial_state(self, phase_index: int = 0) -> TrainState:
        """Fresh state: the task's parameters placed on the mesh, optimizer of the phase."""
        shardings = param_shardings(self.mesh, self.task.params, self.settings.mesh.fsdp)
        params = place(self.task.params, shardings)
        state = self.mechanism(phase_index).init(params, shardings=self._opt_shardings)
        return self._place_step(state, 0)

    def _opt_shardings(self, abstract: Any) -> Any:
        # FSDP shards by shape, so Adam's moments land like their parameters.
        return param_shardings(self.mesh, abstract, self.settings.mesh.fsdp)

    def _place_step(self, state: TrainState, step: int) -> TrainState:
        return state.replace(step=place(np.asarray(step, np.int32), replicated(self.mesh)))

    def load_batch(
        self, indices: np.ndarray, mask: np.ndarray, width: int | None = None
    ) -> dict[str, jax.Array]:
        """This host's slice of a micro-batch, assembled into a global array (its padded
        token fields cut to ``width`` when given, the same on every host)."""
        local_idx, local_mask = host_slice(indices, mask, jax.process_index(), jax.process_count())
        local = dict(self.task.train_data.take(local_idx, local_mask))
        local["mask"] = np.asarray(local["mask"], bool) & local_mask
        self.task.check_token_ids(local, local_idx)
        if width is not None:
            local = padding.trim(local, self.task.padded_keys, width)
        return global_batch(local, self.mesh, len(indices))

    def micro_batches(self, step: int) -> Iterator[dict[str, jax.Array]]:
        """The micro-batches of logical step ``step``, loaded as they are consumed (sorted
        by length and cut to their longest row when :attr:`row_lengths` is set)."""
        batches = self.sampler.sample(step)
        if self.row_lengths is None:
            for mb in batches:
                yield self.load_batch(mb.indices, mb.mask)
            return
        mask = self.task.train_data.arrays["attention_mask"]
        for mb in padding.sort_by_length(batches, self.row_lengths):
            width = padding.bucket_width(mask, mb.indices[mb.mask])
            yield self.load_batch(mb.indices, mb.mask, width)

    def logical_step(
        self, state: TrainState, step: int, ledger: PrivacyLedger | None = None
    ) -> tuple[TrainState, MicroStats]:
        """Runs logical step ``step`` through its phase's mechanism (recorded in ``ledger``)."""
        mech = self.mechanism(self.plan.phase_index(step))
        release = self.plan.releases_loss(step + 1)
        return mech.logical_step(
            state, self.micro_batches(step), ledger=ledger, release_loss=release
        )

    # ------------------------------------------------------------------ run
    def run(self, hooks: Sequence[Hook] = (), progress: bool = True) -> dict[str, Any]:
        """Trains (resuming from the workdir's checkpoint if any); returns the results.

        If training fails after a step was trained in this call, the last completed
        state is checkpointed (when state and ledger agree) and ``results.json`` is
        written with the steps done and ``"failure"`` before the error propagates.
        """
        start_time = time.time()
        s, plan = self.settings, self.plan
        os.makedirs(self.workdir, exist_ok=True)
        # The config as given (a user-supplied noise seed redacted): what export reads.
        self._write_results(release.redact_config(self.config), "config.json")
        ckpt = self._checkpointer()
        state, ledger, phase = self._resume_or_init(ckpt)
        start = int(to_host(state.step))
        stop = plan.last_step_within_budget(ledger)
        stopped = None
        if stop < plan.total_steps:
            over = plan.epsilon(ledger, stop + 1 - ledger.steps)
            stopped = (
                f"privacy budget: stopping after step {stop} of {plan.total_steps}; step "
                f"{stop + 1} would bring epsilon to {over:.4f} > max_epsilon="
                f"{s.privacy.max_epsilon} (delta={plan.delta:g})"
            )
            log.warning(stopped)
        if plan.private and s.privacy.log_private_diagnostics:
            log.warning(release.PRIVATE_DIAGNOSTICS_WARNING)
        evaluator = (
            Evaluator(
                self.task.eval_fn,
                self.task.eval_data,
                self.eval_batch_size,
                self.mesh,
                padded_keys=self.task.padded_keys if s.trim_padding else (),
            )
            if self.task.eval_data
            else None
        )
        writer = MetricWriter(self.workdir, enabled=self.is_main)
        logged = [t for t in range(start + 1, stop + 1) if t % s.log_every == 0 or t == stop]
        curve = EpsilonCurve(plan, logged)
        bar = tqdm.tqdm(
            total=stop, initial=start, disable=not (progress and self.is_main), desc="train"
        )
        eval_metrics: dict[str, float] = {}
        at_start: dict[str, float] = {}
        if s.eval_at_start and start == 0 and evaluator is not None:
            at_start = self.evaluate(state, evaluator, 0, writer)
        done = start
        try:
            for step in range(start, stop):
                index = plan.phase_index(step)
                if index != phase:
                    log.info("step %d: phase %r starts", step, plan.phases[index].name)
                    state = self.mechanism(index).init(
                        state.params, step=state.step, shardings=self._opt_shardings
                    )
                    state, phase = self._place_step(state, step), index
                state, stats = self.logical_step(state, step, ledger)
                done = step + 1
                last = done == stop
                if done % s.log_every == 0 or last:
                    eps = curve.get(ledger)
                    row = release.log_row(
                        plan, s, self.secrets, stats, ledger, done, phase, epsilon=eps
                    )
                    writer.write(done, row)
                    bar.set_postfix(release.postfix(row, plan.private))
                bar.update(1)
                if evaluator is not None and s.eval_every and done % s.eval_every == 0 and not last:
                    eval_metrics = self.evaluate(state, evaluator, done, writer)
                if s.checkpoint_every and done % s.checkpoint_every == 0 and not last:
                    self._save(ckpt, state, phase, ledger)
                for hook in hooks:
                    hook(done, state)
            if stop > start or ckpt.latest_step() != stop:
                self._save(ckpt, state, phase, ledger)
            if evaluator is not None or self.task.generation_eval is not None:
                eval_metrics = self.evaluate(state, evaluator, stop, writer)
        except BaseException as e:
            if done > start:
                self._salvage(ckpt, state, phase, ledger, done, e, eval_metrics, start_time)
            raise
        finally:
            curve.close()
            bar.close()
            writer.close()
            ckpt.close()
        results = self._results(ledger, stop, stopped, eval_metrics, time.time() - start_time)
        if at_start:
            results["eval_at_start"] = at_start
        self._write_results(results)
        self.state = state
        return results

    def _salvage(
        self,
        ckpt: Checkpointer,
        state: TrainState,
        phase: int,
        ledger: Any,
        done: int,
        error: BaseException,
        evals: dict,
        start_time: float,
    ) -> None:
        """After a failure: checkpoint what was trained and write a partial results.json."""
        failure = f"{type(error).__name__}: {error}"
        try:
            consistent = not self.plan.private or ledger.steps == done
            if consistent and int(to_host(state.step)) == done:
                self._save(ckpt, state, phase, ledger)
            else:
                log.error("not checkpointing after the failure: state and ledger disagree")
        except Exception as save_error:  # noqa: BLE001 - report the original failure
            log.error("could not checkpoint after the failure: %s", save_error)
        try:
            results = self._results(ledger, done, None, evals, time.time() - start_time)
            results["failure"] = failure
            self._write_results(results)
        except Exception as write_error:  # noqa: BLE001
            log.error("could not write results.json after the failure: %s", write_error)

    def _write_results(self, results: dict[str, Any], name: str = "results.json") -> None:
        if self.is_main:
            with open(os.path.join(self.workdir, name), "w", encoding="utf-8") as f:
                json.dump(results, f, indent=2, default=repr)

    def evaluate(
        self, state: TrainState, evaluator: Evaluator | None, step: int, writer: MetricWriter
    ) -> dict[str, float]:
        """Eval metrics (and the generation hook's) at ``step``, logged under ``eval/``."""
        params = state.params
        metrics = dict(evaluator(params)) if evaluator is not None else {}
        if self.task.generation_eval is not None:
            metrics.update(self.task.generation_eval(params, step))
        writer.write(step, {f"eval/{k}": v for k, v in metrics.items()})
        return metrics

    def _base(self, state: TrainState) -> str | None:
        """The frozen leaves' digest when they never train (one phase): checkpoints then
        hold the trained leaves only (biases, adapters, a head); else ``None``."""
        if len(self.plan.phases) > 1:
            return None
        if self._base_digest is None:
            self._base_digest = base_digest(state.frozen)
        return self._base_digest

    def _save(self, ckpt: Checkpointer, state: TrainState, phase: int, ledger: Any) -> None:
        sampler = self.sampler.state_dict()
        sampler["next_step"] = int(to_host(state.step))
        extra = {} if self.secrets is None else {"secrets": self.secrets.to_checkpoint()}
        base = self._base(state)
        ckpt.save(state, base=base, phase=phase, ledger=ledger.to_dict(), sampler=sampler,
                  **extra)  # fmt: skip

    def restore(self, step: int | None = None) -> tuple[TrainState, dict[str, Any]]:
        """The state checkpointed in the workdir at ``step`` (default: the latest) and its
        metadata (``phase``, ``ledger``, ...; the run's secrets are not in it).

        Raises:
          CheckpointError: no checkpoint there, or one of another run (config or base
            weights differ).
        """
        ckpt = self._checkpointer()
        try:
            step = ckpt.latest_step() if step is None else step
            if step is None:
                raise CheckpointError(f"no checkpoint in {ckpt.directory}")
            state, meta = self._restore(ckpt, step)
        finally:
            ckpt.close()
        return state, {k: v for k, v in meta.items() if k != "secrets"}

    def _restore(self, ckpt: Checkpointer, step: int) -> tuple[TrainState, dict[str, Any]]:
        meta = ckpt.read_meta(step)
        phase = meta.get("phase")
        if not isinstance(phase, int) or not 0 <= phase < len(self.plan.phases):
            raise CheckpointError(f"checkpoint {ckpt.directory}/{step}: bad phase {phase!r}")
        return ckpt.restore(self.initial_state(phase), step)

    def _resume_or_init(self, ckpt: Checkpointer) -> tuple[TrainState, PrivacyLedger, int]:
        latest = ckpt.latest_step()
        if latest is None:
            return self.initial_state(0), PrivacyLedger(), 0
        state, meta = self._restore(ckpt, latest)
        phase = meta["phase"]
        ledger = PrivacyLedger.from_dict(meta["ledger"])
        step = int(to_host(state.step))
        if step != latest or (self.plan.private and ledger.steps != step):
            raise CheckpointError(
                f"checkpoint {ckpt.directory}/{latest} is inconsistent: state step {step}, "
                f"ledger steps {ledger.steps}"
            )
        if meta["sampler"] != {**self.sampler.state_dict(), "next_step": step}:
            public = {k: v for k, v in meta["sampler"].items() if k != "seed"}  # seed: secret
            raise CheckpointError(
                f"checkpoint {ckpt.directory}/{latest} was sampled differently: {public} "
                "(or with another seed) vs this run's sampler"
            )
        log.info("resumed from step %d (epsilon so far %s)", step, self.plan.epsilon(ledger))
        return state, ledger, phase

    def _results(
        self, ledger: Any, steps: int, stopped: str | None, evals: dict, wall: float
    ) -> dict[str, Any]:
        return release.results(
            self.plan,
            self.settings,
            self.secrets,
            ledger,
            steps=steps,
            stopped=stopped,
            evals=evals,
            wall=wall,
            mesh_shape=dict(self.mesh.shape),
            config=self.config,
        )


def train(
    config: Any,
    workdir: str,
    *,
    task: Task | None = None,
    hooks: Sequence[Hook] = (),
    progress: bool = True,
) -> dict[str, Any]:
    """Trains the task of ``config`` in ``workdir`` and returns ``results.json``'s content.

    Args:
      config: an experiment config (``get_config()`` of ``experiments/configs/*.py``).
      workdir: run directory; a checkpoint there is resumed.
      task: a prebuilt :class:`Task` (default: built from ``config.task.builder``).
      hooks: called as ``hook(step, state)`` after every logical step.
      progress: show a tqdm bar (process 0).

    Example:
      >>> import tempfile
      >>> from experiments.configs import toy
      >>> round(train(toy.get_config("smoke"), tempfile.mkdtemp(), progress=False)["epsilon"], 1)
      0.7
    """
    return Trainer(config, workdir, task=task).run(hooks=hooks, progress=progress)
