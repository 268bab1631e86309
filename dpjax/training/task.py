"""The ``Task``: everything model- and data-specific the trainer needs, in one object.

An experiment config names a *task builder* (``"module.path:function"``); the builder is
called with the config's ``task`` section and returns a :class:`Task`. The trainer never
looks inside the model: it only calls ``loss_fn``, ``eval_fn`` and the datasets' ``take``.

Example:
    >>> import numpy as np, jax.numpy as jnp
    >>> from dpjax.data.arrays import ArrayDataset
    >>> data = ArrayDataset({"x": np.ones((8, 2), np.float32), "y": np.zeros(8, np.int32)})
    >>> def loss_fn(params, batch):
    ...     return (batch["x"] @ params["w"] - batch["y"]) ** 2
    >>> def eval_fn(params, batch):
    ...     return {"loss": loss_fn(params, batch)}
    >>> task = Task(params={"w": jnp.zeros(2)}, loss_fn=loss_fn, train_data=data,
    ...             eval_data={"test": data}, eval_fn=eval_fn)
    >>> task.num_train
    8
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

import jax
import numpy as np

from dpjax.ledger import Segment
from dpjax.partition import Predicate
from dpjax.randomness import RunSecrets

__all__ = ["Dataset", "GenerationEval", "Task", "build_task", "resolve_builder"]


@runtime_checkable
class Dataset(Protocol):
    """Random-access split: ``len(ds)`` and ``ds.take(indices, mask)`` -> fixed-shape batch.

    ``take`` returns a dict of numpy arrays with leading axis ``len(indices)`` and a bool
    ``"mask"`` entry (``False`` on padding rows). :class:`dpjax.data.arrays.ArrayDataset`
    implements it.
    """

    def __len__(self) -> int: ...

    def take(self, indices: np.ndarray, mask: np.ndarray | None = None) -> dict[str, Any]: ...


#: ``hook(params, step) -> {metric: float}``; runs on every host at evaluation time
#: (e.g. decode E2E references and score BLEU). Metrics come from process 0.
GenerationEval = Callable[[Any, int], Mapping[str, float]]


@dataclasses.dataclass(frozen=True, eq=False)
class Task:
    """A model + data bundle consumed by :func:`dpjax.training.train`.

    Attributes:
      params: the initial parameter tree (all of it, trainable or not).
      loss_fn: ``loss_fn(params, batch) -> [B]`` per-example losses.
      train_data: the training split (:class:`Dataset`); it defines ``n`` for sampling
        rates and for ``delta`` rules.
      eval_data: ``{name: Dataset}`` evaluated on the schedule (may be empty).
      eval_fn: ``eval_fn(params, batch) -> {metric: [B] array}`` per-example metrics
        (e.g. ``correct``, ``loss``); the trainer averages them over real (mask) rows. A
        pair ``([B], [B])`` is a ratio metric (e.g. one class's accuracy), see
        :class:`~dpjax.training.evaluation.Evaluator`.
      generation_eval: optional :data:`GenerationEval` hook.
      trainable_extra: predicate of leaves trained *in addition to biases* by the bias-only
        methods (e.g. a fresh classifier head); ``None`` for none.
      prior_privacy: :class:`dpjax.accounting.Segment` s the builder already spent on
        ``train_data`` (e.g. one Gaussian mechanism, ``Segment(sigma, 1.0, 1)``, for a noisy
        feature mean). A private run composes them into every epsilon and calibrates its
        noise so that they and all its steps reach the target; a segment without noise
        (``noise_multiplier=0``) is refused in a private run. Draw that noise from the
        ``secrets`` the trainer passes to the builder (see :func:`build_task`).
      vocab_sizes: ``{batch field: V}`` for fields holding token ids of an embedding with
        ``V`` rows; every training batch is checked on the host (an id outside
        ``[0, V)`` is an error naming it, instead of a row the forward pass wraps or
        turns into ``nan``).
      padded_keys: fields of ``train_data`` whose axis 1 is a right-padded token axis,
        ``"attention_mask"`` among them (it marks the real tokens). The trainer then runs
        each micro-batch at the width of its longest row (:mod:`dpjax.data.lengths`);
        declare them only for a model whose real rows ignore padding. ``train_data``
        must then hold its arrays (``train_data.arrays``).
      model: the Flax module behind ``params`` (``model.apply({"params": p}, ...)``), for
        export (:mod:`dpjax.training.export`); ``None`` when the builder has none.
      constants: arrays the loss uses besides ``params`` that export must carry for the
        model to predict the same (e.g. the text head's released feature mean): never
        trained, already released (their privacy cost is in ``prior_privacy``).
      merge: ``merge(params) -> params`` of the same model without adapters (LoRA folded
        into the base weights, :func:`dpjax.training.adapters.with_lora`); ``None`` when
        the params have no adapters.
      name: a short name for logs.
    """

    params: Any
    loss_fn: Callable[[Any, Any], jax.Array]
    train_data: Dataset
    eval_data: Mapping[str, Dataset] = dataclasses.field(default_factory=dict)
    eval_fn: Callable[[Any, Any], Mapping[str, jax.Array]] | None = None
    generation_eval: GenerationEval | None = None
    trainable_extra: Predicate | None = None
    prior_privacy: tuple[Segment, ...] = ()
    vocab_sizes: Mapping[str, int] = dataclasses.field(default_factory=dict)
    padded_keys: tuple[str, ...] = ()
    model: Any = None
    constants: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    merge: Callable[[Any], Any] | None = None
    name: str = "task"

    def __post_init__(self) -> None:
        object.__setattr__(self, "prior_privacy", tuple(self.prior_privacy))
        object.__setattr__(self, "padded_keys", tuple(self.padded_keys))
        if self.padded_keys:
            arrays = getattr(self.train_data, "arrays", None)
            if "attention_mask" not in self.padded_keys:
                raise ValueError(
                    f"Task.padded_keys {self.padded_keys} must include 'attention_mask'"
                )
            missing = [k for k in self.padded_keys if arrays is None or k not in arrays]
            if missing:
                raise ValueError(f"Task.padded_keys {missing} are not arrays of train_data")
        for seg in self.prior_privacy:
            if not isinstance(seg, Segment):
                raise TypeError(
                    f"Task.prior_privacy must hold dpjax.accounting.Segment, got {seg!r}"
                )
        if not jax.tree.leaves(self.params):
            raise ValueError("Task.params has no leaves")
        if not callable(self.loss_fn):
            raise TypeError(f"Task.loss_fn must be callable, got {self.loss_fn!r}")
        for label, ds in [("train_data", self.train_data), *self.eval_data.items()]:
            if not isinstance(ds, Dataset):
                raise TypeError(
                    f"Task dataset {label!r} must have __len__ and take(indices, mask), "
                    f"got {type(ds).__name__}"
                )
            if len(ds) < 1:
                raise ValueError(f"Task dataset {label!r} is empty")
        for field, size in dict(self.vocab_sizes).items():
            if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 1:
                raise ValueError(f"Task.vocab_sizes[{field!r}] must be an int >= 1, got {size!r}")
        if self.eval_data and self.eval_fn is None:
            raise ValueError(f"Task has eval_data {sorted(self.eval_data)} but no eval_fn")
        for label, fn in (
            ("eval_fn", self.eval_fn),
            ("generation_eval", self.generation_eval),
            ("trainable_extra", self.trainable_extra),
        ):
            if fn is not None and not callable(fn):
                raise TypeError(f"Task.{label} must be callable or None, got {fn!r}")

    @property
    def num_train(self) -> int:
        """Number of training examples ``n``."""
        return len(self.train_data)

    def check_token_ids(self, batch: Mapping[str, Any], indices: np.ndarray) -> None:
        """Raises ValueError if a real row of ``batch`` holds an id outside its vocabulary.

        Args:
          batch: host arrays with a bool ``"mask"`` (``False`` rows are not checked).
          indices: the training-example index of each row (for the message).
        """
        mask = np.asarray(batch["mask"], bool)
        for field, size in self.vocab_sizes.items():
            if field not in batch:
                raise ValueError(f"Task.vocab_sizes names {field!r}, which the batch lacks")
            ids = np.asarray(batch[field])
            bad = ((ids < 0) | (ids >= size)) & mask.reshape((-1,) + (1,) * (ids.ndim - 1))
            if bad.any():
                row = int(np.argwhere(bad)[0][0])
                value = int(ids[bad][0])
                raise ValueError(
                    f"batch[{field!r}] of training example {int(indices[row])} holds token id "
                    f"{value}, outside the vocabulary [0, {size}) of the model"
                )


def resolve_builder(spec: str) -> Callable[[Any], Task]:
    """Imports ``"package.module:function"`` and returns the function."""
    if not isinstance(spec, str) or spec.count(":") != 1:
        raise ValueError(f"task.builder must look like 'package.module:function', got {spec!r}")
    module_name, attr = spec.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"task.builder {spec!r}: cannot import {module_name!r} ({e})") from e
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ValueError(f"task.builder {spec!r}: {module_name} has no callable {attr!r}")
    return fn


def build_task(task_config: Any, secrets: RunSecrets | None = None) -> Task:
    """Calls the builder named by ``task_config.builder`` with ``task_config``.

    A builder that releases statistics of the training data (a noisy feature mean) takes
    a keyword argument ``secrets``: the trainer passes the private run's
    :class:`~dpjax.randomness.RunSecrets` (``None`` in non-private runs), from which the
    builder draws that noise (``secrets.numpy_rng("task/<name>")``), so that it is secret
    and a resumed run reproduces the same release instead of making a second one.
    """
    builder = resolve_builder(task_config.builder)
    if "secrets" in inspect.signature(builder).parameters:
        task = builder(task_config, secrets=secrets)
    else:
        task = builder(task_config)
    if not isinstance(task, Task):
        raise TypeError(
            f"task.builder {task_config.builder!r} returned {type(task).__name__}, not Task"
        )
    return task
