"""A task with adapters (``*_lora`` and ``*_bitfit_add`` methods): the one place the
trainer adds them.

:func:`with_lora` returns a copy of a :class:`~dpjax.training.task.Task` whose params
gain the ``params["lora"]`` subtree (:func:`dpjax.peft.lora`, initialised from a public
seed) and whose loss and metrics run the model with the adapters. A generation hook gets
the adapters merged into the base weights (the decoder then needs no interception).

:func:`with_added_biases` does the same with zero biases on the task's bias-free layers
(:func:`dpjax.peft.add_biases`, ``params["added_bias"]``; DP-BiTFiT-Add). Its ``merge``
(export) puts each as a ``bias`` leaf beside its layer's kernel: the model built with
``use_bias=True`` on those layers reproduces the trained one; a generation hook decodes
from those merged params (:func:`dpjax.tasks.generation.decoder_for` turns a Llama's
biases on).

Example:
    >>> from experiments.configs import toy
    >>> task = with_lora(toy.build_task(toy.get_config().task), PeftSettings(targets="."),
    ...                  seed=0)
    >>> sorted(task.params["lora"])
    ['dense1', 'head']
    >>> cfg = toy.get_config("dp_bitfit_add").task
    >>> task = with_added_biases(toy.build_task(cfg), PeftSettings())
    >>> sorted(task.params["added_bias"])
    ['dense1', 'head']
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from dpjax import peft
from dpjax.peft import biases
from dpjax.training.settings import PeftSettings
from dpjax.training.task import Task

__all__ = ["with_added_biases", "with_lora"]


def _example(task: Task) -> dict[str, Any]:
    """Two training rows: the shapes the adapters are discovered and merged with."""
    return dict(task.train_data.take(np.arange(min(2, task.num_train))))


def with_lora(task: Task, settings: PeftSettings, seed: int) -> Task:
    """``task`` with LoRA adapters on the layers ``settings.targets`` finds.

    Args:
      task: the built task (its ``loss_fn`` defines the adapted layers).
      settings: rank, alpha and targets (``config.peft``).
      seed: public seed of the adapters' initialisation (``A`` Gaussian, ``B`` zero).

    Raises:
      ValueError: the params already hold a ``"lora"`` subtree, or the targets match no
        Dense layer (the message lists the layers).
    """
    if peft.KEY in task.params:
        raise ValueError(f"the task's params already have a {peft.KEY!r} subtree")
    spec = peft.lora(settings.rank, settings.alpha, settings.targets)
    example = _example(task)
    key = jax.random.fold_in(jax.random.key(seed), 0x10A)
    adapters = spec.init(key, task.loss_fn, task.params, example)
    base_loss = task.loss_fn

    def merge(params: Any) -> Any:
        return spec.merge(base_loss, params, example)

    generation = task.generation_eval
    if generation is not None:

        def generation(params: Any, step: int, _inner: Any = task.generation_eval) -> Any:
            return _inner(merge(params), step)

    eval_fn = None if task.eval_fn is None else spec.apply(task.eval_fn)
    return dataclasses.replace(
        task,
        params={**task.params, peft.KEY: adapters},
        loss_fn=spec.apply(task.loss_fn),
        eval_fn=eval_fn,
        generation_eval=generation,
        merge=merge,
        name=f"{task.name}+lora{settings.rank}",
    )


def with_added_biases(task: Task, settings: PeftSettings) -> Task:
    """``task`` with zero biases on the bias-free layers ``settings.bias_targets`` finds.

    Layers that already have a bias are skipped (logged): DP-BiTFiT-Add trains them as
    they are. ``merge`` (export) folds each added bias into the params as a ``bias`` leaf
    beside its layer's kernel.

    Args:
      task: the built task (its ``loss_fn`` defines the layers).
      settings: ``bias_targets`` (``config.peft``).

    Raises:
      ValueError: the params already hold an ``"added_bias"`` subtree, or the targets
        match no bias-free layer (the message lists the layers).
    """
    if biases.KEY in task.params:
        raise ValueError(f"the task's params already have a {biases.KEY!r} subtree")
    spec = peft.add_biases(settings.bias_targets)
    example = _example(task)
    added = spec.init(None, task.loss_fn, task.params, example)
    base_loss, inner = task.loss_fn, task.merge

    def merge(params: Any) -> Any:
        merged = spec.merge(base_loss, params, example)
        return merged if inner is None else inner(merged)

    generation = task.generation_eval
    if generation is not None:  # the decoder reads the merged bias leaves (decoder_for)

        def generation(params: Any, step: int, _inner: Any = task.generation_eval) -> Any:
            return _inner(merge(params), step)

    eval_fn = None if task.eval_fn is None else spec.apply(task.eval_fn)
    return dataclasses.replace(
        task,
        params={**task.params, biases.KEY: added},
        loss_fn=spec.apply(task.loss_fn),
        eval_fn=eval_fn,
        generation_eval=generation,
        merge=merge,
        name=f"{task.name}+bias_add",
    )
