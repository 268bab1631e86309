"""Value checks and the allowed choices, shared by the settings, the ledger and the samplers.

Every check returns the value normalised (``float``, ``int``, sorted pairs) or raises
:class:`ConfigError` (a ``ValueError``) with a message naming the value and what is
allowed. The choice lists are the one definition of each vocabulary: configs, the
accountant and the samplers all read them from here.

Example:
    >>> check_real("config.optimizer.lr", 5e-3, "(0, inf)")
    0.005
    >>> check_choice("config.sampler", "poisson", SAMPLINGS)
    'poisson'
    >>> check_clip("config.privacy.l2_clip", {"head": 1.0, "encoder": 0.5})
    (('encoder', 0.5), ('head', 1.0))
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Mapping
from typing import Any

__all__ = [
    "ACCOUNTANTS",
    "BIAS_ADD_METHODS",
    "CLIP_FNS",
    "DELTA_RULES",
    "ENGINES",
    "LORA_METHODS",
    "METHODS",
    "OPTIMIZERS",
    "PRIVATE_METHODS",
    "RENAMED",
    "SAMPLINGS",
    "SCHEDULES",
    "ConfigError",
    "check_bool",
    "check_choice",
    "check_clip",
    "check_regex",
    "check_delta",
    "check_int",
    "check_pairs",
    "check_real",
    "is_section",
]

#: Training methods; the private ones add noise and are accounted.
METHODS = ("nonprivate_full", "nonprivate_bitfit", "nonprivate_bitfit_add", "nonprivate_lora",
           "dp_full", "dp_bitfit", "dp_bitfit_add", "dp_lora", "dp_bitfit_lora",
           "two_phase")  # fmt: skip
#: The methods that add noise and are accounted.
PRIVATE_METHODS = ("dp_full", "dp_bitfit", "dp_bitfit_add", "dp_lora", "dp_bitfit_lora",
                   "two_phase")  # fmt: skip
#: Methods that train LoRA adapters (``dpjax.peft``; config section ``peft``).
LORA_METHODS = ("nonprivate_lora", "dp_lora", "dp_bitfit_lora")
#: DP-BiTFiT-Add: biases added to bias-free layers (``dpjax.peft.add_biases``), then
#: every bias trained (config ``peft.bias_targets``).
BIAS_ADD_METHODS = ("nonprivate_bitfit_add", "dp_bitfit_add")
#: Per-example gradient engines of DP full fine-tuning.
ENGINES = ("vmap", "ghost")
#: Optimizers of the trainer's ``optimizer.name`` (DP-Adam / DP-SGD with the noise inside).
OPTIMIZERS = ("adam", "sgd")
#: Learning-rate schedules of ``optimizer.schedule`` (after the optional warmup).
SCHEDULES = ("constant", "linear")
#: How a batch is drawn, in ``dp_accounting``'s words: ``"poisson"`` (each example joins
#: independently, ``PoissonSampledDpEvent``) or ``"without_replacement"`` (a fixed-size
#: batch drawn afresh every step, ``SampledWithoutReplacementDpEvent``). The config's
#: ``sampler``, the ledger's ``sampling`` and the samplers' ``accounting_kwargs`` use it.
SAMPLINGS = ("poisson", "without_replacement")
#: ``dp_accounting`` accountants: privacy loss distributions (default) or Renyi DP.
ACCOUNTANTS = ("pld", "rdp")
#: Clip functions: ``"abadi"`` ``min(1, C/||g||)`` or ``"automatic"`` ``C/(||g|| + gamma)``.
CLIP_FNS = ("abadi", "automatic")
#: Named rules for delta from the training set size n (see ``accounting.delta_for``).
DELTA_RULES = ("1/(2n)", "n^-1.1")
#: Former names that are refused with a pointer to the current one.
RENAMED = {"shuffle": "without_replacement", "fixed": "without_replacement"}


class ConfigError(ValueError):
    """A setting or argument is invalid; the message names it, its value and what is allowed."""


def is_section(value: Any) -> bool:
    """Whether ``value`` is a mapping or an ``ml_collections.ConfigDict`` (keys and items)."""
    return isinstance(value, Mapping) or (
        hasattr(value, "keys") and hasattr(value, "items") and not isinstance(value, type)
    )


def _interval(spec: str) -> tuple[float, float, bool, bool]:
    lo, hi = (s.strip() for s in spec[1:-1].split(","))
    return float(lo), float(hi), spec[0] == "(", spec[-1] == ")"


def check_real(name: str, value: Any, interval: str | None = None) -> float:
    """A finite real number (not a bool), within ``interval`` when given.

    Args:
      name: what the value is, as the message shows it (``"config.optimizer.lr"``).
      value: the value to check.
      interval: ``"(0, inf)"``, ``"[0, inf)"``, ``"(0, 1)"``, ``"(0, 1]"``, ``"[0, 1)"``.

    Raises:
      ConfigError: not a number, NaN, infinite or outside ``interval``.

    Example:
      >>> check_real("delta", 1e-5, "(0, 1)")
      1e-05
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(value):
        raise ConfigError(f"{name} must be a real number, got {value!r}")
    if math.isinf(value):
        raise ConfigError(f"{name} must be finite, got {value!r}")
    if interval is None:
        return float(value)
    lo, hi, lo_open, hi_open = _interval(interval)
    above = value > lo if lo_open else value >= lo
    below = value < hi if hi_open else value <= hi
    if not (above and below):
        low = f"{lo:g}"
        what = f"{'>' if lo_open else '>='} {low}" if math.isinf(hi) else f"in {interval}"
        raise ConfigError(f"{name} must be {what}, got {value!r}")
    return float(value)


def check_int(name: str, value: Any, minimum: int) -> int:
    """An integer (not a bool) ``>= minimum``.

    Example:
      >>> check_int("steps", 3, 1)
      3
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_bool(name: str, value: Any) -> bool:
    """A ``bool`` (``0`` and ``1`` are refused: a typo should not pass)."""
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be a bool, got {value!r}")
    return value


def check_regex(name: str, value: Any, *, empty: bool = False) -> str:
    """A regular expression string (``""`` allowed only with ``empty``).

    Example:
        >>> check_regex("config.freeze", "intermediate/dense/bias$")
        'intermediate/dense/bias$'
    """
    if not isinstance(value, str) or not (value or empty):
        raise ConfigError(f"{name} must be a regex string, got {value!r}")
    try:
        re.compile(value)
    except re.error as e:
        raise ConfigError(f"{name}={value!r} is not a valid regex: {e}") from e
    return value


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    """One of ``choices``; a former name (:data:`RENAMED`) is refused naming its successor.

    Example:
      >>> check_choice("sampling", "shuffle", SAMPLINGS)
      Traceback (most recent call last):
      ...
      dpjax.validate.ConfigError: sampling='shuffle' was renamed: use 'without_replacement'
    """
    if value in choices:
        return value
    new = RENAMED.get(value) if isinstance(value, str) else None
    if new in choices:
        raise ConfigError(f"{name}={value!r} was renamed: use {new!r}")
    raise ConfigError(f"{name} must be one of {choices}, got {value!r}")


def check_delta(name: str, value: Any) -> float | str:
    """A delta: a number in (0, 1) or one of :data:`DELTA_RULES` (kept as the string).

    Example:
      >>> check_delta("delta", "1/(2n)"), check_delta("delta", 1e-5)
      ('1/(2n)', 1e-05)
    """
    if isinstance(value, str):
        if value not in DELTA_RULES:
            raise ConfigError(
                f"{name} must be a number in (0, 1) or one of {DELTA_RULES}, got {value!r}"
            )
        return value
    return check_real(name, value, "(0, 1)")


def check_pairs(name: str, value: Any, interval: str) -> tuple[tuple[str, float], ...]:
    """A mapping ``{str: number in interval}`` (or its pairs) as sorted ``(key, float)`` pairs.

    Example:
      >>> check_pairs("lr_multipliers", {"head": 10}, "(0, inf)")
      (('head', 10.0),)
    """
    items = value.items() if is_section(value) else value
    try:
        pairs = [(k, v) for k, v in items]
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a mapping {{name: number}}, got {value!r}") from None
    for key, _ in pairs:
        if not isinstance(key, str) or not key:
            raise ConfigError(f"{name} keys must be non-empty strings, got {key!r}")
    if len({k for k, _ in pairs}) != len(pairs):
        raise ConfigError(f"{name} names a key twice: {value!r}")
    return tuple(sorted((k, check_real(f"{name}.{k}", v, interval)) for k, v in pairs))


def check_clip(name: str, value: Any) -> float | tuple[tuple[str, float], ...]:
    """A clip norm: a finite number > 0, or a non-empty ``{group: norm}`` mapping.

    Groups are the top-level module names of the params tree; the mapping comes back as
    sorted ``(group, norm)`` pairs so that settings holding it stay hashable.

    Example:
      >>> check_clip("l2_clip", 0.1)
      0.1
    """
    if isinstance(value, numbers.Real) or value is None or isinstance(value, str):
        return check_real(name, value, "(0, inf)")
    pairs = check_pairs(name, value, "(0, inf)")
    if not pairs:
        raise ConfigError(f"{name} is an empty mapping: give at least one {{group: norm}}")
    return pairs
