"""Self-check: does an engine agree with the ``vmap`` oracle on *your* model?

Engines other than ``vmap`` rely on assumptions about the model (``bitfit``: every tapped
bias is simply added to its layer's output) and about the loss: they run ``loss_fn`` on
the whole batch, so a loss that mixes examples (batch centring, BatchNorm in training
mode) would let one example move the others' contributions -- past the sensitivity.
:func:`check_engine` runs the engine and the oracle on a few examples, one example at a
time so that errors cannot cancel in the sum, then checks *independence* on the batch
of those examples: removing example ``j`` (and masking it) must change the engine's sum
by exactly ``j``'s own clipped gradient and leave every other example's norm as it was.
It raises naming every trainable leaf (and example) that fails.

Example:
    >>> import flax.linen as nn, jax, jax.numpy as jnp, dpjax
    >>> from dpjax.check import check_engine
    >>> model = nn.Dense(2)
    >>> x = jnp.ones((4, 3))
    >>> params = model.init(jax.random.key(0), x)["params"]
    >>> loss_fn = lambda p, b: model.apply({"params": p}, b["x"]).sum(-1)
    >>> errors = check_engine(loss_fn, params, {"x": x}, method="bitfit",
    ...                       trainable=dpjax.bias_only, l2_clip=1.0)
    >>> sorted(errors)
    ['bias', 'independence/bias', 'independence/norms', 'norms']
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dpjax.clipping import clipped_grad
from dpjax.partition import Predicate, leaf_paths, path_to_str

__all__ = ["EngineMismatchError", "check_engine"]


class EngineMismatchError(AssertionError):
    """An engine disagrees with the ``vmap`` oracle; the message names the leaves."""


def _rel_err(got: np.ndarray, want: np.ndarray, atol: float) -> float:
    scale = float(np.max(np.abs(want))) if want.size else 0.0
    diff = float(np.max(np.abs(got - want))) if want.size else 0.0
    if not np.all(np.isfinite(got)) or not np.all(np.isfinite(want)):
        return float("inf")
    return diff / (scale + atol) if diff > atol else 0.0


def check_engine(
    loss_fn: Callable[[Any, Any], jax.Array],
    params: Any,
    batch: Mapping[str, Any],
    *,
    method: str = "bitfit",
    trainable: Predicate | None = None,
    l2_clip: float | Mapping[str, float] = 1.0,
    num_examples: int = 4,
    rtol: float = 1e-4,
    atol: float = 1e-7,
    **grad_kwargs: Any,
) -> dict[str, float]:
    """Compares ``method`` with the ``vmap`` engine on the first ``num_examples`` examples.

    Each example is run as its own batch of one (mask forced to ``True``), through
    ``dpjax.clipped_grad(..., method=method)`` and ``method="vmap"`` with the same
    settings; the clipped gradient of every trainable leaf and the norm are compared.

    Args:
      loss_fn: ``loss_fn(params, batch) -> [B]``.
      params: the params tree.
      batch: a batch; only its first ``num_examples`` rows are used.
      method: the engine to check.
      trainable: the trainable predicate you train with.
      l2_clip: the clip norm(s) you train with.
      num_examples: how many examples to check.
      rtol: tolerated error relative to the largest entry of the oracle's leaf (use
        ~2e-2 for bfloat16 models).
      atol: absolute floor below which differences are ignored.
      **grad_kwargs: other :func:`dpjax.clipped_grad` arguments (``clip_fn``, ``gamma``,
        ``group_fn``).

    Returns:
      ``{leaf path or "norms": worst relative error}`` over the checked examples, and
      ``{"independence/<leaf>": ...}`` for the independence checks.

    Raises:
      EngineMismatchError: some leaf (or the norm) differs by more than ``rtol``, or
        removing / masking one example changes the others' contributions; the message
        lists them, worst first, with the example.
    """
    size = jax.tree.leaves(batch)[0].shape[0]
    n = min(num_examples, size)
    engine = jax.jit(clipped_grad(loss_fn, l2_clip=l2_clip, method=method,
                                  trainable=trainable, **grad_kwargs))  # fmt: skip
    oracle = jax.jit(clipped_grad(loss_fn, l2_clip=l2_clip, method="vmap",
                                  trainable=trainable, **grad_kwargs))  # fmt: skip
    rows = {k: v for k, v in batch.items() if k != "mask"}
    rows = jax.tree.map(lambda x: jnp.asarray(x)[:n], rows)
    errors: dict[str, float] = {}
    contributions = []
    for i in range(n):
        one = jax.tree.map(lambda x, i=i: x[i : i + 1], rows)
        got, got_info = engine(params, one)
        want, want_info = oracle(params, one)
        contributions.append(want)
        names = [path_to_str(p) for p in leaf_paths(want)]
        pairs = zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True)
        for name, (g, w) in zip(names, pairs, strict=True):
            g64 = np.asarray(g, np.float64)
            w64 = np.asarray(w, np.float64)
            errors[name] = max(errors.get(name, 0.0), _rel_err(g64, w64, atol))
        norm_err = _rel_err(
            np.asarray(got_info.norms, np.float64), np.asarray(want_info.norms, np.float64), atol
        )
        errors["norms"] = max(errors.get("norms", 0.0), norm_err)
    bad = sorted(((e, k) for k, e in errors.items() if not e <= rtol), reverse=True)
    if bad:
        listed = ", ".join(f"{k} (rel. error {e:.3g})" for e, k in bad)
        raise EngineMismatchError(
            f"method={method!r} disagrees with the vmap oracle on {n} examples for: {listed}. "
            "A custom module probably uses its bias non-additively (do not register it "
            "with register_bias_layer) or a bias is also read outside its layer."
        )
    if n > 1:
        errors.update(_independence(engine, params, rows, contributions, method, rtol, atol))
    return errors


def _independence(
    engine: Callable[..., Any],
    params: Any,
    rows: Any,
    contributions: list[Any],
    method: str,
    rtol: float,
    atol: float,
) -> dict[str, float]:
    """Removing or masking one example changes the sum by its own contribution only."""
    n = len(contributions)
    full, full_info = engine(params, rows)
    full_leaves = [np.asarray(x, np.float64) for x in jax.tree.leaves(full)]
    names = [path_to_str(p) for p in leaf_paths(full)]
    full_norms = np.asarray(full_info.norms, np.float64)
    worst: dict[str, float] = {}
    failures: list[tuple[float, str]] = []
    for j in range(n):
        keep = np.arange(n) != j
        removed, removed_info = engine(params, jax.tree.map(lambda x, k=keep: x[k], rows))
        masked, _ = engine(params, {**rows, "mask": jnp.asarray(keep)})
        own = [np.asarray(x, np.float64) for x in jax.tree.leaves(contributions[j])]
        gone = [np.asarray(x, np.float64) for x in jax.tree.leaves(removed)]
        hidden = [np.asarray(x, np.float64) for x in jax.tree.leaves(masked)]
        for name, a, r, m, o in zip(names, full_leaves, gone, hidden, own, strict=True):
            scale = max(float(np.max(np.abs(a))) if a.size else 0.0, atol)
            moved = float(np.max(np.abs((a - r) - o))) / scale if a.size else 0.0
            leak = float(np.max(np.abs(m - r))) / scale if a.size else 0.0
            for what, err in (("removing", moved), ("masking", leak)):
                if not np.isfinite(err):
                    err = float("inf")
                key = f"independence/{name}"
                worst[key] = max(worst.get(key, 0.0), err)
                if not err <= rtol:
                    failures.append((err, f"{name} ({what} example {j}: rel. error {err:.3g})"))
        others = np.asarray(removed_info.norms, np.float64)
        norm_err = _rel_err(others, full_norms[keep], atol)
        worst["independence/norms"] = max(worst.get("independence/norms", 0.0), norm_err)
        if not norm_err <= rtol:
            failures.append((norm_err, f"norms of the other examples (removing example {j})"))
    if failures:
        listed = ", ".join(msg for _, msg in sorted(failures, reverse=True)[:8])
        raise EngineMismatchError(
            f"method={method!r}: examples are not independent -- removing one example "
            f"changes the others' clipped gradients, so one example can move the sum by more "
            f"than the clip norm: {listed}. The loss mixes examples (a batch statistic, "
            "BatchNorm in training mode); make each example's loss depend on that example only."
        )
    return worst
