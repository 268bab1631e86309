"""Per-example engines: each turns a batched loss into clipped, summed gradients.

An engine is a function ``engine(loss_fn, train, frozen, batch, plan) -> EngineResult``:

* ``train``: the trainable leaves (``None`` at frozen ones), the only thing differentiated;
* ``frozen``: the complementary tree, closed over;
* ``batch``: one micro-batch, every leaf with leading axis ``B``, ``batch["mask"]`` bool;
* ``plan``: a :class:`dpjax.clip_rules.ClipPlan` (groups, norms, clip function).

It returns the clipped sum ``sum_i c_i g_i`` (tree like ``train``, float32 or wider
whatever the parameter dtype), the per-example
squared norms per group ``[B, K]`` (float32, before clipping), and the per-example loss.
Rows outside the mask or with a non-finite gradient must contribute exactly zero.
"""

from __future__ import annotations

from collections.abc import Callable

from dpjax.engines.base import Engine, EngineResult

__all__ = ["ENGINES", "Engine", "EngineResult", "get_engine", "register_engine"]

ENGINES: dict[str, Engine] = {}


def register_engine(name: str) -> Callable[[Engine], Engine]:
    """Decorator registering an engine under ``name`` (the ``method=`` value)."""

    def deco(fn: Engine) -> Engine:
        ENGINES[name] = fn
        return fn

    return deco


def get_engine(name: str) -> Engine:
    """The engine registered as ``name``; a clear error for unknown names."""
    _load_builtin()
    if name not in ENGINES:
        raise ValueError(f"unknown method {name!r}; available: {sorted(ENGINES)}")
    return ENGINES[name]


def _load_builtin() -> None:
    import importlib

    for module in ("vmap", "bitfit", "ghost"):
        try:
            importlib.import_module(f"dpjax.engines.{module}")
        except ModuleNotFoundError as e:  # an engine not written yet
            if e.name != f"dpjax.engines.{module}":
                raise
