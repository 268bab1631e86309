"""Which trainable leaves the ``ghost`` engine covers from taps, and which fall back.

A trainable leaf is *covered* when every discovered call that uses it is

* a top-level call (not inside ``nn.scan``/``nn.vmap``/``nn.remat``: taps cannot reach it),
* per-example: its input and output carry the batch on axis 0 (checked by tracing the
  loss at batch sizes 1 and 2, so a layer applied to a parameter is never mistaken for a
  batched one),
* of a module type and method with a ghost adapter (:mod:`dpjax.engines.ghost_layers`)
  that handles this parameter for this call.

Every other trainable leaf (a ``cls`` token or position embedding added to activations,
an ``nn.Einsum`` kernel, a leaf used inside ``nn.scan``, a subclass of a known layer, a
leaf also read outside its layer calls, see :mod:`dpjax.engines.reads`) is
a *fallback* leaf: the engine takes its exact per-example gradient in the same pass
(``vmap`` over examples of ``grad`` with respect to the taps and those leaves). No leaf
is skipped.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dpjax.engines import taps as taps_lib
from dpjax.engines.ghost_layers import adapter_for
from dpjax.engines.reads import read_outside
from dpjax.partition import Path, path_to_str

__all__ = ["GhostPlan", "Use", "make_ghost_plan"]


@dataclasses.dataclass(frozen=True)
class Use:
    """Trainable leaf ``leaf`` is parameter ``name`` of the call with ``key``."""

    key: str
    leaf: int
    name: str


@dataclasses.dataclass(frozen=True)
class GhostPlan:
    """How each trainable leaf (index in ``jax.tree.leaves(train)`` order) is handled.

    Attributes:
      calls: the tapped calls (batch-of-one :class:`~dpjax.engines.taps.LayerCall`), by key.
      uses: the covered leaves' uses, in call order.
      fallback: indices of the leaves that take exact per-example gradients.
      reasons: why each fallback leaf is not covered.
    """

    calls: dict[str, taps_lib.LayerCall]
    uses: tuple[Use, ...]
    fallback: tuple[int, ...]
    reasons: dict[int, str] = dataclasses.field(compare=False, hash=False)

    def describe(self, paths: Sequence[Path]) -> str:
        """A human-readable summary (for logs)."""
        lines = [f"ghost: {len(self.calls)} tapped calls"]
        for i in self.fallback:
            lines.append(f"  fallback {path_to_str(paths[i])}: {self.reasons[i]}")
        return "\n".join(lines)


def _structs(batch: Any, size: int) -> Any:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct((size,) + x.shape[1:], x.dtype), batch)


def _adapter_names(call: taps_lib.LayerCall) -> set[str]:
    """Parameter names the adapter handles for this call (decided by tracing it on shapes)."""
    adapter = adapter_for(call.module_type, call.method)
    if adapter is None or call.extra_args:  # adapters know the single-input signatures
        return set()
    names: set[str] = set()
    ids = call.module_type is nn.Embed and call.method == "__call__"
    in_dtype = jnp.int32 if ids else jnp.float32

    def probe(a: jax.Array, g: jax.Array) -> jax.Array:
        names.update(adapter(call, a, g, dict(call.static_kwargs)))
        return jnp.zeros(())

    jax.eval_shape(
        probe,
        jax.ShapeDtypeStruct(call.input_shape, in_dtype),
        jax.ShapeDtypeStruct(call.output_shape, jnp.float32),
    )
    return names


def _per_example(one: taps_lib.LayerCall, two: taps_lib.LayerCall | None) -> bool:
    if two is None or not one.input_shape or not one.output_shape:
        return False
    return (one.input_shape[0], one.output_shape[0], two.input_shape[0], two.output_shape[0]) == (
        1,
        1,
        2,
        2,
    ) and (one.input_shape[1:], one.output_shape[1:]) == (two.input_shape[1:], two.output_shape[1:])


def make_ghost_plan(
    loss_fn: Any, params: Any, batch: Any, train_paths: Sequence[Path]
) -> GhostPlan:
    """Traces ``loss_fn`` at batch sizes 1 and 2 (shapes only) and plans the leaves.

    Args:
      loss_fn: the user's batched loss.
      params: the full params tree given to ``loss_fn``.
      batch: a batch (only shapes and dtypes are used).
      train_paths: paths of the trainable leaves, in ``jax.tree.leaves(train)`` order.
    """
    index = {p: i for i, p in enumerate(train_paths)}
    calls1 = taps_lib.discover(loss_fn, params, _structs(batch, 1))
    calls2 = {c.key: c for c in taps_lib.discover(loss_fn, params, _structs(batch, 2))}
    uses: list[Use] = []
    blocked: dict[int, str] = {}
    for call in calls1:
        names = None
        for name, _ in call.params:
            try:
                path = taps_lib.resolve(params, call, name)
            except taps_lib.TapError as e:
                raise ValueError(
                    f"ghost: cannot place parameter {name!r} of {call.key}: {e}"
                ) from e
            if path is None:
                # e.g. a stacked leaf seen through a slice inside nn.scan: block by suffix
                suffix = (*call.module_path, name)
                for p, i in index.items():
                    if p[-len(suffix) :] == suffix:
                        blocked[i] = f"used by {call.key}, whose parameter path is unknown"
                continue
            if path not in index:
                continue  # frozen
            leaf = index[path]
            if call.lifted:
                blocked[leaf] = f"used inside a lifted transform ({call.key})"
                continue
            if not _per_example(call, calls2.get(call.key)):
                blocked[leaf] = f"used by {call.key}, which is not per-example (no batch axis)"
                continue
            if names is None:
                names = _adapter_names(call)
            if name not in names:
                kind = f"{call.module_type.__name__}.{call.method}"
                blocked[leaf] = f"no ghost rule for {name!r} of {kind} ({call.key})"
                continue
            uses.append(Use(call.key, leaf, name))
    covered = {u.leaf for u in uses} - set(blocked)
    outside = read_outside(
        loss_fn, params, _structs(batch, 1), [train_paths[i] for i in sorted(covered)]
    )
    for p in outside:
        blocked[index[p]] = "also read outside its layer calls"
    covered -= {index[p] for p in outside}
    reasons = dict(blocked)
    for i in range(len(train_paths)):
        if i not in covered:
            reasons.setdefault(i, "not a parameter of a recognised layer call")
    kept = tuple(u for u in uses if u.leaf in covered)
    by_key = {c.key: c for c in calls1}
    return GhostPlan(
        calls={u.key: by_key[u.key] for u in kept},
        uses=kept,
        fallback=tuple(i for i in range(len(train_paths)) if i not in covered),
        reasons=reasons,
    )
