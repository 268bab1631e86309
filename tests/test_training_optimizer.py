"""Per-name learning-rate multipliers in the trainer's optax chain."""

import jax.numpy as jnp
import numpy as np
import pytest

from dpjax.training.optimizer import make_optimizer, scale_by_name
from dpjax.training.settings import ConfigError, OptimizerSettings


def test_scale_by_name_scales_only_named_leaves():
    tx = scale_by_name((("classifier", 25.0),))
    upd = {"classifier": {"kernel": jnp.ones(2)}, "enc": {"bias": jnp.ones(3)}, "frozen": None}
    out, _ = tx.update(upd, tx.init(upd))
    np.testing.assert_array_equal(out["classifier"]["kernel"], 25.0)
    np.testing.assert_array_equal(out["enc"]["bias"], 1.0)
    assert out["frozen"] is None


def test_multiplier_equals_a_larger_learning_rate_for_that_leaf():
    """SGD with lr 0.1 and multiplier 5 on the head moves it like lr 0.5; others unchanged."""
    grads = {"classifier": {"kernel": jnp.full(2, 2.0)}, "enc": {"bias": jnp.full(2, 2.0)}}
    kw = dict(lr=0.1, steps=10)
    plain = OptimizerSettings(name="sgd", lr=0.1, schedule="constant")
    boosted = OptimizerSettings(
        name="sgd", lr=0.1, schedule="constant", lr_multipliers={"classifier": 5.0}
    )
    tx_plain, tx_boost = make_optimizer(plain, **kw), make_optimizer(boosted, **kw)
    u_plain, _ = tx_plain.update(grads, tx_plain.init(grads), grads)
    u_boost, _ = tx_boost.update(grads, tx_boost.init(grads), grads)
    np.testing.assert_allclose(u_boost["classifier"]["kernel"], 5 * u_plain["classifier"]["kernel"])
    np.testing.assert_allclose(u_boost["enc"]["bias"], u_plain["enc"]["bias"])


def test_bad_multiplier_is_rejected_with_its_name():
    with pytest.raises(ConfigError, match="classifier"):
        OptimizerSettings(lr_multipliers={"classifier": -1.0})
