"""One-run audit (Steinke, Nasr & Jagielski 2023): m canaries, one real training run.

``m`` canaries are each put in the training set independently with probability 1/2 (a
public coin the auditor keeps). One model is trained with the real
:class:`dpjax.training.Trainer` -- sampler, engine, clipping, secret noise, accounting --
at a claimed epsilon where such an audit has power (1-2). The auditor then scores every
canary from the training trajectory, guesses "in" for the ``k`` highest scores and "out"
for the ``k`` lowest, counts its correct guesses, and turns the count into a lower bound
on epsilon (:func:`~dpjax.audit.bounds.one_run_epsilon_lower_bound`).

The canary task is built for a white-box auditor: a linear softmax model on inputs with
``d0`` ordinary features and one extra coordinate per canary. Canary ``i`` is the input
``scale * e_{d0 + i}`` with a random label ``y_i``, so its clipped gradient lives almost
entirely in its own kernel row and only it can move that row beyond the noise. Training
uses SGD with a constant learning rate, so every parameter update is the noisy clipped
sum times a public constant. Two scores, from the kernel rows recorded after each step
(a trainer hook):

* ``sum``: the total movement of row ``i`` toward its label, ``<W_T - W_0, y_i - 1/k>``
  -- the natural statistic for a correct implementation;
* ``diff``: ``sum_t |p_t - p_{t-1}|`` of the per-step projections ``p_t`` -- fresh noise
  makes it noise, a reused noise key cancels the noise and leaves only the canary.

Each (score, k) choice gets ``alpha / (number of choices)`` (Bonferroni).

Example (about 10 s on a CPU):
    >>> import dpjax
    >>> res = dpjax.audit.one_run_audit(m=1000, epsilon=2.0)
    >>> print(res.summary())  # the lower bound depends on the run's secret noise
    one-run audit: eps_hat = ... (confidence 0.95) vs claimed eps = 1.998 at delta = 1e-05: PASS
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dpjax.audit import bounds
from dpjax.audit.single_step import AuditResult

__all__ = ["canary_task", "one_run_audit"]


def canary_task(
    m: int, *, n_base: int, d0: int, classes: int, scale: float, seed: int
) -> tuple[Any, np.ndarray, np.ndarray]:
    """``(task, included [m] bool, labels [m])`` of the canary task (module docstring)."""
    from dpjax.data.arrays import ArrayDataset
    from dpjax.training.task import Task

    rng = np.random.default_rng(seed)  # the auditor's public coins
    teacher = rng.normal(size=(d0, classes))
    x = np.zeros((n_base + m, d0 + m), np.float32)
    x[:n_base, :d0] = rng.normal(size=(n_base, d0))
    y = np.zeros(n_base + m, np.int32)
    y[:n_base] = np.argmax(x[:n_base, :d0] @ teacher, axis=1)
    labels = rng.integers(0, classes, m).astype(np.int32)
    x[n_base + np.arange(m), d0 + np.arange(m)] = scale
    y[n_base:] = labels
    included = rng.random(m) < 0.5
    keep = np.concatenate([np.ones(n_base, bool), included])
    data = ArrayDataset({"x": x[keep], "y": y[keep]}, classes)
    model = nn.Dense(classes, kernel_init=nn.initializers.zeros)
    params = model.init(jax.random.key(0), jnp.zeros((1, d0 + m)))["params"]

    def loss_fn(p: Any, batch: Any) -> jax.Array:
        logits = model.apply({"params": p}, batch["x"])
        logp = jax.nn.log_softmax(logits)
        return -jnp.take_along_axis(logp, batch["y"][:, None], axis=1)[:, 0]

    task = Task(params=params, loss_fn=loss_fn, train_data=data, name="canaries")
    return task, included, labels


def _config(engine: str, epsilon: float, delta: float, steps: int, batch: int, lr: float):
    physical = 8 * max(1, min(batch, 256) // 8)
    return {
        "method": "dp_full",
        "engine": engine,
        "batch_size": batch,
        "physical_batch_size": physical,
        "sampler": "poisson",
        "steps": steps,
        "optimizer": {"name": "sgd", "lr": lr, "schedule": "constant"},
        "privacy": {"l2_clip": 1.0, "target_epsilon": epsilon, "delta": delta},
        "log_every": steps,
    }


def _guesses(score: np.ndarray, included: np.ndarray, k: int) -> int:
    order = np.argsort(score)
    top, bottom = order[-k:], order[:k]
    return int(included[top].sum() + (~included[bottom]).sum())


def one_run_audit(
    *,
    m: int = 1000,
    epsilon: float = 2.0,
    delta: float = 1e-5,
    steps: int = 50,
    batch_size: int = 256,
    lr: float = 0.5,
    n_base: int = 1000,
    d0: int = 16,
    classes: int = 4,
    scale: float = 10.0,
    engine: str = "vmap",
    guesses: Sequence[int] = (25, 50, 100, 200),
    alpha: float = 0.05,
    seed: int = 0,
    workdir: str | None = None,
    progress: bool = False,
    loss_wrapper: Callable[[Any], Any] | None = None,
) -> AuditResult:
    """Trains the canary task once with the real trainer and bounds epsilon from below.

    Args:
      m: number of canaries.
      epsilon, delta: the claimed privacy (the trainer calibrates sigma to it).
      steps, batch_size, lr: training length, expected batch size, SGD rate.
      n_base, d0, classes, scale: the canary task (module docstring).
      engine: ``"vmap"`` or ``"ghost"`` (DP full fine-tuning of the linear model).
      guesses: the ``k`` values tried (``2 k`` guesses each; ``2 k <= m``).
      alpha: significance level, split over the (score, k) choices.
      seed: the auditor's public coins (canary inclusion and labels).
      workdir: the run directory (default: a temporary one).
      progress: show the trainer's progress bar.
      loss_wrapper: wraps the canary task's loss (e.g. :func:`dpjax.audit.planted.mixing_loss`)
        to audit a run whose loss is broken.

    Returns:
      An :class:`~dpjax.audit.AuditResult` whose claimed epsilon is the run's reported
      epsilon; ``details`` lists ``(score, k, correct)`` for every choice.
    """
    from dpjax.training import Trainer

    task, included, labels = canary_task(
        m, n_base=n_base, d0=d0, classes=classes, scale=scale, seed=seed
    )
    if loss_wrapper is not None:
        task = dataclasses.replace(task, loss_fn=loss_wrapper(task.loss_fn))
    rows = []

    def record(step: int, state: Any) -> None:
        del step
        rows.append(np.asarray(jax.device_get(state.params["kernel"]))[d0:])

    config = _config(engine, epsilon, delta, steps, batch_size, lr)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(config, workdir or tmp, task=task)
        rows.append(np.asarray(jax.device_get(task.params["kernel"]))[d0:])
        results = trainer.run(hooks=[record], progress=progress)
    traj = np.stack(rows).astype(np.float64)  # [T + 1, m, classes]
    direction = np.eye(classes)[labels] - 1.0 / classes  # [m, classes]
    proj = np.einsum("tmc,mc->tm", np.diff(traj, axis=0), direction)  # [T, m]
    scores = {"sum": proj.sum(0), "diff": np.abs(np.diff(proj, axis=0)).sum(0)}
    choices = [(name, k) for name in scores for k in guesses if 2 * k <= m]
    level = alpha / len(choices)
    found, best = [], 0.0
    for name, k in choices:
        correct = _guesses(scores[name], included, k)
        eps_hat = bounds.one_run_epsilon_lower_bound(m, 2 * k, correct, delta, level)
        found.append({"score": name, "k": k, "correct": correct, "epsilon_lower": eps_hat})
        best = max(best, eps_hat)
    details = {
        "m": m,
        "included": int(included.sum()),
        "steps": results["steps"],
        "noise_multiplier": results["noise_multiplier"],
        "choices": found,
    }
    return AuditResult("one-run audit", best, results["epsilon"], delta, alpha, details)
