"""Noise inside Optax: the DP privatizer, per-example aggregation, DP-SGD / DP-Adam.

The gradient that enters :func:`privatize` is the clipped SUM of per-example gradients
(what :func:`dpjax.clipped_grad` returns). ``privatize`` adds ``N(0, sigma^2 C^2)`` once
and divides by the *public* expected batch size. Its PRNG key lives in the optimizer
state and is split on every update; there is no default key.

Example:
    >>> import jax, jax.numpy as jnp, optax, dpjax
    >>> tx = optax.chain(
    ...     dpjax.optim.privatize(noise_multiplier=1.0, l2_clip=0.1,
    ...                           expected_batch_size=256, key=jax.random.key(0)),
    ...     optax.adam(1e-3),
    ... )
    >>> params = {"w": jnp.zeros(3)}
    >>> state = tx.init(params)
    >>> updates, state = tx.update({"w": jnp.ones(3)}, state, params)

Gradient accumulation: sum the clipped sums of a logical batch's micro-batches and
privatize once per logical batch -- :meth:`dpjax.Mechanism.logical_step` does exactly that
for any number of micro-batches (a Poisson draw gives a variable number). Never add noise
per micro-batch. ``privatize`` and ``dp_aggregate`` take keyword arguments only: the
noise multiplier and the clip norm are both plain numbers, and a swap must not pass
silently.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from dpjax.clip_rules import clip_plan, sum_dtype
from dpjax.engines.vmap import clip_and_sum
from dpjax.validate import check_real

__all__ = [
    "PrivatizeState",
    "dp_adam",
    "dp_aggregate",
    "dp_sgd",
    "privatize",
]


class PrivatizeState(NamedTuple):
    """State of :func:`privatize`: the noise key (split every step) and the step count."""

    key: jax.Array
    count: jax.Array


def _check_key(key: Any) -> jax.Array:
    if key is None:
        raise TypeError(
            "a PRNG key is required for DP noise (e.g. key=jax.random.key(seed)); "
            "dpjax never uses a default key"
        )
    key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    typed = jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
    if typed and key.shape != ():
        raise TypeError(
            f"key must be a single PRNG key, got a batch of keys of shape {key.shape}; "
            "pass one key (e.g. keys[0]), privatize splits it on every update"
        )
    if not typed and not (key.dtype == jnp.uint32 and key.shape == (2,)):
        raise TypeError(f"key must be a JAX PRNG key, got dtype {key.dtype} shape {key.shape}")
    return key


def _split_key(key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(key of the next update, key of this update's noise)``: never the same key twice."""
    next_key, noise_key = jax.random.split(key)
    return next_key, noise_key


def _add_noise(updates: Any, key: jax.Array, std: float, scale: float, params: Any) -> Any:
    """``(u + N(0, std^2)) * scale`` in float32 (float64), then cast to the params' dtype."""
    leaves, treedef = jax.tree.flatten(updates)
    targets = [u.dtype for u in leaves] if params is None else _param_dtypes(params, treedef)
    keys = jax.random.split(key, max(len(leaves), 1))
    noisy = []
    for k, u, target in zip(keys, leaves, targets, strict=False):
        dt = sum_dtype(u.dtype)
        z = jax.random.normal(k, jnp.shape(u), dt)
        noisy.append(((u.astype(dt) + std * z) * scale).astype(target))
    return jax.tree.unflatten(treedef, noisy)


def _param_dtypes(params: Any, treedef: Any) -> list[Any]:
    try:
        leaves = treedef.flatten_up_to(params)
    except (ValueError, TypeError) as e:
        raise ValueError(
            f"privatize: params do not have the structure of the updates ({treedef}): {e}"
        ) from e
    return [jnp.result_type(p) for p in leaves]


def privatize(
    *,
    noise_multiplier: float,
    l2_clip: float,
    expected_batch_size: int,
    key: jax.Array,
) -> optax.GradientTransformation:
    """Adds Gaussian noise ``N(0, (noise_multiplier * l2_clip)^2)`` and normalises.

    Args:
      noise_multiplier: ``sigma >= 0`` (0 means no privacy; useful for baselines).
      l2_clip: sensitivity ``C`` of the incoming clipped sum (``grad_fn.sensitivity``).
      expected_batch_size: the public expected batch size ``q * N`` the sum is divided by
        (never the number of rows actually sampled).
      key: a JAX PRNG key; required. It is split on every update.

    Returns:
      An ``optax.GradientTransformation`` for the head of an ``optax.chain``. The noise is
      drawn and added in float32 (float64 for float64 sums) whatever the model dtype;
      the noisy update is cast to the dtype of ``params`` when ``update`` is given them
      (as ``optax.chain`` does), and only then.
    """
    sigma = check_real("noise_multiplier", noise_multiplier, "[0, inf)")
    clip = check_real("l2_clip", l2_clip, "(0, inf)")
    batch = check_real("expected_batch_size", expected_batch_size, "(0, inf)")
    key = _check_key(key)
    std, scale = sigma * clip, 1.0 / batch

    def init_fn(params: Any) -> PrivatizeState:
        del params
        return PrivatizeState(key=key, count=jnp.zeros((), jnp.int32))

    def update_fn(
        updates: Any, state: PrivatizeState, params: Any = None
    ) -> tuple[Any, PrivatizeState]:
        next_key, noise_key = _split_key(state.key)
        noisy = _add_noise(updates, noise_key, std, scale, params)
        return noisy, PrivatizeState(key=next_key, count=state.count + 1)

    return optax.GradientTransformation(init_fn, update_fn)


def dp_aggregate(
    *,
    l2_clip: float,
    noise_multiplier: float,
    expected_batch_size: int,
    key: jax.Array,
) -> optax.GradientTransformation:
    """For callers holding per-example gradients (leading batch axis on every leaf).

    Clips each example's gradient to ``l2_clip`` (flat, abadi), sums with one contraction
    per leaf, adds noise once and divides by ``expected_batch_size``. Examples with a
    non-finite gradient contribute zero.
    """
    clip = check_real("l2_clip", l2_clip, "(0, inf)")
    inner = privatize(
        noise_multiplier=noise_multiplier,
        l2_clip=clip,
        expected_batch_size=expected_batch_size,
        key=key,
    )

    def update_fn(updates: Any, state: PrivatizeState, params: Any = None) -> tuple[Any, Any]:
        leaves = jax.tree.leaves(updates)
        sizes = {jnp.shape(x)[0] if jnp.ndim(x) else None for x in leaves}
        if len(sizes) != 1 or None in sizes:
            raise ValueError(
                f"dp_aggregate needs per-example gradients with one leading batch axis; "
                f"got leading dimensions {sorted(map(str, sizes))}"
            )
        plan = clip_plan(updates, clip)
        (size,) = sizes
        summed = clip_and_sum(updates, plan, jnp.ones((size,), bool)).grads
        return inner.update(summed, state, params)

    return optax.GradientTransformation(inner.init, update_fn)


def dp_sgd(
    learning_rate: optax.ScalarOrSchedule,
    *,
    noise_multiplier: float,
    l2_clip: float,
    expected_batch_size: int,
    key: jax.Array,
    momentum: float | None = None,
    nesterov: bool = False,
) -> optax.GradientTransformation:
    """DP-SGD on clipped sums: ``chain(privatize(...), sgd(...))``."""
    return optax.chain(
        privatize(
            noise_multiplier=noise_multiplier,
            l2_clip=l2_clip,
            expected_batch_size=expected_batch_size,
            key=key,
        ),
        optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov),
    )


def dp_adam(
    learning_rate: optax.ScalarOrSchedule,
    *,
    noise_multiplier: float,
    l2_clip: float,
    expected_batch_size: int,
    key: jax.Array,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
) -> optax.GradientTransformation:
    """DP-Adam(W) on clipped sums: ``chain(privatize(...), adamw(...))``."""
    return optax.chain(
        privatize(
            noise_multiplier=noise_multiplier,
            l2_clip=l2_clip,
            expected_batch_size=expected_batch_size,
            key=key,
        ),
        optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay),
    )
