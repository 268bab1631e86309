"""Evaluation: per-example metrics averaged over the real rows of every eval split.

Each split is read in fixed-shape padded batches (every host loads its slice), the jitted
``eval_fn`` gives ``{metric: [B]}``, and masked sums are accumulated, so the average is
exact whatever the padding. A metric given as a pair ``(numerator [B], denominator [B])``
is the ratio of the two sums over the split (e.g. one class's accuracy: hits among the
examples of that class); one whose denominator sums to 0 (a class absent from the split)
is undefined, so it is left out of the results, and the omission is logged.

With ``padded_keys`` (a text task's right-padded token fields), the rows are read longest
first and each batch is cut to its longest row (:mod:`dpjax.data.lengths`): the same
per-row metrics at less cost.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from dpjax.data import lengths as padding
from dpjax.data.sampling import host_slice
from dpjax.training.sharding import global_batch, replicated, to_host

log = logging.getLogger(__name__)

__all__ = ["Evaluator"]


class Evaluator:
    """Runs ``eval_fn`` over ``datasets`` in padded batches of ``batch_size`` rows.

    Args:
      eval_fn: ``eval_fn(params, batch) -> {name: [B] or ([B], [B])}`` (a pair is a ratio
        metric: sum of the first over sum of the second).
      datasets: ``{split: Dataset}``.
      batch_size: rows per batch (a multiple of the data-axis size and process count).
      mesh: the device mesh.
      padded_keys: right-padded token fields to cut to each batch's longest row
        (``"attention_mask"`` among them; every split then holds ``arrays``).
    """

    def __init__(
        self,
        eval_fn: Callable[[Any, Any], Mapping[str, jax.Array]],
        datasets: Mapping[str, Any],
        batch_size: int,
        mesh: Mesh,
        padded_keys: Sequence[str] = (),
    ) -> None:
        self.datasets = dict(datasets)
        self.padded_keys = tuple(padded_keys)
        self.batch_size = batch_size
        self.mesh = mesh

        def sums(params: Any, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
            out = eval_fn(params, batch)
            mask = batch["mask"].astype(jnp.float32)

            def total(v: Any) -> jax.Array:
                return jnp.sum(jnp.asarray(v, jnp.float32) * mask)

            res = {}
            for k, v in out.items():
                if isinstance(v, tuple):  # a ratio metric: sum(num) / sum(den)
                    res[f"{k}\0num"], res[f"{k}\0den"] = total(v[0]), total(v[1])
                else:
                    res[k] = total(v)
            res["__count__"] = jnp.sum(mask)
            return res

        self._sums = jax.jit(sums, out_shardings=replicated(mesh))

    def _batches(self, data: Any) -> Any:
        n, b = len(data), self.batch_size
        pid, count = jax.process_index(), jax.process_count()
        order = tokens = None
        if self.padded_keys:
            tokens = data.arrays["attention_mask"]
            order = np.argsort(-padding.row_lengths(tokens), kind="stable")
        for start in range(0, n, b):
            pos = np.arange(start, start + b, dtype=np.int64)
            mask = pos < n
            idx = np.where(mask, pos, 0)
            if order is not None:
                idx = order[idx]
            local_idx, local_mask = host_slice(idx, mask, pid, count)
            local = data.take(local_idx, local_mask)
            local["mask"] = np.asarray(local["mask"], bool) & local_mask
            if tokens is not None:
                width = padding.bucket_width(tokens, idx[mask])
                local = padding.trim(local, self.padded_keys, width)
            yield global_batch(local, self.mesh, b)

    def __call__(self, params: Any) -> dict[str, float]:
        """``{"<split>/<metric>": mean over the split's examples}``."""
        results: dict[str, float] = {}
        for split, data in self.datasets.items():
            totals: dict[str, float] = {}
            for batch in self._batches(data):
                for k, v in self._sums(params, batch).items():
                    totals[k] = totals.get(k, 0.0) + float(to_host(v))
            count = max(totals.pop("__count__", 0.0), 1.0)
            for k, v in totals.items():
                name, _, part = k.partition("\0")
                if part == "num":
                    den = totals[f"{name}\0den"]
                    if den:
                        results[f"{split}/{name}"] = v / den
                    else:  # e.g. a class absent from the split: undefined, so not reported
                        log.warning("%s/%s not reported: empty in the split", split, name)
                elif not part:
                    results[f"{split}/{k}"] = v / count
        return results
