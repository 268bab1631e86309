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


@pytest.mark.slow
def test_decoder_for_reads_merged_added_biases_like_the_intercepted_model(x64):
    """Oracle: the bias-free Llama run under ``add_biases`` interception (what DP-BiTFiT-Add
    trains). The merged params decode through ``decoder_for``'s biased model to the same
    logits, also when only some layers got a bias (the others get zeros)."""
    import jax
    import jax.numpy as jnp

    from dpjax import peft
    from dpjax.models import LlamaModel, get_config, greedy_generate

    model = LlamaModel(get_config("llama-tiny"), head="lm", dtype=jnp.float64)
    ids = jax.random.randint(jax.random.key(0), (2, 6), 1, 200)
    params = model.init(jax.random.key(1), ids)["params"]
    params = jax.tree.map(lambda x: x.astype(jnp.float64), params)

    def logits(p, x):
        return model.apply({"params": p}, x)

    for targets in (".", "(q_proj|up_proj)$"):
        spec = peft.add_biases(targets)
        added = spec.init(None, logits, params, ids)
        keys = jax.random.split(jax.random.key(2), len(jax.tree.leaves(added)))
        leaves = [0.3 * jax.random.normal(k, x.shape, jnp.float64)
                  for k, x in zip(keys, jax.tree.leaves(added), strict=True)]  # fmt: skip
        full = {**params, "added_bias": jax.tree.unflatten(
            jax.tree.structure(added), leaves)}  # fmt: skip
        want = spec.apply(logits)(full, ids)
        biased, merged = generation.decoder_for(model, spec.merge(logits, full, ids))
        assert biased.config.attention_bias and biased.config.mlp_bias
        np.testing.assert_allclose(biased.apply({"params": merged}, ids), want, rtol=1e-10)
        plain = logits(params, ids)
        assert not np.allclose(plain, want)  # the biases matter
    out = greedy_generate(biased, merged, ids, jnp.ones_like(ids), max_new_tokens=3)
    assert out.shape == (2, 3)
    same, p = generation.decoder_for(model, params)  # no bias leaves: unchanged
    assert same is model and p is params
    with pytest.raises(ValueError, match="'lm_head'"):
        generation.decoder_for(model, {**params, "lm_head": {"bias": jnp.zeros(3)}})
