"""KV-cached greedy and beam search against naive, cache-free decoding loops."""

import jax
import numpy as np
import pytest

import dpjax.models as M
from dpjax.models.decoding import TRACE_COUNTS

CFG = M.get_config("gpt2-tiny")
MODEL = M.GPT2Model(CFG, head="lm")
IDS = np.array([[0, 0, 5, 6, 7], [1, 2, 3, 4, 5]], np.int32)  # row 0 left-padded
MASK = np.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]], np.int32)


@pytest.fixture(scope="module")
def params():
    p = MODEL.init(jax.random.key(0), IDS)["params"]
    # Sharper distributions so that decoding paths differ between strategies.
    return jax.tree.map(lambda x: x * 6 if x.ndim == 2 else x, p)


_FORWARD = jax.jit(MODEL.apply)
_ROWS, _LEN = 3, 16  # one compiled shape for every naive call (right padding is causal-safe)


def _logp(params, seq, mask):
    """Log-probs of the next token after ``seq``; no cache, float64 softmax."""
    n, T = seq.shape
    pos = np.maximum(np.cumsum(mask, 1) - 1, 0)
    pad = [(0, _ROWS - n), (0, _LEN - T)]
    logits = _FORWARD(
        {"params": params}, np.pad(seq, pad), np.pad(mask, pad), position_ids=np.pad(pos, pad)
    )
    z = np.asarray(logits, np.float64)[:n, T - 1]
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _naive_greedy(params, n, eos=None, pad=0):
    seq, mask, out = IDS.copy(), MASK.copy(), []
    done = np.zeros(len(seq), bool)
    for _ in range(n):
        tok = np.where(done, pad, _logp(params, seq, mask).argmax(-1))
        out.append(tok)
        if eos is not None:
            done |= tok == eos
        seq = np.concatenate([seq, tok[:, None]], 1)
        mask = np.concatenate([mask, np.ones((len(seq), 1), np.int32)], 1)
    return np.stack(out, 1)


def _naive_beam(params, K, n, eos, pad, alpha=1.0):
    """Same rule as the module docstring, one prompt at a time, no cache, float64."""
    results = []
    for b in range(len(IDS)):
        keep = MASK[b] == 1
        prompt = IDS[b][keep]
        beams = [([], 0.0, False, 0)]  # tokens, score, done, length
        for _ in range(n):
            if all(d for _, _, d, _ in beams):
                break
            cands = []
            live = [b for b in beams if not b[2]]
            seq = np.array([list(prompt) + toks for toks, _, _, _ in live])
            lps = _logp(params, seq, np.ones_like(seq))
            for (toks, score, _, length), lp in zip(live, lps):
                for v in np.argsort(-lp)[:K]:
                    cands.append((score + lp[v], toks + [int(v)], v == eos, length + 1))
            for toks, score, done, length in beams:
                if done:
                    cands.append((score, toks + [pad], True, length))
            cands.sort(key=lambda c: -c[0])
            beams = [(t, s, d, ln) for s, t, d, ln in cands[:K]]
        best = max(beams, key=lambda x: x[1] / max(x[3], 1) ** alpha)
        toks = best[0] + [pad] * (n - len(best[0]))
        results.append((toks, best[1] / max(best[3], 1) ** alpha))
    return np.array([r[0] for r in results]), np.array([r[1] for r in results])


def test_greedy_matches_naive_loop_and_compiles_once(params):
    before = TRACE_COUNTS["greedy"]
    out = M.greedy_generate(MODEL, params, IDS, MASK, max_new_tokens=7)
    np.testing.assert_array_equal(out, _naive_greedy(params, 7))
    again = M.greedy_generate(MODEL, params, IDS, MASK, max_new_tokens=7)
    np.testing.assert_array_equal(again, out)  # deterministic
    other = M.greedy_generate(MODEL, params, (IDS + 3) % CFG.vocab_size, MASK, max_new_tokens=7)
    assert other.shape == out.shape
    assert TRACE_COUNTS["greedy"] - before == 1  # same shapes: compiled once


def test_greedy_eos_stops_and_pads(params):
    free = _naive_greedy(params, 7)
    eos = int(free[0, 2])
    out = M.greedy_generate(MODEL, params, IDS, MASK, max_new_tokens=7, eos_id=eos, pad_id=99)
    np.testing.assert_array_equal(out, _naive_greedy(params, 7, eos=eos, pad=99))
    first = int(np.argmax(out[0] == eos))
    assert (out[0, first + 1 :] == 99).all()


def test_left_padded_prompt_generates_as_alone(params):
    batched = M.greedy_generate(MODEL, params, IDS, MASK, max_new_tokens=5)
    alone = M.greedy_generate(MODEL, params, IDS[:1, 2:], max_new_tokens=5)
    np.testing.assert_array_equal(batched[:1], alone)


def test_beam_one_is_greedy(params):
    seqs, _ = M.beam_search(MODEL, params, IDS, MASK, num_beams=1, max_new_tokens=6)
    np.testing.assert_array_equal(seqs, _naive_greedy(params, 6))


@pytest.mark.parametrize("use_eos", [False, True])
def test_beam_matches_naive_beam_and_compiles_once(params, use_eos):
    eos = int(_naive_greedy(params, 3)[0, 1]) if use_eos else None
    before = TRACE_COUNTS["beam"]
    seqs, scores = M.beam_search(
        MODEL, params, IDS, MASK, num_beams=3, max_new_tokens=5, eos_id=eos, pad_id=0
    )
    ref_seqs, ref_scores = _naive_beam(params, 3, 5, eos, 0)
    np.testing.assert_array_equal(seqs, ref_seqs)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-4, atol=1e-4)
    again, _ = M.beam_search(
        MODEL, params, IDS, MASK, num_beams=3, max_new_tokens=5, eos_id=eos, pad_id=0
    )
    np.testing.assert_array_equal(again, seqs)
    assert TRACE_COUNTS["beam"] - before == 1


def test_generation_rejects_bad_settings(params):
    with pytest.raises(ValueError, match="n_positions"):
        M.greedy_generate(MODEL, params, IDS, max_new_tokens=CFG.n_positions)
    with pytest.raises(ValueError, match="head='lm'"):
        M.greedy_generate(M.GPT2Model(CFG), params, IDS, max_new_tokens=2)
