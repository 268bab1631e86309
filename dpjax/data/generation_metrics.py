"""Generation metrics through maintained packages: BLEU (sacrebleu), ROUGE-L (rouge-score).

Both take one hypothesis per table and the list of all references of that table (any
number, at least one) and return a score on the 0-100 scale.

* ``bleu``: sacrebleu's corpus BLEU (default 13a tokenisation, exp smoothing off) with
  a variable number of references per segment.
* ``rouge_l``: mean over tables of the best ROUGE-L F1 against any reference
  (``rouge_score.RougeScorer(["rougeL"], use_stemmer=True).score_multi``), times 100.

Example:
    >>> refs = [["the cat sat on the mat", "a cat sat on a mat"]]
    >>> round(bleu(["the cat sat on the mat"], refs), 6)
    100.0
    >>> bleu(["the cat sat"], [["the cat sat"]])  # no 4-gram at all: BLEU is 0
    0.0
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

__all__ = ["bleu", "rouge_l"]


def _check(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> None:
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference groups")
    empty = [i for i, refs in enumerate(references) if len(refs) == 0]
    if empty:
        raise ValueError(f"reference groups {empty[:5]} are empty; every table needs >= 1")


def _require(module: str, pin: str):
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"{module} is needed for this metric; run: pip install {pin}") from err


def bleu(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus BLEU (0-100) with a variable number of references per hypothesis."""
    _check(hypotheses, references)
    sacrebleu = _require("sacrebleu", "sacrebleu==2.6.0")
    width = max(len(refs) for refs in references)
    streams = [[refs[k] if k < len(refs) else None for refs in references] for k in range(width)]
    return float(sacrebleu.corpus_bleu(list(hypotheses), streams).score)


def rouge_l(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Mean over examples of the best ROUGE-L F1 against any reference (0-100)."""
    _check(hypotheses, references)
    rouge_scorer = _require("rouge_score.rouge_scorer", "rouge-score==0.1.2")
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    total = sum(
        scorer.score_multi(list(refs), hyp)["rougeL"].fmeasure
        for hyp, refs in zip(hypotheses, references, strict=True)
    )
    return 100.0 * total / max(len(hypotheses), 1)
