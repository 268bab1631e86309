"""The DP linear probe of the fresh head, the length-sorted feature pass, and the privacy
both hand the trainer (issue 15's main-job recipe)."""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from dpjax import accounting
from dpjax.data.arrays import ArrayDataset
from dpjax.data.sampling import PoissonSampler
from dpjax.models import BertModel, get_config
from dpjax.randomness import RunSecrets
from dpjax.tasks import head_probe, text_classification
from dpjax.tasks.head_probe import ProbeSettings, _RowGather, private_probe
from dpjax.tasks.text_models import MeanPoolClassifier


def _blobs(n=1000, d=6, seed=0, shift=1.5):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.6).astype(np.int32)  # imbalanced, as the reviews are
    x = rng.normal(size=(n, d)) * 0.3
    x[:, 0] += np.where(y == 1, shift, -shift) * 0.3
    return x.astype(np.float32), y


def _accuracy(head, x, y):
    return float(np.mean((x @ head["kernel"] + head["bias"]).argmax(1) == y))


def test_segment_is_the_probe_steps_at_its_sampling_rate():
    x, y = _blobs()
    s = ProbeSettings(epochs=3.0, expected_batch_size=250, noise_multiplier=2.5)
    _, (seg,) = private_probe(x, y, 2, s)
    assert seg == accounting.Segment(2.5, 0.25, 12, dataset_size=1000)
    _, (seg,) = private_probe(x, y, 2, dataclasses.replace(s, noise_multiplier=0.0))
    assert seg.noise_multiplier == 0.0 and seg.steps == 12  # a private trainer refuses it
    # a batch larger than the data is the full data set (rate 1), not an error
    _, (seg,) = private_probe(x, y, 2, dataclasses.replace(s, expected_batch_size=5000))
    assert seg.sampling_rate == 1.0 and seg.steps == 3


@pytest.mark.slow
def test_private_probe_learns_both_classes_and_noise_scale_matters():
    x, y = _blobs(n=2000, shift=3.0)
    s = ProbeSettings(epochs=20.0, expected_batch_size=500, noise_multiplier=3.0)
    head, _ = private_probe(x, y, 2, s)
    pred = (x @ head["kernel"] + head["bias"]).argmax(1)
    assert _accuracy(head, x, y) > 0.9
    assert min(np.mean(pred[y == k] == k) for k in (0, 1)) > 0.8

    # the noise is really added, and its scale shows: same batches (sampling seed), two
    # noise keys; the heads differ, ten times more for ten times sigma, not at sigma 0
    def spread(sigma):
        kw = dict(seed=7, settings=dataclasses.replace(s, noise_multiplier=sigma, epochs=2.0))
        a, _ = private_probe(x, y, 2, key=jax.random.key(1), **kw)
        b, _ = private_probe(x, y, 2, key=jax.random.key(2), **kw)
        return float(np.abs(a["kernel"] - b["kernel"]).max())

    assert spread(0.0) == 0.0
    small, large = spread(1e-4), spread(1e-3)
    assert small > 0 and 5 < large / small < 20, (small, large)


@pytest.mark.slow
@pytest.mark.parametrize("chunk", [256, 7])
def test_nonprivate_probe_matches_an_independent_full_batch_adam_oracle(x64, chunk, monkeypatch):
    """Sigma 0 and rate 1: every step is plain Adam on the mean loss of all rows (the
    gradients in one chunk, or in chunks of 7 rows: 64 rows padded to 70)."""
    monkeypatch.setattr(head_probe, "_CHUNK", chunk)
    x, y = _blobs(n=64, d=3)
    s = ProbeSettings(epochs=5.0, expected_batch_size=64, lr=0.1, noise_multiplier=0.0)
    head, _ = private_probe(x, y, 2, s)
    x64, y64 = jnp.asarray(x, jnp.float64), jnp.asarray(y)
    w = {"kernel": jnp.zeros((3, 2), jnp.float64), "bias": jnp.zeros(2, jnp.float64)}
    opt = optax.adam(optax.linear_schedule(0.1, 0.0, 5))
    st = opt.init(w)
    for _ in range(5):
        g = jax.grad(
            lambda p: optax.softmax_cross_entropy_with_integer_labels(
                x64 @ p["kernel"] + p["bias"], y64
            ).mean()
        )(w)
        upd, st = opt.update(g, st, w)
        w = optax.apply_updates(w, upd)
    for k in ("kernel", "bias"):
        np.testing.assert_allclose(head[k], np.asarray(w[k]), rtol=2e-4, atol=2e-5)


def test_nonprivate_sgd_probe_matches_an_independent_heavy_ball_oracle(x64):
    """``optimizer="sgd"``: v <- g + m v, w <- w - lr_t v, the rate decayed linearly."""
    x, y = _blobs(n=64, d=3)
    s = ProbeSettings(epochs=6.0, expected_batch_size=64, lr=0.5, noise_multiplier=0.0,
                      optimizer="sgd", momentum=0.9)  # fmt: skip
    head, _ = private_probe(x, y, 2, s)
    x64 = np.asarray(x, np.float64)
    w, b = np.zeros((3, 2)), np.zeros(2)
    vw, vb = np.zeros_like(w), np.zeros_like(b)
    for t in range(6):
        z = x64 @ w + b
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        r = (p - np.eye(2)[y]) / len(y)  # d mean-loss / d logits
        vw, vb = x64.T @ r + 0.9 * vw, r.sum(0) + 0.9 * vb
        lr = 0.5 * (1 - t / 6)
        w, b = w - lr * vw, b - lr * vb
    np.testing.assert_allclose(head["kernel"], w, rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(head["bias"], b, rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("chunk", [256, 7])
def test_poisson_sgd_probe_matches_an_oracle_on_the_same_draws(x64, chunk, monkeypatch):
    """Rate < 1 (the device gather): sigma 0, each step the sum of the drawn rows'
    gradients over the expected batch, as the sampler with the same seed draws them
    (in one chunk, or in chunks of 7 rows with the padding masked)."""
    monkeypatch.setattr(head_probe, "_CHUNK", chunk)
    x, y = _blobs(n=90, d=4)
    s = ProbeSettings(epochs=4.0, expected_batch_size=30, lr=0.3, noise_multiplier=0.0,
                      optimizer="sgd", momentum=0.5)  # fmt: skip
    head, (seg,) = private_probe(x, y, 2, s, seed=11)
    assert seg.steps == 12 and seg.sampling_rate == pytest.approx(1 / 3)
    sampler = PoissonSampler(90, expected_batch_size=30, physical_batch_size=90, seed=11)
    x64 = np.asarray(x, np.float64)
    w, b = np.zeros((4, 2)), np.zeros(2)
    vw, vb = np.zeros_like(w), np.zeros_like(b)
    for t in range(12):
        idx = sampler.draw(t)
        assert 0 < len(idx) < 90  # a real subsample, so the gather path runs
        z = x64[idx] @ w + b
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        r = (p - np.eye(2)[y[idx]]) / 30
        vw, vb = x64[idx].T @ r + 0.5 * vw, r.sum(0) + 0.5 * vb
        lr = 0.3 * (1 - t / 12)
        w, b = w - lr * vw, b - lr * vb
    np.testing.assert_allclose(head["kernel"], w, rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(head["bias"], b, rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("chunk", [256, 7])
def test_private_probe_clips_each_row_alone_in_any_chunking(x64, chunk, monkeypatch):
    """A private probe (sigma 1e-9: the noise far below the tolerance) at a clip norm that
    binds: each step is the sum of every row's own clipped gradient over the batch, by a
    float64 oracle, whether the rows are chunked (7 rows; 64 padded to 70) or not."""
    monkeypatch.setattr(head_probe, "_CHUNK", chunk)
    x, y = _blobs(n=64, d=3)
    s = ProbeSettings(epochs=4.0, expected_batch_size=64, lr=0.5, l2_clip=0.05,
                      noise_multiplier=1e-9, optimizer="sgd")  # fmt: skip
    head, _ = private_probe(x, y, 2, s, key=jax.random.key(0), seed=0)
    x64 = np.asarray(x, np.float64)
    w, b = np.zeros((3, 2)), np.zeros(2)
    clipped = 0
    for t in range(4):
        z = x64 @ w + b
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        r = p - np.eye(2)[y]  # per-row d loss / d logits
        norms = np.sqrt((x64**2).sum(1) * (r**2).sum(1) + (r**2).sum(1))
        scale = np.minimum(1.0, 0.05 / norms)
        clipped += int(np.sum(scale < 1))
        r = r * scale[:, None] / 64
        lr = 0.5 * (1 - t / 4)
        w, b = w - lr * (x64.T @ r), b - lr * r.sum(0)
    assert clipped > 4 * 32  # the clip binds for most rows, so a wrong clip shows
    np.testing.assert_allclose(head["kernel"], w, rtol=2e-4, atol=2e-6)
    np.testing.assert_allclose(head["bias"], b, rtol=2e-4, atol=2e-6)


def test_row_gather_is_numpy_indexing_and_the_whole_set_is_not_copied():
    x, y = _blobs(n=20, d=3)
    rows = _RowGather(x, y)
    idx = np.array([3, 3, 0, 19, 7])
    got = rows(idx)
    np.testing.assert_array_equal(np.asarray(got["x"]), x[idx])
    np.testing.assert_array_equal(np.asarray(got["y"]), y[idx])
    whole = rows(np.arange(20))
    assert whole["x"] is rows.x and whole["y"] is rows.y
    np.testing.assert_array_equal(np.asarray(whole["x"]), x)
    shuffled = rows(np.arange(20)[::-1])  # every row, another order: a real gather
    np.testing.assert_array_equal(np.asarray(shuffled["x"]), x[::-1])


def test_secret_key_and_seed_reproduce_and_fresh_entropy_does_not():
    x, y = _blobs(n=300)
    s = ProbeSettings(epochs=2.0, expected_batch_size=100, noise_multiplier=1.0)
    secrets = RunSecrets.draw()
    kw = dict(key=secrets.key("task/probe"), seed=secrets.seed("task/probe_sampling"))
    a, _ = private_probe(x, y, 2, s, **kw)
    b, _ = private_probe(x, y, 2, s, **kw)
    np.testing.assert_array_equal(a["kernel"], b["kernel"])
    c, _ = private_probe(x, y, 2, s)
    assert not np.array_equal(a["kernel"], c["kernel"])


def test_bad_inputs_are_named():
    x, y = _blobs(n=50)
    with pytest.raises(ValueError, match="noise_multiplier"):
        ProbeSettings(noise_multiplier=-1.0)
    with pytest.raises(ValueError, match="epochs"):
        ProbeSettings(epochs=0.0)
    with pytest.raises(ValueError, match="expected_batch_size"):
        ProbeSettings(expected_batch_size=0)
    with pytest.raises(ValueError, match="optimizer must be 'adam' or 'sgd', got 'lbfgs'"):
        ProbeSettings(optimizer="lbfgs")
    with pytest.raises(ValueError, match="momentum is SGD's; got momentum=0.9 with Adam"):
        ProbeSettings(momentum=0.9)
    with pytest.raises(ValueError, match=r"labels must be \[50\] classes in \[0, 2\)"):
        private_probe(x, y + 1, 2, ProbeSettings())
    bad = x.copy()
    bad[3, 0] = np.inf
    with pytest.raises(ValueError, match="finite"):
        private_probe(bad, y, 2, ProbeSettings())


def _tiny_text_data(n=40, t=24, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, t + 1, n)
    mask = (np.arange(t)[None] < lengths[:, None]).astype(np.int32)
    ids = rng.integers(5, 200, (n, t)) * mask
    labels = rng.integers(0, 2, n).astype(np.int32)
    arrays = {"input_ids": ids.astype(np.int32), "attention_mask": mask, "label": labels}
    return ArrayDataset(arrays, num_classes=2)


@pytest.mark.slow
def test_length_sorted_feature_pass_equals_the_padded_forward():
    data = _tiny_text_data()
    model = MeanPoolClassifier(BertModel(get_config("bert-tiny")), 2, normalize=True)
    ids, mask = data.arrays["input_ids"], data.arrays["attention_mask"]
    params = model.init(jax.random.key(0), ids[:2], mask[:2])["params"]
    got = text_classification.pooled_features(model, params, data, batch_size=8)
    want = model.apply({"params": params}, ids, mask, method="features")
    np.testing.assert_allclose(got, np.asarray(want), rtol=2e-5, atol=2e-6)


@pytest.mark.slow
def test_task_probe_starts_the_head_and_is_accounted(monkeypatch):
    data = _tiny_text_data(n=64)
    monkeypatch.setattr(text_classification, "load_splits", lambda cfg, tok: (data, data))
    monkeypatch.setattr(text_classification, "load_tokenizer", lambda cfg: None)
    cfg = ml_collections.ConfigDict(dict(
        dataset="rotten_tomatoes", format="head", pooling="mean", normalize=True,
        model="bert-tiny", center=True, center_noise_multiplier=20.0, probe_epochs=4.0,
        probe_batch_size=32, probe_noise_multiplier=2.0, model_overrides={"vocab_size": 256},
    ))  # fmt: skip
    task = text_classification.build(cfg, secrets=RunSecrets.draw())
    mean_seg, probe_seg = task.prior_privacy
    assert mean_seg == accounting.Segment(20.0, 1.0, 1)
    assert probe_seg == accounting.Segment(2.0, 0.5, 8, dataset_size=64)
    cfg.probe_epochs = 0.0
    fresh = text_classification.build(cfg, secrets=RunSecrets.draw())
    assert len(fresh.prior_privacy) == 1
    assert not np.allclose(
        task.params["classifier"]["kernel"], fresh.params["classifier"]["kernel"]
    )
