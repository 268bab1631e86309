"""Padding cut to the longest row: the same rows, the same sums, fewer tokens computed."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from trainer_runs import assert_trees_close, run_steps

from dpjax.data import lengths as padding
from dpjax.data.arrays import ArrayDataset
from dpjax.data.sampling import MicroBatch, split_draw
from dpjax.models import BertModel, get_config
from dpjax.tasks.classification import classification_task
from dpjax.tasks.text_models import MeanPoolClassifier
from dpjax.training import Trainer
from experiments.configs import toy

T = 32
W = 16  # the trainer tests' padded width: cut widths 8 or 16, two compiled shapes


def _mask(lengths, width=T):
    return (np.arange(width)[None, :] < np.asarray(lengths)[:, None]).astype(np.int32)


def test_row_lengths_counts_real_tokens_and_refuses_left_padding():
    np.testing.assert_array_equal(padding.row_lengths(_mask([3, 0, 32])), [3, 0, 32])
    left = _mask([3, 5])[:, ::-1]
    with pytest.raises(ValueError, match="row 0 .* not right-padded"):
        padding.row_lengths(left)
    holes = _mask([4, 4])
    holes[1, 1] = 0
    with pytest.raises(ValueError, match="row 1"):
        padding.row_lengths(holes)
    with pytest.raises(ValueError, match=r"\[n, T\]"):
        padding.row_lengths(np.ones(4))


@pytest.mark.parametrize(
    ("lengths", "width"), [([1, 3], 8), ([8], 8), ([9, 2], 16), ([25], 32), ([32, 1], 32), ([], 8)]
)
def test_bucket_width_is_the_longest_row_rounded_up_to_eight(lengths, width):
    mask = _mask([*lengths, 32])  # a long row that is not among ``rows``
    assert padding.bucket_width(mask, np.arange(len(lengths))) == width


def test_bucket_width_never_exceeds_the_padded_width():
    assert padding.bucket_width(_mask([5, 3], width=5), [0, 1]) == 5


@settings(max_examples=60, deadline=None)
@given(
    drawn=st.lists(st.integers(0, 99), unique=True, max_size=70),
    physical=st.integers(1, 16),
    seed=st.integers(0, 2**31 - 1),
)
def test_sorting_keeps_the_drawn_rows_and_the_micro_batch_shapes(drawn, physical, seed):
    lengths = np.random.default_rng(seed).integers(0, T + 1, 100)
    batches = split_draw(np.asarray(drawn, np.int64), physical)
    out = padding.sort_by_length(batches, lengths)
    assert len(out) == len(batches)
    assert all(b.indices.shape == (physical,) and b.mask.shape == (physical,) for b in out)
    rows = np.concatenate([b.indices[b.mask] for b in out])
    assert sorted(rows.tolist()) == sorted(drawn)
    assert np.all(np.diff(lengths[rows]) <= 0)  # longest first
    assert sum(int(b.mask.sum()) for b in out) == len(drawn)


def test_sorting_an_empty_step_gives_its_one_all_padding_micro_batch():
    empty = [MicroBatch(np.zeros(4, np.int64), np.zeros(4, bool))]
    (out,) = padding.sort_by_length(empty, np.arange(10))
    assert not out.mask.any()


# ---------------------------------------------------------------- through the trainer
@pytest.fixture(scope="module")
def text_task():
    """MeanPool bert-tiny on 96 random right-padded rows of 1..16 tokens (most short)."""
    rng = np.random.default_rng(0)
    n = 96
    lengths = np.minimum(rng.geometric(0.12, n), W)
    mask = _mask(lengths, W)
    vocab = get_config("bert-tiny").vocab_size  # every id in range: no row is NaN, none dropped
    ids = rng.integers(5, vocab, (n, W)) * mask
    data = ArrayDataset(
        {"input_ids": ids.astype(np.int32), "attention_mask": mask, "label": rng.integers(0, 2, n)},
        num_classes=2,
    )
    model = MeanPoolClassifier(BertModel(get_config("bert-tiny")), num_labels=2)
    params = model.init(jax.random.key(0), jnp.asarray(ids[:1]), jnp.asarray(mask[:1]))["params"]

    def logits(p, b):
        return model.apply({"params": p}, b["input_ids"], b["attention_mask"])

    task = classification_task(
        logits, params=params, train=data, test=data, name="padded",
        padded_keys=("input_ids", "attention_mask"),
    )  # fmt: skip
    every = {k: jnp.asarray(v) for k, v in data.arrays.items()}
    assert np.isfinite(task.loss_fn(params, every)).all()  # no row dropped as non-finite
    return task


def _trainer(task, method, engine, trim, sigma=1.0):
    c = toy.get_config(method)
    c.engine = engine
    c.batch_size, c.physical_batch_size, c.steps, c.epochs = 32, 8, 2, None
    c.privacy.target_epsilon = None
    c.privacy.noise_multiplier = sigma
    c.privacy.accountant = "rdp"
    c.privacy.noise_seed = 0  # both runs draw the same batches and noise
    c.optimizer.lr = 0.05
    c.trim_padding = trim
    return Trainer(c, "/unused", task=task, devices=jax.devices()[:1])


@pytest.mark.slow
@pytest.mark.parametrize(
    ("method", "engine"), [("dp_full", "vmap"), ("dp_full", "ghost"), ("dp_bitfit", "ghost")]
)
def test_cut_micro_batches_train_exactly_like_padded_ones(text_task, method, engine):
    cut, padded = (_trainer(text_task, method, engine, trim) for trim in (True, False))
    widths = [b["input_ids"].shape[1] for b in cut.micro_batches(0)]
    assert min(widths) < W and all(w % 8 == 0 for w in widths), widths  # it does cut
    assert {b["input_ids"].shape[1] for b in padded.micro_batches(0)} == {W}
    a, b = run_steps(cut, 2), run_steps(padded, 2)
    assert_trees_close(a.params, b.params, rtol=2e-5, atol=1e-6)


@pytest.mark.slow
def test_a_cut_through_real_tokens_is_caught(text_task, monkeypatch):
    """Planted bug: micro-batches cut 8 tokens short (through real tokens wherever the
    longest row has more than 8; on the same 8-token grid, so no extra compiles) change
    the trained parameters."""
    # Without noise: the cut's effect on the clipped sums is not buried under sigma = 1.
    padded = run_steps(_trainer(text_task, "dp_full", "vmap", False, sigma=0.0), 2)
    right = padding.bucket_width

    def short(mask, rows):
        return max(8, right(mask, rows) - 8)

    monkeypatch.setattr(padding, "bucket_width", short)
    cut = run_steps(_trainer(text_task, "dp_full", "vmap", True, sigma=0.0), 2)
    with pytest.raises(AssertionError):
        assert_trees_close(cut.params, padded.params, rtol=2e-5, atol=1e-6)


def test_padded_keys_must_name_the_attention_mask_and_arrays_of_the_data(text_task):
    with pytest.raises(ValueError, match="must include 'attention_mask'"):
        classification_task(
            lambda p, b: b, params=text_task.params, train=text_task.train_data,
            test=text_task.train_data, name="x", padded_keys=("input_ids",),
        )  # fmt: skip
    with pytest.raises(ValueError, match=r"\['token_type_ids'\] are not arrays"):
        classification_task(
            lambda p, b: b, params=text_task.params, train=text_task.train_data,
            test=text_task.train_data, name="x",
            padded_keys=("attention_mask", "token_type_ids"),
        )  # fmt: skip


def test_evaluation_of_cut_batches_equals_the_padded_one(text_task):
    from dpjax.training.evaluation import Evaluator
    from dpjax.training.settings import MeshSettings
    from dpjax.training.sharding import make_mesh

    mesh = make_mesh(MeshSettings(), jax.devices()[:1])
    data = {"test": text_task.train_data}
    args = (text_task.eval_fn, data, 24, mesh)  # 96 rows: four batches of 24
    cut = Evaluator(*args, padded_keys=text_task.padded_keys)
    widths = [b["input_ids"].shape[1] for b in cut._batches(text_task.train_data)]
    assert widths[0] == W and min(widths) < W, widths
    got, want = cut(text_task.params), Evaluator(*args)(text_task.params)
    assert got.keys() == want.keys()
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, err_msg=k)
