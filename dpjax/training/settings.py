"""Validated trainer settings, parsed from an ml_collections experiment config.

Every check here is pure Python and runs before any JAX work, so a bad value fails in
milliseconds with a message naming the config key (``config.optimizer.lr``), the value
and what is allowed.

The config layout (``dpjax.training.schema.default_config()`` builds it from these
dataclasses; ``experiments/configs/toy.py`` fills one)::

    method            nonprivate_full | nonprivate_bitfit | nonprivate_bitfit_add |
                      nonprivate_lora | dp_full | dp_bitfit | dp_bitfit_add | dp_lora |
                      dp_bitfit_lora | two_phase
    engine            per-example engine of DP full fine-tuning: vmap | ghost
    seed              int, public: non-private runs' sampler (the task builder has its own
                      seeds). Private runs draw their noise and sampling from OS entropy
    privacy           l2_clip (a norm or {group: norm}), clip_fn, gamma,
                      noise_multiplier | target_epsilon, delta (a number or a rule:
                      1/(2n) | n^-1.1), max_epsilon, accountant, noise_seed (None: secret),
                      log_private_diagnostics, loss_noise_multiplier, loss_clip
    batch_size        logical (expected) batch size, e.g. 1000
    physical_batch_size   rows per jitted micro-batch (gradient accumulation)
    sampler           poisson | without_replacement
    epochs / steps    training length (steps wins when given)
    optimizer         name (adam|sgd), lr, schedule (constant|linear), warmup_steps, ...
    two_phase         full_epochs, full_lr, full_engine
    peft              rank, alpha, targets (LoRA of the *_lora methods, dpjax.peft);
                      bias_targets (the bias-free layers that get a zero bias in the
                      *_bitfit_add methods, dpjax.peft.add_biases)
    mesh              data, model, fsdp
    eval_every, log_every, checkpoint_every, keep_checkpoints
    eval_at_start     also evaluate the initial parameters (step 0: e.g. a pretrained LM's
                      zero-shot accuracy), reported as results["eval_at_start"]
    trim_padding      run each micro-batch of a text task at its longest row's width
                      (dpjax.data.lengths; the same sums, less compute)
"""

from __future__ import annotations

import dataclasses
from typing import Any

from dpjax.config_reader import cfg_get, cfg_keys
from dpjax.validate import (
    ACCOUNTANTS,
    CLIP_FNS,
    DELTA_RULES,
    ENGINES,
    METHODS,
    OPTIMIZERS,
    PRIVATE_METHODS,
    SAMPLINGS,
    SCHEDULES,
    ConfigError,
    check_bool,
    check_choice,
    check_clip,
    check_delta,
    check_int,
    check_pairs,
    check_real,
    check_regex,
)

__all__ = [
    "METHODS",
    "ConfigError",
    "DistributedSettings",
    "MeshSettings",
    "OptimizerSettings",
    "PeftSettings",
    "PrivacySettings",
    "TrainSettings",
    "TwoPhaseSettings",
]

#: Top-level config sections read by others (the task builder, the launcher).
EXTRA_KEYS = ("task", "distributed", "name", "description")
POSITIVE, NON_NEGATIVE = "(0, inf)", "[0, inf)"


@dataclasses.dataclass(frozen=True)
class OptimizerSettings:
    """Optax chain after ``privatize``: adam(w) or sgd with a learning-rate schedule."""

    name: str = "adam"
    lr: float = 5e-3
    schedule: str = "linear"
    warmup_steps: int = 0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    momentum: float | None = None
    #: ``{name: m}``: leaves with ``name`` in their path get ``m`` x the learning rate
    #: (e.g. a fresh head beside slowly moving biases); stored as sorted ``(name, m)`` pairs.
    lr_multipliers: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        pairs = check_pairs("config.optimizer.lr_multipliers", self.lr_multipliers, POSITIVE)
        object.__setattr__(self, "lr_multipliers", pairs)
        check_choice("config.optimizer.name", self.name, OPTIMIZERS)
        check_real("config.optimizer.lr", self.lr, POSITIVE)
        check_choice("config.optimizer.schedule", self.schedule, SCHEDULES)
        check_int("config.optimizer.warmup_steps", self.warmup_steps, 0)
        check_real("config.optimizer.b1", self.b1, "[0, 1)")
        check_real("config.optimizer.b2", self.b2, "[0, 1)")
        check_real("config.optimizer.eps", self.eps, POSITIVE)
        check_real("config.optimizer.weight_decay", self.weight_decay, NON_NEGATIVE)
        if self.momentum is not None:
            check_real("config.optimizer.momentum", self.momentum, NON_NEGATIVE)
        if self.name == "sgd" and self.weight_decay:
            raise ConfigError("config.optimizer.weight_decay is only supported with adam")


@dataclasses.dataclass(frozen=True)
class PrivacySettings:
    """Clipping and noise. Give ``noise_multiplier`` or ``target_epsilon`` (DP methods).

    Example:
      >>> p = PrivacySettings(l2_clip={"head": 1.0, "encoder": 0.1}, delta="1/(2n)")
      >>> p.l2_clip, p.clip_groups
      ((('encoder', 0.1), ('head', 1.0)), {'encoder': 0.1, 'head': 1.0})
    """

    #: One norm for the whole per-example gradient, or ``{group: norm}`` per top-level
    #: module of the params tree (per-layer clipping), stored as sorted pairs.
    l2_clip: float | tuple[tuple[str, float], ...] = 0.1
    clip_fn: str = "abadi"
    gamma: float | None = None
    noise_multiplier: float | None = None
    target_epsilon: float | None = None
    max_epsilon: float | None = None
    #: A number in (0, 1) or a rule of :data:`DELTA_RULES` (resolved once n is known).
    delta: float | str | None = None
    accountant: str = "pld"
    #: ``None`` (default): the noise key and the sampler's seed come from OS entropy and
    #: stay secret. An integer makes them reproducible -- and *not secret*; the run says so.
    noise_seed: int | None = None
    #: Write per-step statistics of the private batch (loss, pre-clip norms, clipped
    #: fraction, batch size) to metrics and TensorBoard. They are NOT covered by epsilon.
    log_private_diagnostics: bool = False
    #: Release a loss curve as a mechanism: on every logged step, the sum of the batch's
    #: per-example losses clipped to ``[0, loss_clip]`` plus ``N(0, (s * loss_clip)^2)``
    #: with ``s = loss_noise_multiplier``, over the expected batch size. Accounted with the
    #: gradient as one Gaussian mechanism (``accounting.joint_noise_multiplier``).
    loss_noise_multiplier: float | None = None
    loss_clip: float = 10.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "l2_clip", check_clip("config.privacy.l2_clip", self.l2_clip))
        if self.noise_seed is not None:
            check_int("config.privacy.noise_seed", self.noise_seed, 0)
        check_bool("config.privacy.log_private_diagnostics", self.log_private_diagnostics)
        check_real("config.privacy.loss_clip", self.loss_clip, POSITIVE)
        if self.loss_noise_multiplier is not None:
            check_real("config.privacy.loss_noise_multiplier", self.loss_noise_multiplier, POSITIVE)
        check_choice("config.privacy.clip_fn", self.clip_fn, CLIP_FNS)
        if self.clip_fn == "automatic":
            if self.gamma is None:
                raise ConfigError("config.privacy.clip_fn='automatic' needs privacy.gamma > 0")
            check_real("config.privacy.gamma", self.gamma, POSITIVE)
        elif self.gamma not in (None, 0):  # 0: "unset", the one value a command line can give
            raise ConfigError(
                f"config.privacy.gamma is only used with clip_fn='automatic', got {self.gamma!r}; "
                "unset it (None in a config file, --config.privacy.gamma=0 on the command line)"
            )
        else:
            object.__setattr__(self, "gamma", None)
        if self.noise_multiplier is not None:
            check_real("config.privacy.noise_multiplier", self.noise_multiplier, NON_NEGATIVE)
        for k in ("target_epsilon", "max_epsilon"):
            if getattr(self, k) is not None:
                check_real(f"config.privacy.{k}", getattr(self, k), POSITIVE)
        if self.delta is not None:
            object.__setattr__(self, "delta", check_delta("config.privacy.delta", self.delta))
        check_choice("config.privacy.accountant", self.accountant, ACCOUNTANTS)

    @property
    def clip_groups(self) -> dict[str, float] | None:
        """``{group: norm}`` of per-layer clipping; ``None`` when one norm clips it all."""
        return None if isinstance(self.l2_clip, float) else dict(self.l2_clip)

    def check_private(self) -> None:
        """Checks that a DP method's noise is fully specified (delta included)."""
        sigma, target = self.noise_multiplier, self.target_epsilon
        if (sigma is None) == (target is None):
            raise ConfigError(
                "a DP method needs exactly one of config.privacy.noise_multiplier and "
                f"config.privacy.target_epsilon, got noise_multiplier={sigma!r}, "
                f"target_epsilon={target!r}"
            )
        if self.delta is None:
            what = "target_epsilon" if target is not None else "epsilon reporting"
            raise ConfigError(
                f"config.privacy.delta must be stated for {what} (a number in (0, 1) or one "
                f"of {DELTA_RULES}); got delta=None"
            )
        if target is not None and self.max_epsilon is not None and self.max_epsilon < target:
            raise ConfigError(
                f"config.privacy.max_epsilon={self.max_epsilon!r} is below "
                f"target_epsilon={target!r}"
            )


@dataclasses.dataclass(frozen=True)
class TwoPhaseSettings:
    """Phase 1 of ``two_phase``: DP full fine-tuning for ``full_epochs`` epochs."""

    full_epochs: float = 1.0
    full_lr: float = 5e-4
    full_engine: str = "vmap"

    def __post_init__(self) -> None:
        check_real("config.two_phase.full_epochs", self.full_epochs, POSITIVE)
        check_real("config.two_phase.full_lr", self.full_lr, POSITIVE)
        check_choice("config.two_phase.full_engine", self.full_engine, ENGINES)


@dataclasses.dataclass(frozen=True)
class PeftSettings:
    """LoRA adapters of the ``*_lora`` methods (:func:`dpjax.peft.lora`) and the added
    biases of the ``*_bitfit_add`` methods (:func:`dpjax.peft.add_biases`).

    Example:
      >>> PeftSettings(bias_targets="_proj$").bias_targets
      '_proj$'
    """

    rank: int = 8
    alpha: float = 16.0
    targets: str = "(query|value)$"
    #: Regex over module paths: the bias-free Dense / DenseGeneral / Conv layers it finds
    #: get a zero-initialised bias (default: every bias-free one).
    bias_targets: str = "."

    def __post_init__(self) -> None:
        check_int("config.peft.rank", self.rank, 1)
        check_real("config.peft.alpha", self.alpha, POSITIVE)
        if not isinstance(self.targets, str) or not self.targets:
            raise ConfigError(f"config.peft.targets must be a regex string, got {self.targets!r}")
        check_regex("config.peft.bias_targets", self.bias_targets)


@dataclasses.dataclass(frozen=True)
class MeshSettings:
    """Device mesh ``("data", "model")``; ``data=-1`` takes the remaining devices."""

    data: int = -1
    model: int = 1
    fsdp: bool = False

    def __post_init__(self) -> None:
        if self.data != -1:
            check_int("config.mesh.data", self.data, 1)
        check_int("config.mesh.model", self.model, 1)
        check_bool("config.mesh.fsdp", self.fsdp)


@dataclasses.dataclass(frozen=True)
class DistributedSettings:
    """Multi-host launch (read by ``experiments/train.py``; its flags override these)."""

    coordinator_address: str | None = None
    num_processes: int = 1
    process_id: int = 0

    def __post_init__(self) -> None:
        check_int("config.distributed.num_processes", self.num_processes, 1)
        check_int("config.distributed.process_id", self.process_id, 0)


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """Everything the trainer reads from the config (validated on construction)."""

    method: str
    batch_size: int
    physical_batch_size: int
    engine: str = "vmap"
    seed: int = 0
    sampler: str = "poisson"
    epochs: float | None = 1.0
    steps: int | None = None
    optimizer: OptimizerSettings = OptimizerSettings()
    privacy: PrivacySettings = PrivacySettings()
    two_phase: TwoPhaseSettings = TwoPhaseSettings()
    peft: PeftSettings = PeftSettings()
    mesh: MeshSettings = MeshSettings()
    eval_every: int = 0
    eval_at_start: bool = False
    eval_batch_size: int | None = None
    log_every: int = 1
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    trim_padding: bool = True
    #: A regular expression searched in every parameter's ``a/b/c`` path: the leaves it
    #: finds are never trained, by any method or phase (``""``: none). The main job
    #: freezes the feed-forward biases whose activations its head reads.
    freeze: str = ""

    def __post_init__(self) -> None:
        check_choice("config.method", self.method, METHODS)
        check_regex("config.freeze", self.freeze, empty=True)
        check_bool("config.trim_padding", self.trim_padding)
        check_bool("config.eval_at_start", self.eval_at_start)
        check_choice("config.engine", self.engine, ENGINES)
        check_int("config.seed", self.seed, 0)
        check_int("config.batch_size", self.batch_size, 1)
        check_int("config.physical_batch_size", self.physical_batch_size, 1)
        if self.physical_batch_size > self.batch_size:
            raise ConfigError(
                f"config.physical_batch_size={self.physical_batch_size} is larger than the "
                f"logical config.batch_size={self.batch_size}"
            )
        check_choice("config.sampler", self.sampler, SAMPLINGS)
        if self.steps is None and self.epochs is None:
            raise ConfigError("give config.epochs or config.steps")
        if self.steps is not None:
            check_int("config.steps", self.steps, 1)
        if self.epochs is not None:
            check_real("config.epochs", self.epochs, POSITIVE)
        if self.eval_batch_size is not None:
            check_int("config.eval_batch_size", self.eval_batch_size, 1)
        check_int("config.eval_every", self.eval_every, 0)
        check_int("config.log_every", self.log_every, 1)
        check_int("config.checkpoint_every", self.checkpoint_every, 0)
        check_int("config.keep_checkpoints", self.keep_checkpoints, 1)
        if self.private:
            self.privacy.check_private()
            if self.sampler == "without_replacement" and self.privacy.accountant != "rdp":
                raise ConfigError(
                    "config.sampler='without_replacement' is accounted as sampling without "
                    "replacement, which only the RDP accountant supports: set "
                    "config.privacy.accountant='rdp'"
                )
        if self.method == "two_phase" and self.steps is not None:
            raise ConfigError("two_phase plans its phases in epochs: set config.epochs, not steps")
        if self.method == "two_phase" and self.two_phase.full_epochs >= self.epochs:
            raise ConfigError(
                f"config.two_phase.full_epochs={self.two_phase.full_epochs!r} leaves no "
                f"DP-BiTFiT phase within config.epochs={self.epochs!r}"
            )

    @property
    def private(self) -> bool:
        """Whether the method adds noise and is accounted."""
        return self.method in PRIVATE_METHODS

    @classmethod
    def from_config(cls, config: Any) -> TrainSettings:
        """Parses an ml_collections ``ConfigDict`` (or a nested mapping)."""
        required = ("method", "batch_size", "physical_batch_size")
        missing = [k for k in required if cfg_get(config, k) is None]
        if missing:
            raise ConfigError(f"config is missing required key(s): {missing}")
        known = {f.name for f in dataclasses.fields(cls)} | set(EXTRA_KEYS)
        unknown = sorted(set(cfg_keys(config)) - known)
        if unknown:
            raise ConfigError(f"unknown top-level config key(s) {unknown}; known: {sorted(known)}")
        _section(DistributedSettings, "distributed", cfg_get(config, "distributed"))
        kwargs = {}
        for f in dataclasses.fields(cls):
            value = cfg_get(config, f.name)
            if f.name in SECTIONS:
                value = _section(SECTIONS[f.name], f.name, value)
            if value is not None:
                kwargs[f.name] = value
        if cfg_get(config, "steps") is not None and cfg_get(config, "epochs") is not None:
            kwargs["epochs"] = None  # steps wins
        return cls(**kwargs)


#: The nested sections of :class:`TrainSettings` and the settings class of each.
SECTIONS: dict[str, type] = {
    "optimizer": OptimizerSettings,
    "privacy": PrivacySettings,
    "two_phase": TwoPhaseSettings,
    "peft": PeftSettings,
    "mesh": MeshSettings,
}


def _section(kind: type, key: str, section: Any) -> Any:
    """``kind`` built from the keys a config section gives (its defaults for the rest)."""
    names = [f.name for f in dataclasses.fields(kind)]
    keys = set(cfg_keys(section))
    unknown = sorted(keys - set(names))
    if unknown:
        raise ConfigError(f"unknown key(s) in config.{key}: {unknown}; known: {names}")
    return kind(**{k: cfg_get(section, k) for k in names if k in keys})
