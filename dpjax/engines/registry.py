"""The engine registry: ``method=`` names to engine functions.

Engine modules register themselves on import with :func:`register_engine`; the package
``dpjax.engines`` imports the builtin ones (``vmap``, ``bitfit``, ``ghost``), so
:func:`get_engine` always sees them.

Example:
    >>> from dpjax.engines import get_engine
    >>> get_engine("vmap").__name__
    'vmap_engine'
"""

from __future__ import annotations

from collections.abc import Callable

from dpjax.engines.base import Engine

__all__ = ["ENGINES", "get_engine", "register_engine"]

#: Engine name (the ``method=`` of :func:`dpjax.clipped_grad`) -> engine function.
ENGINES: dict[str, Engine] = {}


def register_engine(name: str) -> Callable[[Engine], Engine]:
    """Decorator registering an engine under ``name`` (the ``method=`` value)."""

    def deco(fn: Engine) -> Engine:
        ENGINES[name] = fn
        return fn

    return deco


def get_engine(name: str) -> Engine:
    """The engine registered as ``name``; a clear error for unknown names."""
    if name not in ENGINES:
        raise ValueError(f"unknown method {name!r}; available: {sorted(ENGINES)}")
    return ENGINES[name]
