"""Sensitivity replay: run the real step on neighbouring batches and measure what moved.

The guarantee of one DP step rests on three facts a bug can break without any error:

1. **Sensitivity.** For neighbouring batches ``D`` and ``D'`` (one example added, removed,
   or masked out -- the sampler's padding), the noise-free clipped sums differ by at most
   the sensitivity ``Delta`` the noise was calibrated to. :func:`replay` computes the sums
   on ``D`` and on every neighbour it builds -- each of the first ``rows`` examples
   masked out and (where shapes may change) removed, and each canary added -- and reports
   ``||S(D) - S(D')|| / Delta``. Default canaries are built from the batch's first row:
   its float inputs scaled by 1000 (a gradient far above the clip norm) and set to
   ``nan`` (a row that must contribute zero without touching the others).
2. **The noise does not depend on the data** and is added once, in float32: with the same
   privatizer state (same key), ``(u(D) - u(D')) * E[B]`` must equal ``S(D) - S(D')``.
3. **The noise is what was claimed and fresh every step**: ``u * E[B] - S`` has the std
   ``sigma * Delta`` on every coordinate (a chi-square test at 5 standard deviations) and
   is uncorrelated with the next update's noise (a reused key gives correlation 1).

It is deterministic (2., 1.) or nearly so (3., a 5-sigma test), runs in seconds on any
model and engine, and is meant for tests and for ``python -m dpjax.audit replay``.

Example:
    >>> import jax, jax.numpy as jnp, dpjax
    >>> from dpjax import audit
    >>> loss_fn = lambda p, b: (b["x"] @ p["w"] - b["y"]) ** 2
    >>> params = {"w": jnp.ones(3)}
    >>> batch = {"x": jnp.arange(12.0).reshape(4, 3), "y": jnp.zeros(4)}
    >>> report = audit.sensitivity_replay(dpjax.clipped_grad(loss_fn, l2_clip=1.0), params, batch)
    >>> report.ok, report.max_ratio <= 1 + 1e-5
    (True, True)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dpjax import optim
from dpjax.clip_rules import sum_dtype
from dpjax.partition import partition

__all__ = ["ReplayReport", "SensitivityError", "derived_canaries", "replay", "sensitivity_replay"]

Batch = dict[str, np.ndarray]
SumFn = Callable[[Sequence[Batch]], Any]


class SensitivityError(AssertionError):
    """A replay found a neighbour that moved the sum past the sensitivity, or bad noise."""


@dataclasses.dataclass(frozen=True)
class ReplayReport:
    """What :func:`replay` measured.

    Attributes:
      sensitivity: the ``Delta`` the noise is calibrated to.
      ratios: ``{neighbour: ||S(D) - S(D')|| / Delta}``.
      max_ratio: the largest ratio (``<= 1 + tolerance`` passes).
      worst: the neighbour with the largest ratio.
      noise_std_ratio: empirical noise std / claimed ``sigma * Delta`` (``None`` without a
        privatizer).
      noise_z: the chi-square z-score of that std (``|z| <= 5`` passes).
      noise_data_error: ``max |(u(D) - u(D')) E[B] - (S(D) - S(D'))| / Delta``.
      noise_correlation: correlation of consecutive updates' noise (``|c| <= 5/sqrt(n)``).
      rtol: the tolerance on ratios asked for.
      tolerance: ``rtol`` plus the float rounding of sums this large:
        ``8 eps ||S(D)|| / Delta``, with ``eps`` the sums' machine epsilon (a pairwise sum
        of ``n`` terms rounds by up to ``log2(n) eps`` of its size; 64 aligned float32
        rows of norm ``C`` give ``6e-5``, far below any real leak).
      failures: human-readable reasons, empty when everything passed.
    """

    sensitivity: float
    ratios: dict[str, float]
    max_ratio: float
    worst: str
    noise_std_ratio: float | None = None
    noise_z: float | None = None
    noise_data_error: float | None = None
    noise_correlation: float | None = None
    rtol: float = 1e-5
    tolerance: float = 1e-5
    failures: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """Every check passed."""
        return not self.failures

    def assert_ok(self) -> ReplayReport:
        """Raises :class:`SensitivityError` listing the failures; returns ``self`` otherwise."""
        if self.failures:
            raise SensitivityError("sensitivity replay failed: " + "; ".join(self.failures))
        return self

    def summary(self) -> str:
        """One line per check, for logs and the command line."""
        lines = [
            f"sensitivity {self.sensitivity:g}: max ||dS|| / Delta = {self.max_ratio:.6f} "
            f"({self.worst}) over {len(self.ratios)} neighbours, tolerance {self.tolerance:.2g}"
        ]
        if self.noise_std_ratio is not None:
            lines.append(
                f"noise std / (sigma Delta) = {self.noise_std_ratio:.4f} (z = {self.noise_z:.2f}), "
                f"data leak into noise = {self.noise_data_error:.2e} Delta, "
                f"next-step noise correlation = {self.noise_correlation:.4f}"
            )
        lines.append("PASS" if self.ok else "FAIL: " + "; ".join(self.failures))
        return "\n".join(lines)


def _flat(tree: Any) -> np.ndarray:
    leaves = [np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(tree)]
    return np.concatenate(leaves) if leaves else np.zeros(0)


def derived_canaries(batch: Mapping[str, Any], token_ids: Mapping[str, int] = ()) -> dict:
    """Adversarial one-row canaries built from the first row of ``batch``.

    ``"scaled"``: every float input times 1000; ``"nan"``: every float input ``nan``;
    for each ``{field: V}`` in ``token_ids``: ``"<field>=-1"`` and ``"<field>=V"`` (ids
    the forward pass wraps or turns into ``nan``).
    """
    row = {k: np.asarray(v)[:1].copy() for k, v in batch.items() if k != "mask"}
    floats = [k for k, v in row.items() if np.issubdtype(v.dtype, np.floating)]
    out = {}
    if floats:
        out["scaled"] = {k: (v * 1000 if k in floats else v) for k, v in row.items()}
        out["nan"] = {k: (np.full_like(v, np.nan) if k in floats else v) for k, v in row.items()}
    for field, size in dict(token_ids).items():
        for bad in (-1, size):
            canary = {k: v.copy() for k, v in row.items()}
            canary[field][...] = bad
            out[f"{field}={bad}"] = canary
    return out


def _masked(batches: Sequence[Batch], where: tuple[int, int]) -> list[Batch]:
    out = [dict(b) for b in batches]
    i, r = where
    mask = np.asarray(out[i]["mask"], bool).copy()
    mask[r] = False
    out[i]["mask"] = mask
    return out


def _dropped(batches: Sequence[Batch], where: tuple[int, int]) -> list[Batch]:
    out = [dict(b) for b in batches]
    i, r = where
    keep = np.arange(len(out[i]["mask"])) != r
    out[i] = {k: np.asarray(v)[keep] for k, v in out[i].items()}
    return out


def _added(batches: Sequence[Batch], canary: Batch, fixed_shapes: bool) -> list[Batch]:
    """``batches`` plus the canary: in a padding slot, else appended (or a new micro-batch)."""
    out = [dict(b) for b in batches]
    for i, b in enumerate(out):
        free = np.flatnonzero(~np.asarray(b["mask"], bool))
        if free.size:
            r = int(free[0])
            new = {k: np.asarray(v).copy() for k, v in b.items()}
            for k, v in canary.items():
                new[k][r] = v[0]
            new["mask"][r] = True
            out[i] = new
            return out
    if fixed_shapes:  # the sampler would start a micro-batch for the extra example
        size = len(out[-1]["mask"])
        new = {k: np.zeros_like(np.asarray(v)) for k, v in out[-1].items()}
        for k, v in canary.items():
            new[k][0] = v[0]
        new["mask"] = np.arange(size) == 0
        return [*out, new]
    last = out[-1]
    out[-1] = {k: np.concatenate([np.asarray(last[k]), np.asarray(canary[k])]) for k in canary}
    out[-1]["mask"] = np.concatenate([np.asarray(last["mask"], bool), [True]])
    return out


def replay(
    sum_fn: SumFn,
    batches: Sequence[Batch],
    sensitivity: float,
    *,
    canaries: Mapping[str, Batch] | None = None,
    rows: int = 8,
    fixed_shapes: bool = True,
    rtol: float = 1e-5,
    privatizer: Callable[[Any, int], Any] | None = None,
    noise_std: float | None = None,
    expected_batch_size: float | None = None,
) -> ReplayReport:
    """Replays ``sum_fn`` on the neighbours of ``D = batches`` (see the module docstring).

    Args:
      sum_fn: ``sum_fn(micro_batches) -> tree``: the noise-free clipped sum of one
        logical step, exactly as training computes it (micro-steps and accumulation).
      batches: the micro-batches of ``D`` (host dicts with a bool ``"mask"``).
      sensitivity: the ``Delta`` the noise is calibrated to.
      canaries: one-row batches to add (default: :func:`derived_canaries` of ``D``).
      rows: how many real examples to remove / mask, one at a time.
      fixed_shapes: only build neighbours with the micro-batch shape (trainer);
        ``False`` also removes rows and appends canaries (batch shapes change).
      rtol: tolerance on ``||dS|| / Delta``, on top of the rounding of sums of this size
        (see :attr:`ReplayReport.tolerance`).
      privatizer: ``privatizer(sum_tree, count) -> [update_0, ..., update_{count-1}]``:
        the noise step applied ``count`` times to the same sum from a fixed initial state
        (its state threaded through, as in training).
      noise_std: the claimed noise std ``sigma * Delta`` (with ``privatizer``).
      expected_batch_size: the privatizer's normaliser ``E[B]`` (with ``privatizer``).

    Returns:
      A :class:`ReplayReport`.
    """
    if canaries is None:
        canaries = derived_canaries(batches[0])
    base_tree = sum_fn(batches)
    base = _flat(base_tree)
    sum_eps = max((float(jnp.finfo(x.dtype).eps) for x in jax.tree.leaves(base_tree)), default=0.0)
    tolerance = rtol + 8 * sum_eps * float(np.linalg.norm(base)) / sensitivity
    neighbours: dict[str, list[Batch]] = {}
    real = [(i, r) for i, b in enumerate(batches) for r in np.flatnonzero(np.asarray(b["mask"]))]
    for i, r in real[:rows]:
        neighbours[f"mask row {r} of micro-batch {i}"] = _masked(batches, (i, int(r)))
        if not fixed_shapes:
            neighbours[f"remove row {r} of micro-batch {i}"] = _dropped(batches, (i, int(r)))
    for name, canary in canaries.items():
        neighbours[f"add canary {name!r}"] = _added(batches, canary, fixed_shapes)
    ratios, sums = {}, {}
    for name, nb in neighbours.items():
        sums[name] = _flat(sum_fn(nb))
        diff = sums[name] - base
        ratios[name] = (
            float(np.linalg.norm(diff)) / sensitivity if np.all(np.isfinite(diff)) else math.inf
        )
    worst = max(ratios, key=ratios.get) if ratios else "-"
    max_ratio = ratios[worst] if ratios else 0.0
    failures = []
    if not max_ratio <= 1 + tolerance:
        failures.append(f"{worst} moved the clipped sum by {max_ratio:.6g} x the sensitivity")
    report = ReplayReport(sensitivity, ratios, max_ratio, worst, rtol=rtol, tolerance=tolerance)
    if privatizer is None:
        return dataclasses.replace(report, failures=tuple(failures))
    if noise_std is None or expected_batch_size is None:
        raise ValueError("a privatizer needs noise_std and expected_batch_size")
    e = float(expected_batch_size)
    tree = base_tree
    d = base.size
    count = max(2, min(200, math.ceil(20000 / max(d, 1))))  # ~20k noise samples in all
    updates = privatizer(tree, count)
    noise = np.stack([_flat(u) * e - base for u in updates])  # [count, d]
    samples = noise.size
    std_ratio = float(np.sqrt(np.mean(noise**2))) / noise_std if noise_std > 0 else math.inf
    z_score = (samples * std_ratio**2 - samples) / math.sqrt(2 * samples)
    a, b = noise[:-1].ravel(), noise[1:].ravel()
    corr = float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-300))
    data_error = 0.0
    if worst in neighbours:
        moved = (_flat(updates[0]) - _flat(privatizer(sum_fn(neighbours[worst]), 1)[0])) * e
        data_error = float(np.max(np.abs(moved - (base - sums[worst])))) / sensitivity
    # The update is cast to the parameter dtype after the noise: allow that rounding.
    out_eps = max(float(jnp.finfo(jnp.result_type(x)).eps) for x in jax.tree.leaves(updates[0]))
    cast_tol = 2 * out_eps * float(np.max(np.abs(_flat(updates[0])))) * e / sensitivity
    if not abs(z_score) <= 5:
        failures.append(
            f"noise std is {std_ratio:.4f} x the claimed sigma*Delta (chi-square z = {z_score:.1f}"
            f" over {count} updates)"
        )
    if not abs(corr) <= 5 / math.sqrt(a.size):
        failures.append(f"consecutive updates' noise has correlation {corr:.4f} (reused key?)")
    if not data_error <= 1e-3 + cast_tol:
        failures.append(
            f"the noisy update moved by {data_error:.3g} Delta more than the clipped sum "
            "(noise or rounding depends on the data)"
        )
    return dataclasses.replace(
        report,
        noise_std_ratio=std_ratio,
        noise_z=z_score,
        noise_data_error=data_error,
        noise_correlation=corr,
        failures=tuple(failures),
    )


def privatize_replayer(
    noise_multiplier: float, l2_clip: float, expected_batch_size: float, key: jax.Array, params: Any
) -> Callable[[Any, int], list[Any]]:
    """``(tree, count) -> count`` successive updates of :func:`dpjax.optim.privatize`."""
    tx = optim.privatize(
        noise_multiplier=noise_multiplier,
        l2_clip=l2_clip,
        expected_batch_size=expected_batch_size,
        key=key,
    )
    update = jax.jit(tx.update)

    def run(tree: Any, count: int) -> list[Any]:
        state, out = tx.init(params), []
        for _ in range(count):
            u, state = update(tree, state, params)
            out.append(u)
        return out

    return run


def sensitivity_replay(
    grad_fn: Any,
    params: Any,
    batch: Mapping[str, Any],
    *,
    canaries: Mapping[str, Batch] | None = None,
    rows: int = 8,
    rtol: float = 1e-5,
    noise_multiplier: float | None = None,
    expected_batch_size: float | None = None,
    key: jax.Array | None = None,
) -> ReplayReport:
    """:func:`replay` for a :class:`dpjax.ClippedGrad` (and optionally its privatizer).

    Args:
      grad_fn: ``dpjax.clipped_grad(...)``; its ``sensitivity`` is the claimed ``Delta``.
      params: the parameters.
      batch: the batch ``D`` (``"mask"`` optional).
      canaries, rows, rtol: as in :func:`replay` (shapes may change: rows are also
        removed and canaries appended).
      noise_multiplier, expected_batch_size, key: give all three to also check
        :func:`dpjax.optim.privatize` with this key.
    """
    step = jax.jit(grad_fn)
    host = {k: np.asarray(v) for k, v in batch.items()}
    host.setdefault("mask", np.ones(len(next(iter(host.values()))), bool))

    def sum_fn(batches: Sequence[Batch]) -> Any:
        total = None
        for b in batches:
            g, _ = step(params, b)
            total = g if total is None else jax.tree.map(jnp.add, total, g)
        return total

    privatizer = None
    if noise_multiplier is not None:
        if expected_batch_size is None or key is None:
            raise ValueError("noise_multiplier needs expected_batch_size and key")
        # The cast to the parameter dtype after the noise is post-processing; the replay
        # checks the float32 (float64) update before it.
        train, _ = partition(params, grad_fn.trainable)
        train = jax.tree.map(lambda x: jnp.zeros(jnp.shape(x), sum_dtype(x.dtype)), train)
        privatizer = privatize_replayer(
            noise_multiplier, grad_fn.sensitivity, expected_batch_size, key, train
        )
    return replay(
        sum_fn,
        [host],
        grad_fn.sensitivity,
        canaries=canaries,
        rows=rows,
        fixed_shapes=False,
        rtol=rtol,
        privatizer=privatizer,
        noise_std=None if noise_multiplier is None else noise_multiplier * grad_fn.sensitivity,
        expected_batch_size=expected_batch_size,
    )
