"""The training state: step, trainable / frozen parameters and the optimizer state.

Frozen leaves never enter the optimizer: ``train`` and ``frozen`` are complementary trees
(``None`` where the other holds the leaf, see :func:`dpjax.partition`). A phase switch
re-partitions the combined parameters and builds a fresh optimizer state
(:meth:`dpjax.Mechanism.init` of the new phase's mechanism).

Example:
    >>> import jax, jax.numpy as jnp, optax, dpjax
    >>> params = {"d": {"kernel": jnp.ones((2, 2)), "bias": jnp.zeros(2)}}
    >>> state = init_state(params, dpjax.bias_only, optax.sgd(0.1))
    >>> int(state.step), state.train["d"]["kernel"] is None
    (0, True)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from dpjax.partition import Predicate, combine, partition

__all__ = ["TrainState", "init_state"]


@flax.struct.dataclass
class TrainState:
    """A pytree: ``step`` (int32 scalar, logical steps done), ``train``, ``frozen``,
    ``opt_state``."""

    step: jax.Array
    train: Any
    frozen: Any
    opt_state: Any

    @property
    def params(self) -> Any:
        """The full parameter tree."""
        return combine(self.train, self.frozen)


def init_state(
    params: Any,
    trainable: Predicate,
    tx: optax.GradientTransformation,
    step: int | jax.Array = 0,
    shardings: Callable[[Any], Any] | None = None,
) -> TrainState:
    """Splits ``params`` by ``trainable`` and initialises ``tx`` on the trainable part.

    ``shardings(abstract_opt_state)`` gives the optimizer state's shardings (a tree like
    it); without it the state lands wherever XLA puts constants.
    """
    train, frozen = partition(params, trainable)
    out = None if shardings is None else shardings(jax.eval_shape(tx.init, train))
    opt_state = jax.jit(tx.init, out_shardings=out)(train)
    return TrainState(jnp.asarray(step, jnp.int32), train, frozen, opt_state)
