"""Table-to-text task builder: padding for decoding, eos cuts, the LM loss, the hook."""

from __future__ import annotations

import ml_collections
import numpy as np
import pytest

from dpjax.tasks import generation

tfds = pytest.importorskip("tensorflow_datasets")
RANKS = "pkg:whisper/assets/gpt2.tiktoken"


def test_left_pad_moves_prompts_to_the_right_edge():
    ids = np.array([[5, 6, 7, 0], [8, 0, 0, 0]])
    got, mask = generation.left_pad(ids, np.array([3, 1]), pad_id=9)
    np.testing.assert_array_equal(got, [[9, 5, 6, 7], [9, 9, 9, 8]])
    np.testing.assert_array_equal(mask, [[0, 1, 1, 1], [0, 0, 0, 1]])


class _Tok:
    def decode(self, ids):
        return " ".join(str(i) for i in ids)


def test_decode_cuts_at_first_eos():
    out = generation.decode_texts(_Tok(), np.array([[3, 4, 0, 5], [1, 2, 3, 4]]), eos_id=0)
    assert out == ["3 4", "1 2 3 4"]


def _cfg(**kw):
    gen = dict(split="validation", num_tables=3, max_new_tokens=4, batch_size=2, num_beams=1)
    base = dict(dataset="e2e", model="gpt2-tiny", tokenizer=RANKS, max_length=24,
                max_prompt_length=12, mock_examples=5, generation=gen)  # fmt: skip
    return ml_collections.ConfigDict({**base, **kw})


@pytest.fixture(scope="module")
def task():
    try:
        return generation.build(_cfg())
    except FileNotFoundError as e:
        pytest.skip(f"GPT-2 BPE ranks not installed: {e}")


def test_loss_counts_only_target_tokens(task):
    batch = task.train_data.take(np.arange(4))
    loss = task.loss_fn(task.params, batch)
    assert loss.shape == (4,) and np.all(np.isfinite(loss))
    # Changing a token outside the targets' prediction positions (the row's padding)
    # leaves the loss unchanged; the loss mask starts after the separator.
    first_target = int(np.argmax(batch["loss_mask"][0]))
    assert first_target > 0 and batch["loss_mask"][0, :first_target].sum() == 0
    pad = np.flatnonzero(batch["attention_mask"][0] == 0)
    if len(pad):
        changed = dict(batch, input_ids=batch["input_ids"].copy())
        changed["input_ids"][0, pad] = 7
        np.testing.assert_allclose(task.loss_fn(task.params, changed)[0], loss[0], rtol=1e-6)


def test_generation_hook_scores_three_tables(task):
    out = task.generation_eval(task.params, 0)
    assert set(out) == {"bleu", "rouge_l"}
    assert all(0.0 <= v <= 100.0 for v in out.values())
    assert out == task.generation_eval(task.params, 1)  # greedy decoding is deterministic


def test_beam_search_hook():
    cfg = _cfg()
    cfg.generation.num_beams = 2
    try:
        beam_task = generation.build(cfg)
    except FileNotFoundError as e:
        pytest.skip(str(e))
    out = beam_task.generation_eval(beam_task.params, 0)
    assert all(0.0 <= v <= 100.0 for v in out.values())
