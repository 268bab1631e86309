"""GLUE loaders on TFDS mock data, prompt encoding, and the fail-fast missing-data guard."""

import time

import numpy as np
import pytest
import test_data_support as support

tfds = pytest.importorskip("tensorflow_datasets")

from dpjax.data import glue, tfds_source  # noqa: E402
from dpjax.data.arrays import ArrayDataset  # noqa: E402
from dpjax.data.prompts import Template, encode_prompts, label_word_ids  # noqa: E402
from dpjax.data.text_encoding import TextConfig  # noqa: E402

N = 7
L = 48
SPLITS = [("sst2", "train"), ("qnli", "validation"), ("qqp", "train")]
SPLITS += [("mnli", "validation_matched"), ("mnli", "validation_mismatched")]


@pytest.fixture(scope="module")
def wp():
    return support.wordpiece()


@pytest.fixture(scope="module")
def rob():
    return support.roberta_like()


def _mock_records(task, split):
    with tfds.testing.mock_data(num_examples=N):
        return glue.read_records(task, split)


@pytest.mark.parametrize("task,split", SPLITS)
def test_prompt_format_on_mock_data(wp, task, split):
    with tfds.testing.mock_data(num_examples=N):
        ds = glue.load(task, split, wp, TextConfig(max_length=L, format="prompt"))
        again = glue.load(task, split, wp, TextConfig(max_length=L, format="prompt"))
    spec = glue.GLUE_TASKS[task]
    assert len(ds) == N and ds.num_classes == len(spec.label_names)
    batch = ds.take(np.arange(N))
    assert set(batch) == {"input_ids", "attention_mask", "mask_position", "label", "mask"}
    assert batch["input_ids"].shape == (N, L) and batch["input_ids"].dtype == np.int32
    ids, pos = batch["input_ids"], batch["mask_position"]
    np.testing.assert_array_equal((ids == wp.mask_id).sum(1), np.ones(N))
    np.testing.assert_array_equal(ids[np.arange(N), pos], np.full(N, wp.mask_id))
    assert np.all((batch["label"] >= 0) & (batch["label"] < ds.num_classes))
    # Attention is a prefix of ones; padding ids elsewhere.
    lengths = batch["attention_mask"].sum(1)
    np.testing.assert_array_equal(batch["attention_mask"], np.arange(L) < lengths[:, None])
    assert np.all(ids[np.arange(L)[None] >= lengths[:, None]] == wp.pad_id)
    # Same records in the same order on every load (mock data is seeded).
    for k in ds.arrays:
        np.testing.assert_array_equal(ds.arrays[k], again.arrays[k])
    # Label words are single WordPiece tokens from the real vocabulary.
    vocab = support.minilm_vocab()
    words = [w.lower() for w in ds.metadata["label_words"]]
    assert ds.metadata["label_word_ids"] == [vocab[w] for w in words]


@pytest.mark.parametrize("task,split", SPLITS)
def test_prompt_matches_whole_string_encoding(wp, task, split):
    """Independent oracle: WordPiece treats "[MASK]" in text as the mask token."""
    first, second, labels = _mock_records(task, split)
    template = glue.TextConfig().template_for(task)
    got = encode_prompts(wp, template, first, second, max_length=L)
    for i in range(N):
        text = template.text.replace("{mask}", "[MASK]").replace("{s1}", first[i])
        if second is not None:
            text = text.replace("{s2}", second[i])
        want = wp.encode(text)
        assert len(want) <= L
        np.testing.assert_array_equal(got["input_ids"][i, : len(want)], want)
        assert got["attention_mask"][i].sum() == len(want)


@pytest.mark.parametrize("task,split", SPLITS)
def test_head_format_is_tokenizer_pair_encoding(wp, task, split):
    first, second, labels = _mock_records(task, split)
    with tfds.testing.mock_data(num_examples=N):
        ds = glue.load(task, split, wp, TextConfig(max_length=L, format="head"))
    assert "mask_position" not in ds.arrays and "label_word_ids" not in ds.metadata
    np.testing.assert_array_equal(ds.arrays["label"], labels)
    for i in range(N):
        want = wp.encode(first[i], None if second is None else second[i])
        np.testing.assert_array_equal(ds.arrays["input_ids"][i, : len(want)], want)


def test_bpe_prompt_uses_leading_space_tokens(rob):
    vocab = support.gpt2_vocab()
    template = Template("{s1} It was {mask}.", ("terrible", "great"))
    np.testing.assert_array_equal(
        label_word_ids(rob, template), [vocab["Ġterrible"], vocab["Ġgreat"]]
    )
    text = "A gripping, well acted film"
    got = encode_prompts(rob, template, [text], None, max_length=32)
    # Oracle: the added special "<mask>" splits the string; " It was" keeps its spaces.
    want = rob.encode(text + " It was<mask>.")
    np.testing.assert_array_equal(got["input_ids"][0, : len(want)], want)
    assert got["input_ids"][0, got["mask_position"][0]] == rob.mask_id
    mnli = glue.TextConfig().template_for("mnli")
    ids = label_word_ids(rob, mnli)
    np.testing.assert_array_equal(ids, [vocab["ĠYes"], vocab["ĠMaybe"], vocab["ĠNo"]])


@pytest.mark.parametrize("tok_name", ["wordpiece", "roberta_like"])
def test_truncation_cuts_sentences_never_the_template(tok_name):
    tok = getattr(support, tok_name)()
    template = glue.TextConfig().template_for("mnli")
    long_a = " ".join(["alpha"] * 200)
    short_b = "a short hypothesis"
    long_b = " ".join(["beta"] * 200)
    for second in (short_b, long_b):
        got = encode_prompts(tok, template, [long_a], [second], max_length=40)
        ids = got["input_ids"][0]
        assert got["attention_mask"][0].sum() == 40
        assert (ids == tok.mask_id).sum() == 1
        full_b = tok.encode(" " + second)[1:-1]
        end = ids[-1 - len(full_b) : -1].tolist()  # before the final special token
        if second is short_b:  # the short sentence is kept whole, the long one cut
            assert end == full_b
        # Template pieces around the mask survive: "? <mask> ,"
        p = got["mask_position"][0]
        assert tok.decode([ids[p - 1]]).strip() == "?"
        assert tok.decode([ids[p + 1]]).strip() == ","


def test_take_pads_with_zeros_and_mask(wp):
    with tfds.testing.mock_data(num_examples=N):
        ds = glue.load("sst2", "train", wp, TextConfig(max_length=L))
    idx = np.array([3, 0, 5, 0])
    mask = np.array([True, True, True, False])
    batch = ds.take(idx, mask)
    np.testing.assert_array_equal(batch["input_ids"][:3], ds.arrays["input_ids"][[3, 0, 5]])
    assert not batch["input_ids"][3].any() and batch["mask"].tolist() == mask.tolist()
    with pytest.raises(IndexError, match="out of range"):
        ds.take(np.array([N]))


def test_cache_roundtrip(wp, tmp_path):
    cfg = TextConfig(max_length=L, cache_dir=str(tmp_path))
    with tfds.testing.mock_data(num_examples=N):
        first = glue.load("qnli", "train", wp, cfg)
    files = list(tmp_path.glob("glue-qnli-train-*.npz"))
    assert len(files) == 1
    loaded = ArrayDataset.load(files[0])
    second = glue.load("qnli", "train", wp, cfg)  # no mock: must come from the cache
    for ds in (loaded, second):
        assert ds.metadata == first.metadata and ds.num_classes == 2
        for k in first.arrays:
            np.testing.assert_array_equal(ds.arrays[k], first.arrays[k])


@pytest.mark.parametrize(
    "name", ["glue/sst2", "glue/mnli", "cifar10", "cifar100", "celeb_a", "gem/e2e_nlg", "gem/dart"]
)
def test_missing_dataset_fails_fast_with_build_command(tmp_path, name):
    start = time.perf_counter()
    with pytest.raises(tfds_source.DatasetNotPreparedError) as err:
        tfds_source.open_split(name, "train", data_dir=str(tmp_path))
    assert time.perf_counter() - start < 5.0
    assert f"tfds build {name} --file_format=array_record --data_dir={tmp_path}" in str(err.value)


def test_glue_load_fails_fast_and_validates(wp, tmp_path):
    start = time.perf_counter()
    with pytest.raises(tfds_source.DatasetNotPreparedError, match="tfds build glue/qqp"):
        glue.load("qqp", "train", wp, data_dir=str(tmp_path))
    assert time.perf_counter() - start < 5.0
    with pytest.raises(ValueError, match="unknown GLUE task 'cola'"):
        glue.load("cola", "train", wp)
    with pytest.raises(ValueError, match="validation_matched"):
        glue.load("mnli", "validation", wp)
    with pytest.raises(ValueError, match="unknown TFDS dataset 'imagenet2012'"):
        tfds_source.open_split("imagenet2012", "train")


def test_text_config_validation():
    with pytest.raises(ValueError, match="format must be one of"):
        TextConfig(format="cls")
    with pytest.raises(ValueError, match="max_length must be >= 4, got 2"):
        TextConfig(max_length=2)
    with pytest.raises(ValueError, match="exactly one"):
        Template("{s1} {mask} {mask}", ("a", "b"))
    with pytest.raises(ValueError, match="unknown placeholder"):
        Template("{s1} {sentence} {mask}", ("a", "b"))
