"""The train-step factory: one jitted micro-step and one jitted apply, for every method.

A logical step of ``k`` physical micro-batches is::

    acc = micro_step(train, frozen, mb_1)
    acc = add(acc, micro_step(train, frozen, mb_j))     # j = 2..k, on device
    state = apply(state, acc.grads)                       # noise ONCE, then optimizer

DP phases compute the clipped sum ``sum_i c_i g_i`` with :func:`dpjax.clipped_grad`
(engine ``vmap`` / ``bitfit`` / ``ghost``; ``spmd_axis_name="data"`` under a mesh);
non-private phases compute the plain mask-weighted sum ``sum_i m_i g_i``. ``apply`` runs
the optax chain whose head is :func:`dpjax.optim.privatize`.

Example:
    >>> import jax, jax.numpy as jnp, optax, dpjax
    >>> def loss_fn(p, b):
    ...     return (b["x"] @ p["w"] - b["y"]) ** 2
    >>> micro = make_micro_step(loss_fn, engine=None, trainable=dpjax.all_leaves)
    >>> batch = {"x": jnp.ones((4, 2)), "y": jnp.zeros(4), "mask": jnp.ones(4, bool)}
    >>> train, frozen = dpjax.partition({"w": jnp.ones(2)}, dpjax.all_leaves)
    >>> grads, stats = micro(train, frozen, batch)
    >>> float(stats.num_valid), grads["w"].tolist()
    (4.0, [16.0, 16.0])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from dpjax.clipping import clipped_grad
from dpjax.partition import Predicate, combine

__all__ = ["MicroStats", "add_micro", "make_apply", "make_micro_step"]


class MicroStats(NamedTuple):
    """Scalar sums over the real rows of one or more micro-batches.

    In a private run these are statistics of the private batch: the trainer writes them
    only with ``privacy.log_private_diagnostics`` (they are not covered by epsilon), and
    releases ``clipped_loss_sum`` only with Gaussian noise (``privacy.loss_noise_multiplier``).
    """

    loss_sum: jax.Array
    num_valid: jax.Array
    norm_sum: jax.Array
    num_clipped: jax.Array
    clipped_loss_sum: jax.Array

    def summary(self) -> dict[str, float]:
        """Host-side means: ``loss``, ``grad_norm`` (before clipping), ``clipped_frac``."""
        n = max(float(self.num_valid), 1.0)
        return {
            "loss": float(self.loss_sum) / n,
            "grad_norm": float(self.norm_sum) / n,
            "clipped_frac": float(self.num_clipped) / n,
            "batch_rows": float(self.num_valid),
        }


MicroStep = Callable[[Any, Any, dict[str, jax.Array]], tuple[Any, MicroStats]]


def make_micro_step(
    loss_fn: Callable[[Any, Any], jax.Array],
    *,
    engine: str | None,
    trainable: Predicate,
    l2_clip: float = 1.0,
    clip_fn: str = "abadi",
    gamma: float | None = None,
    spmd_axis_name: str | None = None,
    loss_clip: float | None = None,
) -> MicroStep:
    """``micro_step(train, frozen, batch) -> (grad_sum, MicroStats)`` (not jitted).

    Args:
      loss_fn: ``loss_fn(params, batch) -> [B]``.
      engine: per-example engine name for a DP phase; ``None`` for the non-private sum.
      trainable: the phase's trainable predicate (the one ``train`` was split with).
      l2_clip, clip_fn, gamma: clipping of DP phases.
      spmd_axis_name: mesh axis of the batch, forwarded to the vmap engine.
      loss_clip: ``L``: ``MicroStats.clipped_loss_sum`` sums each real row's finite loss
        clipped to ``[0, L]`` (sensitivity ``L``); ``None`` leaves it 0.
    """

    def clipped_losses(loss: jax.Array, mask: jax.Array) -> jax.Array:
        if loss_clip is None:
            return jnp.zeros((), jnp.float32)
        loss = loss.astype(jnp.float32)
        ok = mask & jnp.isfinite(loss)
        return jnp.sum(jnp.where(ok, jnp.clip(loss, 0.0, loss_clip), 0.0))

    if engine is not None:
        grad_fn = clipped_grad(
            loss_fn,
            l2_clip=l2_clip,
            method=engine,
            trainable=trainable,
            clip_fn=clip_fn,
            gamma=gamma,
            spmd_axis_name=spmd_axis_name,
        )

        def dp_step(train: Any, frozen: Any, batch: dict[str, jax.Array]) -> tuple[Any, Any]:
            grads, info = grad_fn(combine(train, frozen), batch)
            f32 = jnp.float32
            stats = MicroStats(
                loss_sum=jnp.sum(info.loss.astype(f32)),
                num_valid=info.num_valid.astype(f32),
                norm_sum=jnp.sum(info.norms.astype(f32)),
                num_clipped=info.num_clipped.astype(f32),
                clipped_loss_sum=clipped_losses(info.loss, batch["mask"].astype(bool)),
            )
            return grads, stats

        return dp_step

    def plain_step(train: Any, frozen: Any, batch: dict[str, jax.Array]) -> tuple[Any, Any]:
        mask = batch["mask"].astype(bool)

        def total(t: Any) -> tuple[jax.Array, jax.Array]:
            losses = loss_fn(combine(t, frozen), batch)
            losses = jnp.where(mask, losses.astype(jnp.float32), 0.0)
            return jnp.sum(losses), losses

        grads, losses = jax.grad(total, has_aux=True)(train)
        zero = jnp.zeros((), jnp.float32)
        n = jnp.sum(mask.astype(jnp.float32))
        stats = MicroStats(jnp.sum(losses), n, zero, zero, clipped_losses(losses, mask))
        return grads, stats

    return plain_step


def add_micro(acc: tuple[Any, MicroStats], new: tuple[Any, MicroStats]) -> Any:
    """Adds a micro-step's ``(grads, stats)`` to the running sum (jit with donation)."""
    return jax.tree.map(jnp.add, acc, new)


def make_apply(tx: optax.GradientTransformation) -> Callable[[Any, Any], Any]:
    """``apply(state, grad_sum) -> state``: one optax update (noise inside) and step + 1."""

    def apply(state: Any, grad_sum: Any) -> Any:
        updates, opt_state = tx.update(grad_sum, state.opt_state, state.train)
        train = optax.apply_updates(state.train, updates)
        return state.replace(step=state.step + 1, train=train, opt_state=opt_state)

    return apply
