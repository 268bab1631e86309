"""Taps: intercept the calls of linen layers, add a tap to their outputs, record inputs.

This is the one mechanism behind the ``bitfit`` and ``ghost`` engines. The user's model
and ``loss_fn`` are untouched: every method call of a *recognised* layer (a module type
and method of the one layer table, :mod:`dpjax.engines.layers`, matched exactly) is
intercepted with ``flax.linen.intercept_methods`` while ``loss_fn`` runs.

* :func:`discover` traces ``loss_fn`` once with ``jax.eval_shape`` (no FLOPs) and returns
  one :class:`LayerCall` per call: a stable ``key``, the module's path, type and method,
  input/output shapes, and where its parameters live in the params tree given to
  ``loss_fn`` (found by array identity while tracing, see :meth:`LayerCall.param_path`).
* :func:`tapped_loss` runs ``loss_fn`` and adds ``taps[key]`` to the output of each call
  whose key is given. A zero tap changes nothing in the forward pass; ``jax.grad`` with
  respect to the taps returns the output gradients, reduced over every axis where the tap
  has size 1. With a tap of shape ``(B, 1, ..., 1, p)`` that is the per-example gradient
  of a bias added on the last axis; with the full output shape it is ``dL/dy`` itself.

Keys are ``"{module/path}:{method}:{call_index}"``; ``call_index`` counts the calls of the
same module and method in one forward pass (shared weights, a tied ``Embed.attend``), so
a layer called twice has two keys and the engines sum their contributions per example.

Calls made inside a lifted transform (``nn.scan``, ``nn.vmap``, ``nn.remat``, ...) are
discovered with ``lifted=True``. A tap cannot be threaded into such a call correctly in
general (``nn.scan`` slices stacked parameters), so :func:`tapped_loss` refuses them with
an error naming the module; engines leave their parameters to an exact fallback.

Example:
    >>> import flax.linen as nn, jax, jax.numpy as jnp
    >>> from dpjax.engines import taps
    >>> model = nn.Dense(3)
    >>> x = jnp.ones((4, 5))
    >>> params = model.init(jax.random.key(0), x)
    >>> loss_fn = lambda p, b: model.apply(p, b["x"]).sum(-1)
    >>> (call,) = taps.discover(loss_fn, params, {"x": x})
    >>> call.key, call.output_shape, call.param_path("bias")
    (':__call__:0', (4, 3), ('params', 'bias'))
    >>> tap = {call.key: jnp.zeros((4, 3))}
    >>> g = jax.grad(lambda t: taps.tapped_loss(loss_fn, params, {"x": x}, t)[0].sum())(tap)
    >>> g[call.key].shape  # dL/dy for every example and feature
    (4, 3)
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from flax.core import tracers as flax_tracers

from dpjax.engines.layers import lookup, register_layer
from dpjax.partition import Path, leaf_paths, path_to_str

__all__ = [
    "LayerCall",
    "TapError",
    "discover",
    "intercepted",
    "own_params",
    "register_layer",
    "resolve",
    "tapped_loss",
]

LossFn = Callable[[Any, Any], jax.Array]


class TapError(ValueError):
    """A tap that cannot be placed (unknown key, lifted call, bad shape, ambiguous path)."""


def intercepted(module: nn.Module, method: str) -> bool:
    """Whether calls of ``module.method`` are intercepted (see :mod:`dpjax.engines.layers`)."""
    entry = lookup(type(module))
    return entry is not None and method in entry.methods


@dataclasses.dataclass(frozen=True)
class LayerCall:
    """One call of a recognised layer in one forward pass of ``loss_fn``.

    Attributes:
      key: ``f"{'/'.join(module_path)}:{method}:{call_index}"``, unique in one forward.
      module_path: the module's scope path, e.g. ``("encoder", "layer_0", "query")``.
      module_type: the module's class (``nn.Dense``, ``nn.Conv``, ...).
      method: ``"__call__"`` or another registered method such as ``"attend"``.
      call_index: 0 for the first call of this module and method, 1 for the next, ...
      input_shape: shape of the first positional argument.
      extra_args: the call had positional arguments after the first.
      static_kwargs: ``((name, value), ...)`` keyword arguments that are not arrays
        (``None`` values left out); adapters re-apply them.
      array_kwargs: names of the keyword arguments that are arrays (e.g. a norm layer's
        ``mask=``); :func:`tapped_loss` records their values with the inputs.
      output_shape: shape of the returned array.
      output_dtype: dtype of the returned array.
      module: an unbound clone of the module (read ``features``, ``use_bias``, ...).
      params: ``((name, shape), ...)`` of the module's own ``params`` variables as the
        module sees them (inside ``nn.scan`` that is one slice of the stored leaf).
      param_paths: ``((name, path or None), ...)``: where each of those variables sits in
        the params tree given to ``loss_fn``, found by identity while tracing (``None``
        when ``loss_fn`` transformed the leaf first, e.g. a dtype cast; use
        :func:`resolve` then).
      lifted: the call ran inside a lifted transform (``nn.scan``, ``nn.vmap``,
        ``nn.remat``, ...); it cannot be tapped.
    """

    key: str
    module_path: tuple[str, ...]
    module_type: type
    method: str
    call_index: int
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    output_dtype: Any
    module: Any = dataclasses.field(compare=False, repr=False)
    extra_args: bool = False
    static_kwargs: tuple[tuple[str, Any], ...] = dataclasses.field(default=(), compare=False)
    array_kwargs: tuple[str, ...] = ()
    params: tuple[tuple[str, tuple[int, ...]], ...] = ()
    param_paths: tuple[tuple[str, Path | None], ...] = ()
    lifted: bool = False

    @property
    def name(self) -> str:
        """The module path as ``a/b/c`` (for messages)."""
        return path_to_str(self.module_path) or "<root>"

    def param_shape(self, name: str) -> tuple[int, ...] | None:
        """Shape of the module's variable ``name`` as the module sees it, or ``None``."""
        return dict(self.params).get(name)

    def param_path(self, name: str) -> Path | None:
        """Path of variable ``name`` in the params tree, when identity tracing found it."""
        return dict(self.param_paths).get(name)


class _Recorder(threading.local):
    """Per-thread state of the running interception (one forward pass at a time)."""

    def __init__(self) -> None:
        self.active: list[dict[str, Any]] = []


_STATE = _Recorder()


def _make_key(module_path: tuple[str, ...], method: str, index: int) -> str:
    return f"{'/'.join(module_path)}:{method}:{index}"


def own_params(module: nn.Module) -> dict[str, Any]:
    """The module's own ``params`` variables (not those of its submodules), by name."""
    variables = module.variables.get("params", {})
    return {k: v for k, v in variables.items() if not isinstance(v, Mapping)}


@contextmanager
def _intercepting(state: dict[str, Any]) -> Iterator[None]:
    _STATE.active.append(state)
    try:
        with nn.intercept_methods(_interceptor):
            yield
    finally:
        _STATE.active.pop()


def _interceptor(next_fun: Callable[..., Any], args: Any, kwargs: Any, context: Any) -> Any:
    state = _STATE.active[-1]
    module = context.module
    method = context.method_name
    if not intercepted(module, method):
        return next_fun(*args, **kwargs)
    module_path = tuple(str(p) for p in module.scope.path)
    counts = state["counts"]
    index = counts.get((module_path, method), 0)
    counts[(module_path, method)] = index + 1
    key = _make_key(module_path, method, index)
    lifted = flax_tracers.current_trace() != state["trace"]
    out = next_fun(*args, **kwargs)
    taps = state["taps"]
    if key in taps:
        if lifted:
            raise TapError(
                f"cannot tap {key!r}: module {path_to_str(module_path)!r} "
                f"({type(module).__name__}) runs inside a lifted transform (nn.scan, nn.vmap, "
                "nn.remat, ...); taps only reach layers called at the top level of loss_fn"
            )
        tap = taps[key]
        try:
            jax.numpy.broadcast_shapes(tap.shape, out.shape)
        except ValueError as e:
            raise TapError(
                f"tap for {key!r} has shape {tap.shape}, not broadcastable to "
                f"the output shape {out.shape}"
            ) from e
        if jax.numpy.broadcast_shapes(tap.shape, out.shape) != out.shape:
            raise TapError(
                f"tap for {key!r} has shape {tap.shape}; it would broadcast the "
                f"output shape {out.shape}"
            )
        out = out + tap.astype(out.dtype)
        state["seen"].add(key)
    if state["record_inputs"] and key in taps:
        state["inputs"][key] = args[0]
        state["kwargs"][key] = {k: v for k, v in kwargs.items() if _is_array(v)}
    if state["calls"] is not None:
        own = own_params(module)
        ids = state["ids"]
        state["calls"].append(
            LayerCall(
                key=key,
                module_path=module_path,
                module_type=type(module),
                method=method,
                call_index=index,
                input_shape=tuple(jax.numpy.shape(args[0])) if args else (),
                extra_args=len(args) > 1,
                static_kwargs=tuple(
                    (k, v) for k, v in sorted(kwargs.items()) if not _is_array(v) and v is not None
                ),
                array_kwargs=tuple(sorted(k for k, v in kwargs.items() if _is_array(v))),
                output_shape=tuple(out.shape),
                output_dtype=out.dtype,
                module=module.clone(parent=None),
                params=tuple((k, tuple(jax.numpy.shape(v))) for k, v in own.items()),
                param_paths=tuple((k, ids.get(id(v))) for k, v in own.items()),
                lifted=lifted,
            )
        )
    return out


def _is_array(x: Any) -> bool:
    return isinstance(x, (jax.Array, np.ndarray))


def _new_state(taps: Mapping[str, jax.Array], record_inputs: bool) -> dict[str, Any]:
    return {
        "counts": {},
        "taps": dict(taps),
        "seen": set(),
        "record_inputs": record_inputs,
        "inputs": {},
        "kwargs": {},
        "calls": None,
        "ids": {},
        "trace": flax_tracers.current_trace(),
    }


def discover(loss_fn: LossFn, params: Any, batch: Any) -> tuple[LayerCall, ...]:
    """Traces ``loss_fn`` once (``jax.eval_shape``, no FLOPs) and lists its layer calls.

    Args:
      loss_fn: the user's batched loss, ``loss_fn(params, batch) -> [B]``.
      params: the full params tree passed to ``loss_fn`` (arrays or shape structs).
      batch: a batch (arrays or shape structs); shapes in the result refer to it.

    Returns:
      One :class:`LayerCall` per call of a recognised layer, in call order.
    """
    calls: list[LayerCall] = []

    def traced(p: Any, b: Any) -> jax.Array:
        state = _new_state({}, record_inputs=False)
        state["calls"] = calls
        flat = jax.tree_util.tree_flatten_with_path(p)[0]
        state["ids"] = {id(leaf): path for path, (_, leaf) in zip(leaf_paths(p), flat, strict=True)}
        with _intercepting(state):
            return loss_fn(p, b)

    jax.eval_shape(traced, params, batch)
    return tuple(calls)


def tapped_loss(
    loss_fn: LossFn,
    params: Any,
    batch: Any,
    taps: Mapping[str, jax.Array],
    *,
    record_inputs: bool = False,
    record_kwargs: bool = False,
) -> Any:
    """Runs ``loss_fn`` with ``taps[call.key]`` added to the output of each tapped call.

    Args:
      loss_fn: the user's batched loss, ``loss_fn(params, batch) -> [B]``.
      params: params tree passed to ``loss_fn`` unchanged.
      batch: the batch passed to ``loss_fn`` unchanged.
      taps: ``{key: array}``; each array broadcasts to (and never enlarges) the output of
        its call, e.g. ``(B, 1, ..., 1, p)`` for a bias or the full output shape.
      record_inputs: also return the first positional input of every tapped call.
      record_kwargs: also return the array keyword arguments of every tapped call
        (``{key: {name: array}}``, e.g. a norm layer's ``mask=``).

    Returns:
      ``(per-example loss [B], {key: input array})`` (the dict is empty without
      ``record_inputs``), and a third item ``{key: {name: array}}`` with
      ``record_kwargs``.

    Raises:
      TapError: a key in ``taps`` was not called, or belongs to a lifted call.
    """
    state = _new_state(taps, record_inputs or record_kwargs)
    with _intercepting(state):
        loss = loss_fn(params, batch)
    missing = sorted(set(taps) - state["seen"])
    if missing:
        raise TapError(f"taps for calls that did not happen in this forward pass: {missing}")
    inputs = state["inputs"] if record_inputs else {}
    if record_kwargs:
        return loss, inputs, state["kwargs"]
    return loss, inputs


def resolve(params: Any, call: LayerCall, name: str) -> Path | None:
    """Path of the module variable ``name`` of ``call`` in ``params``, or ``None``.

    The identity found by :func:`discover` wins. Otherwise the unique leaf whose path ends
    with ``module_path + (name,)`` and whose shape matches is used; several candidates
    raise (two models with the same module names under different prefixes).
    """
    found = call.param_path(name)
    if found is not None:
        return found
    shape = call.param_shape(name)
    if shape is None:
        return None
    suffix = (*call.module_path, name)
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    hits = [
        path
        for path, (_, leaf) in zip(leaf_paths(params), flat, strict=True)
        if path[-len(suffix) :] == suffix and tuple(jax.numpy.shape(leaf)) == shape
    ]
    if len(hits) > 1:
        raise TapError(
            f"variable {name!r} of module {call.name!r} matches several params leaves: "
            f"{[path_to_str(h) for h in hits]}; pass the params tree unchanged to the model "
            "(so identity tracing can tell them apart) or give the modules distinct names"
        )
    return hits[0] if hits else None
