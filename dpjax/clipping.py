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

from dpjax.clip_rules import CLIP_FNS, ClipPlan, check_clip_norm, clip_plan, sum_dtype
from dpjax.engines import EngineResult, get_engine
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
        if isinstance(self.l2_clip, Mapping):
            if not self.l2_clip:
                raise ValueError("l2_clip is an empty mapping: give at least one {group: norm}")
            for name, c in self.l2_clip.items():
                check_clip_norm(c, f"l2_clip[{name!r}]")
        else:
            check_clip_norm(self.l2_clip)
        iso = self.isolate_nonfinite
        if iso is not None and not isinstance(iso, bool):
            raise TypeError(f"isolate_nonfinite must be True, False or None, got {iso!r}")

    @property
    def sensitivity(self) -> float:
        if isinstance(self.l2_clip, Mapping):
            return float(sum(float(c) ** 2 for c in self.l2_clip.values()) ** 0.5)
        return float(self.l2_clip)

    def plan(self, params: Any) -> ClipPlan:
        """The clip plan (groups, norms) this function uses for ``params``."""
        train, _ = partition(params, self.trainable)
        return clip_plan(train, self.l2_clip, self.clip_fn, self.gamma, self.group_fn)

    def __call__(self, params: Any, batch: Mapping[str, Any]) -> tuple[Any, ClipInfo]:
        train, frozen = partition(params, self.trainable)
        return self.split_call(train, frozen, batch)

    def split_call(self, train: Any, frozen: Any, batch: Mapping[str, Any]) -> tuple[Any, ClipInfo]:
        """Like calling it, on parameters already split by ``trainable``.

        ``train, frozen = dpjax.partition(params, grad_fn.trainable)``; the training
        state keeps that split, so a step never re-partitions the parameters.
        """
        size = _batch_size(batch)
        batch = _with_mask(batch, size)
        plan = clip_plan(train, self.l2_clip, self.clip_fn, self.gamma, self.group_fn)
        engine = get_engine(self.method)

        def run_engine(micro: Any) -> EngineResult:
            return engine(
                self.loss_fn, train, frozen, micro, plan, spmd_axis_name=self.spmd_axis_name
            )

        def run(micro: Any) -> tuple[Any, jax.Array, jax.Array, jax.Array]:
            res = run_engine(micro)
            isolate = self.isolate_nonfinite
            if isolate is None:  # auto: whenever rows went through a vmap-batched kernel
                isolate = res.mixes_rows
            out = (res.grads, res.sq_norms, res.loss, res.keep)
            if not isolate:
                return out
            return _isolate_nonfinite(run_engine, micro, out)

        mb = self.microbatch_size
        if mb is None or mb >= size:
            grads, sq_norms, loss, keep = run(batch)
        else:
            padded = _pad_rows(batch, size, mb)
            n_micro = (size + mb - 1) // mb
            stacked = jax.tree.map(lambda x: x.reshape((n_micro, mb) + x.shape[1:]), padded)

            def body(acc: Any, micro: Any) -> tuple[Any, tuple[jax.Array, ...]]:
                g, s, lo, k = run(micro)
                return jax.tree.map(jnp.add, acc, g), (s, lo, k)

            grads, outs = jax.lax.scan(body, _zero_sums(train), stacked)
            sq_norms, loss, keep = (x.reshape((n_micro * mb,) + x.shape[2:])[:size] for x in outs)
        return grads, _info(plan, sq_norms, loss, keep, batch["mask"])


def _zero_sums(train: Any) -> Any:
    """Zeros shaped like ``train`` in the dtype of clipped sums (float32 or wider)."""
    return jax.tree.map(lambda x: jnp.zeros(jnp.shape(x), sum_dtype(x.dtype)), train)


def _isolate_nonfinite(
    run_engine: Callable[[Any], EngineResult],
    micro: Any,
    out: tuple[Any, jax.Array, jax.Array, jax.Array],
) -> tuple[Any, jax.Array, jax.Array, jax.Array]:
    """Recomputes a micro-batch one row at a time, only when a row's gradient is not finite.

    Batched XLA kernels under ``vmap`` can mix examples through ``nan * 0`` (the
    per-example kernel gradient of a convolution under ``vmap`` is one grouped
    convolution), so one bad row -- even a padding row -- can poison every row's gradient,
    and which row was the culprit cannot be told from the result. When a row in the mask
    has a non-finite norm, the micro-batch is recomputed row by row (``lax.scan`` over
    batches of one, sums accumulated in float32): every row is then computed alone,
    bad rows contribute exactly zero and every other row's contribution is exact.

    ``lax.cond`` runs that second pass only for such micro-batches, so a micro-batch that
    holds a non-finite row takes longer (a timing side channel documented in README's
    privacy policy). XLA's ``cost_analysis`` counts both branches.
    """
    grads, sq_norms, loss, keep = out
    mask = micro["mask"]
    bad = jnp.any(mask & ~jnp.all(jnp.isfinite(sq_norms), axis=-1))

    def row_by_row(_: None) -> tuple[Any, jax.Array, jax.Array, jax.Array]:
        rows = jax.tree.map(lambda x: jnp.asarray(x)[:, None], dict(micro))

        def body(acc: Any, row: Any) -> tuple[Any, tuple[jax.Array, ...]]:
            res = run_engine(row)
            acc = jax.tree.map(lambda a, g: a + g.astype(a.dtype), acc, res.grads)
            return acc, (res.sq_norms[0], res.loss[0], res.keep[0])

        zeros = jax.tree.map(lambda g: jnp.zeros(g.shape, g.dtype), grads)
        g2, (s2, l2, k2) = jax.lax.scan(body, zeros, rows)
        return g2, s2, l2.astype(loss.dtype), k2

    return jax.lax.cond(bad, row_by_row, lambda _: (grads, sq_norms, loss, keep), None)


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
        it one row at a time, so that the bad row contributes zero and every other row
        exactly its own clipped gradient (guards against batched kernels that mix rows via
        ``nan * 0``, e.g. a convolution's per-example kernel gradient under ``vmap``). It
        costs extra time only for such micro-batches (a timing side channel: see README's
        privacy policy), a second trace at compile time, and XLA's flop count includes
        it. ``None`` (default): on whenever rows went through ``vmap``-batched kernels
        that can mix them (a grouped convolution in the per-example gradient: the
        ``vmap`` engine, ``bitfit``'s direct leaves or ``ghost``'s fallbacks on a conv
        model, see :func:`dpjax.engines.base.vmapped`); off otherwise -- the batched
        tap passes never mix rows and zero bad rows before any contraction.

    Returns:
      A :class:`ClippedGrad`; calling it returns ``(grads, ClipInfo)``. Rows whose
      ``batch["mask"]`` is ``False`` and rows with a non-finite gradient contribute zero.
      ``grads`` are float32 (float64 for float64 parameters) whatever the model dtype:
      the sum is cast to the parameter dtype only after the noise
      (:func:`dpjax.optim.privatize` does it).
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
