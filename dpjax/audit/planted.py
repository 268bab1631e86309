"""Planted bugs: known-broken mechanisms that every audit must catch.

An audit that passes everything proves nothing. Each context manager here swaps one
piece of dpjax for a broken version while it is active (module attributes are patched
and restored on exit; jit caches keyed on the patched functions are cleared), so that
tests, notebooks and ``python -m dpjax.audit --plant=...`` can check that the audits
*fail* on:

* :func:`no_clipping` -- every clip factor is 1 (per-example gradients summed unclipped);
* :func:`noise_scale` -- the noise std multiplied by ``factor`` (1/10, 0.8, ...) while
  epsilon is still reported for the configured sigma;
* :func:`reused_key` -- the privatizer adds the same noise at every step;
* :func:`bf16_sum` -- the clipped sum rounded to bfloat16 before the noise (what dpjax
  did for bfloat16 models before float32 sums);
* :func:`mixing_loss` -- a loss wrapper whose per-example losses depend on the whole
  batch (a batch statistic), which engines running the batched loss let through.

Example:
    >>> import jax.numpy as jnp, dpjax
    >>> from dpjax.audit import planted
    >>> loss_fn = lambda p, b: (b["x"] @ p["w"]) ** 2
    >>> batch = {"x": jnp.ones((2, 3)) * 10.0}
    >>> with planted.no_clipping():
    ...     g, _ = dpjax.clipped_grad(loss_fn, l2_clip=1.0)({"w": jnp.ones(3)}, batch)
    >>> float(jnp.linalg.norm(g["w"])) > 2.0  # two examples, clip 1: impossible unbroken
    True
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp

from dpjax import clip_rules, optim

__all__ = ["PLANTS", "bf16_sum", "mixing_loss", "no_clipping", "noise_scale", "reused_key"]


@contextlib.contextmanager
def _patched(owner: Any, name: str, value: Any) -> Iterator[None]:
    old = getattr(owner, name)
    setattr(owner, name, value)
    jax.clear_caches()
    try:
        yield
    finally:
        setattr(owner, name, old)
        jax.clear_caches()


def no_clipping() -> contextlib.AbstractContextManager:
    """Clip factors of 1 for every kept row: per-example gradients summed unclipped."""
    original = clip_rules.ClipPlan.factors

    def factors(self: Any, sq_norms: jax.Array, mask: jax.Array) -> Any:
        c, keep = original(self, sq_norms, mask)
        return jnp.where(keep[:, None], jnp.ones_like(c), 0.0), keep

    return _patched(clip_rules.ClipPlan, "factors", factors)


def noise_scale(factor: float) -> contextlib.AbstractContextManager:
    """The privatizer's noise std times ``factor`` (epsilon still reported for sigma)."""
    original = optim._add_noise

    def add_noise(updates: Any, key: jax.Array, std: float, scale: float, params: Any) -> Any:
        return original(updates, key, std * factor, scale, params)

    return _patched(optim, "_add_noise", add_noise)


def reused_key() -> contextlib.AbstractContextManager:
    """The privatizer never advances its key: the same noise at every step."""
    return _patched(optim, "_split_key", lambda key: (key, key))


def bf16_sum() -> contextlib.AbstractContextManager:
    """The clipped sum is rounded to bfloat16 before the noise is added."""
    original = optim._add_noise

    def add_noise(updates: Any, key: jax.Array, std: float, scale: float, params: Any) -> Any:
        rounded = jax.tree.map(lambda u: u.astype(jnp.bfloat16).astype(u.dtype), updates)
        return original(rounded, key, std, scale, params)

    return _patched(optim, "_add_noise", add_noise)


def mixing_loss(
    loss_fn: Callable[[Any, Any], jax.Array], strength: float = 1.0
) -> Callable[[Any, Any], jax.Array]:
    """Batch centring: every float input shifted by ``-strength`` x its batch mean.

    Each example's loss then depends on the other examples' data, as with BatchNorm in
    training mode. Under the ``vmap`` engine each example runs alone (a batch of one), so
    nothing mixes; ``bitfit`` and ``ghost`` run the batched loss, where adding one
    example moves every other example's gradient. A batch without float inputs is
    mixed through the loss instead: ``loss_i * (1 + strength * mean_j loss_j)``.
    """

    def mixed(params: Any, batch: Any) -> jax.Array:
        mask = batch.get("mask")
        floats = [
            k for k, v in batch.items() if k != "mask" and jnp.issubdtype(v.dtype, jnp.floating)
        ]
        if floats:
            w = jnp.ones(batch[floats[0]].shape[0]) if mask is None else jnp.asarray(mask, float)
            centred = dict(batch)
            for k in floats:
                x = batch[k]
                wx = w.reshape((-1,) + (1,) * (x.ndim - 1)).astype(x.dtype)
                mean = jnp.sum(x * wx, axis=0) / jnp.maximum(jnp.sum(w), 1.0).astype(x.dtype)
                centred[k] = x - strength * mean
            return loss_fn(params, centred)
        loss = loss_fn(params, batch)
        w = jnp.ones_like(loss) if mask is None else jnp.asarray(mask, loss.dtype)
        mean = jnp.sum(loss * w) / jnp.maximum(jnp.sum(w), 1.0)
        return loss * (1 + strength * mean)

    return mixed


#: Planted bugs by name (``python -m dpjax.audit --plant=NAME``), as context factories.
PLANTS: dict[str, Callable[[], contextlib.AbstractContextManager]] = {
    "no_clipping": no_clipping,
    "noise_tenth": lambda: noise_scale(0.1),
    "noise_0.8": lambda: noise_scale(0.8),
    "reused_key": reused_key,
    "bf16_sum": bf16_sum,
}
