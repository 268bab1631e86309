"""``dpjax.Mechanism``: one DP training mechanism, from clipped gradient to ledger.

A mechanism binds the four things whose agreement *is* the privacy guarantee:

* ``grad_fn``: the :class:`~dpjax.ClippedGrad` -- the only place the clip norm lives; its
  ``sensitivity`` (``sqrt(sum_k C_k^2)`` with per-layer groups) is the noise scale;
* ``tx``: ``chain(privatize(noise_multiplier, l2_clip=grad_fn.sensitivity, ...),
  optimizer)`` -- noise once per logical batch, divided by the public expected batch size;
* ``segment()``: the accounting event of one step (:func:`dpjax.accounting.step_segment`,
  the same function calibration uses);
* ``logical_step(state, micro_batches)``: the clipped sums of any number of fixed-shape
  micro-batches (a Poisson draw gives a variable number) accumulated in float32, noised
  once, one optimizer update, one ledger record.

The README, the notebooks and :class:`dpjax.training.Trainer` all run this one loop.
``noise_multiplier=None`` makes a non-private baseline: the plain gradient sum (no
clipping, no noise, no accounting) through the same loop and the same normalisation.

Example:
    >>> import jax, jax.numpy as jnp, optax, dpjax
    >>> def loss_fn(p, b):
    ...     return (b["x"] @ p["w"] - b["y"]) ** 2
    >>> mech = dpjax.Mechanism(
    ...     dpjax.clipped_grad(loss_fn, l2_clip=1.0), optax.sgd(0.1),
    ...     noise_multiplier=1.0, expected_batch_size=4, key=jax.random.key(0),
    ...     sampling={"sampling_rate": 4 / 100})
    >>> state = mech.init({"w": jnp.zeros(2)})
    >>> batch = {"x": jnp.ones((4, 2)), "y": jnp.ones(4), "mask": jnp.ones(4, bool)}
    >>> ledger = dpjax.accounting.PrivacyLedger()
    >>> state, stats = mech.logical_step(state, [batch, batch], ledger=ledger)
    >>> int(state.step), ledger.steps, float(stats.num_valid)
    (1, 1, 8.0)
"""

from __future__ import annotations

import dataclasses
import functools
import types
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from dpjax.clipping import ClippedGrad
from dpjax.optim import privatize
from dpjax.partition import combine
from dpjax.train_state import TrainState, init_state
from dpjax.validate import check_real

__all__ = ["JittedSteps", "Mechanism", "MicroStats"]


class MicroStats(NamedTuple):
    """Scalar sums over the real rows of one or more micro-batches.

    In a private run these are statistics of the private batch: the trainer writes them
    only with ``privacy.log_private_diagnostics`` (they are not covered by epsilon), and
    releases ``clipped_loss_sum`` only with Gaussian noise (``privacy.loss_noise_multiplier``).
    """

    loss_sum: jax.Array
    num_valid: jax.Array
    norm_sum: jax.Array
    num_clipped: jax.Array
    clipped_loss_sum: jax.Array

    def summary(self) -> dict[str, float]:
        """Host-side means: ``loss``, ``grad_norm`` (before clipping), ``clipped_frac``."""
        n = max(float(self.num_valid), 1.0)
        return {
            "loss": float(self.loss_sum) / n,
            "grad_norm": float(self.norm_sum) / n,
            "clipped_frac": float(self.num_clipped) / n,
            "batch_rows": float(self.num_valid),
        }


class JittedSteps(NamedTuple):
    """A mechanism's jitted pieces: ``micro_step``, ``add`` (donates its first argument)
    and ``apply`` (donates the state)."""

    micro_step: Callable[..., Any]
    add: Callable[..., Any]
    apply: Callable[..., Any]


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity: its jitted steps are cached
class Mechanism:
    """One phase of DP training: clipped gradient, noise, optimizer and accounting event.

    Attributes:
      grad_fn: the clipped-gradient function (engine, trainable set, clip norm(s)).
      optimizer: the optax chain applied after the noise (e.g. ``optax.adam(5e-4)``).
      noise_multiplier: sigma; ``None`` for a non-private baseline (plain gradient sum:
        no clipping, no noise, nothing accounted).
      expected_batch_size: the public normaliser of the (noisy) sum.
      key: the noise key of a private mechanism (``dpjax.secret_key()``); required there.
      sampling: ``sampler.accounting_kwargs()`` (``sampling_rate``, ``sampling``,
        ``dataset_size``); needed for :meth:`segment` and ledger records.
      loss_clip: ``L`` of :attr:`MicroStats.clipped_loss_sum` (each real row's finite loss
        clipped to ``[0, L]``); ``None`` leaves it 0.
      loss_noise_multiplier: ``s`` of a released loss sum; steps that release it are
        accounted as one joint Gaussian (``logical_step(..., release_loss=True)``).
    """

    grad_fn: ClippedGrad
    optimizer: optax.GradientTransformation
    noise_multiplier: float | None
    expected_batch_size: float
    key: jax.Array | None = None
    sampling: Mapping[str, Any] | None = None
    loss_clip: float | None = None
    loss_noise_multiplier: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.grad_fn, ClippedGrad):
            raise TypeError(
                f"Mechanism: grad_fn must be a dpjax.clipped_grad(...), got {self.grad_fn!r}"
            )
        check_real("Mechanism: expected_batch_size", self.expected_batch_size, "(0, inf)")
        if self.private:
            check_real("Mechanism: noise_multiplier", self.noise_multiplier, "[0, inf)")
        if self.private and self.key is None:
            raise TypeError(
                "Mechanism: a private mechanism needs key= (e.g. dpjax.secret_key()); "
                "dpjax never uses a default noise key"
            )
        if self.loss_clip is not None:
            check_real("Mechanism: loss_clip", self.loss_clip, "(0, inf)")
        if self.sampling is not None:
            object.__setattr__(self, "sampling", types.MappingProxyType(dict(self.sampling)))
            self.segment()  # validates the sampling rule now, not at the first record

    # ------------------------------------------------------------------ privacy
    @property
    def private(self) -> bool:
        """Whether steps are clipped, noised and accounted."""
        return self.noise_multiplier is not None

    @property
    def sensitivity(self) -> float:
        """The L2 sensitivity of one logical batch's clipped sum (``grad_fn.sensitivity``)."""
        return self.grad_fn.sensitivity

    @property
    def noise_std(self) -> float:
        """Std of the noise added to the clipped sum (before normalisation)."""
        return 0.0 if not self.private else self.noise_multiplier * self.sensitivity

    def segment(self, steps: int = 1, *, release_loss: bool = False) -> Any:
        """The accounting segment of ``steps`` steps (:func:`~dpjax.accounting.step_segment`)."""
        if not self.private:
            raise ValueError("a non-private mechanism (noise_multiplier=None) is not accounted")
        if self.sampling is None:
            raise ValueError("Mechanism.segment needs sampling= (e.g. sampler.accounting_kwargs())")
        from dpjax.accounting import step_segment  # dp_accounting loads on first use

        loss_sigma = self.loss_noise_multiplier if release_loss else None
        return step_segment(
            self.noise_multiplier, self.sampling, steps=steps, loss_noise_multiplier=loss_sigma
        )

    # ------------------------------------------------------------------ optimizer
    @functools.cached_property
    def tx(self) -> optax.GradientTransformation:
        """``chain(privatize(sigma, grad_fn.sensitivity, E[B], key), optimizer)``."""
        if not self.private:
            return optax.chain(optax.scale(1.0 / self.expected_batch_size), self.optimizer)
        head = privatize(
            noise_multiplier=self.noise_multiplier,
            l2_clip=self.sensitivity,
            expected_batch_size=self.expected_batch_size,
            key=self.key,
        )
        return optax.chain(head, self.optimizer)

    def init(
        self,
        params: Any,
        *,
        step: int | jax.Array = 0,
        shardings: Callable[[Any], Any] | None = None,
    ) -> TrainState:
        """A :class:`~dpjax.train_state.TrainState` split by ``grad_fn.trainable``.

        The state holds copies of ``params``' arrays: :meth:`logical_step` donates the
        state's buffers, never the caller's ``params``.
        """
        owned = jax.tree.map(lambda x: jnp.array(x, copy=True), params)
        return init_state(owned, self.grad_fn.trainable, self.tx, step=step, shardings=shardings)

    # ------------------------------------------------------------------ steps
    def micro_step(self, train: Any, frozen: Any, batch: Mapping[str, jax.Array]) -> Any:
        """``(grad_sum, MicroStats)`` of one micro-batch (pure; :meth:`logical_step` jits it).

        Private: the clipped sum ``sum_i c_i g_i`` (float32 or wider). Non-private: the
        mask-weighted gradient sum ``sum_i m_i g_i``.
        """
        if self.private:
            grads, info = self.grad_fn.split_call(train, frozen, batch)
            f32 = jnp.float32
            stats = MicroStats(
                loss_sum=jnp.sum(info.loss.astype(f32)),
                num_valid=info.num_valid.astype(f32),
                norm_sum=jnp.sum(info.norms.astype(f32)),
                num_clipped=info.num_clipped.astype(f32),
                clipped_loss_sum=self._clipped_losses(info.loss, batch["mask"].astype(bool)),
            )
            return grads, stats
        mask = batch["mask"].astype(bool)

        def total(t: Any) -> tuple[jax.Array, jax.Array]:
            losses = self.grad_fn.loss_fn(combine(t, frozen), batch)
            losses = jnp.where(mask, losses.astype(jnp.float32), 0.0)
            return jnp.sum(losses), losses

        grads, losses = jax.grad(total, has_aux=True)(train)
        zero = jnp.zeros((), jnp.float32)
        n = jnp.sum(mask.astype(jnp.float32))
        return grads, MicroStats(jnp.sum(losses), n, zero, zero, self._clipped_losses(losses, mask))

    def _clipped_losses(self, loss: jax.Array, mask: jax.Array) -> jax.Array:
        if self.loss_clip is None:
            return jnp.zeros((), jnp.float32)
        loss = loss.astype(jnp.float32)
        ok = mask & jnp.isfinite(loss)
        return jnp.sum(jnp.where(ok, jnp.clip(loss, 0.0, self.loss_clip), 0.0))

    def apply(self, state: TrainState, grad_sum: Any) -> TrainState:
        """One optax update of ``tx`` (noise inside) on a logical batch's sum; step + 1."""
        updates, opt_state = self.tx.update(grad_sum, state.opt_state, state.train)
        train = optax.apply_updates(state.train, updates)
        return state.replace(step=state.step + 1, train=train, opt_state=opt_state)

    @functools.cached_property
    def jitted(self) -> JittedSteps:
        """:meth:`micro_step`, the running sum and :meth:`apply`, jitted once per mechanism."""
        add = jax.jit(lambda acc, new: jax.tree.map(jnp.add, acc, new), donate_argnums=0)
        return JittedSteps(jax.jit(self.micro_step), add, jax.jit(self.apply, donate_argnums=0))

    def logical_step(
        self,
        state: TrainState,
        micro_batches: Iterable[Mapping[str, jax.Array]],
        *,
        ledger: Any = None,
        release_loss: bool = False,
    ) -> tuple[TrainState, MicroStats]:
        """One logical step: sum every micro-batch's clipped sum, noise once, update, record.

        Args:
          state: the current state (donated: do not reuse it).
          micro_batches: the step's fixed-shape micro-batches, each with ``"mask"``; any
            number >= 1 (a Poisson draw gives a variable number).
          ledger: a :class:`~dpjax.accounting.PrivacyLedger` that records the step (private
            mechanisms only).
          release_loss: this step also releases its clipped loss sum with noise
            ``loss_noise_multiplier * loss_clip``; the ledger records the joint event.

        Returns:
          ``(new state, MicroStats summed over the micro-batches)``.
        """
        micro, add, apply = self.jitted
        acc = None
        for batch in micro_batches:
            out = micro(state.train, state.frozen, batch)
            acc = out if acc is None else add(acc, out)
        if acc is None:
            raise ValueError("logical_step got no micro-batches; a step needs at least one")
        if release_loss and (self.loss_noise_multiplier is None or self.loss_clip is None):
            raise ValueError("release_loss=True needs loss_noise_multiplier and loss_clip")
        new_state = apply(state, acc[0])
        if ledger is not None and self.private:
            seg = self.segment(1, release_loss=release_loss)
            ledger.record(**dataclasses.asdict(seg))
        return new_state, acc[1]
