"""The private feature mean (Gaussian mechanism) and the privacy it hands the trainer."""

import dataclasses

import dp_accounting as dpa
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from accounting_oracle import oracle_epsilon, poisson_event

from dpjax import accounting
from dpjax.models import BertModel, get_config
from dpjax.randomness import RunSecrets
from dpjax.tasks.feature_mean import private_mean
from dpjax.tasks.text_models import MeanPoolClassifier
from dpjax.training import Trainer
from dpjax.training.settings import ConfigError
from experiments.configs import toy


def _feats(n=300, d=5, seed=0):
    x = np.random.default_rng(seed).normal(size=(n, d)) * 2.0  # many rows have norm > 1
    return x


def test_exact_mean_of_clipped_features_without_noise():
    x = _feats()
    mean, seg = private_mean(lambda i: x[i], len(x), noise_multiplier=0.0,
                             batch_size=64, progress=False)  # fmt: skip
    clipped = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1.0)
    np.testing.assert_allclose(mean, clipped.mean(0), rtol=1e-12)
    assert np.abs(mean - x.mean(0)).max() > 1e-2  # clipping changed it: not a plain mean
    assert seg == accounting.Segment(0.0, 1.0, 1)


def test_noise_std_is_sigma_over_n_and_rejects_wrong_scales():
    x, sigma = _feats(n=50, d=400), 3.0
    exact, _ = private_mean(lambda i: x[i], 50, noise_multiplier=0.0, progress=False)
    errors = np.concatenate([
        private_mean(lambda i: x[i], 50, noise_multiplier=sigma, progress=False)[0]
        - exact for _ in range(25)
    ])  # fmt: skip
    std = errors.std() * 50  # noise on the sum
    assert std == pytest.approx(sigma, rel=0.03)
    for wrong in (sigma * 1.1, sigma / 1.1, sigma * np.sqrt(2)):
        assert abs(std / wrong - 1) > 0.05
    # Without an rng the noise is fresh OS entropy: two calls never agree...
    a, _ = private_mean(lambda i: x[i], 50, noise_multiplier=sigma, progress=False)
    b, _ = private_mean(lambda i: x[i], 50, noise_multiplier=sigma, progress=False)
    assert np.abs(a - b).min() > 0
    # ... while the trainer's secret stream makes a resumed run release the same mean.
    secrets = RunSecrets.draw()
    a, _ = private_mean(lambda i: x[i], 50, noise_multiplier=sigma, progress=False,
                        rng=secrets.numpy_rng("task/feature_mean"))  # fmt: skip
    b, _ = private_mean(lambda i: x[i], 50, noise_multiplier=sigma, progress=False,
                        rng=secrets.numpy_rng("task/feature_mean"))  # fmt: skip
    np.testing.assert_array_equal(a, b)


def test_bad_inputs_named():
    x = _feats()
    with pytest.raises(ValueError, match="noise_multiplier"):
        private_mean(lambda i: x[i], 10, noise_multiplier=-1.0)
    with pytest.raises(ValueError, match=r"must be \[4, d\]"):
        private_mean(lambda i: x[i][:, 0], 4, noise_multiplier=1.0, progress=False)
    bad = x.copy()
    bad[5, 1] = np.nan
    with pytest.raises(ValueError, match="not finite"):
        private_mean(lambda i: bad[i], 10, noise_multiplier=1.0, progress=False)


@pytest.mark.slow
def test_calibration_composes_the_prior_like_dp_accounting():
    q, steps, delta = 512 / 10202, 40, 4.9e-5
    prior = (accounting.Segment(1.0, 1.0, 1),)  # a costly prior, to move sigma visibly
    sigma0 = accounting.calibrate_noise_multiplier(
        target_epsilon=8.0, sampling_rate=q, steps=steps, delta=delta)  # fmt: skip
    sigma = accounting.calibrate_noise_multiplier(
        target_epsilon=8.0, sampling_rate=q, steps=steps, delta=delta, prior=prior)  # fmt: skip
    assert sigma > sigma0 * 1.02
    events = [dpa.GaussianDpEvent(1.0), poisson_event(sigma, q, steps)]
    eps = oracle_epsilon(events, delta, "pld")
    assert 8.0 * 0.99 < eps <= 8.0
    slightly_less = [dpa.GaussianDpEvent(1.0), poisson_event(sigma * 0.99, q, steps)]
    assert oracle_epsilon(slightly_less, delta, "pld") > 8.0
    with pytest.raises(ValueError, match="prior segments .* alone"):
        accounting.calibrate_noise_multiplier(
            target_epsilon=0.5, sampling_rate=q, steps=steps, delta=delta, prior=prior)  # fmt: skip
    with pytest.raises(ValueError, match="Segment"):
        accounting.calibrate_noise_multiplier(
            target_epsilon=8.0, sampling_rate=q, steps=steps, delta=delta, prior=[(2.0, 1.0)]
        )


@pytest.fixture(scope="module")
def toy_task():
    return toy.build_task(toy.get_config().task)


def _cfg(method="dp_full"):
    c = toy.get_config(method)
    c.steps, c.epochs = 4, None
    c.privacy.accountant = "rdp"
    return c


def test_trainer_composes_task_prior_into_epsilon_and_calibration(toy_task, tmp_path):
    prior = (accounting.Segment(1.5, 1.0, 1),)
    task = dataclasses.replace(toy_task, prior_privacy=prior)
    cfg = _cfg()
    cfg.privacy.target_epsilon, cfg.privacy.noise_multiplier = 8.0, None
    trainer = Trainer(cfg, str(tmp_path / "a"), task=task, devices=jax.devices()[:1])
    plain = Trainer(cfg, str(tmp_path / "b"), task=toy_task, devices=jax.devices()[:1])
    assert trainer.plan.noise_multiplier > plain.plan.noise_multiplier
    res = trainer.run(progress=False)
    q = trainer.plan.sampling["sampling_rate"]
    sigma = trainer.plan.noise_multiplier
    events = [dpa.GaussianDpEvent(1.5), poisson_event(sigma, q, 4)]
    assert res["epsilon"] == pytest.approx(oracle_epsilon(events, res["delta"], "rdp"), rel=1e-9)
    assert res["epsilon"] <= 8.0
    assert res["prior_privacy"] == [dataclasses.asdict(prior[0])]
    assert res["ledger"]["segments"][0]["steps"] == 4  # the ledger counts training steps only


def test_private_run_refuses_a_noiseless_prior_and_nonprivate_ignores_it(toy_task, tmp_path):
    task = dataclasses.replace(toy_task, prior_privacy=(accounting.Segment(0.0, 1.0, 1),))
    with pytest.raises(ConfigError, match="without noise"):
        Trainer(_cfg(), str(tmp_path / "a"), task=task, devices=jax.devices()[:1])
    res = Trainer(_cfg("nonprivate_full"), str(tmp_path / "b"), task=task,
                  devices=jax.devices()[:1]).run(progress=False)  # fmt: skip
    assert res["epsilon"] is None and res["steps"] == 4
    with pytest.raises(TypeError, match="prior_privacy"):
        dataclasses.replace(toy_task, prior_privacy=[(1.0, 1.0, 1)])


def test_mean_pool_classifier_subtracts_the_center():
    model = MeanPoolClassifier(BertModel(get_config("bert-tiny")), 3, normalize=True,
                               feature_scale=2.0)  # fmt: skip
    ids = jnp.asarray(np.random.default_rng(0).integers(1, 100, (4, 6)), jnp.int32)
    mask = jnp.asarray([[1] * 6, [1] * 3 + [0] * 3, [1] * 6, [1] * 2 + [0] * 4])
    params = model.init(jax.random.key(0), ids, mask)["params"]
    feats = model.apply({"params": params}, ids, mask, method="features")
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, rtol=1e-5)
    center = jnp.linspace(-0.1, 0.1, feats.shape[1])
    head = params["classifier"]
    want = ((feats - center) * 2.0) @ head["kernel"] + head["bias"]
    got = model.apply({"params": params}, ids, mask, center)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
