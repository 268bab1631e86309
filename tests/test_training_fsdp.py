"""FSDP: parameters and optimizer state sharded over ``"data"`` (8 simulated devices)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P
from trainer_runs import assert_trees_close, run_steps

from dpjax.engines.vmap import per_example_grads
from dpjax.training import Trainer
from dpjax.training.settings import MeshSettings
from dpjax.training.sharding import FSDP_MIN_SIZE, make_mesh, param_shardings
from experiments.configs import toy

DIM, HIDDEN = 32, 1024  # dense1 kernel [32, 1024]: 32,768 elements >= FSDP_MIN_SIZE


def _config(*, fsdp, data=-1, model=1):
    c = toy.get_config("dp_full")
    c.task.dim, c.task.hidden = DIM, HIDDEN
    c.physical_batch_size = 32
    c.steps, c.epochs = 2, None
    c.privacy.target_epsilon = None
    c.privacy.noise_multiplier = 1.0
    c.privacy.accountant = "rdp"
    c.privacy.noise_seed = 0  # the runs compared here must draw the same batches and noise
    c.mesh.data, c.mesh.model, c.mesh.fsdp = data, model, fsdp
    return c


@pytest.fixture(scope="module")
def task():
    return toy.build_task(_config(fsdp=False).task)


def _run(trainer, steps=2):
    return run_steps(trainer, steps)


def _close(a, b, rtol=1e-5, atol=1e-7):
    assert_trees_close(a, b, rtol, atol)


def test_fsdp_specs_shard_big_leaves_on_data_and_keep_small_ones_replicated():
    tree = {
        "big": np.zeros((64, 1024)),
        "bias": np.zeros(1024),  # under FSDP_MIN_SIZE
        "odd": np.zeros((129, 131)),  # no axis divisible by 8
        "tall": np.zeros((4096, 6)),
        "step": np.zeros(()),
    }
    assert 1024 < FSDP_MIN_SIZE <= 129 * 131
    mesh = make_mesh(MeshSettings(data=-1, model=1))
    specs = {k: s.spec for k, s in param_shardings(mesh, tree, fsdp=True).items()}
    assert specs == {
        "big": P(None, "data"),
        "bias": P(),
        "odd": P(),
        "tall": P("data", None),
        "step": P(),
    }
    assert all(s.spec == P() for s in param_shardings(mesh, tree).values())  # fsdp off
    # data x model = 4 x 2: FSDP on "data", the next largest divisible axis on "model"
    mesh = make_mesh(MeshSettings(data=4, model=2))
    big = param_shardings(mesh, tree, fsdp=True)["big"]
    assert big.spec == P("model", "data") and big.shard_shape((64, 1024)) == (32, 256)
    assert param_shardings(mesh, tree, fsdp=True, min_size=1)["bias"].spec == P("data")


def test_fsdp_on_default_mesh_shards_params_and_optimizer_state_eight_ways(task):
    trainer = Trainer(_config(fsdp=True), "/unused", task=task)
    assert dict(trainer.mesh.shape) == {"data": 8, "model": 1}
    state = trainer.initial_state()
    kernel = state.train["dense1"]["kernel"]
    assert kernel.shape == (DIM, HIDDEN)
    assert kernel.sharding.spec == P(None, "data")
    assert kernel.sharding.shard_shape(kernel.shape) == (DIM, HIDDEN // 8)
    shards = kernel.addressable_shards
    assert len(shards) == 8 and {s.data.shape for s in shards} == {(DIM, HIDDEN // 8)}
    assert len({s.index[1].start for s in shards}) == 8  # 8 distinct column blocks
    assert state.train["head"]["kernel"].sharding.is_fully_replicated  # 2,048 elements
    moments = [
        x
        for x in jax.tree.leaves(state.opt_state)
        if isinstance(x, jax.Array) and x.shape == (DIM, HIDDEN)
    ]
    assert moments  # Adam's mu and nu of the kernel, sharded like it
    assert all(m.sharding.shard_shape(m.shape) == (DIM, HIDDEN // 8) for m in moments)


@pytest.mark.slow
@pytest.mark.parametrize("data,model", [(-1, 1), (4, 2)])
def test_fsdp_training_matches_the_unsharded_run(task, data, model):
    single = Trainer(_config(fsdp=False), "/unused", task=task, devices=jax.devices()[:1])
    fsdp = Trainer(_config(fsdp=True, data=data, model=model), "/unused", task=task)
    mb = single.sampler.sample(0)[0]
    s1, s8 = single.initial_state(), fsdp.initial_state()
    g1, st1 = single.mechanism(0).jitted.micro_step(s1.train, s1.frozen, single.load_batch(*mb))
    g8, st8 = fsdp.mechanism(0).jitted.micro_step(s8.train, s8.frozen, fsdp.load_batch(*mb))
    _close(g1, g8)  # same clipped sums before noise
    np.testing.assert_allclose(st1.loss_sum, st8.loss_sum, rtol=1e-5)
    a, b = _run(single), _run(fsdp)
    _close(a.params, b.params, atol=1e-6)  # float32 sums in another order
    assert b.params["dense1"]["kernel"].sharding.shard_shape((DIM, HIDDEN)) != (DIM, HIDDEN)
    moved = jax.tree.map(lambda x, y: float(np.abs(x - y).max()), a.params, task.params)
    assert max(jax.tree.leaves(moved)) > 1e-4  # the steps did something


@pytest.mark.slow
def test_per_example_gradients_with_fsdp_params_are_exact(task):
    trainer = Trainer(_config(fsdp=True), "/unused", task=task)
    state = trainer.initial_state()
    assert state.train["dense1"]["kernel"].sharding.spec == P(None, "data")
    batch = trainer.load_batch(*trainer.sampler.sample(0)[0])

    @jax.jit
    def grads(train, frozen, batch):
        return per_example_grads(task.loss_fn, train, frozen, batch, spmd_axis_name="data")

    _, got = grads(state.train, state.frozen, batch)
    host = jax.tree.map(np.asarray, batch)
    rows = len(host["x"])
    params = jax.tree.map(jnp.asarray, task.params)
    for i in (0, 5, rows - 1):  # row by row on one device, unsharded
        one = jax.tree.map(lambda x, i=i: x[i : i + 1], host)
        want = jax.grad(lambda p, one=one: task.loss_fn(p, one)[0])(params)
        _close(jax.tree.map(lambda g, i=i: g[i], got), want, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["dp_full_ghost", "dp_lora", "dp_bitfit", "dp_bitfit_add"])
def test_fsdp_matches_the_unsharded_run_for_every_parameter_efficient_method(method):
    """Clipped sums before noise, then two noised steps (same secret seed), 8 devices vs 1."""

    def config(fsdp):
        c = _config(fsdp=fsdp)
        c.method = "dp_full" if method == "dp_full_ghost" else method
        c.engine = "ghost"
        c.peft.targets = "dense1$"
        c.task.use_bias = method != "dp_bitfit_add"
        return c

    task = toy.build_task(config(False).task)
    single = Trainer(config(False), "/unused", task=task, devices=jax.devices()[:1])
    fsdp = Trainer(config(True), "/unused", task=task)
    mb = single.sampler.sample(0)[0]
    s1, s8 = single.initial_state(), fsdp.initial_state()
    g1, _ = single.mechanism(0).jitted.micro_step(s1.train, s1.frozen, single.load_batch(*mb))
    g8, _ = fsdp.mechanism(0).jitted.micro_step(s8.train, s8.frozen, fsdp.load_batch(*mb))
    _close(g1, g8)
    assert any(x.sharding.shard_shape(x.shape) != x.shape for x in jax.tree.leaves(s8.params))
    a, b = _run(single), _run(fsdp)
    _close(a.train, b.train, atol=1e-6)
    moved = jax.tree.map(lambda x, y: float(np.abs(x - y).max()), a.train, s1.train)
    assert max(jax.tree.leaves(moved)) > 1e-4  # the trainable set moved
