"""Which trainable leaves a tap engine derives from tapped calls, and which go direct.

Both tap engines (``bitfit``, ``ghost``) plan the same way; they differ only in a
:class:`Rule`: which parameters of a recognised layer call they can derive from the
call's tap (``bitfit``: the ``bias``, over the axes its bias rule gives; ``ghost``: any
parameter the layer's ghost adapter handles). :func:`plan_taps` does the shared work:

1. discovers the layer calls (:func:`dpjax.engines.taps.discover`, shapes only) at batch
   sizes 1 and 2, and places each call's parameters in the params tree
   (:func:`dpjax.engines.taps.resolve`);
2. blocks a leaf used by a call it cannot tap: a call inside a lifted transform
   (``nn.scan``, ...; a stacked leaf seen through a slice is found by path suffix), a call
   that is not per-example (input and output do not carry the batch on axis 0, e.g. a
   layer applied to a parameter), or a parameter the rule does not cover;
3. blocks a leaf also read outside its layer calls (:mod:`dpjax.engines.reads`);
4. every other trainable leaf used only by covered calls is *tapped*; all the rest are
   *direct*: the engine takes their exact per-example gradient in the same pass. No leaf
   is skipped, and :attr:`TapPlan.reasons` says why each direct leaf is direct.

Example:
    >>> import flax.linen as nn, jax, jax.numpy as jnp
    >>> from dpjax.engines.tap_plan import Rule, plan_taps
    >>> model = nn.Dense(2)
    >>> x = jnp.ones((4, 3))
    >>> params = model.init(jax.random.key(0), x)["params"]
    >>> loss_fn = lambda p, b: model.apply({"params": p}, b["x"]).sum(-1)
    >>> bias_only = Rule("demo", lambda call: {"bias": None})
    >>> plan = plan_taps(loss_fn, params, {"x": x}, [("bias",), ("kernel",)], bias_only)
    >>> [(u.key, u.leaf, u.name) for u in plan.uses], plan.direct
    ([(':__call__:0', 0, 'bias')], (1,))
    >>> print(plan.describe([("bias",), ("kernel",)]))
    demo: 1 tapped calls, 1 direct leaves
      direct kernel: demo has no rule for 'kernel' of Dense.__call__ (:__call__:0)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax

from dpjax.engines import taps
from dpjax.engines.reads import read_outside
from dpjax.partition import Path, path_to_str

__all__ = ["Rule", "TapPlan", "Use", "plan_taps"]


@dataclasses.dataclass(frozen=True)
class Rule:
    """What one tap engine can derive from a call's tap.

    Attributes:
      engine: the engine's name, for messages.
      covers: ``covers(call) -> {param name: axes or None}``: the parameters of ``call``
        the engine derives from its tap, with the output axes a bias spans (``bitfit``)
        or ``None`` (``ghost`` needs nothing more). It only sees top-level, per-example
        calls of recognised layers.
    """

    engine: str
    covers: Callable[[taps.LayerCall], Mapping[str, tuple[int, ...] | None]]


@dataclasses.dataclass(frozen=True)
class Use:
    """Trainable leaf ``leaf`` is parameter ``name`` of the call ``key``.

    ``axes``: for a bias, the output axes it spans (``bitfit``); ``None`` otherwise.
    """

    key: str
    leaf: int
    name: str
    axes: tuple[int, ...] | None = None


@dataclasses.dataclass(frozen=True)
class TapPlan:
    """How each trainable leaf (index in ``jax.tree.leaves(train)`` order) is handled.

    Attributes:
      calls: the tapped calls (discovered on a batch of one), by key.
      uses: every use of a tapped leaf by a tapped call, in call order.
      direct: indices of the leaves that take exact per-example gradients.
      reasons: why each direct leaf is direct.
    """

    calls: dict[str, taps.LayerCall]
    uses: tuple[Use, ...]
    direct: tuple[int, ...]
    reasons: dict[int, str] = dataclasses.field(compare=False, hash=False)
    engine: str = "taps"

    def describe(self, paths: Sequence[Path]) -> str:
        """A human-readable summary (for logs)."""
        lines = [f"{self.engine}: {len(self.calls)} tapped calls, {len(self.direct)} direct leaves"]
        lines += [f"  direct {path_to_str(paths[i])}: {self.reasons[i]}" for i in self.direct]
        return "\n".join(lines)


def _structs(batch: Any, size: int) -> Any:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct((size,) + x.shape[1:], x.dtype), batch)


def _per_example(one: taps.LayerCall, two: taps.LayerCall | None) -> bool:
    """Input and output carry the batch on axis 0 (sizes 1 and 2), nothing else changes."""
    if two is None or not one.input_shape or not one.output_shape:
        return False
    lead = (one.input_shape[0], one.output_shape[0], two.input_shape[0], two.output_shape[0])
    rest = (one.input_shape[1:], one.output_shape[1:])
    return lead == (1, 1, 2, 2) and rest == (two.input_shape[1:], two.output_shape[1:])


def _untappable(call: taps.LayerCall, two: taps.LayerCall | None) -> str | None:
    """Why no parameter of ``call`` can come from its tap, or ``None``."""
    if call.lifted:
        return f"used inside a lifted transform ({call.key})"
    if not _per_example(call, two):
        return f"used by {call.key}, which is not per-example (no batch axis)"
    return None


def _place(params: Any, call: taps.LayerCall, name: str) -> Path | None:
    try:
        return taps.resolve(params, call, name)
    except taps.TapError as e:
        raise taps.TapError(f"cannot place parameter {name!r} of {call.key}: {e}") from e


def plan_taps(
    loss_fn: Any, params: Any, batch: Any, train_paths: Sequence[Path], rule: Rule
) -> TapPlan:
    """Traces ``loss_fn`` at batch sizes 1 and 2 (shapes only) and plans the leaves.

    Args:
      loss_fn: the user's batched loss, ``loss_fn(params, batch) -> [B]``.
      params: the full params tree given to ``loss_fn``.
      batch: a batch (only shapes and dtypes are used).
      train_paths: paths of the trainable leaves, in ``jax.tree.leaves(train)`` order.
      rule: what the engine derives from a tap (see :class:`Rule`).

    Returns:
      The :class:`TapPlan`; every trainable leaf is either tapped or direct.

    Raises:
      TapError: a parameter matches several params leaves (see
        :func:`dpjax.engines.taps.resolve`).
    """
    index = {p: i for i, p in enumerate(train_paths)}
    one = _structs(batch, 1)
    calls = taps.discover(loss_fn, params, one)
    twos = {c.key: c for c in taps.discover(loss_fn, params, _structs(batch, 2))}
    uses: list[Use] = []
    blocked: dict[int, str] = {}
    for call in calls:
        untappable = _untappable(call, twos.get(call.key))
        covered = None
        for name, _ in call.params:
            path = _place(params, call, name)
            if path is None:  # e.g. a stacked leaf seen through a slice inside nn.scan
                unknown = f"used by {call.key}, whose parameter path is unknown"
                suffix = (*call.module_path, name)
                for p, i in index.items():
                    if p[-len(suffix) :] == suffix:
                        blocked[i] = untappable if call.lifted else unknown
                continue
            if path not in index:
                continue  # frozen
            why = untappable
            if why is None:
                covered = rule.covers(call) if covered is None else covered
                if name in covered:
                    uses.append(Use(call.key, index[path], name, covered[name]))
                    continue
                kind = f"{call.module_type.__name__}.{call.method}"
                why = f"{rule.engine} has no rule for {name!r} of {kind} ({call.key})"
            blocked[index[path]] = why
    tapped = {u.leaf for u in uses} - set(blocked)
    for p in read_outside(loss_fn, params, one, [train_paths[i] for i in sorted(tapped)]):
        blocked[index[p]] = "also read outside its layer calls"
        tapped.discard(index[p])
    direct = tuple(i for i in range(len(train_paths)) if i not in tapped)
    default = "not a parameter of a recognised layer call"
    kept = tuple(u for u in uses if u.leaf in tapped)
    by_key = {c.key: c for c in calls}
    return TapPlan(
        calls={u.key: by_key[u.key] for u in kept},
        uses=kept,
        direct=direct,
        reasons={i: blocked.get(i, default) for i in direct},
        engine=rule.engine,
    )
