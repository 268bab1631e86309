"""The one way to read a key from a config section: ``ConfigDict``, mapping or ``None``.

Experiment configs are ``ml_collections.ConfigDict`` objects; tests, results files and
checkpoints hand plain dicts around. :func:`cfg_get` reads both the same way, so no reader
has to ask which one it holds.

Example:
    >>> import ml_collections
    >>> cfg = ml_collections.ConfigDict({"max_length": 64, "model": None})
    >>> cfg_get(cfg, "max_length"), cfg_get({"max_length": 64}, "max_length")
    (64, 64)
    >>> cfg_get(cfg, "model", "tiny"), cfg_get(None, "model", "tiny")
    ('tiny', 'tiny')
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["cfg_get", "cfg_keys"]


def cfg_get(cfg: Any, key: str, default: Any = None) -> Any:
    """``cfg[key]``, or ``default`` when ``cfg`` is ``None``, lacks ``key`` or holds ``None``.

    Args:
      cfg: a ``ConfigDict``, a mapping or ``None``.
      key: the key to read.
      default: returned when there is no value.
    """
    if cfg is None:
        return default
    if isinstance(cfg, Mapping):
        value = cfg.get(key, default)
    else:
        value = getattr(cfg, key, default) if key in cfg else default
    return default if value is None else value


def cfg_keys(cfg: Any) -> list[str]:
    """The keys of a ``ConfigDict`` or mapping (none for ``None``), in their order.

    Example:
      >>> cfg_keys({"lr": 0.1, "name": "adam"}), cfg_keys(None)
      (['lr', 'name'], [])
    """
    return [] if cfg is None else list(cfg.keys())
