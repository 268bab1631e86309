"""GPT-2: HF-layout checkpoints against a numpy forward pass, round trip, strict errors.

Oracle: random tensors written directly under Hugging Face GPT-2 names and layouts
(Conv1D ``[in, out]``), loaded through ``from_pretrained``, and compared with a float64
numpy implementation of GPT-2 that reads those tensors by name.
"""

import json

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import dpjax.models as M

CFG = M.get_config("gpt2-tiny")


def _hf_tensors(cfg, seed=0, prefix="transformer."):
    rng = np.random.default_rng(seed)
    d, V, P = cfg.n_embd, cfg.vocab_size, cfg.n_positions

    def r(*shape, scale=0.2):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    t = {"wte.weight": r(V, d), "wpe.weight": r(P, d), "ln_f.weight": 1 + r(d), "ln_f.bias": r(d)}
    for i in range(cfg.n_layer):
        h = f"h.{i}."
        t |= {
            h + "ln_1.weight": 1 + r(d), h + "ln_1.bias": r(d),
            h + "attn.c_attn.weight": r(d, 3 * d), h + "attn.c_attn.bias": r(3 * d),
            h + "attn.c_proj.weight": r(d, d), h + "attn.c_proj.bias": r(d),
            h + "ln_2.weight": 1 + r(d), h + "ln_2.bias": r(d),
            h + "mlp.c_fc.weight": r(d, 4 * d), h + "mlp.c_fc.bias": r(4 * d),
            h + "mlp.c_proj.weight": r(4 * d, d), h + "mlp.c_proj.bias": r(d),
        }  # fmt: skip
    return {prefix + k: v for k, v in t.items()}


def _numpy_gpt2(t, ids, cfg):
    t = {k.removeprefix("transformer."): v.astype(np.float64) for k, v in t.items()}
    H, eps = cfg.n_head, cfg.layer_norm_epsilon

    def ln(x, n):
        mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + eps) * t[n + ".weight"] + t[n + ".bias"]

    def gelu_new(x):
        return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))

    T = ids.shape[1]
    x = t["wte.weight"][ids] + t["wpe.weight"][np.arange(T)]
    causal = np.tril(np.ones((T, T), bool))
    for i in range(cfg.n_layer):
        h = f"h.{i}."
        a = ln(x, h + "ln_1") @ t[h + "attn.c_attn.weight"] + t[h + "attn.c_attn.bias"]
        q, k, v = (z.reshape(z.shape[0], T, H, -1) for z in np.split(a, 3, -1))
        s = np.einsum("bthd,bshd->bhts", q, k) / np.sqrt(q.shape[-1])
        s = np.where(causal, s, -np.inf)
        w = np.exp(s - s.max(-1, keepdims=True))
        w /= w.sum(-1, keepdims=True)
        o = np.einsum("bhts,bshd->bthd", w, v).reshape(x.shape)
        x = x + o @ t[h + "attn.c_proj.weight"] + t[h + "attn.c_proj.bias"]
        m = gelu_new(ln(x, h + "ln_2") @ t[h + "mlp.c_fc.weight"] + t[h + "mlp.c_fc.bias"])
        x = x + m @ t[h + "mlp.c_proj.weight"] + t[h + "mlp.c_proj.bias"]
    return ln(x, "ln_f") @ t["wte.weight"].T


def _write(tmp_path, tensors, cfg=CFG):
    (tmp_path / "config.json").write_text(json.dumps(M.config_to_hf(cfg)))
    save_file(tensors, str(tmp_path / "model.safetensors"))


@pytest.mark.parametrize("prefix", ["transformer.", ""])
def test_hf_layout_matches_numpy_gpt2(tmp_path, prefix):
    tensors = _hf_tensors(CFG, prefix=prefix)
    tensors[prefix + "h.0.attn.bias"] = np.tril(np.ones((1, 1, 32, 32), np.float32))
    if prefix:
        tensors["lm_head.weight"] = tensors[prefix + "wte.weight"]
    _write(tmp_path, tensors)
    model, params, report = M.from_pretrained(tmp_path, "lm", return_report=True)
    assert report.new == ()
    ids = np.random.default_rng(1).integers(0, CFG.vocab_size, (2, 9))
    out = np.asarray(model.apply({"params": params}, ids), np.float64)
    np.testing.assert_allclose(out, _numpy_gpt2(tensors, ids, CFG), atol=2e-4, rtol=1e-4)


def test_round_trip(tmp_path):
    model = M.GPT2Model(CFG, head="lm")
    ids = np.arange(10)[None] % CFG.vocab_size
    params = model.init(jax.random.key(2), ids)["params"]
    M.save_pretrained(tmp_path, model, params)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    assert "lm_head.weight" not in tensors  # tied: not written
    np.testing.assert_array_equal(  # Conv1D: stored [in, out], no transpose
        tensors["transformer.h.1.mlp.c_fc.weight"], params["h_1"]["mlp"]["c_fc"]["kernel"]
    )
    loaded_model, loaded = M.from_pretrained(tmp_path, "lm")
    jax.tree.map(np.testing.assert_array_equal, loaded, params)
    np.testing.assert_array_equal(
        loaded_model.apply({"params": loaded}, ids), model.apply({"params": params}, ids)
    )
    hidden_model, hidden = M.from_pretrained(tmp_path)
    assert hidden_model.apply({"params": hidden}, ids).shape == (1, 10, CFG.n_embd)


def test_mismatch_errors(tmp_path):
    tensors = _hf_tensors(CFG)
    del tensors["transformer.h.1.ln_2.bias"]
    tensors["transformer.h.0.attn.c_attn.weight"] = tensors["transformer.h.0.attn.c_attn.weight"].T
    tensors["transformer.h.0.attn.rotary.weight"] = np.zeros(3, np.float32)
    _write(tmp_path, tensors)
    with pytest.raises(M.CheckpointMismatchError) as err:
        M.from_pretrained(tmp_path, "lm")
    e = err.value
    assert e.missing == ["h_1/ln_2/bias -> h.1.ln_2.bias"]
    assert e.unexpected == ["h.0.attn.rotary.weight"]
    assert len(e.mis_shaped) == 1 and "h_0/attn/c_attn/kernel" in e.mis_shaped[0]


@pytest.mark.slow
def test_padding_and_positions():
    model = M.GPT2Model(CFG, head="lm")
    ids = np.array([[5, 6, 7, 8]])
    params = model.init(jax.random.key(0), ids)["params"]
    alone = model.apply({"params": params}, ids)
    padded = np.array([[0, 0, 5, 6, 7, 8]])
    mask = np.array([[0, 0, 1, 1, 1, 1]])
    pos = np.array([[0, 0, 0, 1, 2, 3]])
    out = model.apply({"params": params}, padded, mask, position_ids=pos)
    np.testing.assert_allclose(out[:, 2:], alone, atol=1e-5)


def test_config_validation():
    with pytest.raises(ValueError, match="n_embd=30 is not divisible by n_head=4"):
        M.GPT2Config(n_embd=30, n_head=4)
    with pytest.raises(ValueError, match="activation_function='swish2'"):
        M.GPT2Config(activation_function="swish2")
