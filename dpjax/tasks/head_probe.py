"""A differentially private linear probe: the fresh head's start before DP-BiTFiT.

Why: under DP-BiTFiT a fresh head and the biases start together, and clipping equalises
the examples while the head is still at chance: every example gets the same norm whatever
its loss, the direction the majority shares wins and the head settles on the majority
class (issue 15 measured 58.5 % on Rotten Tomatoes, every review predicted "fresh").
A head that already separates the classes gives the biases per-example gradients that
point somewhere useful. Training that head alone is cheap: the pooled features of the
pretrained encoder are computed once (the pass that also gives the private feature mean)
and the probe is a logistic regression on them, so it can take many DP-SGD steps for
the price of one forward pass.

The probe is DP-Adam or DP-SGD through :class:`dpjax.Mechanism` (per-example clipping, Gaussian
noise once per logical batch, Poisson sampling), and its steps are returned as a
:class:`~dpjax.accounting.Segment` for :attr:`dpjax.training.Task.prior_privacy`, so the
trainer calibrates the fine-tuning noise with the probe counted. At a probe noise
multiplier of 3 (150 steps at q = 0.2 on Rotten Tomatoes, epsilon 3.4 alone) the
fine-tuning sigma for epsilon = 8 over 40 steps only moves from 0.574 to 0.601: Gaussian
mechanisms compose sub-additively.

Example:
    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(size=(400, 4)).astype(np.float32)
    >>> y = (x[:, 0] > 0).astype(np.int32)
    >>> head, segment = private_probe(x, y, 2, ProbeSettings(noise_multiplier=0.0))
    >>> float(np.mean((x @ head["kernel"] + head["bias"]).argmax(1) == y)) > 0.9
    True
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm

from dpjax.clipping import clipped_grad
from dpjax.data.sampling import PoissonSampler
from dpjax.ledger import Segment
from dpjax.mechanism import Mechanism
from dpjax.randomness import secret_key
from dpjax.validate import check_int, check_real

__all__ = ["ProbeSettings", "private_probe"]


@dataclasses.dataclass(frozen=True)
class ProbeSettings:
    """How the head is probed.

    Attributes:
      epochs: expected passes over the data (steps = round(epochs * n / batch)).
      expected_batch_size: the Poisson sampler's expected batch size; at least ``n``:
        every example in every step (rate 1, full-batch DP-GD: no sampling noise, so
        a larger rate; the main job's probe, NOTES.md, session 9).
      lr: the initial rate, decayed linearly to 0.
      l2_clip: per-example clip norm of the head's gradient.
      noise_multiplier: sigma of the probe's noise; ``0``: non-private (no clipping, no
        noise), for non-private baselines only: its segment has sigma 0, which a private
        trainer refuses (as it does an exact feature mean).
      optimizer: ``"adam"`` or ``"sgd"`` (heavy-ball ``momentum``). On a wide head
        (thousands of features) Adam scales every coordinate's noise up to the step size;
        SGD does not, and reached ~0.4 points more on Rotten Tomatoes (NOTES.md, session 8)
        at a rate ~1e3 times Adam's (the clipped mean gradient has norm <= ``l2_clip``).
      momentum: SGD's momentum (``0``: none); must be 0 with Adam.
    """

    epochs: float = 30.0
    expected_batch_size: int = 2048
    lr: float = 0.05
    l2_clip: float = 0.1
    noise_multiplier: float = 3.0
    optimizer: str = "adam"
    momentum: float = 0.0

    def __post_init__(self) -> None:
        check_real("epochs", self.epochs, "(0, inf)")
        check_int("expected_batch_size", self.expected_batch_size, 1)
        check_real("lr", self.lr, "(0, inf)")
        check_real("l2_clip", self.l2_clip, "(0, inf)")
        check_real("noise_multiplier", self.noise_multiplier, "[0, inf)")
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")
        check_real("momentum", self.momentum, "[0, 1)")
        if self.optimizer == "adam" and self.momentum != 0:
            raise ValueError(f"momentum is SGD's; got momentum={self.momentum} with Adam")


#: Rows per chunk of the per-example gradients (the result does not depend on it): the
#: whole batch at once materialises ``[n, d, C]`` gradients, ~750 MB for the main job's
#: 10,202 x 9,216 features, mapped afresh every step; chunks of 256 keep each buffer
#: small enough to be reused: 0.27 s per step against 0.38 s on two cores (session 15).
_CHUNK = 256


def _loss(head: Any, batch: Any) -> jax.Array:
    logits = batch["x"] @ head["kernel"] + head["bias"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"])


class _RowGather:
    """The rows ``idx`` of device-resident features and labels.

    The features are copied to the device once; each micro-batch is a jitted gather there
    (a numpy gather and transfer of a full-batch draw of 10,202 x 9,216 floats took about
    0.25 s per step, ten times the step itself). A micro-batch holding every example in
    order (a full-batch draw, rate 1) is the arrays themselves, not a copy.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        self.x, self.y = jnp.asarray(x), jnp.asarray(y)
        self.order = np.arange(len(x))
        self.take = jax.jit(lambda a, idx: jnp.take(a, idx, axis=0))

    def __call__(self, idx: np.ndarray) -> dict[str, jax.Array]:
        if idx.shape == self.order.shape and np.array_equal(idx, self.order):
            return {"x": self.x, "y": self.y}
        idx = jnp.asarray(idx)
        return {"x": self.take(self.x, idx), "y": self.take(self.y, idx)}


def private_probe(
    features: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    settings: ProbeSettings,
    *,
    key: jax.Array | None = None,
    seed: int | None = None,
) -> tuple[dict[str, np.ndarray], tuple[Segment, ...]]:
    """Trains ``softmax(x @ kernel + bias)`` on fixed features with DP-Adam or DP-SGD.

    Args:
      features: ``[n, d]`` per-example features (as the head will see them).
      labels: ``[n]`` integer classes.
      num_classes: width of the head.
      settings: the probe's :class:`ProbeSettings`.
      key: the noise key (secret); ``None`` draws one from OS entropy.
      seed: the sampler's seed (secret); ``None`` draws one from OS entropy.

    Returns:
      ``({"kernel": [d, C], "bias": [C]}, (segment,))``: the head (float32, trained from
      zeros) and the probe's accounting segment (sigma 0 when non-private).

    Raises:
      ValueError: features not ``[n, d]`` or not finite, labels of another length or out
        of ``[0, num_classes)``.
    """
    x = np.asarray(features, np.float32)
    y = np.asarray(labels)
    if x.ndim != 2 or not np.all(np.isfinite(x)):
        raise ValueError(f"features must be a finite [n, d] array, got shape {x.shape}")
    if y.shape != (x.shape[0],) or y.min() < 0 or y.max() >= num_classes:
        raise ValueError(
            f"labels must be [{x.shape[0]}] classes in [0, {num_classes}), got shape "
            f"{y.shape} with range [{y.min()}, {y.max()}]"
        )
    n = x.shape[0]
    s = settings
    batch = min(s.expected_batch_size, n)
    steps = max(1, round(s.epochs * n / batch))
    if seed is None:
        seed = int(np.random.default_rng().integers(2**63))  # OS entropy
    # Room for the draw's spread (std ~sqrt(batch)) in one micro-batch: a physical batch
    # of exactly `batch` splits about half the draws over two full-size micro-batches.
    physical = min(n, batch + 4 * math.ceil(math.sqrt(batch)))
    sampler = PoissonSampler(n, expected_batch_size=batch, physical_batch_size=physical, seed=seed)
    schedule = optax.linear_schedule(s.lr, 0.0, steps)
    if s.optimizer == "sgd":
        opt = optax.sgd(schedule, momentum=s.momentum or None)
    else:
        opt = optax.adam(schedule)
    private = s.noise_multiplier > 0
    mech = Mechanism(
        clipped_grad(_loss, l2_clip=s.l2_clip, microbatch_size=min(_CHUNK, physical)),
        opt,
        noise_multiplier=s.noise_multiplier if private else None,
        expected_batch_size=batch,
        key=secret_key() if key is None else key,
        sampling=sampler.accounting_kwargs() if private else None,
    )
    d = x.shape[1]
    state = mech.init({"kernel": jnp.zeros((d, num_classes)), "bias": jnp.zeros(num_classes)})
    rows = _RowGather(x, y.astype(np.int32))
    desc = "DP probe of the head" if private else "probe of the head"
    for step in tqdm.tqdm(range(steps), desc=desc, leave=False):
        batches = (dict(rows(idx), mask=mask) for idx, mask in sampler.sample(step))
        state, _ = mech.logical_step(state, batches)
    head = {k: np.asarray(v, np.float32) for k, v in state.params.items()}
    rate = sampler.accounting_kwargs()["sampling_rate"]
    segment = mech.segment(steps) if private else Segment(0.0, rate, steps)
    return head, (segment,)
