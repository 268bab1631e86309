"""The step variants compared: non-private baselines and the DP engines.

Each variant is a function ``step(params, batch)`` returning gradients (and, for DP, the
clip info); the benchmark jits it with ``params`` and ``batch`` as arguments, so every
variant has the same argument bytes and differs only in what it computes and keeps.

* ``nonprivate_full``: ``jax.grad`` of the summed loss w.r.t. every leaf;
* ``nonprivate_bitfit``: the same w.r.t. the BiTFiT trainable set only (others closed over);
* ``dp_vmap``: ``dpjax.clipped_grad(method="vmap")``, all leaves;
* ``dp_ghost``: ``dpjax.clipped_grad(method="ghost")``, all leaves;
* ``dp_bitfit``: ``dpjax.clipped_grad(method="bitfit")`` on the BiTFiT trainable set;
* ``nonprivate_lora``, ``dp_lora_vmap``, ``dp_lora_ghost``: LoRA adapters
  (:mod:`dpjax.peft`, rank :data:`LORA_RANK` on the attention queries and values, GPT-2's
  fused ``c_attn``) trained alone, non-privately or with the ``vmap`` / ``ghost`` engine;
* ``dp_bitfit_lora``: adapters and every bias under ``ghost`` (BiTFiT-LoRA).

Bias-free models (the Llama family) have no biases: there the BiTFiT variants
(``nonprivate_bitfit``, ``dp_bitfit``, ``dp_bitfit_lora``) are DP-BiTFiT-Add, their
biases zero-initialised inside the step by :func:`dpjax.peft.add_biases` on every Dense.

The LoRA variants take the same arguments: the step builds the adapters (``B = 0``)
inside, from the base params' shapes, and adds them as ``params["lora"]``.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

import jax

import dpjax
from benchmarks.shapes import Workload
from dpjax import peft
from dpjax.engines import ENGINES

__all__ = ["BASELINE", "LORA_VARIANTS", "VARIANTS", "available_methods", "make_step"]

Step = Callable[[Any, Any], Any]

VARIANTS = ("nonprivate_full", "nonprivate_bitfit", "dp_vmap", "dp_ghost", "dp_bitfit")
LORA_VARIANTS = ("nonprivate_lora", "dp_lora_vmap", "dp_lora_ghost", "dp_bitfit_lora")
LORA_RANK = 8
#: The adapted layers of each workload kind (module-path regex, ``dpjax.peft``).
LORA_TARGETS = {"bert": "(query|value)$", "vit": "(query|value)$", "gpt2": "c_attn$",
                "llama": "(q_proj|v_proj)$", "mlp": "."}  # fmt: skip
#: Workload kinds without biases: their BiTFiT variants add them (DP-BiTFiT-Add).
BIAS_FREE = ("llama",)
BASELINE = "nonprivate_full"
L2_CLIP = 0.1

_METHOD = {"dp_vmap": "vmap", "dp_ghost": "ghost", "dp_bitfit": "bitfit"}


def available_methods() -> set[str]:
    """The registered ``clipped_grad`` methods (the builtin engines and any added ones)."""
    return set(ENGINES)


def _nonprivate(loss_fn: Any, trainable: Any) -> Step:
    def step(params: Any, batch: Any) -> Any:
        train, frozen = dpjax.partition(params, trainable)

        def total(t: Any) -> jax.Array:
            return loss_fn(dpjax.combine(t, frozen), batch).sum()

        return jax.grad(total)(train)

    return step


def make_step(
    variant: str,
    work: Workload,
    microbatch_size: int | None = None,
    isolate_nonfinite: bool = False,
) -> Step:
    """The step function of ``variant`` for ``work``.

    ``isolate_nonfinite`` is ``clipped_grad``'s guard that re-runs a micro-batch holding a
    non-finite row inside a ``lax.cond``. Off by default here: the second branch never
    runs on finite data, but XLA's ``cost_analysis`` counts both branches (DP flops
    appear doubled) and compile time doubles. Pass ``True`` to measure the guarded step.
    """
    if work.kind in BIAS_FREE and "bitfit" in variant:
        return _with_added_biases(variant, work, microbatch_size, isolate_nonfinite)
    return _make_step(variant, work, microbatch_size, isolate_nonfinite)


def _make_step(
    variant: str, work: Workload, microbatch_size: int | None, isolate_nonfinite: bool
) -> Step:
    if variant in LORA_VARIANTS:
        return _lora_step(variant, work, microbatch_size)
    if variant == "nonprivate_full":
        return _nonprivate(work.loss_fn, dpjax.all_leaves)
    if variant == "nonprivate_bitfit":
        return _nonprivate(work.loss_fn, work.bitfit_trainable)
    method = _METHOD[variant]
    trainable = work.bitfit_trainable if variant == "dp_bitfit" else None
    kwargs: dict[str, Any] = {}
    if "isolate_nonfinite" in inspect.signature(dpjax.clipped_grad).parameters:
        kwargs["isolate_nonfinite"] = isolate_nonfinite
    return dpjax.clipped_grad(
        work.loss_fn,
        l2_clip=L2_CLIP,
        method=method,
        trainable=trainable,
        microbatch_size=microbatch_size,
        **kwargs,
    )


def _lora_step(variant: str, work: Workload, microbatch_size: int | None) -> Step:
    spec = peft.lora(LORA_RANK, targets=LORA_TARGETS[work.kind])
    adapted = spec.apply(work.loss_fn)
    if variant == "dp_bitfit_lora":
        trainable = _either(peft.is_adapter, work.bitfit_trainable)
    else:
        trainable = peft.is_adapter
    if variant == "nonprivate_lora":
        inner = _nonprivate(adapted, trainable)
    else:
        engine = "vmap" if variant == "dp_lora_vmap" else "ghost"
        inner = dpjax.clipped_grad(adapted, l2_clip=L2_CLIP, method=engine, trainable=trainable,
                                   microbatch_size=microbatch_size)  # fmt: skip

    def step(params: Any, batch: Any) -> Any:
        adapters = spec.init(jax.random.key(0), work.loss_fn, params, batch)
        return inner({**params, peft.KEY: adapters}, batch)

    return step


def _with_added_biases(
    variant: str, work: Workload, microbatch_size: int | None, isolate_nonfinite: bool
) -> Step:
    """``variant`` on ``work`` with zero biases added to every Dense (DP-BiTFiT-Add)."""
    spec = peft.add_biases(".")
    adapted = dataclasses.replace(work, loss_fn=spec.apply(work.loss_fn))
    inner = _make_step(variant, adapted, microbatch_size, isolate_nonfinite)

    def step(params: Any, batch: Any) -> Any:
        added = spec.init(None, work.loss_fn, params, batch)
        return inner({**params, peft.biases.KEY: added}, batch)

    return step


def _either(a: Any, b: Any) -> Any:
    return lambda path, leaf: bool(a(path, leaf)) or bool(b(path, leaf))
