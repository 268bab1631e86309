"""A task with LoRA adapters (the ``*_lora`` methods): the one place the trainer adds them.

:func:`with_lora` returns a copy of a :class:`~dpjax.training.task.Task` whose params
gain the ``params["lora"]`` subtree (:func:`dpjax.peft.lora`, initialised from a public
seed) and whose loss and metrics run the model with the adapters. A generation hook gets
the adapters merged into the base weights (the decoder then needs no interception).

Example:
    >>> from experiments.configs import toy  # doctest: +SKIP
    >>> task = with_lora(toy.build_task(toy.get_config().task), PeftSettings(targets="."),
    ...                  seed=0)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from dpjax import peft
from dpjax.training.settings import PeftSettings
from dpjax.training.task import Task

__all__ = ["with_lora"]


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
    example = dict(task.train_data.take(np.arange(min(2, task.num_train))))
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
