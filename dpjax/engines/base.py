"""Types shared by the engines."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import jax
from jax.extend import core as jex_core

from dpjax.clip_rules import ClipPlan


class EngineResult(NamedTuple):
    """What an engine returns for one micro-batch.

    Attributes:
      grads: ``sum_i c_i g_i``, same structure as ``train`` (``None`` at frozen leaves).
      sq_norms: ``[B, K]`` float32 per-example squared gradient norms per clip group.
      loss: ``[B]`` per-example losses as returned by ``loss_fn``.
      keep: ``[B]`` bool, rows that contributed (in the mask, finite gradient).
      mixes_rows: a static flag, ``True`` when rows went through ``vmap``-batched kernels
        that can spread one row's ``nan`` to the others (see :func:`vmapped`);
        :func:`dpjax.clipped_grad` then isolates non-finite rows.
    """

    grads: Any
    sq_norms: jax.Array
    loss: jax.Array
    keep: jax.Array
    mixes_rows: bool = False


def check_loss(loss: Any, size: int) -> None:
    """Raises unless ``loss`` is per-example, shape ``[B] = (size,)``.

    Example:
        >>> import jax.numpy as jnp
        >>> check_loss(jnp.zeros(3), 3)
        >>> check_loss(jnp.zeros(()), 1)
        Traceback (most recent call last):
        ...
        ValueError: loss_fn must return per-example losses of shape [B]; on a batch of 1 it returned shape () instead of (1,)
    """  # noqa: E501
    if getattr(loss, "shape", None) != (size,):
        raise ValueError(
            f"loss_fn must return per-example losses of shape [B]; on a batch of {size} it "
            f"returned shape {getattr(loss, 'shape', type(loss))} instead of ({size},)"
        )


class Engine(Protocol):
    """The engine signature (see :mod:`dpjax.engines`): one micro-batch to an
    :class:`EngineResult`."""

    def __call__(
        self,
        loss_fn: Any,
        train: Any,
        frozen: Any,
        batch: Any,
        plan: ClipPlan,
        *,
        spmd_axis_name: str | None = None,
    ) -> EngineResult: ...


def _grouped_conv(jaxpr: Any) -> bool:
    """Whether ``jaxpr`` (or a sub-jaxpr) has a grouped convolution."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "conv_general_dilated":
            p = eqn.params
            if p.get("feature_group_count", 1) > 1 or p.get("batch_group_count", 1) > 1:
                return True
        for sub in jex_core.jaxprs_in_params(eqn.params):
            if _grouped_conv(sub):
                return True
    return False


def vmapped(fn: Callable[..., Any], *args: Any) -> tuple[Any, bool]:
    """``(fn(*args), mixes_rows)`` with ``fn`` traced once.

    ``fn`` is a ``vmap`` over examples. Its jaxpr is inspected before it is evaluated:
    ``vmap`` turns a convolution's per-example kernel gradient into one *grouped*
    convolution over the batch, whose XLA kernels can spread one row's ``nan`` to every
    row (``nan * 0``). ``mixes_rows`` is ``True`` when such a grouped convolution (or any
    grouped convolution) is there; :func:`dpjax.clipped_grad` then isolates non-finite
    rows. Other batched kernels (matmuls, scatters, reductions over non-batch axes) keep
    rows apart.
    """
    closed, shape = jax.make_jaxpr(fn, return_shape=True)(*args)
    out = jex_core.jaxpr_as_fun(closed)(*jax.tree.leaves(args))
    return jax.tree.unflatten(jax.tree.structure(shape), out), _grouped_conv(closed.jaxpr)
