"""Per-example engines: each turns a batched loss into clipped, summed gradients.

An engine is a function ``engine(loss_fn, train, frozen, batch, plan) -> EngineResult``:

* ``train``: the trainable leaves (``None`` at frozen ones), the only thing differentiated;
* ``frozen``: the complementary tree, closed over;
* ``batch``: one micro-batch, every leaf with leading axis ``B``, ``batch["mask"]`` bool;
* ``plan``: a :class:`dpjax.clip_rules.ClipPlan` (groups, norms, clip function).

It returns the clipped sum ``sum_i c_i g_i`` (tree like ``train``, float32 or wider
whatever the parameter dtype), the per-example
squared norms per group ``[B, K]`` (float32, before clipping), and the per-example loss.
Rows outside the mask or with a non-finite gradient must contribute exactly zero.

Modules:

* engines: :mod:`~dpjax.engines.vmap` (the oracle), :mod:`~dpjax.engines.bitfit`,
  :mod:`~dpjax.engines.ghost`; :mod:`~dpjax.engines.registry` maps names to them;
* the tap machinery both analytic engines share: :mod:`~dpjax.engines.layers` (the one
  layer table), :mod:`~dpjax.engines.taps` (interception), :mod:`~dpjax.engines.reads`
  (parameters read outside their layers), :mod:`~dpjax.engines.tap_plan` (which leaves
  are tapped, which direct), :mod:`~dpjax.engines.tap_pass` (the one forward/backward);
* ghost math: :mod:`~dpjax.engines.ghost_layers`, :mod:`~dpjax.engines.ghost_norms`.
"""

from __future__ import annotations

from dpjax.engines import bitfit, ghost, vmap  # noqa: F401  (registers the builtin engines)
from dpjax.engines.base import Engine, EngineResult
from dpjax.engines.registry import ENGINES, get_engine, register_engine

__all__ = ["ENGINES", "Engine", "EngineResult", "get_engine", "register_engine"]
