"""Which parameters does ``loss_fn`` read *outside* the layer calls that own them?

The ``bitfit`` and ``ghost`` engines derive a leaf's per-example gradient from the calls
of the layer that owns it (taps on its output, its recorded input). A leaf that is also
read elsewhere -- a bias added by hand to a residual, an embedding table multiplied by
hand as an output head, a kernel regularised inside the loss -- gets gradient from that
read too, which no tap sees. Such leaves must take the engines' exact per-example path.

:func:`read_outside` finds them from the program itself: it traces ``loss_fn`` to a
jaxpr (shapes only, no FLOPs) with every recognised, top-level layer call *detached*
from its parameters (the call runs on zero constants of the same shapes instead), then
walks the jaxpr backwards from the loss. A candidate leaf that still reaches the loss
is read outside its layer calls. A read whose result is unused (``params[...].shape``, a
cast that only feeds a layer) does not count. Calls inside lifted transforms
(``nn.scan``, ...) are not detached: their leaves already take the exact path.

Example:
    >>> import flax.linen as nn, jax, jax.numpy as jnp
    >>> model = nn.Dense(2)
    >>> x = jnp.ones((4, 3))
    >>> params = model.init(jax.random.key(0), x)["params"]
    >>> def loss_fn(p, b):  # the bias is also added once more by hand
    ...     return jnp.sum(model.apply({"params": p}, b["x"]) + p["bias"], axis=-1)
    >>> sorted(read_outside(loss_fn, params, {"x": x}, [("bias",), ("kernel",)]))
    [('bias',)]
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.core import tracers as flax_tracers
from jax.extend import core as jex_core

from dpjax.engines import taps as taps_lib
from dpjax.partition import Path, leaf_paths

__all__ = ["read_outside"]


@contextmanager
def _detaching(candidates: set[int], trace: Any) -> Iterator[None]:
    """Runs recognised top-level layer calls that own a candidate on zero parameters."""

    def interceptor(next_fun: Callable[..., Any], args: Any, kwargs: Any, context: Any) -> Any:
        module, method = context.module, context.method_name
        if not taps_lib.intercepted(module, method):
            return next_fun(*args, **kwargs)
        own = taps_lib.own_params(module)
        lifted = flax_tracers.current_trace() != trace
        if lifted or not any(id(v) in candidates for v in own.values()):
            return next_fun(*args, **kwargs)
        zeros = {k: jnp.zeros(jnp.shape(v), jnp.result_type(v)) for k, v in own.items()}
        try:
            return module.clone(parent=None).apply(
                {"params": zeros}, *args, method=method, **kwargs
            )
        except Exception:  # noqa: BLE001 - a layer that cannot run detached stays attached
            return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
        yield


def _live_inputs(jaxpr: Any) -> set[Any]:
    """Input variables of ``jaxpr`` that reach one of its outputs (backward liveness)."""
    live = {v for v in jaxpr.outvars if isinstance(v, jex_core.Var)}
    for eqn in reversed(jaxpr.eqns):
        if any(v in live for v in eqn.outvars):
            live.update(v for v in eqn.invars if isinstance(v, jex_core.Var))
    return {v for v in jaxpr.invars if v in live}


def read_outside(
    loss_fn: Callable[[Any, Any], jax.Array],
    params: Any,
    batch: Any,
    paths: Sequence[Path],
) -> set[Path]:
    """The leaves among ``paths`` that reach the loss other than through their layer calls.

    Args:
      loss_fn: the user's batched loss, ``loss_fn(params, batch) -> [B]``.
      params: the full params tree given to ``loss_fn`` (arrays or shape structs).
      batch: a batch (arrays or shape structs).
      paths: candidate leaves (e.g. those an engine would cover from taps).

    Returns:
      The subset of ``paths`` read outside the recognised layer calls that own them.
    """
    wanted = set(paths)
    if not wanted:
        return set()
    all_paths = leaf_paths(params)
    flat, treedef = jax.tree.flatten(params)
    structs = [jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)) for x in flat]
    batch_structs = jax.tree.map(lambda x: jax.ShapeDtypeStruct(jnp.shape(x), x.dtype), batch)

    def traced(leaves: list[Any], b: Any) -> jax.Array:
        candidates = {id(x) for p, x in zip(all_paths, leaves, strict=True) if p in wanted}
        with _detaching(candidates, flax_tracers.current_trace()):
            return loss_fn(jax.tree.unflatten(treedef, leaves), b)

    closed = jax.make_jaxpr(traced)(structs, batch_structs)
    live = _live_inputs(closed.jaxpr)
    invars = closed.jaxpr.invars[: len(flat)]
    return {p for p, v in zip(all_paths, invars, strict=True) if p in wanted and v in live}
