"""Validated trainer settings, parsed from an ml_collections experiment config.

Every check here is pure Python and runs before any JAX work, so a bad value fails in
milliseconds with a message naming the config key (``config.optimizer.lr``), the value
and what is allowed.

The config layout (see ``experiments/configs/toy.py`` for a complete one)::

    method            nonprivate_full | nonprivate_bitfit | dp_full | dp_bitfit | two_phase
    engine            per-example engine of DP full fine-tuning: vmap | ghost
    seed              int, public: non-private runs' sampler (the task builder has its own
                      seeds). Private runs draw their noise and sampling from OS entropy
    privacy           l2_clip, clip_fn, gamma, noise_multiplier | target_epsilon, delta,
                      max_epsilon, accountant, noise_seed (None: secret),
                      log_private_diagnostics, loss_noise_multiplier, loss_clip
    batch_size        logical (expected) batch size, e.g. 1000
    physical_batch_size   rows per jitted micro-batch (gradient accumulation)
    sampler           poisson | fixed
    epochs / steps    training length (steps wins when given)
    optimizer         name (adam|sgd), lr, schedule (constant|linear), warmup_steps, ...
    two_phase         full_epochs, full_lr, full_engine
    mesh              data, model, fsdp
    eval_every, log_every, checkpoint_every, keep_checkpoints
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import numbers
from collections.abc import Mapping
from typing import Any

__all__ = [
    "METHODS",
    "ConfigError",
    "MeshSettings",
    "OptimizerSettings",
    "PrivacySettings",
    "TrainSettings",
    "TwoPhaseSettings",
]

METHODS = ("nonprivate_full", "nonprivate_bitfit", "dp_full", "dp_bitfit", "two_phase")
FULL_ENGINES = ("vmap", "ghost")
OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("constant", "linear")
SAMPLERS = ("poisson", "fixed")
DELTA_RULES = ("1/(2n)", "n^-1.1")
#: Top-level config sections read by others (the task builder, the launcher).
EXTRA_KEYS = ("task", "distributed", "name", "description")


class ConfigError(ValueError):
    """A config value is invalid; the message names the key and the value."""


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    if cfg is None:
        return default
    if isinstance(cfg, Mapping):
        return cfg.get(key, default)
    return getattr(cfg, key, default) if hasattr(cfg, key) else default


def _real(name: str, value: Any, *, low: float | None = None, strict: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(value):
        raise ConfigError(f"config.{name} must be a number, got {value!r}")
    value = float(value)
    if math.isinf(value):
        raise ConfigError(f"config.{name} must be finite, got {value!r}")
    if low is not None and (value <= low if strict else value < low):
        raise ConfigError(f"config.{name} must be {'>' if strict else '>='} {low}, got {value!r}")
    return value


def _int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ConfigError(f"config.{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(f"config.{name} must be one of {choices}, got {value!r}")
    return value


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
    lr_multipliers: Any = ()

    def __post_init__(self) -> None:
        pairs = self.lr_multipliers
        pairs = tuple(sorted(dict(pairs).items())) if pairs else ()
        for name, m in pairs:
            _real(f"optimizer.lr_multipliers.{name}", m, low=0)
        object.__setattr__(self, "lr_multipliers", pairs)
        _choice("optimizer.name", self.name, OPTIMIZERS)
        _real("optimizer.lr", self.lr, low=0)
        _choice("optimizer.schedule", self.schedule, SCHEDULES)
        _int("optimizer.warmup_steps", self.warmup_steps, 0)
        for k in ("b1", "b2"):
            v = _real(f"optimizer.{k}", getattr(self, k), low=0.0, strict=False)
            if v >= 1.0:
                raise ConfigError(f"config.optimizer.{k} must be in [0, 1), got {v!r}")
        _real("optimizer.eps", self.eps, low=0)
        _real("optimizer.weight_decay", self.weight_decay, low=0.0, strict=False)
        if self.momentum is not None:
            _real("optimizer.momentum", self.momentum, low=0.0, strict=False)
        if self.name == "sgd" and self.weight_decay:
            raise ConfigError("config.optimizer.weight_decay is only supported with adam")


@dataclasses.dataclass(frozen=True)
class PrivacySettings:
    """Clipping and noise. Give ``noise_multiplier`` or ``target_epsilon`` (DP methods)."""

    l2_clip: float = 0.1
    clip_fn: str = "abadi"
    gamma: float | None = None
    noise_multiplier: float | None = None
    target_epsilon: float | None = None
    max_epsilon: float | None = None
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
        if isinstance(self.delta, str) and self.delta not in DELTA_RULES:
            with contextlib.suppress(ValueError):  # a number from the command line is a str
                object.__setattr__(self, "delta", float(self.delta))
        if self.noise_seed is not None:
            _int("privacy.noise_seed", self.noise_seed, 0)
        if not isinstance(self.log_private_diagnostics, bool):
            raise ConfigError(
                "config.privacy.log_private_diagnostics must be a bool, got "
                f"{self.log_private_diagnostics!r}"
            )
        _real("privacy.l2_clip", self.l2_clip, low=0)
        _real("privacy.loss_clip", self.loss_clip, low=0)
        if self.loss_noise_multiplier is not None:
            _real("privacy.loss_noise_multiplier", self.loss_noise_multiplier, low=0)
        _choice("privacy.clip_fn", self.clip_fn, ("abadi", "automatic"))
        if self.clip_fn == "automatic":
            if self.gamma is None:
                raise ConfigError("config.privacy.clip_fn='automatic' needs privacy.gamma > 0")
            _real("privacy.gamma", self.gamma, low=0.0)
        elif self.gamma is not None:
            raise ConfigError(
                f"config.privacy.gamma is only used with clip_fn='automatic', got {self.gamma!r}"
            )
        if self.noise_multiplier is not None:
            _real("privacy.noise_multiplier", self.noise_multiplier, low=0.0, strict=False)
        for k in ("target_epsilon", "max_epsilon"):
            if getattr(self, k) is not None:
                _real(f"privacy.{k}", getattr(self, k), low=0.0)
        if isinstance(self.delta, str):
            if self.delta not in DELTA_RULES:
                raise ConfigError(
                    f"config.privacy.delta must be a number in (0, 1) or one of "
                    f"{DELTA_RULES}, got {self.delta!r}"
                )
        elif self.delta is not None:
            d = _real("privacy.delta", self.delta, low=0.0)
            if d >= 1.0:
                raise ConfigError(f"config.privacy.delta must be in (0, 1), got {d!r}")
        _choice("privacy.accountant", self.accountant, ("pld", "rdp"))

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
        _real("two_phase.full_epochs", self.full_epochs, low=0)
        _real("two_phase.full_lr", self.full_lr, low=0)
        _choice("two_phase.full_engine", self.full_engine, FULL_ENGINES)


@dataclasses.dataclass(frozen=True)
class MeshSettings:
    """Device mesh ``("data", "model")``; ``data=-1`` takes the remaining devices."""

    data: int = -1
    model: int = 1
    fsdp: bool = False

    def __post_init__(self) -> None:
        if self.data != -1:
            _int("mesh.data", self.data, 1)
        _int("mesh.model", self.model, 1)
        if not isinstance(self.fsdp, bool):
            raise ConfigError(f"config.mesh.fsdp must be a bool, got {self.fsdp!r}")


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
    mesh: MeshSettings = MeshSettings()
    eval_every: int = 0
    eval_batch_size: int | None = None
    log_every: int = 1
    checkpoint_every: int = 0
    keep_checkpoints: int = 2

    def __post_init__(self) -> None:
        _choice("method", self.method, METHODS)
        _choice("engine", self.engine, FULL_ENGINES)
        _int("seed", self.seed, 0)
        _int("batch_size", self.batch_size, 1)
        _int("physical_batch_size", self.physical_batch_size, 1)
        if self.physical_batch_size > self.batch_size:
            raise ConfigError(
                f"config.physical_batch_size={self.physical_batch_size} is larger than the "
                f"logical config.batch_size={self.batch_size}"
            )
        _choice("sampler", self.sampler, SAMPLERS)
        if self.steps is None and self.epochs is None:
            raise ConfigError("give config.epochs or config.steps")
        if self.steps is not None:
            _int("steps", self.steps, 1)
        if self.epochs is not None:
            _real("epochs", self.epochs, low=0.0)
        if self.eval_batch_size is not None:
            _int("eval_batch_size", self.eval_batch_size, 1)
        _int("eval_every", self.eval_every, 0)
        _int("log_every", self.log_every, 1)
        _int("checkpoint_every", self.checkpoint_every, 0)
        _int("keep_checkpoints", self.keep_checkpoints, 1)
        if self.private:
            self.privacy.check_private()
            if self.sampler == "fixed" and self.privacy.accountant != "rdp":
                raise ConfigError(
                    "config.sampler='fixed' is accounted as sampling without replacement, "
                    "which only the RDP accountant supports: set config.privacy.accountant='rdp'"
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
        return self.method in ("dp_full", "dp_bitfit", "two_phase")

    @classmethod
    def from_config(cls, config: Any) -> TrainSettings:
        """Parses an ml_collections ``ConfigDict`` (or a nested mapping)."""
        required = ("method", "batch_size", "physical_batch_size")
        missing = [k for k in required if _get(config, k) is None]
        if missing:
            raise ConfigError(f"config is missing required key(s): {missing}")
        known = {f.name for f in dataclasses.fields(cls)} | set(EXTRA_KEYS)
        unknown = sorted(set(config.keys()) - known)
        if unknown:
            raise ConfigError(f"unknown top-level config key(s) {unknown}; known: {sorted(known)}")

        def sub(kind: type, key: str) -> Any:
            section = _get(config, key)
            names = [f.name for f in dataclasses.fields(kind)]
            if section is None:
                return kind()
            keys = set(section.keys())
            unknown = sorted(keys - set(names))
            if unknown:
                raise ConfigError(f"unknown key(s) in config.{key}: {unknown}; known: {names}")
            return kind(**{k: _get(section, k) for k in names if k in keys})

        top = [f.name for f in dataclasses.fields(cls)]
        kwargs = {k: _get(config, k) for k in top if _get(config, k) is not None}
        kwargs.update(
            optimizer=sub(OptimizerSettings, "optimizer"),
            privacy=sub(PrivacySettings, "privacy"),
            two_phase=sub(TwoPhaseSettings, "two_phase"),
            mesh=sub(MeshSettings, "mesh"),
        )
        if _get(config, "steps") is not None and _get(config, "epochs") is not None:
            kwargs["epochs"] = None  # steps wins
        return cls(**kwargs)
