"""The one tap pass of the ``bitfit`` and ``ghost`` engines: one forward, one backward.

Zero taps are added to the outputs of the tapped calls of a :class:`TapPlan`
(:func:`dpjax.engines.taps.tapped_loss`); the gradient with respect to a tap is the
call's output gradient, reduced over the axes where the tap has size 1. Two ways:

* batched (no direct leaves): one ``jax.grad`` of ``sum(loss_fn(params, batch))`` with
  respect to taps of shape ``(B, *shape)``; ``loss_fn`` runs on the whole batch, as in
  non-private training, and the weights are closed over (no weight gradients);
* vmapped: ``jax.vmap`` over examples of ``jax.grad`` with respect to (taps, direct
  leaves), so the direct leaves get their exact per-example gradients in the same
  backward pass; run by :func:`dpjax.engines.base.vmapped`, which sets ``mixes_rows``
  when the batched program has a grouped convolution.

Either way the result has a leading batch axis ``B`` everywhere. :func:`by_leaf` then
gathers every trainable leaf's contributions and raises on a leaf with none.

Example:
    >>> import flax.linen as nn, jax, jax.numpy as jnp, dpjax
    >>> from dpjax.engines.tap_plan import Rule, plan_taps
    >>> model = nn.Dense(2)
    >>> x = jnp.ones((4, 3))
    >>> params = model.init(jax.random.key(0), x)["params"]
    >>> loss_fn = lambda p, b: model.apply({"params": p}, b["x"]).sum(-1)
    >>> paths = [("bias",), ("kernel",)]
    >>> plan = plan_taps(loss_fn, params, {"x": x}, paths, Rule("demo", lambda c: {"bias": None}))
    >>> train, frozen = dpjax.partition(params, dpjax.all_leaves)
    >>> out = tap_pass(loss_fn, train, frozen, {"x": x}, plan, {":__call__:0": (2,)}, vmap=True)
    >>> out.taps[":__call__:0"].shape, out.direct[0].shape, out.mixes_rows
    ((4, 2), (4, 3, 2), False)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from dpjax.engines import taps
from dpjax.engines.base import check_loss, vmapped
from dpjax.engines.tap_plan import TapPlan, Use
from dpjax.partition import Path, combine, path_to_str

__all__ = ["TapPass", "by_leaf", "tap_pass"]


class TapPass(NamedTuple):
    """What one tap pass returns; every array has a leading batch axis ``B``.

    Attributes:
      loss: ``[B]`` per-example losses.
      taps: ``{key: [B, *shape]}`` tap gradients (output gradients, reduced).
      inputs: ``{key: input}`` of every tapped call (empty unless recorded).
      kwargs: ``{key: {name: array}}`` array keyword arguments (empty unless recorded).
      direct: per-example gradients ``[B, *leaf.shape]`` of the plan's direct leaves.
      mixes_rows: a grouped convolution ran under ``vmap`` (see
        :func:`dpjax.engines.base.vmapped`).
    """

    loss: jax.Array
    taps: dict[str, jax.Array]
    inputs: dict[str, jax.Array]
    kwargs: dict[str, dict[str, jax.Array]]
    direct: list[jax.Array]
    mixes_rows: bool


def tap_pass(
    loss_fn: Any,
    train: Any,
    frozen: Any,
    batch: Any,
    plan: TapPlan,
    shapes: Mapping[str, tuple[int, ...]],
    *,
    vmap: bool,
    record: bool = False,
    spmd_axis_name: str | None = None,
) -> TapPass:
    """Runs the batched (``vmap=False``) or vmapped tap pass (see the module docstring).

    Args:
      loss_fn: the user's batched loss, ``loss_fn(params, batch) -> [B]``.
      train: the trainable leaves (``None`` at frozen ones); leaf indices as in ``plan``.
      frozen: the complementary tree.
      batch: the micro-batch, every leaf with leading axis ``B``.
      plan: which calls are tapped and which leaves are direct.
      shapes: ``{key: shape}`` per-example tap shape (no batch axis) of every tapped call.
      vmap: run the vmapped pass; required when ``plan.direct`` is not empty.
      record: also record the inputs and array keyword arguments of the tapped calls.
      spmd_axis_name: passed to ``jax.vmap`` (vmapped pass only).

    Raises:
      ValueError: a batched pass for a plan with direct leaves, or a loss not of shape
        ``[B]``.
    """
    size = jax.tree.leaves(batch)[0].shape[0]
    zeros = {k: jnp.zeros((size, *s), plan.calls[k].output_dtype) for k, s in shapes.items()}

    def run(params: Any, b: Any, t: Any, n: int) -> tuple[jax.Array, Any, Any]:
        out = taps.tapped_loss(loss_fn, params, b, t, record_inputs=record, record_kwargs=record)
        loss, inputs, kw = out if record else (*out, {})
        check_loss(loss, n)
        return loss, inputs, kw

    if not vmap:
        if plan.direct:
            raise ValueError("the batched tap pass cannot take per-example direct gradients")

        def total(t: Any) -> tuple[jax.Array, Any]:
            loss, inputs, kw = run(combine(train, frozen), batch, t, size)
            return jnp.sum(loss), (loss, inputs, kw)

        g, (loss, a, kw) = jax.grad(total, has_aux=True)(zeros)
        return TapPass(loss, g, a, kw, [], False)

    leaves, treedef = jax.tree.flatten(train)
    direct = set(plan.direct)
    rest = combine(
        jax.tree.unflatten(treedef, [None if i in direct else x for i, x in enumerate(leaves)]),
        frozen,
    )

    def example_loss(t: Any, d: list[jax.Array], example: Any) -> tuple[jax.Array, Any]:
        own: list[Any] = [None] * len(leaves)
        for i, x in zip(plan.direct, d, strict=True):
            own[i] = x
        params = combine(jax.tree.unflatten(treedef, own), rest)
        first = lambda x: x[None]  # noqa: E731
        loss, inputs, kw = run(params, jax.tree.map(first, example), jax.tree.map(first, t), 1)
        return loss[0], (loss[0], jax.tree.map(lambda x: x[0], (inputs, kw)))

    fn = jax.vmap(
        jax.grad(example_loss, argnums=(0, 1), has_aux=True),
        in_axes=(0, None, 0),
        spmd_axis_name=spmd_axis_name,
    )
    direct_leaves = [leaves[i] for i in plan.direct]
    ((g, d), (loss, (a, kw))), mixes = vmapped(fn, zeros, direct_leaves, batch)
    return TapPass(loss, g, a, kw, list(d), mixes)


def by_leaf(
    plan: TapPlan,
    result: TapPass,
    paths: Sequence[Path],
    from_use: Callable[[Use], Any],
    from_direct: Callable[[jax.Array], Any],
) -> list[list[Any]]:
    """Every trainable leaf's contributions: ``from_use(use)`` per use, or its direct one.

    Raises:
      ValueError: a trainable leaf got no contribution (never silently skipped); the
        message names it.
    """
    parts: list[list[Any]] = [[] for _ in paths]
    for use in plan.uses:
        parts[use.leaf].append(from_use(use))
    for i, g in zip(plan.direct, result.direct, strict=True):
        parts[i] = [from_direct(g)]
    for i, p in enumerate(parts):
        if not p:  # cannot happen: every leaf is tapped or direct
            raise ValueError(
                f"{plan.engine}: trainable leaf {path_to_str(paths[i])!r} got no gradient"
            )
    return parts
