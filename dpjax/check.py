"""Self-check: does an engine agree with the ``vmap`` oracle on *your* model?

Engines other than ``vmap`` rely on assumptions about the model (``bitfit``: every tapped
bias is simply added to its layer's output). :func:`check_engine` runs the engine and the
oracle on a few examples, one example at a time so that errors cannot cancel in the
sum, and raises naming every trainable leaf whose clipped gradient differs.

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
    ['bias', 'norms']
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
      ``{leaf path or "norms": worst relative error}`` over the checked examples.

    Raises:
      EngineMismatchError: some leaf (or the norm) differs by more than ``rtol``; the
        message lists them, worst first.
    """
    size = jax.tree.leaves(batch)[0].shape[0]
    n = min(num_examples, size)
    engine = jax.jit(clipped_grad(loss_fn, l2_clip=l2_clip, method=method,
                                  trainable=trainable, **grad_kwargs))  # fmt: skip
    oracle = jax.jit(clipped_grad(loss_fn, l2_clip=l2_clip, method="vmap",
                                  trainable=trainable, **grad_kwargs))  # fmt: skip
    errors: dict[str, float] = {}
    for i in range(n):
        one = {k: v for k, v in batch.items() if k != "mask"}
        one = jax.tree.map(lambda x, i=i: jnp.asarray(x)[i : i + 1], one)
        got, got_info = engine(params, one)
        want, want_info = oracle(params, one)
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
    return errors
