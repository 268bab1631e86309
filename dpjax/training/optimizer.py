"""The optimizer of a phase: Adam(W) or SGD after the noise, with its schedule.

:class:`dpjax.Mechanism` puts ``privatize`` (its noise, scaled by the clipped gradient's
own sensitivity) in front of this chain; nothing here knows the clip norm. The
learning-rate schedule spans the phase's own steps (``linear``: linear decay to 0, as in
the papers; ``constant``), with optional linear warmup.

Example:
    >>> import jax.numpy as jnp
    >>> tx = make_optimizer(OptimizerSettings(lr=1e-3), lr=1e-3, steps=10)
    >>> state = tx.init({"w": jnp.zeros(2)})
"""

from __future__ import annotations

from typing import Any

import jax
import optax

from dpjax.optim import PrivatizeState
from dpjax.training.settings import OptimizerSettings

__all__ = ["find_privatize_state", "make_optimizer", "make_schedule", "scale_by_name"]


def scale_by_name(multipliers: tuple[tuple[str, float], ...]) -> optax.GradientTransformation:
    """Multiplies the update of every leaf whose path contains ``name`` by ``m``."""
    table = dict(multipliers)

    def factor(path: Any) -> float:
        names = {str(getattr(k, "key", getattr(k, "name", k))) for k in path}
        out = 1.0
        for name, m in table.items():
            if name in names:
                out *= m
        return out

    def update_fn(updates: Any, state: Any, params: Any = None) -> tuple[Any, Any]:
        del params
        scaled = jax.tree_util.tree_map_with_path(lambda p, u: u * factor(p), updates)
        return scaled, state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def make_schedule(settings: OptimizerSettings, lr: float, steps: int) -> optax.Schedule:
    """The learning rate as a function of the phase's update count."""
    warmup = min(settings.warmup_steps, max(steps - 1, 0))
    rest = max(steps - warmup, 1)
    if settings.schedule == "linear":
        main = optax.linear_schedule(lr, 0.0, rest)
    else:
        main = optax.constant_schedule(lr)
    if warmup == 0:
        return main
    ramp = optax.linear_schedule(0.0, lr, warmup)
    return optax.join_schedules([ramp, main], [warmup])


def make_optimizer(
    settings: OptimizerSettings,
    *,
    lr: float,
    steps: int,
) -> optax.GradientTransformation:
    """``adamw | sgd`` (then the per-name lr multipliers) for one phase."""
    schedule = make_schedule(settings, lr, steps)
    if settings.name == "adam":
        inner = optax.adamw(
            schedule,
            b1=settings.b1,
            b2=settings.b2,
            eps=settings.eps,
            weight_decay=settings.weight_decay,
        )
    else:
        inner = optax.sgd(schedule, momentum=settings.momentum)
    if settings.lr_multipliers:
        return optax.chain(inner, scale_by_name(settings.lr_multipliers))
    return inner


def find_privatize_state(opt_state: Any) -> PrivatizeState:
    """The :class:`PrivatizeState` (noise key, update count) inside an optimizer state."""
    found = [
        s
        for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, PrivatizeState))
        if isinstance(s, PrivatizeState)
    ]
    if len(found) != 1:
        raise ValueError(f"expected one PrivatizeState in the optimizer state, found {len(found)}")
    return found[0]
