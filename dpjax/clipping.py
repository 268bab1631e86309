"""The front door: ``dpjax.clipped_grad`` -- clipped, summed per-example gradients.

Example:
    >>> import jax, jax.numpy as jnp, dpjax
    >>> def loss_fn(params, batch):  # per-example losses, shape [B]
    ...     pred = batch["x"] @ params["w"] + params["b"]
    ...     return (pred - batch["y"]) ** 2
    >>> params = {"w": jnp.ones(3), "b": jnp.zeros(())}
    >>> batch = {"x": jnp.ones((4, 3)), "y": jnp.zeros(4)}
    >>> grads, info = jax.jit(dpjax.clipped_grad(loss_fn, l2_clip=1.0))(params, batch)
    >>> info.norms.shape, round(float(jnp.linalg.norm(grads["w"])), 3) <= 4.0
    ((4,), True)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from dpjax.clip_rules import CLIP_FNS, ClipPlan, make_plan
from dpjax.engines import get_engine
from dpjax.partition import Path, Predicate, partition

__all__ = ["ClipInfo", "ClippedGrad", "clipped_grad"]

LossFn = Callable[[Any, Any], jax.Array]


class ClipInfo(NamedTuple):
    """Per-step diagnostics (a pytree: usable under ``jit``).

    Attributes:
      norms: ``[B]`` per-example gradient L2 norms before clipping (0 for masked rows).
      loss: ``[B]`` per-example losses, 0 for rows outside the mask.
      group_norms: ``[B, K]`` per-group norms (``K = 1`` without group clipping).
      clip_factors: ``[B, K]`` factors applied (0 for dropped rows).
      num_valid: number of rows in the mask.
      num_nonfinite: rows in the mask dropped because their gradient was not finite.
      num_clipped: rows whose (total) factor was below 1.
    """

    norms: jax.Array
    loss: jax.Array
    group_norms: jax.Array
    clip_factors: jax.Array
    num_valid: jax.Array
    num_nonfinite: jax.Array
    num_clipped: jax.Array


def _batch_size(batch: Any) -> int:
    if not isinstance(batch, Mapping):
        raise TypeError(f"batch must be a mapping of arrays, got {type(batch).__name__}")
    sizes = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(batch)[0]:
        name = jax.tree_util.keystr(path)
        if jnp.ndim(leaf) == 0:
            raise ValueError(f"batch leaf {name} is a scalar; every leaf needs a leading [B] axis")
        sizes[name] = jnp.shape(leaf)[0]
    if not sizes:
        raise ValueError("batch is empty")
    if len(set(sizes.values())) != 1:
        raise ValueError(f"batch leaves have different leading dimensions: {sizes}")
    return next(iter(sizes.values()))


def _with_mask(batch: Mapping[str, Any], size: int) -> dict[str, Any]:
    batch = dict(batch)
    mask = batch.get("mask")
    if mask is None:
        batch["mask"] = jnp.ones((size,), bool)
    else:
        if jnp.shape(mask) != (size,):
            raise ValueError(f"batch['mask'] must have shape ({size},), got {jnp.shape(mask)}")
        batch["mask"] = jnp.asarray(mask).astype(bool)
    return batch


def _pad_rows(batch: dict[str, Any], size: int, multiple: int) -> dict[str, Any]:
    extra = -size % multiple
    if extra == 0:
        return batch

    def pad(x: jax.Array) -> jax.Array:
        x = jnp.asarray(x)
        return jnp.concatenate([x, jnp.zeros((extra,) + x.shape[1:], x.dtype)])

    return jax.tree.map(pad, batch)


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity: jit-able with dict l2_clip
class ClippedGrad:
    """A configured clipped-gradient function; call it as ``grad_fn(params, batch)``.

    Attributes:
      sensitivity: L2 sensitivity of the returned sum, ``sqrt(sum_k C_k**2)``; pass it as
        ``l2_clip`` to :func:`dpjax.optim.privatize`.
    """

    loss_fn: LossFn
    l2_clip: float | Mapping[str, float]
    method: str = "vmap"
    trainable: Predicate | None = None
    clip_fn: str = "abadi"
    gamma: float | None = None
    microbatch_size: int | None = None
    group_fn: Callable[[Path], str] | None = None
    spmd_axis_name: str | None = None
    isolate_nonfinite: bool | None = None

    def __post_init__(self) -> None:
        if not callable(self.loss_fn):
            raise TypeError(f"loss_fn must be callable, got {self.loss_fn!r}")
        if self.clip_fn not in CLIP_FNS:
            raise ValueError(f"clip_fn must be one of {CLIP_FNS}, got {self.clip_fn!r}")
        get_engine(self.method)  # fails early on an unknown method
        mb = self.microbatch_size
        if mb is not None and (isinstance(mb, bool) or not isinstance(mb, int) or mb < 1):
            raise ValueError(f"microbatch_size must be a positive int or None, got {mb!r}")
        # Validates norms and gamma without needing params.
        ClipPlan(("probe",), (1.0,), self.clip_fn, self.gamma, ())
        norms = self.l2_clip.values() if isinstance(self.l2_clip, Mapping) else [self.l2_clip]
        for c in norms:
            if isinstance(c, bool) or not isinstance(c, (int, float)) or not c > 0:
                raise ValueError(f"l2_clip must be > 0, got {c!r}")

    @property
    def sensitivity(self) -> float:
        if isinstance(self.l2_clip, Mapping):
            return float(sum(float(c) ** 2 for c in self.l2_clip.values()) ** 0.5)
        return float(self.l2_clip)

    def plan(self, params: Any) -> ClipPlan:
        """The clip plan (groups, norms) this function uses for ``params``."""
        train, _ = partition(params, self.trainable)
        return make_plan(train, self.l2_clip, self.clip_fn, self.gamma, self.group_fn)

    def __call__(self, params: Any, batch: Mapping[str, Any]) -> tuple[Any, ClipInfo]:
        size = _batch_size(batch)
        batch = _with_mask(batch, size)
        train, frozen = partition(params, self.trainable)
        plan = make_plan(train, self.l2_clip, self.clip_fn, self.gamma, self.group_fn)
        engine = get_engine(self.method)

        def run_engine(micro: Any) -> tuple[Any, jax.Array, jax.Array, jax.Array]:
            res = engine(
                self.loss_fn, train, frozen, micro, plan, spmd_axis_name=self.spmd_axis_name
            )
            return res.grads, res.sq_norms, res.loss, res.keep

        def run(micro: Any) -> tuple[Any, jax.Array, jax.Array, jax.Array]:
            out = run_engine(micro)
            isolate = self.isolate_nonfinite
            if isolate is None:  # auto: the engine whose batched kernels can mix rows
                isolate = self.method == "vmap"
            if not isolate:
                return out
            return _isolate_nonfinite(run_engine, micro, out)

        mb = self.microbatch_size
        if mb is None or mb >= size:
            grads, sq_norms, loss, keep = run(batch)
            mask = batch["mask"]
        else:
            padded = _pad_rows(batch, size, mb)
            n_micro = (size + mb - 1) // mb
            stacked = jax.tree.map(lambda x: x.reshape((n_micro, mb) + x.shape[1:]), padded)

            def body(acc: Any, micro: Any) -> tuple[Any, tuple[jax.Array, ...]]:
                g, s, lo, k = run(micro)
                return jax.tree.map(jnp.add, acc, g), (s, lo, k)

            zeros = jax.tree.map(jnp.zeros_like, train)
            grads, outs = jax.lax.scan(body, zeros, stacked)
            sq_norms, loss, keep = (x.reshape((n_micro * mb,) + x.shape[2:])[:size] for x in outs)
            mask = batch["mask"]
        return grads, _info(plan, sq_norms, loss, keep, mask)


def _isolate_nonfinite(
    run_engine: Callable[[Any], tuple[Any, jax.Array, jax.Array, jax.Array]],
    micro: Any,
    out: tuple[Any, jax.Array, jax.Array, jax.Array],
) -> tuple[Any, jax.Array, jax.Array, jax.Array]:
    """Re-runs a micro-batch without its non-finite rows, only when it has any.

    Some batched XLA kernels mix examples through ``nan * 0`` (the per-example kernel
    gradient of a convolution under ``vmap`` is one grouped convolution), so one bad row
    can poison every row's gradient. When a row in the mask has a non-finite norm, the
    micro-batch is recomputed with those rows zeroed (as padding rows are) and masked
    out; ``lax.cond`` runs the second pass only for such micro-batches.
    XLA's ``cost_analysis`` counts both branches, so flop figures of a step compiled with
    isolation include the (never executed on clean data) second pass.
    """
    grads, sq_norms, loss, keep = out
    mask = micro["mask"]
    bad_norm = mask & ~jnp.all(jnp.isfinite(sq_norms), axis=-1)
    # The forward pass never mixes rows, so a non-finite loss names the culprit even when
    # the backward pass has spread its nan to every row's norm.
    bad_loss = mask & ~jnp.isfinite(loss)
    bad = jnp.where(jnp.any(bad_loss), bad_loss, bad_norm)

    def redo(_: None) -> tuple[Any, jax.Array, jax.Array, jax.Array]:
        # Zero rows, like the padding rows samplers produce: no cross-device gather.
        def replace(x: jax.Array) -> jax.Array:
            x = jnp.asarray(x)
            rows = bad.reshape((-1,) + (1,) * (x.ndim - 1))
            return jnp.where(rows, jnp.zeros((), x.dtype), x)

        clean = jax.tree.map(replace, dict(micro))
        clean["mask"] = mask & ~bad
        g2, s2, l2, k2 = run_engine(clean)
        nan = jnp.full_like(s2, jnp.nan)
        return g2, jnp.where(bad[:, None], nan, s2), jnp.where(bad, loss, l2), k2 & ~bad

    return jax.lax.cond(jnp.any(bad_norm), redo, lambda _: (grads, sq_norms, loss, keep), None)


def _info(
    plan: ClipPlan, sq_norms: jax.Array, loss: jax.Array, keep: jax.Array, mask: jax.Array
) -> ClipInfo:
    factors, _ = plan.factors(sq_norms, keep)
    finite = jnp.all(jnp.isfinite(sq_norms), axis=-1)
    valid_sq = jnp.where(mask[:, None], sq_norms, 0.0)
    norms = jnp.sqrt(jnp.sum(valid_sq, axis=-1))
    clipped = jnp.any(factors < 1.0, axis=-1) & keep
    return ClipInfo(
        norms=norms,
        loss=jnp.where(mask, loss, jnp.zeros((), loss.dtype)),
        group_norms=jnp.sqrt(valid_sq),
        clip_factors=factors,
        num_valid=jnp.sum(mask.astype(jnp.int32)),
        num_nonfinite=jnp.sum((mask & ~finite).astype(jnp.int32)),
        num_clipped=jnp.sum(clipped.astype(jnp.int32)),
    )


def clipped_grad(
    loss_fn: LossFn,
    *,
    l2_clip: float | Mapping[str, float],
    method: str = "vmap",
    trainable: Predicate | None = None,
    clip_fn: str = "abadi",
    gamma: float | None = None,
    microbatch_size: int | None = None,
    group_fn: Callable[[Path], str] | None = None,
    spmd_axis_name: str | None = None,
    isolate_nonfinite: bool | None = None,
) -> ClippedGrad:
    """Builds ``grad_fn(params, batch) -> (grads, info)`` with ``grads = sum_i c_i g_i``.

    Args:
      loss_fn: ``loss_fn(params, batch) -> [B]`` per-example losses. It is called on
        batches of any size (the ``vmap`` engine calls it on batches of one).
      l2_clip: clip norm ``C`` (> 0), or a mapping ``{group: C_k}`` for group-wise
        (per-layer) clipping; groups are top-level module names unless ``group_fn`` says
        otherwise. The sensitivity of the sum is ``grad_fn.sensitivity``.
      method: engine, ``"vmap"`` (reference), ``"bitfit"`` or ``"ghost"``.
      trainable: predicate on ``(path, leaf)``; ``None`` trains every leaf. Frozen leaves
        are never differentiated and come back as ``None``.
      clip_fn: ``"abadi"``: ``min(1, C/||g||)``; ``"automatic"``: ``C/(||g|| + gamma)``.
      gamma: the stabiliser of automatic clipping (required there, rejected otherwise).
      microbatch_size: process the batch in chunks of this many rows (memory knob; the
        result does not change). A batch that does not divide is padded with masked rows.
      group_fn: maps a leaf path to its clip group name (with a mapping ``l2_clip``).
      spmd_axis_name: mesh axis the batch is sharded on, forwarded to ``jax.vmap``.
      isolate_nonfinite: when a micro-batch has a row with a non-finite gradient, recompute
        it without that row (guards against batched kernels that mix rows via ``nan * 0``,
        e.g. a convolution's per-example kernel gradient under ``vmap``). It costs a second
        pass only for such micro-batches, but a second trace at compile time, and XLA's
        flop count includes it. ``None`` (default): on for ``method="vmap"``, off for
        ``bitfit``/``ghost``, which zero bad rows before any contraction over examples.

    Returns:
      A :class:`ClippedGrad`; calling it returns ``(grads, ClipInfo)``. Rows whose
      ``batch["mask"]`` is ``False`` and rows with a non-finite gradient contribute zero.
    """
    return ClippedGrad(
        loss_fn=loss_fn,
        l2_clip=l2_clip,
        method=method,
        trainable=trainable,
        clip_fn=clip_fn,
        gamma=gamma,
        microbatch_size=microbatch_size,
        group_fn=group_fn,
        spmd_axis_name=spmd_axis_name,
        isolate_nonfinite=isolate_nonfinite,
    )
