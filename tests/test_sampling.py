"""dpjax.data.sampling: statistical checks of the samplers, padding, determinism, resume."""

import itertools
import json
import math

import numpy as np
import pytest

from dpjax import accounting
from dpjax.data.sampling import MicroBatch, PoissonSampler, WithoutReplacementSampler, host_slice


def _real_rows(microbatches):
    return np.concatenate([mb.indices[mb.mask] for mb in microbatches])


# ----------------------------------------------------------------------------- statistics
def _mean_size_within_bound(sampler, q, n, steps):
    """Mean drawn size over ``steps`` within 5 standard errors of q n (Binomial(n, q))."""
    sizes = np.array([sampler.drawn_size(t) for t in range(steps)])
    stderr = math.sqrt(n * q * (1 - q) / steps)
    return abs(sizes.mean() - q * n) < 5 * stderr


def test_mean_drawn_size_is_qn_and_a_wrong_rate_is_rejected():
    n, q, steps = 10_000, 0.01, 400
    good = PoissonSampler(n, sampling_rate=q, physical_batch_size=64, seed=3)
    assert _mean_size_within_bound(good, q, n, steps)
    wrong = PoissonSampler(n, sampling_rate=1.5 * q, physical_batch_size=64, seed=3)
    assert not _mean_size_within_bound(wrong, q, n, steps)


def _inclusion_chi2(draws, n, q):
    """Chi-square of per-example inclusion counts against Binomial(steps, q)."""
    counts = np.bincount(np.concatenate(draws), minlength=n)
    steps = len(draws)
    return float(np.sum((counts - steps * q) ** 2) / (steps * q * (1 - q)))


def _chi2_ok(chi2, dof):
    return abs(chi2 - dof) < 5 * math.sqrt(2 * dof)


def test_per_example_inclusion_frequency_is_q():
    n, q, steps = 200, 0.1, 2000
    sampler = PoissonSampler(n, sampling_rate=q, physical_batch_size=16, seed=11)
    draws = [sampler.draw(t) for t in range(steps)]
    assert _chi2_ok(_inclusion_chi2(draws, n, q), n)
    # The same check rejects a 1.5x rate, and a too-regular (round-robin) schedule.
    wrong = PoissonSampler(n, sampling_rate=1.5 * q, physical_batch_size=16, seed=11)
    assert not _chi2_ok(_inclusion_chi2([wrong.draw(t) for t in range(steps)], n, q), n)
    round_robin = [np.arange(t * 20, t * 20 + 20) % n for t in range(steps)]
    assert not _chi2_ok(_inclusion_chi2(round_robin, n, q), n)
    # Steps are independent: consecutive batches overlap in n q^2 examples on average.
    overlaps = [len(np.intersect1d(draws[t], draws[t + 1])) for t in range(steps - 1)]
    assert abs(np.mean(overlaps) - n * q * q) < 5 * math.sqrt(n * q * q / (steps - 1))


def test_without_replacement_sampler_is_uniform_and_exact():
    n, b, steps = 100, 10, 2000
    sampler = WithoutReplacementSampler(n, batch_size=b, physical_batch_size=4, seed=5)
    draws = [sampler.draw(t) for t in range(steps)]
    for d in draws[:50]:
        assert len(d) == b and len(np.unique(d)) == b and d.min() >= 0 and d.max() < n
    # Each example is in a step with probability b/n, independently across steps, so its
    # count is Binomial(steps, b/n) (counts sum to steps*b: n - 1 degrees of freedom).
    assert _chi2_ok(_inclusion_chi2(draws, n, b / n), n)
    # Fresh draw every step, not an epoch permutation: the first n/b steps repeat examples.
    first_epoch = np.concatenate(draws[: n // b])
    assert len(np.unique(first_epoch)) < n
    sizes = [int(mb.mask.sum()) for mb in sampler.sample(0)]
    assert sizes == [4, 4, 2] and sampler.num_microbatches(0) == 3


# ----------------------------------------------------------------------------- shapes
def test_padding_rows_are_masked_and_real_rows_are_the_draw():
    sampler = PoissonSampler(1000, expected_batch_size=50, physical_batch_size=32, seed=0)
    for t in range(20):
        mbs = sampler.sample(t)
        drawn = sampler.draw(t)
        for mb in mbs:
            assert isinstance(mb, MicroBatch)
            assert mb.indices.shape == mb.mask.shape == (32,)
            assert mb.mask.dtype == bool and mb.indices.dtype == np.int64
            assert np.all(mb.indices[~mb.mask] == 0)
        np.testing.assert_array_equal(_real_rows(mbs), drawn)
        # Real rows first: only the last micro-batch is padded.
        assert all(mb.mask.all() for mb in mbs[:-1])
        assert len(mbs) == sampler.num_microbatches(t) == max(1, math.ceil(len(drawn) / 32))


def test_large_draw_is_split_never_truncated():
    sampler = PoissonSampler(5000, sampling_rate=0.1, physical_batch_size=64, seed=2)
    for t in range(5):
        drawn = sampler.draw(t)
        mbs = sampler.sample(t)
        assert len(drawn) > 3 * 64 and len(mbs) >= 4
        rows = _real_rows(mbs)
        assert len(rows) == len(drawn) == sampler.drawn_size(t)
        assert len(np.unique(rows)) == len(rows)
        assert set(rows.tolist()) == set(drawn.tolist())


def test_empty_draw_still_gives_one_all_padding_microbatch():
    sampler = PoissonSampler(10, sampling_rate=0.01, physical_batch_size=4, seed=0)
    empty = next(t for t in range(100) if sampler.drawn_size(t) == 0)
    mbs = sampler.sample(empty)
    assert len(mbs) == 1 and not mbs[0].mask.any() and sampler.num_microbatches(empty) == 1


# ----------------------------------------------------------------------------- determinism
@pytest.mark.parametrize(
    "make",
    [
        lambda seed: PoissonSampler(500, sampling_rate=0.05, physical_batch_size=8, seed=seed),
        lambda seed: WithoutReplacementSampler(
            500, batch_size=25, physical_batch_size=8, seed=seed
        ),
    ],
)
def test_determinism_and_resume(make):
    a, b, c = make(7), make(7), make(8)
    for t in (5, 0, 3):  # order of calls does not matter: (seed, step) alone decides
        np.testing.assert_array_equal(a.draw(t), b.draw(t))
    assert any(not np.array_equal(a.draw(t), c.draw(t)) for t in range(5))
    # Resume: run 4 steps, checkpoint through JSON, continue; compare with no interruption.
    straight = [(t, _real_rows(mbs)) for t, mbs in itertools.islice(make(7), 8)]
    first = make(7)
    resumed = [(t, _real_rows(mbs)) for t, mbs in itertools.islice(first, 4)]
    state = json.loads(json.dumps(first.state_dict()))
    assert state["next_step"] == 4
    restored = type(first).from_state_dict(state)
    assert restored.state_dict() == first.state_dict()
    resumed += [(t, _real_rows(mbs)) for t, mbs in itertools.islice(restored, 4)]
    assert [t for t, _ in resumed] == list(range(8))
    for (t1, r1), (t2, r2) in zip(straight, resumed, strict=True):
        assert t1 == t2
        np.testing.assert_array_equal(r1, r2)


def test_state_dict_round_trip_keeps_constructor_choice():
    s = PoissonSampler(67349, expected_batch_size=1024, physical_batch_size=256, seed=1)
    r = PoissonSampler.from_state_dict(json.loads(json.dumps(s.state_dict())))
    assert r.expected_batch_size == 1024.0 and r.sampling_rate == 1024 / 67349
    with pytest.raises(ValueError, match="WithoutReplacementSampler"):
        WithoutReplacementSampler.from_state_dict(s.state_dict())
    with pytest.raises(ValueError, match="keys"):
        PoissonSampler.from_state_dict({"seed": 1})


def test_old_fixed_size_sampler_state_is_read():
    s = WithoutReplacementSampler(500, batch_size=25, physical_batch_size=8, seed=3, next_step=2)
    old = {**s.state_dict(), "type": "FixedSizeSampler"}  # written before the rename
    assert WithoutReplacementSampler.from_state_dict(old).state_dict() == s.state_dict()


# ----------------------------------------------------------------------------- properties
def test_properties_and_accounting_kwargs():
    p = PoissonSampler(67349, expected_batch_size=1024, physical_batch_size=256, seed=1)
    assert p.sampling_rate == 1024 / 67349 and p.expected_batch_size == 1024
    assert p.steps_per_epoch == 66
    q = PoissonSampler(50000, sampling_rate=0.02, physical_batch_size=100, seed=1)
    assert q.expected_batch_size == pytest.approx(1000) and q.steps_per_epoch == 50
    kw = p.accounting_kwargs()
    assert kw == {"sampling_rate": 1024 / 67349, "sampling": "poisson", "dataset_size": 67349}
    common = dict(noise_multiplier=1.0, steps=20, delta=1e-5, accountant="rdp")
    assert accounting.epsilon(**common, **kw) == accounting.epsilon(
        **common, sampling_rate=1024 / 67349
    )
    f = WithoutReplacementSampler(50000, batch_size=1000, physical_batch_size=100, seed=0)
    assert f.steps_per_epoch == 50 and f.expected_batch_size == 1000
    kw = f.accounting_kwargs()
    assert kw == {"sampling_rate": 0.02, "sampling": "without_replacement", "dataset_size": 50000}
    eps = accounting.epsilon(**common, **kw)
    assert eps == accounting.epsilon(
        **common, sampling_rate=0.02, sampling="without_replacement", dataset_size=50000
    )
    with pytest.raises(ValueError, match="rdp"):  # never silently PLD-Poisson
        accounting.epsilon(**{**common, "accountant": "pld"}, **kw)


# ----------------------------------------------------------------------------- host_slice
def test_host_slice_partitions_exactly():
    sampler = PoissonSampler(1000, sampling_rate=0.05, physical_batch_size=24, seed=4)
    for mb in sampler.sample(0):
        parts = [host_slice(mb.indices, mb.mask, k, 4) for k in range(4)]
        assert all(len(p.indices) == 6 and len(p.mask) == 6 for p in parts)
        np.testing.assert_array_equal(np.concatenate([p.indices for p in parts]), mb.indices)
        np.testing.assert_array_equal(np.concatenate([p.mask for p in parts]), mb.mask)
    idx, mask = host_slice(np.arange(8), np.ones(8, bool), 0, 1)
    assert idx.tolist() == list(range(8)) and mask.all()


@pytest.mark.parametrize(
    "args,needle",
    [
        ((np.arange(10), np.ones(10, bool), 0, 4), "not divisible by process_count=4"),
        ((np.arange(8), np.ones(8, bool), 4, 4), "process_index=4"),
        ((np.arange(8), np.ones(8, bool), -1, 4), "-1"),
        ((np.arange(8), np.ones(8, bool), 0, 0), "process_count"),
        ((np.arange(8), np.ones(6, bool), 0, 2), "same length"),
    ],
)
def test_host_slice_errors(args, needle):
    with pytest.raises(ValueError, match=needle):
        host_slice(*args)


# ----------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "kwargs,needle",
    [
        (dict(num_examples=0, sampling_rate=0.1), "num_examples"),
        (dict(num_examples=100, sampling_rate=0.0), "sampling_rate"),
        (dict(num_examples=100, sampling_rate=1.5), "1.5"),
        (dict(num_examples=100), "exactly one"),
        (dict(num_examples=100, sampling_rate=0.1, expected_batch_size=10), "exactly one"),
        (dict(num_examples=100, expected_batch_size=101), "101"),
        (dict(num_examples=100, expected_batch_size=0), "expected_batch_size"),
        (dict(num_examples=100, sampling_rate=0.1, physical_batch_size=0), "physical_batch_size"),
        (dict(num_examples=100, sampling_rate=0.1, seed=-3), "-3"),
        (dict(num_examples=100, sampling_rate=0.1, seed=1.5), "seed"),
    ],
)
def test_poisson_sampler_validation(kwargs, needle):
    kwargs = {"physical_batch_size": 8, "seed": 0, **kwargs}
    n = kwargs.pop("num_examples")
    with pytest.raises(ValueError, match=needle):
        PoissonSampler(n, **kwargs)


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        (dict(num_examples=10, batch_size=11), "batch_size=11"),
        (dict(num_examples=10, batch_size=0), "batch_size"),
        (dict(num_examples=0, batch_size=1), "num_examples"),
        (dict(num_examples=10, batch_size=2, physical_batch_size=-1), "-1"),
    ],
)
def test_without_replacement_sampler_validation(kwargs, needle):
    kwargs = {"physical_batch_size": 8, "seed": 0, **kwargs}
    n = kwargs.pop("num_examples")
    with pytest.raises(ValueError, match=needle):
        WithoutReplacementSampler(n, **kwargs)


def test_negative_step_is_rejected():
    sampler = PoissonSampler(10, sampling_rate=0.5, physical_batch_size=4, seed=0)
    with pytest.raises(ValueError, match="step"):
        sampler.sample(-1)
