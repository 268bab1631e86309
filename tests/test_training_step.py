"""Train step: gradient accumulation, noise once per logical step, sharded == unsharded."""

import re

import jax
import numpy as np
import pytest
from trainer_runs import assert_trees_close, run_steps

from dpjax.training import Trainer
from dpjax.training.optimizer import find_privatize_state
from experiments.configs import toy


def _config(physical, *, sigma=0.0, method="dp_full", batch=64, sampler="poisson"):
    c = toy.get_config(method)
    c.sampler = sampler
    c.physical_batch_size = physical
    c.batch_size = batch
    c.steps = 2
    c.epochs = None
    c.privacy.target_epsilon = None
    c.privacy.noise_multiplier = sigma
    c.privacy.accountant = "rdp"
    c.privacy.noise_seed = 0  # the runs compared here must draw the same batches
    return c


@pytest.fixture(scope="module")
def task():
    return toy.build_task(toy.get_config().task)


def _run(trainer, steps):
    return run_steps(trainer, steps)


def _close(a, b, rtol=2e-5, atol=1e-7):
    assert_trees_close(a, b, rtol, atol)


ONE = jax.devices()[:1]


@pytest.fixture(scope="module")
def small(task):
    """Fixed-size batches of 64 in 8 micro-batches of 8, sigma = 1, one device."""
    return Trainer(
        _config(8, sigma=1.0, sampler="without_replacement"), "/unused", task=task, devices=ONE
    )


@pytest.fixture(scope="module")
def big(task):
    """The same run with one micro-batch of 64 per logical step."""
    return Trainer(
        _config(64, sigma=1.0, sampler="without_replacement"), "/unused", task=task, devices=ONE
    )


def test_accumulated_micro_batches_equal_one_big_batch(task, small, big):
    for t in range(2):
        assert len(small.sampler.sample(t)) == 8
        assert len(big.sampler.sample(t)) == 1
    # same clipped sum before noise ...
    state = small.initial_state()
    acc = None
    for mb in small.sampler.sample(0):
        out = small.mechanism(0).jitted.micro_step(state.train, state.frozen, small.load_batch(*mb))
        acc = out if acc is None else small.mechanism(0).jitted.add(acc, out)
    one = big.mechanism(0).jitted.micro_step(
        state.train, state.frozen, big.load_batch(*big.sampler.sample(0)[0])
    )
    _close(acc, one, rtol=1e-5)
    # ... and the same update with the noise drawn once from the same key
    a, b = _run(small, 2), _run(big, 2)
    _close(a.params, b.params)
    moved = jax.tree.map(lambda x, y: float(np.abs(x - y).max()), a.params, task.params)
    assert max(jax.tree.leaves(moved)) > 1e-4  # the step did something


def test_noise_added_once_per_logical_step(small):
    state0 = small.initial_state()
    key0 = find_privatize_state(state0.opt_state).key
    state = _run(small, 2)
    priv = find_privatize_state(state.opt_state)
    assert int(priv.count) == 2  # 2 updates for 16 micro-batches
    expected = jax.random.split(jax.random.split(key0)[0])[0]  # the key advanced twice
    np.testing.assert_array_equal(jax.random.key_data(priv.key), jax.random.key_data(expected))


def test_sharded_step_equals_single_device(task):
    cfg = _config(32, sigma=1.0)
    single = Trainer(cfg, "/unused", task=task, devices=jax.devices()[:1])
    sharded = Trainer(cfg, "/unused", task=task)
    assert sharded.mesh.shape["data"] == 8
    mb = single.sampler.sample(0)[0]
    s1, s8 = single.initial_state(), sharded.initial_state()
    g1, st1 = single.mechanism(0).jitted.micro_step(s1.train, s1.frozen, single.load_batch(*mb))
    g8, st8 = sharded.mechanism(0).jitted.micro_step(s8.train, s8.frozen, sharded.load_batch(*mb))
    _close(g1, g8, rtol=1e-5)  # same clipped sums before noise
    np.testing.assert_allclose(st1.loss_sum, st8.loss_sum, rtol=1e-5)
    # whole logical steps, noise included: same key gives the same noise
    _close(_run(single, 2).params, _run(sharded, 2).params, rtol=1e-5)


def test_per_example_gradients_stay_sharded(task):
    """In the compiled 8-device micro-step the per-example kernel gradients are [B/8, ...]."""
    trainer = Trainer(_config(32, sigma=1.0), "/unused", task=task)
    state = trainer.initial_state()
    batch = trainer.load_batch(*trainer.sampler.sample(0)[0])
    hlo = (
        trainer.mechanism(0)
        .jitted.micro_step.lower(state.train, state.frozen, batch)
        .compile()
        .as_text()
    )
    # dense1 kernel is [8, 16]; per-example grads live as f32[4,8,16] (32 rows / 8 devices)
    assert re.search(r"f32\[4,8,16\]", hlo)
    assert not re.search(r"f32\[32,8,16\]", hlo)
    # Only the non-finite isolation branch (run when a row's gradient is not finite)
    # recomputes row by row, gathering the batch inputs (mask [32], y [32], x [32, 8]) --
    # never a gradient.
    gathers = [line for line in hlo.splitlines() if "all-gather(" in line]
    assert all(re.search(r"= (pred|s32|f32)\[32,1(,8)?\]", g) for g in gathers), gathers
    assert "all-reduce" in hlo  # the clipped sums are reduced across the data axis


def test_engine_is_a_config_choice_ghost_matches_vmap(task):
    runs = {}
    for engine in ("vmap", "ghost"):
        cfg = _config(32, sigma=1.0)
        cfg.engine = engine
        trainer = Trainer(cfg, "/unused", task=task, devices=ONE)
        assert trainer.plan.phases[0].engine == engine
        runs[engine] = _run(trainer, 2).params
    _close(runs["vmap"], runs["ghost"], rtol=1e-5)
