"""privatize / dp_aggregate: noise scale, key handling, normalisation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import dpjax

N = 200_000  # elements per noise sample: sample std known to ~0.16%


def std_matches(samples, expected, rel_tol=0.02):
    """Statistical check on a Gaussian sample's mean and std (z-bound on the mean)."""
    samples = np.asarray(samples, np.float64).ravel()
    mean_ok = abs(samples.mean()) < 5 * expected / np.sqrt(samples.size)
    return mean_ok and abs(samples.std() / expected - 1) < rel_tol


def test_std_check_rejects_wrong_scales():
    z = np.random.default_rng(0).normal(0.0, 0.3, N)
    assert std_matches(z, 0.3)
    assert not std_matches(z, 0.3 * 1.5) and not std_matches(z, 0.3 / 1.5)
    assert not std_matches(z + 0.01, 0.3)  # a biased mean is caught too


def test_privatize_noise_scale_and_normalisation():
    sigma, clip, batch = 2.0, 0.5, 10
    tx = dpjax.optim.privatize(
        noise_multiplier=sigma, l2_clip=clip, expected_batch_size=batch, key=jax.random.key(1)
    )
    zeros = {"a": jnp.zeros(N // 2), "b": jnp.zeros((N // 4, 2))}
    state = tx.init(zeros)
    noisy, state = jax.jit(tx.update)(zeros, state)
    samples = np.concatenate([np.ravel(x) for x in jax.tree.leaves(noisy)])
    assert std_matches(samples, sigma * clip / batch)
    assert not std_matches(samples, 1.5 * sigma * clip / batch)
    # the signal is divided by the public expected batch size
    tx0 = dpjax.optim.privatize(
        noise_multiplier=0.0, l2_clip=clip, expected_batch_size=batch, key=jax.random.key(1)
    )
    out, _ = tx0.update({"a": jnp.full(3, 7.0)}, tx0.init(None))
    np.testing.assert_allclose(out["a"], 0.7, rtol=1e-6)


def test_key_advances_and_leaves_get_independent_noise():
    tx = dpjax.optim.privatize(
        noise_multiplier=1.0, l2_clip=1.0, expected_batch_size=1, key=jax.random.key(3)
    )
    zeros = {"a": jnp.zeros(1000), "b": jnp.zeros(1000)}
    s0 = tx.init(zeros)
    n1, s1 = tx.update(zeros, s0)
    n2, s2 = tx.update(zeros, s1)
    assert not np.array_equal(jax.random.key_data(s0.key), jax.random.key_data(s1.key))
    assert int(s2.count) == 2
    assert abs(np.corrcoef(n1["a"], n2["a"])[0, 1]) < 0.15  # steps differ
    assert abs(np.corrcoef(n1["a"], n1["b"])[0, 1]) < 0.15  # leaves differ
    again, _ = tx.update(zeros, s0)  # deterministic given the state
    np.testing.assert_array_equal(again["a"], n1["a"])


def test_none_leaves_pass_through():
    tx = dpjax.optim.privatize(
        noise_multiplier=1.0, l2_clip=1.0, expected_batch_size=4, key=jax.random.key(0)
    )
    upd = {"w": None, "b": jnp.zeros(3)}
    out, _ = tx.update(upd, tx.init(upd))
    assert out["w"] is None and out["b"].shape == (3,)


def test_no_default_key_and_bad_values():
    with pytest.raises(TypeError, match="PRNG key is required"):
        dpjax.optim.privatize(noise_multiplier=1.0, l2_clip=1.0, expected_batch_size=8, key=None)
    with pytest.raises(ValueError, match="noise_multiplier.*-0.5"):
        dpjax.optim.privatize(
            noise_multiplier=-0.5, l2_clip=1.0, expected_batch_size=8, key=jax.random.key(0)
        )
    with pytest.raises(ValueError, match="l2_clip.*0.0"):
        dpjax.optim.privatize(
            noise_multiplier=1.0, l2_clip=0.0, expected_batch_size=8, key=jax.random.key(0)
        )
    with pytest.raises(ValueError, match="expected_batch_size.*0"):
        dpjax.optim.privatize(
            noise_multiplier=1.0, l2_clip=1.0, expected_batch_size=0, key=jax.random.key(0)
        )
    with pytest.raises(TypeError, match="PRNG key"):
        dpjax.optim.privatize(
            noise_multiplier=1.0, l2_clip=1.0, expected_batch_size=8, key=jnp.zeros(3)
        )


def test_privatize_and_dp_aggregate_are_keyword_only():
    """sigma and C are both plain numbers: a positional swap must not pass silently."""
    with pytest.raises(TypeError):
        dpjax.optim.privatize(1.0, 0.5, 8, jax.random.key(0))
    with pytest.raises(TypeError):
        dpjax.optim.dp_aggregate(0.5, 1.0, 8, jax.random.key(0))
    assert not hasattr(dpjax.optim, "accumulate")  # dpjax.Mechanism.logical_step instead


def test_dp_aggregate_matches_manual_clip_sum():
    rng = np.random.default_rng(0)
    per_ex = {"w": rng.normal(size=(5, 3, 2)), "b": rng.normal(size=(5, 2))}
    per_ex["w"][1] *= 100.0  # one example far above the clip norm
    tx = dpjax.optim.dp_aggregate(
        l2_clip=1.0, noise_multiplier=0.0, expected_batch_size=8, key=jax.random.key(0)
    )
    out, _ = tx.update(jax.tree.map(jnp.asarray, per_ex), tx.init(None))
    norms = np.sqrt(sum(np.sum(v.reshape(5, -1) ** 2, 1) for v in per_ex.values()))
    f = np.minimum(1.0, 1.0 / norms)
    for name, v in per_ex.items():
        want = np.tensordot(f, v, axes=1) / 8
        np.testing.assert_allclose(out[name], want, rtol=1e-5)
    with pytest.raises(ValueError, match="leading batch axis"):
        tx.update({"w": jnp.zeros((5, 2)), "b": jnp.zeros((4,))}, tx.init(None))


def test_dp_sgd_and_dp_adam_train_a_model():
    def loss_fn(p, b):
        return (b["x"] @ p["w"] - b["y"]) ** 2

    x = np.random.default_rng(0).normal(size=(64, 3)).astype(np.float32)
    batch = {"x": x, "y": x @ np.array([1.0, -2.0, 0.5], np.float32)}
    grad_fn = dpjax.clipped_grad(loss_fn, l2_clip=1.0)
    for make in (dpjax.optim.dp_sgd, dpjax.optim.dp_adam):
        tx = make(
            0.05,
            noise_multiplier=0.1,
            l2_clip=grad_fn.sensitivity,
            expected_batch_size=64,
            key=jax.random.key(0),
        )
        params = {"w": jnp.zeros(3)}
        state = tx.init(params)

        @jax.jit
        def step(params, state):
            g, _ = grad_fn(params, batch)
            upd, state = tx.update(g, state, params)
            return optax.apply_updates(params, upd), state

        for _ in range(200):
            params, state = step(params, state)
        loss = float(loss_fn(params, batch).mean())
        assert loss < 0.1 * float(loss_fn({"w": jnp.zeros(3)}, batch).mean()), make.__name__
