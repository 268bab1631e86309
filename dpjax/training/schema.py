"""The config schema: an ``ml_collections.ConfigDict`` skeleton derived from the settings.

:func:`default_config` holds every key :class:`~dpjax.training.settings.TrainSettings`
reads (and ``distributed``), at the dataclass defaults and typed so that command-line
overrides parse: experiment configs start from it instead of spelling the keys again.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

import ml_collections
from ml_collections.config_dict import FieldReference

from dpjax.training.settings import DistributedSettings, TrainSettings

__all__ = ["default_config"]

_SCALARS = (bool, int, float, str)


def _skeleton_value(hint: Any, default: Any) -> Any:
    """The config value of a field: a section, a plain default or a typed reference.

    A field of one scalar type holds its default (typed by it); an optional one a
    ``FieldReference`` of that type (so ``None`` and command-line overrides both work);
    any other field (``delta``: number or rule, ``l2_clip``: number or mapping) a
    reference typed ``object``, which the command line parses as a Python literal and
    otherwise keeps as a string.
    """
    if dataclasses.is_dataclass(hint):
        return _skeleton(hint)
    args = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    kinds = [a for a in args if a is not type(None)]
    if len(kinds) == 1 and kinds[0] in _SCALARS:
        if len(args) == 1 and default is not None:
            return default
        return FieldReference(default, field_type=kinds[0])
    return FieldReference(default, field_type=object)


def _skeleton(kind: type) -> ml_collections.ConfigDict:
    hints = typing.get_type_hints(kind)
    c = ml_collections.ConfigDict()
    for f in dataclasses.fields(kind):
        default = None if f.default is dataclasses.MISSING else f.default
        c[f.name] = _skeleton_value(hints[f.name], default)
    return c


def default_config() -> ml_collections.ConfigDict:
    """Every config key the trainer reads, at the settings' defaults: the one schema.

    Built from the settings dataclasses (:class:`TrainSettings` and its sections, plus
    ``distributed``); experiment configs start from it and set what they change.
    ``method``, ``batch_size`` and ``physical_batch_size`` have no default: they are typed
    placeholders to fill. ``name``, ``description`` and ``task`` are left to the experiment.

    Example:
      >>> c = default_config()
      >>> c.method, c.batch_size, c.physical_batch_size = "dp_bitfit", 1000, 50
      >>> c.privacy.target_epsilon, c.privacy.delta = 8.0, "1/(2n)"
      >>> TrainSettings.from_config(c).privacy.delta
      '1/(2n)'
      >>> c.privacy.delta = 1e-5  # a number or a rule, in the config and on the command line
    """
    c = _skeleton(TrainSettings)
    c.name = ""
    c.description = ""
    c.task = ml_collections.ConfigDict()
    c.distributed = _skeleton(DistributedSettings)
    return c
