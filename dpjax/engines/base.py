"""Types shared by the engines."""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol

import jax

from dpjax.clip_rules import ClipPlan


class EngineResult(NamedTuple):
    """What an engine returns for one micro-batch.

    Attributes:
      grads: ``sum_i c_i g_i``, same structure as ``train`` (``None`` at frozen leaves).
      sq_norms: ``[B, K]`` float32 per-example squared gradient norms per clip group.
      loss: ``[B]`` per-example losses as returned by ``loss_fn``.
      keep: ``[B]`` bool, rows that contributed (in the mask, finite gradient).
      mixes_rows: a static flag, ``True`` when rows went through ``vmap``-batched kernels
        (per-example gradients by ``vmap(grad)``), where XLA may spread one row's
        ``nan`` to the others; :func:`dpjax.clipped_grad` then isolates non-finite rows.
    """

    grads: Any
    sq_norms: jax.Array
    loss: jax.Array
    keep: jax.Array
    mixes_rows: bool = False


class Engine(Protocol):
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
