"""dpjax.Mechanism: one source for the clip norm, the noise scale and the accounting event.

Oracles: the noise std of a logical step is ``sigma * sqrt(sum_k C_k^2) / E[B]`` (checked
statistically, the check also failing for a wrong scale); the clipped sum is the float64
``vmap(grad)`` sum clipped by hand; the ledger event is built with ``dp_accounting``'s
vocabulary directly.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import dpjax
from dpjax.accounting import PrivacyLedger, Segment, joint_noise_multiplier

N = 100_000  # noise elements per sample: the sample std is known to ~0.2%


def std_matches(samples, expected, rel_tol=0.02):
    samples = np.asarray(samples, np.float64).ravel()
    mean_ok = abs(samples.mean()) < 5 * expected / np.sqrt(samples.size)
    return mean_ok and abs(samples.std() / expected - 1) < rel_tol


def _zero_grad_loss(p, b):
    """A loss whose gradient is exactly zero: the update is the noise alone."""
    return 0.0 * (jnp.sum(p["enc"]["w"]) + jnp.sum(p["head"]["w"])) * b["x"]


PARAMS = {"enc": {"w": jnp.zeros(N // 2)}, "head": {"w": jnp.zeros(N // 2)}}
BATCH = {"x": jnp.ones(4), "mask": jnp.ones(4, bool)}


def _mech(l2_clip, sigma=2.0, batch_size=8.0, **kw):
    return dpjax.Mechanism(
        dpjax.clipped_grad(_zero_grad_loss, l2_clip=l2_clip),
        optax.sgd(1.0),
        noise_multiplier=sigma,
        expected_batch_size=batch_size,
        key=jax.random.key(0),
        sampling={"sampling_rate": 0.01},
        **kw,
    )


def _noise(mech, micro_batches):
    state = mech.init(PARAMS)
    new, _ = mech.logical_step(state, micro_batches)
    return -np.concatenate([np.ravel(x) for x in jax.tree.leaves(new.train)])  # sgd(1) negates


@pytest.mark.parametrize("k", [1, 3])
def test_noise_once_per_logical_step_for_any_number_of_micro_batches(k):
    mech = _mech(0.5)
    noise = _noise(mech, [BATCH] * k)
    want = 2.0 * 0.5 / 8.0
    assert std_matches(noise, want)
    assert not std_matches(noise, want * np.sqrt(k + 1))  # noise per micro-batch
    assert not std_matches(noise, want * 1.5)


def test_per_layer_clipping_noise_std_is_sigma_times_root_sum_of_squares():
    norms = {"enc": 0.3, "head": 0.4}
    mech = _mech(norms)
    assert mech.sensitivity == pytest.approx(0.5)
    noise = _noise(mech, [BATCH])
    assert std_matches(noise, 2.0 * 0.5 / 8.0)
    assert not std_matches(noise, 2.0 * 0.4 / 8.0)  # the largest group's norm alone
    assert not std_matches(noise, 2.0 * 0.7 / 8.0)  # the sum of the norms


def test_clip_norm_lives_in_one_place():
    """Changing the clip norm of grad_fn changes the clipping AND the noise; no other knob."""
    assert not {f.name for f in dataclasses.fields(dpjax.Mechanism)} & {"l2_clip", "clip"}

    def loss_fn(p, b):
        return b["s"] * jnp.sum(p["w"])  # per-example gradient s * 1, norm |s| sqrt(d)

    params = {"w": jnp.zeros(4)}
    batch = {"s": jnp.array([3.0, -0.1, 10.0]), "mask": jnp.ones(3, bool)}
    for clip in (0.5, 2.0):
        grad_fn = dpjax.clipped_grad(loss_fn, l2_clip=clip)
        mech = dpjax.Mechanism(
            grad_fn,
            optax.sgd(1.0),
            noise_multiplier=1.5,
            expected_batch_size=3.0,
            key=jax.random.key(1),
        )
        grads, _ = mech.micro_step(*dpjax.partition(params, grad_fn.trainable), batch)
        per_ex = np.asarray(batch["s"])[:, None] * np.ones((3, 4))
        norms = np.linalg.norm(per_ex, axis=1)
        want = (np.minimum(1.0, clip / norms)[:, None] * per_ex).sum(0)
        np.testing.assert_allclose(grads["w"], want, rtol=1e-6)
        assert mech.noise_std == pytest.approx(1.5 * clip)
        privatize = mech.tx.init(params)[0]
        assert isinstance(privatize, dpjax.optim.PrivatizeState)


def test_ledger_records_the_segment_calibration_uses():
    mech = _mech(1.0, sigma=0.9, loss_clip=1.0, loss_noise_multiplier=3.0)
    ledger = PrivacyLedger()
    state = mech.init(PARAMS)
    state, _ = mech.logical_step(state, [BATCH], ledger=ledger)
    state, _ = mech.logical_step(state, [BATCH, BATCH], ledger=ledger, release_loss=True)
    assert ledger.segments == (
        Segment(0.9, 0.01, 1),
        Segment(joint_noise_multiplier(0.9, 3.0), 0.01, 1),
    )
    assert mech.segment(5) == dpjax.accounting.step_segment(0.9, {"sampling_rate": 0.01}, steps=5)
    assert int(state.step) == 2


def test_nonprivate_mechanism_is_the_plain_mean_gradient():
    def loss_fn(p, b):
        return (b["x"] @ p["w"] - b["y"]) ** 2

    params = {"w": jnp.array([0.5, -1.0])}
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(6, 2)), rng.normal(size=6)
    mask = np.array([1, 1, 1, 1, 0, 1], bool)
    mech = dpjax.Mechanism(
        dpjax.clipped_grad(loss_fn, l2_clip=1e-6),  # no clipping in a non-private step
        optax.sgd(1.0),
        noise_multiplier=None,
        expected_batch_size=4.0,
    )
    state = mech.init(params)
    halves = [{"x": x[i : i + 3], "y": y[i : i + 3], "mask": mask[i : i + 3]} for i in (0, 3)]
    new, stats = mech.logical_step(state, halves, ledger=PrivacyLedger())
    w = np.array([0.5, -1.0])
    grad = sum(2 * (x[i] @ w - y[i]) * x[i] for i in range(6) if mask[i])
    np.testing.assert_allclose(new.train["w"], w - grad / 4.0, rtol=1e-5)
    assert float(stats.num_valid) == 5.0
    with pytest.raises(ValueError, match="non-private"):
        mech.segment()


def test_bad_mechanisms_are_refused():
    grad_fn = dpjax.clipped_grad(_zero_grad_loss, l2_clip=1.0)
    with pytest.raises(TypeError, match="key="):
        dpjax.Mechanism(grad_fn, optax.sgd(1.0), noise_multiplier=1.0, expected_batch_size=8)
    with pytest.raises(ValueError, match="expected_batch_size.*0"):
        dpjax.Mechanism(grad_fn, optax.sgd(1.0), noise_multiplier=None, expected_batch_size=0)
    with pytest.raises(TypeError, match="clipped_grad"):
        dpjax.Mechanism(_zero_grad_loss, optax.sgd(1.0), noise_multiplier=None,
                        expected_batch_size=8)  # fmt: skip
    with pytest.raises(ValueError, match="sampling_rate"):
        _mech(1.0).__class__(grad_fn, optax.sgd(1.0), noise_multiplier=1.0,
                             expected_batch_size=8, key=jax.random.key(0),
                             sampling={"sampling_rate": 2.0})  # fmt: skip
    mech = _mech(1.0)
    with pytest.raises(ValueError, match="no micro-batches"):
        mech.logical_step(mech.init(PARAMS), [])


@pytest.mark.slow
def test_per_layer_clipping_from_config_clips_and_noises_through_the_trainer(tmp_path):
    """privacy.l2_clip={group: C_k}: the trainer's clipped sum clips each group to C_k
    (float64 vmap(grad) oracle; check_engine agrees) and its noise std is
    sigma * sqrt(sum_k C_k^2) / E[B]. The ghost engine, checked against vmap by check_engine."""
    engine = "ghost"
    from dpjax.training import Trainer
    from experiments.configs import toy

    norms = {"dense1": 0.02, "head": 0.05, "norm": 0.01}
    cfg = toy.get_config("dp_full")
    cfg.privacy.l2_clip = norms
    cfg.engine = engine
    cfg.privacy.target_epsilon, cfg.privacy.noise_multiplier = None, 1.5
    cfg.privacy.noise_seed = 0
    cfg.optimizer.name, cfg.optimizer.lr, cfg.optimizer.schedule = "sgd", 1.0, "constant"
    cfg.steps, cfg.epochs = 400, None
    trainer = Trainer(cfg, str(tmp_path), devices=jax.devices()[:1])
    mech = trainer.mechanism(0)
    sens = float(np.sqrt(sum(c * c for c in norms.values())))
    assert mech.sensitivity == pytest.approx(sens) and mech.grad_fn.l2_clip == norms

    # clipping: each group of each example's gradient clipped to its own norm
    state = trainer.initial_state()
    mb = trainer.sampler.sample(0)[0]
    batch = trainer.load_batch(mb.indices, mb.mask)
    grads, _ = mech.micro_step(state.train, state.frozen, batch)
    params64 = jax.tree.map(lambda x: np.asarray(x, np.float64), trainer.task.params)
    host = {k: np.asarray(v) for k, v in batch.items()}
    with jax.enable_x64():
        per_ex = jax.vmap(
            jax.grad(lambda p, ex: trainer.task.loss_fn(p, jax.tree.map(lambda x: x[None], ex))[0]),
            in_axes=(None, 0),
        )(params64, host)
    want = {}
    for group, c in norms.items():
        leaves = per_ex[group]
        sq = sum(np.sum(np.square(np.asarray(v)).reshape(len(host["mask"]), -1), 1)
                 for v in leaves.values())  # fmt: skip
        f = np.where(host["mask"], np.minimum(1.0, c / np.sqrt(sq)), 0.0)
        want[group] = {k: np.tensordot(f, np.asarray(v), 1) for k, v in leaves.items()}
    jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=2e-4, atol=1e-7), grads, want)
    dpjax.check_engine(trainer.task.loss_fn, trainer.task.params, host, method=engine,
                       l2_clip=mech.grad_fn.l2_clip)  # fmt: skip

    # noise: sgd(1) on a zero clipped sum moves the parameters by -noise / E[B]
    zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.float32), state.train)
    samples = []
    for _ in range(300):
        before = jax.tree.map(np.asarray, state.train)
        state = mech.jitted.apply(state, zeros)
        after = jax.tree.leaves(state.train)
        samples += [np.ravel(b - np.asarray(a)) for b, a in zip(jax.tree.leaves(before), after)]
    noise = np.concatenate(samples) * trainer.plan.expected_batch_size
    assert std_matches(noise, 1.5 * sens, rel_tol=0.03)
    assert not std_matches(noise, 1.5 * max(norms.values()), rel_tol=0.03)
    assert not std_matches(noise, 1.5 * 0.1, rel_tol=0.03)  # a float l2_clip's default
