"""The classification :class:`~dpjax.training.task.Task` shared by every classifier builder.

Text, image and toy builders differ in how they load data and compute logits; the loss,
the evaluation metrics and the task's shape are the same, so they are written once here.

Example:
    >>> import jax.numpy as jnp, numpy as np
    >>> from dpjax.data.arrays import ArrayDataset
    >>> data = ArrayDataset({"x": np.eye(4, dtype=np.float32), "label": np.arange(4) % 2})
    >>> task = classification_task(lambda p, b: b["x"] @ p["w"], params={"w": jnp.zeros((4, 2))},
    ...                            train=data, test=data, name="demo")
    >>> task.loss_fn(task.params, data.take(np.arange(2))).shape
    (2,)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax.numpy as jnp

from dpjax.data.losses import classification_loss, multilabel_loss
from dpjax.training.task import Task
from dpjax.validate import ConfigError, check_real

__all__ = ["MAX_CLASS_METRICS", "classification_task"]

#: Single-label tasks with at most this many classes also report each class's accuracy
#: (``accuracy_class{k}``: a majority-class collapse shows at a glance).
MAX_CLASS_METRICS = 20


def classification_task(
    logits: Callable[[Any, Any], Any],
    *,
    params: Any,
    train: Any,
    test: Any,
    name: str,
    label: str = "label",
    multi_label: bool = False,
    label_smoothing: float = 0.0,
    **fields: Any,
) -> Task:
    """A task whose loss is the per-example cross-entropy of ``logits(params, batch)``.

    Args:
      logits: ``logits(params, batch) -> [B, C]``.
      params: the initial parameters.
      train, test: the training split and the ``"test"`` evaluation split.
      name: the task's name.
      label: the batch key of the labels (``[B]`` ints, or ``[B, C]`` 0/1 when
        ``multi_label``).
      multi_label: sigmoid cross-entropy summed over labels; accuracy is the mean over
        labels of the per-label accuracy. Otherwise ``accuracy_class{k}`` is the accuracy
        among the examples of class ``k`` (up to :data:`MAX_CLASS_METRICS` classes).
      **fields: other :class:`Task` fields (``trainable_extra``, ``prior_privacy``,
        ``vocab_sizes``, ...).
    """
    loss = multilabel_loss if multi_label else classification_loss
    label_smoothing = check_real("task.label_smoothing", label_smoothing, "[0, 1)")
    if multi_label and label_smoothing:
        raise ConfigError(f"label_smoothing={label_smoothing!r} needs single-label classes")

    def loss_fn(params: Any, batch: Any) -> Any:
        out = logits(params, batch)
        if multi_label:
            return loss(out, batch[label])
        return classification_loss(out, batch[label], label_smoothing)

    def eval_fn(params: Any, batch: Any) -> dict[str, Any]:
        out, y = logits(params, batch), batch[label]
        if multi_label:
            correct = jnp.mean(((out > 0) == (y > 0)).astype(jnp.float32), -1)
            return {"accuracy": correct, "loss": loss(out, y)}
        correct = (jnp.argmax(out, -1) == y).astype(jnp.float32)
        metrics = {"accuracy": correct, "loss": loss(out, y)}
        for k in range(out.shape[-1] if out.shape[-1] <= MAX_CLASS_METRICS else 0):
            of_k = (y == k).astype(jnp.float32)  # accuracy among the examples of class k
            metrics[f"accuracy_class{k}"] = (correct * of_k, of_k)
        return metrics

    return Task(
        params=params,
        loss_fn=loss_fn,
        train_data=train,
        eval_data={"test": test},
        eval_fn=eval_fn,
        name=name,
        **fields,
    )
