"""Table-to-text batches (E2E, DART) on TFDS mock data, and the BLEU/ROUGE-L wrappers."""

import numpy as np
import pytest
import test_data_support as support

tfds = pytest.importorskip("tensorflow_datasets")

from dpjax.data import generation_metrics, table2text  # noqa: E402
from dpjax.data.table2text import Table2TextConfig  # noqa: E402

N, L = 6, 512


@pytest.fixture(scope="module")
def tok():
    return support.gpt2()


@pytest.mark.parametrize("dataset", ["e2e", "e2e_cleaned", "dart"])
def test_train_rows_on_mock_data(tok, dataset):
    with tfds.testing.mock_data(num_examples=N):
        tables, targets, _ = table2text.read_pairs(dataset, "train")
        ds = table2text.load(dataset, "train", tok, Table2TextConfig(max_length=L))
    assert len(ds) == N and ds.num_classes is None
    batch = ds.take(np.arange(N))
    for k in ("input_ids", "attention_mask", "loss_mask"):
        assert batch[k].shape == (N, L) and batch[k].dtype == np.int32
    sep = eos = 50256
    uncut = 0
    for i in range(N):
        ids, loss = batch["input_ids"][i], batch["loss_mask"][i].astype(bool)
        table_ids, text_ids = tok.encode(tables[i]), tok.encode(" " + targets[i])
        n, first = batch["attention_mask"][i].sum(), int(np.argmax(loss))
        # Oracle: table ids, the separator, then exactly the scored text tokens and eos.
        np.testing.assert_array_equal(ids[: first - 1], table_ids[: first - 1])
        assert ids[first - 1] == sep and not loss[:first].any() and not loss[n:].any()
        scored = ids[loss]
        assert scored[-1] == eos and len(scored) == n - first
        np.testing.assert_array_equal(scored[:-1], text_ids[: len(scored) - 1])
        if len(table_ids) + len(text_ids) + 2 <= L:  # nothing cut: every token is there
            assert first - 1 == len(table_ids) and len(scored) == len(text_ids) + 1
            uncut += 1
    assert uncut > 0 or dataset == "e2e_cleaned"  # its mock tables are 40 random columns


def test_truncation_keeps_eos_and_masks_only_text(tok):
    table = " | ".join(f"key{i} : value number {i}" for i in range(60))
    text = "word " * 200
    for tables, targets in (([table], ["short text"]), (["name : x"], [text]), ([table], [text])):
        out = table2text.encode_train(tok, tables, targets, max_length=40)
        ids, loss, att = (out[k][0] for k in ("input_ids", "loss_mask", "attention_mask"))
        n = att.sum()
        assert n <= 40 and ids[n - 1] == tok.eos_id and loss[n - 1] == 1
        first = int(np.argmax(loss))
        assert ids[first - 1] == tok.bos_id and loss[first:n].all() and not loss[:first].any()
        want = tok.encode(" " + targets[0])[: n - first - 1]
        np.testing.assert_array_equal(ids[first : n - 1], want)  # a prefix of the text


def test_linearize_and_group_references():
    mr = "name[The Eagle], eatType[coffee shop], food[French], priceRange[£20-25]"
    assert table2text.linearize_mr(mr) == (
        "name : The Eagle | eatType : coffee shop | food : French | priceRange : £20-25"
    )
    tables = ["t1", "t2", "t1", "t1"]
    targets = ["a", "b", "c", "a"]
    unique, refs = table2text.group_references(tables, targets, [[], [], [], []])
    assert unique == ["t1", "t2"] and refs == [["a", "c"], ["b"]]
    unique, refs = table2text.group_references(["t"], ["x"], [["r1", "r2"]])
    assert refs == [["r1", "r2"]]


@pytest.mark.parametrize("dataset", ["e2e", "dart"])
def test_eval_rows_on_mock_data(tok, dataset):
    cfg = Table2TextConfig(max_prompt_length=48)
    with tfds.testing.mock_data(num_examples=N):
        tables, targets, refs = table2text.read_pairs(dataset, "validation")
        ds = table2text.load_eval(dataset, "validation", tok, cfg)
    assert len(ds) == len(set(tables)) == len(ds.metadata["references"])
    assert all(len(r) >= 1 for r in ds.metadata["references"])
    i = ds.metadata["tables"].index(tables[0])
    assert set(r for r in refs[0] if r) <= set(ds.metadata["references"][i])
    batch = ds.take(np.arange(len(ds)))
    n = batch["prompt_length"]
    np.testing.assert_array_equal(batch["attention_mask"].sum(1), n)
    np.testing.assert_array_equal(batch["input_ids"][np.arange(len(ds)), n - 1], tok.bos_id)
    row = tok.encode(ds.metadata["tables"][0])[:47]
    np.testing.assert_array_equal(batch["input_ids"][0, : len(row)], row)


def test_bleu_and_rouge_l_agree_with_the_packages():
    sacrebleu = pytest.importorskip("sacrebleu")
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    hyps = ["the eagle is a cheap coffee shop", "a pub near the river serving french food"]
    refs = [
        ["The Eagle is a cheap coffee shop.", "Cheap coffee shop: The Eagle."],
        ["There is a pub by the river that serves French food.", "A riverside French pub."],
    ]
    direct = sacrebleu.corpus_bleu(hyps, [[r[0] for r in refs], [r[1] for r in refs]]).score
    assert generation_metrics.bleu(hyps, refs) == pytest.approx(direct)
    assert 0 < direct < 100
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    want = np.mean([scorer.score_multi(r, h)["rougeL"].fmeasure for h, r in zip(hyps, refs)])
    assert generation_metrics.rouge_l(hyps, refs) == pytest.approx(100 * want)
    # Variable numbers of references: a missing one is ignored, not an empty string.
    uneven = [refs[0], refs[1][:1]]
    padded = [[r[0] for r in refs], [refs[0][1], None]]
    assert generation_metrics.bleu(hyps, uneven) == pytest.approx(
        sacrebleu.corpus_bleu(hyps, padded).score
    )
    same = [r[0] for r in refs]
    assert generation_metrics.bleu(same, refs) == pytest.approx(100.0)
    assert generation_metrics.rouge_l(same, refs) == pytest.approx(100.0)
    with pytest.raises(ValueError, match="2 hypotheses but 1 reference groups"):
        generation_metrics.bleu(hyps, refs[:1])
    with pytest.raises(ValueError, match="empty"):
        generation_metrics.rouge_l(hyps, [refs[0], []])


def test_config_validation_and_missing_data(tmp_path, tok):
    with pytest.raises(ValueError, match="max_length must be an int >= 4, got 2"):
        Table2TextConfig(max_length=2)
    with pytest.raises(ValueError, match="unknown table-to-text dataset 'webnlg'"):
        table2text.read_pairs("webnlg", "train")
    from dpjax.data.tfds_source import DatasetNotPreparedError

    with pytest.raises(DatasetNotPreparedError, match="tfds build gem/dart"):
        table2text.load("dart", "train", tok, data_dir=str(tmp_path))
