"""Planning a run: its phases (trainable set, engine, lr, steps) and its privacy.

One method name becomes a list of :class:`Phase` s. Every method has one phase except
``two_phase``: DP full fine-tuning for ``two_phase.full_epochs`` epochs, then DP-BiTFiT
for the rest, both at the same noise multiplier. The noise multiplier is the configured
one or is calibrated to ``target_epsilon`` for *all* planned steps, so the ledger (which
records every step of every phase) ends at or below the target.

Example:
    >>> from dpjax.data.sampling import PoissonSampler
    >>> s = TrainSettings(method="dp_full", batch_size=10, physical_batch_size=5, steps=4,
    ...                   privacy=PrivacySettings(noise_multiplier=1.0, delta=1e-3))
    >>> plan = make_plan(s, PoissonSampler(100, expected_batch_size=10,
    ...                  physical_batch_size=5, seed=0))
    >>> plan.total_steps, plan.phases[0].engine, plan.noise_multiplier
    (4, 'vmap', 1.0)
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from collections.abc import Sequence
from typing import Any

import jax

from dpjax import accounting
from dpjax.data.sampling import PoissonSampler, WithoutReplacementSampler
from dpjax.engines import get_engine
from dpjax.partition import Predicate, all_leaves, bias_only, leaf_paths, path_to_str
from dpjax.peft import is_adapter
from dpjax.training.settings import ConfigError, PrivacySettings, TrainSettings

__all__ = ["Phase", "RunPlan", "check_biases", "make_plan", "make_sampler"]

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Phase:
    """A stretch of steps with one trainable set, engine and optimizer.

    Attributes:
      name: ``"full"``, ``"bitfit"``, ``"bitfit_add"``, ``"lora"`` or ``"bitfit_lora"``.
      start, stop: global logical steps ``[start, stop)``.
      trainable: predicate on ``(path, leaf)``.
      engine: per-example engine for DP phases; ``None`` for non-private ones.
      lr: peak learning rate of this phase's schedule (which spans ``stop - start``).
    """

    name: str
    start: int
    stop: int
    trainable: Predicate
    engine: str | None
    lr: float

    @property
    def private(self) -> bool:
        return self.engine is not None

    @property
    def steps(self) -> int:
        return self.stop - self.start


def _any_of(first: Predicate, extra: Predicate | None) -> Predicate:
    if extra is None:
        return first

    def predicate(path: Any, leaf: Any) -> bool:
        return bool(first(path, leaf)) or bool(extra(path, leaf))

    return predicate


def _bias_and(extra: Predicate | None) -> Predicate:
    if extra is None:
        return bias_only

    def predicate(path: Any, leaf: Any) -> bool:
        return bias_only(path, leaf) or bool(extra(path, leaf))

    return predicate


def _unfrozen(trainable: Predicate, freeze: str) -> Predicate:
    pattern = re.compile(freeze)

    def predicate(path: Any, leaf: Any) -> bool:
        return trainable(path, leaf) and not pattern.search(path_to_str(path))

    return predicate


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """Phases, privacy parameters and budget of a run.

    Attributes:
      phases: consecutive phases covering ``[0, total_steps)``.
      noise_multiplier: sigma of every DP step (0.0 for non-private runs).
      delta: the stated delta (``None`` for non-private runs).
      sampling: ``sampler.accounting_kwargs()`` (rate, sampling rule, dataset size).
      accountant: ``"pld"`` or ``"rdp"``.
      max_epsilon: the budget the loop never exceeds (``None`` = no budget check).
      expected_batch_size: public normaliser of the noisy sum.
      prior: privacy the task spent on the training data before step 0
        (:attr:`Task.prior_privacy`), composed into every epsilon of the run.
      loss_noise_multiplier: ``s`` of the released loss (``None``: no loss released).
        A step that releases it is recorded with
        :func:`~dpjax.accounting.joint_noise_multiplier` of ``(sigma, s)``.
      log_every: the logging period; the loss is released after steps ``k * log_every``
        and after the last planned step.
    """

    phases: tuple[Phase, ...]
    noise_multiplier: float
    delta: float | None
    sampling: dict[str, Any]
    accountant: str
    max_epsilon: float | None
    expected_batch_size: float
    prior: tuple[accounting.Segment, ...] = ()
    loss_noise_multiplier: float | None = None
    log_every: int = 1

    @property
    def total_steps(self) -> int:
        return self.phases[-1].stop

    @property
    def private(self) -> bool:
        return any(p.private for p in self.phases)

    def phase_index(self, step: int) -> int:
        """Index of the phase that runs logical step ``step``."""
        for i, p in enumerate(self.phases):
            if step < p.stop:
                return i
        return len(self.phases) - 1

    def releases_loss(self, done: int) -> bool:
        """Whether the step that brings the count to ``done`` releases the noisy loss."""
        if not self.private or self.loss_noise_multiplier is None:
            return False
        return done % self.log_every == 0 or done == self.total_steps

    def segments(self, sigma: float, start: int, stop: int) -> list[accounting.Segment]:
        """Segments of steps ``start + 1 .. stop`` (counts after each step) at ``sigma``."""
        if stop <= start:
            return []
        releases = 0
        if self.loss_noise_multiplier is not None:
            every = self.log_every
            releases = stop // every - start // every
            if start < self.total_steps <= stop and self.total_steps % every:
                releases += 1
        out = []
        if stop - start - releases:
            out.append(accounting.step_segment(sigma, self.sampling, steps=stop - start - releases))
        if releases:
            loss_sigma = self.loss_noise_multiplier
            out.append(
                accounting.step_segment(
                    sigma, self.sampling, steps=releases, loss_noise_multiplier=loss_sigma
                )
            )
        return out

    def epsilon(self, ledger: accounting.PrivacyLedger, extra_steps: int = 0) -> float | None:
        """Epsilon of the ledger (plus ``extra_steps`` more), ``None`` when non-private."""
        if not self.private:
            return None
        if ledger.steps + extra_steps == 0 and not self.prior:
            return 0.0
        done = ledger.steps
        segments = [
            *self.prior,
            *ledger.segments,
            *self.segments(self.noise_multiplier, done, done + extra_steps),
        ]
        return self.epsilon_of(segments)

    def epsilon_of(self, segments: Sequence[accounting.Segment]) -> float:
        """Epsilon at the run's delta of ``segments`` composed (identical steps grouped).

        Composition is commutative, so steps with the same event are composed as one
        segment wherever they occurred (a run that releases its loss every ``log_every``
        steps alternates two events); this keeps one query to a few PLD
        self-compositions and makes the answer a function of the step counts alone.
        """
        grouped: dict[accounting.Segment, int] = {}
        for seg in segments:
            key = seg.step_key()
            grouped[key] = grouped.get(key, 0) + seg.steps
        merged = [dataclasses.replace(k, steps=n) for k, n in grouped.items()]
        return accounting.PrivacyLedger(merged).epsilon(self.delta, accountant=self.accountant)

    def last_step_within_budget(self, ledger: accounting.PrivacyLedger) -> int:
        """Largest total step count ``<= total_steps`` whose epsilon stays within budget."""
        done = ledger.steps
        if not self.private or self.max_epsilon is None or done >= self.total_steps:
            return self.total_steps
        if self.epsilon(ledger, self.total_steps - done) <= self.max_epsilon:
            return self.total_steps
        lo, hi = 0, self.total_steps - done  # eps(lo extra) <= budget < eps(hi extra)
        if done and self.epsilon(ledger) > self.max_epsilon:
            return done
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self.epsilon(ledger, mid) <= self.max_epsilon:
                lo = mid
            else:
                hi = mid
        return done + lo


def check_freeze(settings: TrainSettings, plan: RunPlan, params: Any) -> None:
    """Checks that ``config.freeze`` finds at least one parameter (a typo freezes nothing)
    and leaves every phase something to train.

    Example:
        >>> s = TrainSettings(method="nonprivate_bitfit", batch_size=4, physical_batch_size=4,
        ...                   steps=1, freeze="intermediat/dense/bias$")
        >>> try:
        ...     check_freeze(s, None, {"intermediate": {"dense": {"bias": 0.0}}})
        ... except ConfigError as e:
        ...     print(str(e).split(";")[0])
        config.freeze='intermediat/dense/bias$' matches no parameter path

    Raises:
      ConfigError: the pattern is set and matches no leaf path of ``params``, or it
        freezes every leaf a phase of ``plan`` would train.
    """
    if not settings.freeze:
        return
    pattern = re.compile(settings.freeze)
    paths = leaf_paths(params)
    names = [path_to_str(path) for path in paths]
    if not any(pattern.search(name) for name in names):
        raise ConfigError(
            f"config.freeze={settings.freeze!r} matches no parameter path; paths look like "
            f"{names[:3]}"
        )
    leaves = list(zip(paths, jax.tree.leaves(params), strict=True))
    for phase in plan.phases:
        if not any(phase.trainable(path, leaf) for path, leaf in leaves):
            raise ConfigError(
                f"config.freeze={settings.freeze!r} freezes every parameter that phase "
                f"{phase.name!r} would train"
            )


def check_biases(plan: RunPlan, params: Any, method: str, task: str) -> None:
    """Checks that a plan training biases (a ``bitfit*`` phase) finds some in ``params``.

    Example:
        >>> s = TrainSettings(method="nonprivate_bitfit", batch_size=4, physical_batch_size=4,
        ...                   steps=1)
        >>> plan = make_plan(s, make_sampler(s, 8))
        >>> try:
        ...     check_biases(plan, {"dense": {"kernel": 0.0}}, s.method, "toy")
        ... except ConfigError as e:
        ...     print(str(e)[str(e).index("use"):][:41])
        use method='nonprivate_bitfit_add', which

    Raises:
      ConfigError: no leaf of ``params`` is named ``bias``; the message names the method
        and the task and points to the ``*_bitfit_add`` methods.
    """
    if not any(p.name.startswith("bitfit") for p in plan.phases):
        return
    if any(bias_only(path, None) for path in leaf_paths(params)):
        return
    prefix = "dp" if plan.private else "nonprivate"
    lora = f" (or {prefix + '_lora'!r} for the adapters alone)" if "lora" in method else ""
    raise ConfigError(
        f"config.method={method!r} trains biases, but task {task!r} has no parameter named "
        f"'bias' (a bias-free model, e.g. the Llama family): use method="
        f"{prefix + '_bitfit_add'!r}{lora}, which first gives its bias-free layers "
        "zero-initialised biases (dpjax.peft.add_biases, config.peft.bias_targets)"
    )


def make_sampler(
    settings: TrainSettings, n: int, seed: int | None = None
) -> PoissonSampler | WithoutReplacementSampler:
    """The sampler of the run (Poisson unless ``config.sampler == "without_replacement"``).

    ``seed`` defaults to ``config.seed`` (public); private runs pass their secret one.
    """
    seed = settings.seed if seed is None else seed
    if settings.batch_size > n:
        raise ConfigError(
            f"config.batch_size={settings.batch_size} exceeds the {n} training examples"
        )
    if settings.sampler == "poisson":
        return PoissonSampler(
            n,
            expected_batch_size=settings.batch_size,
            physical_batch_size=settings.physical_batch_size,
            seed=seed,
        )
    return WithoutReplacementSampler(
        n,
        batch_size=settings.batch_size,
        physical_batch_size=settings.physical_batch_size,
        seed=seed,
    )


def _resolve_delta(privacy: PrivacySettings, n: int) -> float:
    if isinstance(privacy.delta, str):
        return accounting.delta_for(n, privacy.delta)
    return float(privacy.delta)


def _total_steps(settings: TrainSettings, steps_per_epoch: int) -> int:
    if settings.steps is not None:
        return settings.steps
    return max(1, math.ceil(settings.epochs * steps_per_epoch - 1e-9))


def make_plan(
    settings: TrainSettings,
    sampler: Any,
    trainable_extra: Predicate | None = None,
    prior: tuple[accounting.Segment, ...] = (),
) -> RunPlan:
    """Plans phases and privacy for ``settings`` with the run's ``sampler``.

    ``prior`` is privacy the task already spent on the training data; a calibrated noise
    multiplier makes prior + all planned steps reach ``target_epsilon``.

    Raises:
      ConfigError: the plan is empty, the target epsilon is unreachable, or the task
        spent privacy without noise in a private run.
    """
    total = _total_steps(settings, sampler.steps_per_epoch)
    lr, method = settings.optimizer.lr, settings.method
    bitfit_set = _bias_and(trainable_extra)
    if method == "two_phase":
        full = max(1, round(settings.two_phase.full_epochs * sampler.steps_per_epoch))
        if full >= total:
            raise ConfigError(
                f"two_phase: {full} DP-full steps leave none of the {total} planned steps "
                "for DP-BiTFiT; lower config.two_phase.full_epochs"
            )
        phases = (
            Phase(
                "full",
                0,
                full,
                all_leaves,
                settings.two_phase.full_engine,
                settings.two_phase.full_lr,
            ),
            Phase("bitfit", full, total, bitfit_set, "bitfit", lr),
        )
    elif method == "dp_full":
        get_engine(settings.engine)
        phases = (Phase("full", 0, total, all_leaves, settings.engine, lr),)
    elif method == "dp_bitfit":
        phases = (Phase("bitfit", 0, total, bitfit_set, "bitfit", lr),)
    elif method in ("dp_bitfit_add", "nonprivate_bitfit_add"):
        # The added biases (dpjax.peft.add_biases, params["added_bias"]) are leaves named
        # "bias": the bias-only set trains them with the model's own biases.
        engine = "bitfit" if method == "dp_bitfit_add" else None
        phases = (Phase("bitfit_add", 0, total, bitfit_set, engine, lr),)
    elif method in ("dp_lora", "dp_bitfit_lora", "nonprivate_lora"):
        # The adapters (dpjax.peft, params["lora"]), the task's extra leaves, and for
        # dp_bitfit_lora every bias too; the config's engine covers them in one pass.
        lora_set = _any_of(is_adapter, trainable_extra)
        if method == "dp_bitfit_lora":
            lora_set = _any_of(lora_set, bias_only)
        engine = None if method == "nonprivate_lora" else settings.engine
        phases = (Phase(method.removeprefix("dp_").removeprefix("nonprivate_"), 0, total,
                        lora_set, engine, lr),)  # fmt: skip
    elif method == "nonprivate_full":
        phases = (Phase("full", 0, total, all_leaves, None, lr),)
    else:
        phases = (Phase("bitfit", 0, total, bitfit_set, None, lr),)
    if settings.freeze:
        phases = tuple(
            dataclasses.replace(p, trainable=_unfrozen(p.trainable, settings.freeze))
            for p in phases
        )
    for p in phases:
        if p.engine is not None:
            try:
                get_engine(p.engine)
            except ValueError as e:
                raise ConfigError(f"phase {p.name!r}: {e}") from e

    privacy = settings.privacy
    sampling = dict(sampler.accounting_kwargs())
    if not settings.private:
        return RunPlan(
            phases,
            noise_multiplier=0.0,
            delta=None,
            sampling=sampling,
            accountant=privacy.accountant,
            max_epsilon=None,
            expected_batch_size=sampler.expected_batch_size,
        )
    prior = tuple(prior)
    for seg in prior:
        if seg.noise_multiplier == 0.0:
            raise ConfigError(
                f"the task computed a statistic of the training data without noise ({seg}) "
                "in a private run; give the task's statistic a noise multiplier > 0 "
                "(e.g. task.center_noise_multiplier, task.probe_noise_multiplier)"
            )
    delta = _resolve_delta(privacy, sampler.num_examples)
    draft = RunPlan(
        phases,
        noise_multiplier=1.0,
        delta=delta,
        sampling=sampling,
        accountant=privacy.accountant,
        max_epsilon=privacy.max_epsilon,
        expected_batch_size=sampler.expected_batch_size,
        prior=prior,
        loss_noise_multiplier=privacy.loss_noise_multiplier,
        log_every=settings.log_every,
    )
    sigma = privacy.noise_multiplier
    if sigma is None:
        try:
            sigma = accounting.calibrate_segments(
                lambda s: [*prior, *draft.segments(s, 0, total)],
                target_epsilon=privacy.target_epsilon,
                delta=delta,
                accountant=privacy.accountant,
                fixed=prior,
                what=f"q={sampling['sampling_rate']!r}, steps={total!r}",
            )
        except ValueError as e:
            raise ConfigError(f"config.privacy.target_epsilon: {e}") from e
        log.info(
            "calibrated noise_multiplier=%.5f for epsilon=%s over %d steps (delta=%g)",
            sigma,
            privacy.target_epsilon,
            total,
            delta,
        )
    plan = dataclasses.replace(draft, noise_multiplier=float(sigma))
    try:  # every segment of the run must compose with the others before any training
        plan.epsilon(accounting.PrivacyLedger(), total)
    except ValueError as e:
        raise ConfigError(f"the run's privacy cannot be accounted: {e}") from e
    return plan
