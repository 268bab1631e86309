"""Single-step statistical audit: a canary in or out of one step, many steps of real noise.

The mechanism audited is one step of training as dpjax runs it: the clipped sum of
:func:`dpjax.clipped_grad` (any engine) followed by :func:`dpjax.optim.privatize`, whose
state -- the noise key -- is threaded through ``4 N`` consecutive updates exactly as in
training. The updates cycle through the inputs ``S(D), S(D + c), S(D), S(D)`` (the
canary ``c`` in one step of four). The auditor knows everything but the noise
(white-box): it projects each noisy sum on the direction ``u`` in which the canary moved
the clipped sum and tests "canary in?" with a threshold fixed in advance at half the
claimed sensitivity:

* **single-step statistic**: the projection of one update -- ``N(0, (sigma Delta)^2)``
  without the canary, ``N(||dS||, (sigma Delta)^2)`` with it, so a correct mechanism is
  ``mu``-GDP with ``mu = ||dS|| / (sigma Delta) <= 1 / sigma``;
* **paired statistic**: the difference of two consecutive updates (canary pair vs. a
  pair without it). Fresh noise gives the same bound; a reused noise key cancels the
  noise and separates the two perfectly.

Clopper-Pearson upper bounds on the false-positive and false-negative rates give a
lower confidence bound on ``mu`` (:func:`~dpjax.audit.bounds.gdp_mu_lower_bound`), hence
on epsilon at ``delta`` (:func:`~dpjax.audit.bounds.gdp_epsilon`); each statistic gets
``alpha / 2`` (Bonferroni). The audit *passes* when ``eps_hat <= eps`` of one Gaussian
step at the claimed ``sigma`` (dp_accounting, no subsampling). The GDP step assumes the
output is Gaussian (as for DP-SGD and every planted bug); the assumption-free bound from
the same rates (:func:`~dpjax.audit.bounds.epsilon_lower_bound_from_rates`) is reported
too.

Example:
    >>> import jax.numpy as jnp, dpjax
    >>> from dpjax import audit
    >>> loss_fn = lambda p, b: jnp.sum((b["x"] - p["w"]) ** 2, axis=1)
    >>> params, batch = {"w": jnp.zeros(4)}, {"x": jnp.ones((8, 4))}
    >>> canary = {"x": jnp.full((1, 4), -100.0)}
    >>> res = audit.single_step_audit(dpjax.clipped_grad(loss_fn, l2_clip=1.0), params,
    ...                               batch, canary, noise_multiplier=1.0, trials=20000)
    >>> res.passed, res.epsilon_lower < res.epsilon_claimed
    (True, True)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dpjax import optim
from dpjax.audit import bounds
from dpjax.clip_rules import sum_dtype
from dpjax.partition import partition
from dpjax.randomness import secret_key

__all__ = ["AuditResult", "single_step_audit"]


@dataclasses.dataclass(frozen=True)
class AuditResult:
    """An empirical lower bound on epsilon next to the claimed epsilon.

    Attributes:
      name: which audit.
      epsilon_lower: ``eps_hat``, a lower bound on epsilon at confidence ``1 - alpha``.
      epsilon_claimed: the epsilon the mechanism claims (dp_accounting).
      delta: the delta both refer to.
      alpha: the audit's significance level.
      details: counts, sample sizes and the per-statistic bounds.
    """

    name: str
    epsilon_lower: float
    epsilon_claimed: float
    delta: float
    alpha: float
    details: dict[str, Any]

    @property
    def passed(self) -> bool:
        """No evidence (at level ``alpha``) that the mechanism is weaker than claimed."""
        return self.epsilon_lower <= self.epsilon_claimed

    def summary(self) -> str:
        """One line: eps_hat, its confidence, the claim and the verdict."""
        verdict = "PASS" if self.passed else "FAIL"
        return (
            f"{self.name}: eps_hat = {self.epsilon_lower:.3f} (confidence {1 - self.alpha:g}) "
            f"vs claimed eps = {self.epsilon_claimed:.3f} at delta = {self.delta:g}: {verdict}"
        )


def _flat(tree: Any) -> jax.Array:
    return jnp.concatenate([jnp.ravel(x).astype(jnp.float32) for x in jax.tree.leaves(tree)])


def _stack(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, np.ndarray]:
    out = {}
    for k in a:
        if k == "mask":
            continue
        out[k] = np.concatenate([np.asarray(a[k]), np.asarray(b[k])])
    return out


def _gdp(positives: np.ndarray, negatives: np.ndarray, threshold: float, alpha: float):
    fp = int(np.sum(negatives > threshold))
    fn = int(np.sum(positives <= threshold))
    mu = bounds.gdp_mu_lower_bound(fp, negatives.size, fn, positives.size, alpha)
    return mu, fp, fn


def single_step_audit(
    grad_fn: Any,
    params: Any,
    batch: Mapping[str, Any],
    canary: Mapping[str, Any],
    *,
    noise_multiplier: float,
    expected_batch_size: float | None = None,
    key: jax.Array | None = None,
    trials: int = 100_000,
    alpha: float = 0.05,
    delta: float = 1e-5,
) -> AuditResult:
    """Audits one step of ``grad_fn`` + :func:`dpjax.optim.privatize` (module docstring).

    Args:
      grad_fn: ``dpjax.clipped_grad(...)``; its ``sensitivity`` is the claimed ``Delta``.
      params: the parameters.
      batch: the batch ``D`` without the canary.
      canary: one example (leading axis 1) appended to make ``D + c``.
      noise_multiplier: the claimed ``sigma``.
      expected_batch_size: the privatizer's public normaliser (default ``len(D) + 1``).
      key: the privatizer's initial key (default: a secret one).
      trials: ``N``, the number of 4-update cycles (``N`` samples per hypothesis).
      alpha: significance level of the lower bound.
      delta: the delta of both epsilons.

    Returns:
      An :class:`AuditResult`; ``details`` has the two statistics' counts and bounds.
    """
    sens = float(grad_fn.sensitivity)
    size = len(np.asarray(next(iter(v for k, v in batch.items() if k != "mask"))))
    e = float(expected_batch_size or size + 1)
    step = jax.jit(grad_fn)
    s_d = step(params, {k: v for k, v in batch.items() if k != "mask"})[0]
    s_c = step(params, _stack(batch, canary))[0]
    moved = _flat(s_c) - _flat(s_d)
    norm = float(jnp.linalg.norm(moved))
    direction = moved / norm if norm > 0 else moved
    train, _ = partition(params, grad_fn.trainable)
    targets = jax.tree.map(lambda x: jnp.zeros(jnp.shape(x), sum_dtype(x.dtype)), train)
    key = secret_key() if key is None else key
    tx = optim.privatize(
        noise_multiplier=noise_multiplier, l2_clip=sens, expected_batch_size=e, key=key
    )
    base = _flat(s_d)

    def body(state: Any, with_canary: jax.Array) -> tuple[Any, jax.Array]:
        total = jax.tree.map(lambda a, b: jnp.where(with_canary, b, a), s_d, s_c)
        out, state = tx.update(total, state, targets)
        return state, jnp.dot(_flat(out) * e - base, direction)

    pattern = jnp.tile(jnp.array([False, True, False, False]), int(trials))
    _, scores = jax.jit(lambda s: jax.lax.scan(body, s, pattern))(tx.init(targets))
    scores = np.asarray(scores, np.float64).reshape(int(trials), 4)
    half = sens / 2
    single = _gdp(scores[:, 1], scores[:, 0], half, alpha / 2)
    paired = _gdp(scores[:, 1] - scores[:, 0], scores[:, 3] - scores[:, 2], half, alpha / 2)
    mu_hat = max(single[0], paired[0])
    eps_hat = bounds.gdp_epsilon(mu_hat, delta)
    from dpjax import accounting  # dp_accounting loads only when an audit runs

    claimed = accounting.epsilon(
        noise_multiplier=noise_multiplier, sampling_rate=1.0, steps=1, delta=delta
    )
    n = int(trials)
    fpr_ub = bounds.clopper_pearson(single[1], n, alpha / 4)[1]
    fnr_ub = bounds.clopper_pearson(single[2], n, alpha / 4)[1]
    details = {
        "trials": n,
        "canary_shift": norm / sens,
        "mu_claimed": 1.0 / noise_multiplier if noise_multiplier > 0 else math.inf,
        "single": {
            "mu_lower": single[0],
            "false_positives": single[1],
            "false_negatives": single[2],
        },
        "paired": {
            "mu_lower": paired[0],
            "false_positives": paired[1],
            "false_negatives": paired[2],
        },
        "epsilon_lower_assumption_free": bounds.epsilon_lower_bound_from_rates(
            fpr_ub, fnr_ub, delta
        ),
    }
    return AuditResult("single-step audit", eps_hat, claimed, delta, alpha, details)
