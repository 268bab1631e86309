"""Llama (llama-tiny, float64): forward against a numpy Llama reading HF-named tensors,
masks, causality, KV-cached decoding, GQA, RoPE, checkpoints (safetensors and GGUF),
tokenizer from GGUF metadata, and every engine against the vmap oracle.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import dpjax
import dpjax.models as M
from dpjax import peft
from dpjax.engines.ghost import GHOST
from dpjax.engines.tap_plan import plan_taps
from dpjax.models.rope import apply_rope
from dpjax.partition import leaf_paths, path_to_str

CFG = M.get_config("llama-tiny")
F64 = jnp.float64


# ----------------------------------------------------------------- helpers and oracles
def _hf_tensors(cfg, seed=0, prefix="model."):
    """Random tensors under Hugging Face Llama names and layouts (Linear: [out, in])."""
    rng = np.random.default_rng(seed)
    d, H, KV, D = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim

    def r(*shape, scale=0.2):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    t = {"embed_tokens.weight": r(cfg.vocab_size, d, scale=1.0), "norm.weight": 1 + r(d)}
    for i in range(cfg.num_hidden_layers):
        p = f"layers.{i}."
        t |= {
            p + "input_layernorm.weight": 1 + r(d),
            p + "self_attn.q_proj.weight": r(H * D, d), p + "self_attn.k_proj.weight": r(KV * D, d),
            p + "self_attn.v_proj.weight": r(KV * D, d), p + "self_attn.o_proj.weight": r(d, H * D),
            p + "post_attention_layernorm.weight": 1 + r(d),
            p + "mlp.gate_proj.weight": r(cfg.intermediate_size, d),
            p + "mlp.up_proj.weight": r(cfg.intermediate_size, d),
            p + "mlp.down_proj.weight": r(d, cfg.intermediate_size),
        }  # fmt: skip
    out = {prefix + k: v for k, v in t.items()}
    if not cfg.tie_word_embeddings:
        out["lm_head.weight"] = r(cfg.vocab_size, d)
    return out


def _numpy_llama(t, ids, cfg):
    """Float64 numpy Llama: RMSNorm, RoPE (half layout), GQA by repeat, SwiGLU, tied head."""
    t = {k.removeprefix("model."): v.astype(np.float64) for k, v in t.items()}
    H, KV, D, eps = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.rms_norm_eps
    B, T = ids.shape

    def rms(x, name):
        return x / np.sqrt((x**2).mean(-1, keepdims=True) + eps) * t[name + ".weight"]

    inv = 1.0 / cfg.rope_theta ** (np.arange(0, D, 2) / D)
    ang = np.arange(T)[:, None] * inv
    cos, sin = np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))

    def rope(x):  # [B, T, h, D]
        half = np.concatenate([-x[..., D // 2 :], x[..., : D // 2]], -1)
        return x * cos[:, None] + half * sin[:, None]

    x = t["embed_tokens.weight"][ids]
    causal = np.tril(np.ones((T, T), bool))
    for i in range(cfg.num_hidden_layers):
        p = f"layers.{i}."
        h = rms(x, p + "input_layernorm")
        q = rope((h @ t[p + "self_attn.q_proj.weight"].T).reshape(B, T, H, D))
        k = rope((h @ t[p + "self_attn.k_proj.weight"].T).reshape(B, T, KV, D))
        v = (h @ t[p + "self_attn.v_proj.weight"].T).reshape(B, T, KV, D)
        k, v = np.repeat(k, H // KV, axis=2), np.repeat(v, H // KV, axis=2)
        s = np.where(causal, np.einsum("bthd,bshd->bhts", q, k) / np.sqrt(D), -np.inf)
        w = np.exp(s - s.max(-1, keepdims=True))
        o = np.einsum("bhts,bshd->bthd", w / w.sum(-1, keepdims=True), v).reshape(B, T, H * D)
        x = x + o @ t[p + "self_attn.o_proj.weight"].T
        h = rms(x, p + "post_attention_layernorm")
        g, u = h @ t[p + "mlp.gate_proj.weight"].T, h @ t[p + "mlp.up_proj.weight"].T
        x = x + (g / (1 + np.exp(-g)) * u) @ t[p + "mlp.down_proj.weight"].T
    head = t.get("lm_head.weight", t["embed_tokens.weight"])
    return rms(x, "norm") @ head.T


def _write(tmp_path, tensors, cfg=CFG):
    (tmp_path / "config.json").write_text(json.dumps(M.config_to_hf(cfg)))
    save_file(tensors, str(tmp_path / "model.safetensors"))


def _f64(model, seed=0):
    ids = np.zeros((1, 4), np.int32)
    params = model.init(jax.random.key(seed), ids)["params"]
    return jax.tree.map(lambda p: jnp.asarray(p, F64), params)


IDS = np.random.default_rng(1).integers(3, CFG.vocab_size, (3, 9))


# ----------------------------------------------------------------- forward and masks
@pytest.mark.parametrize("tied", [True, False])
def test_hf_layout_matches_numpy_llama(x64, tmp_path, tied):
    cfg = M.get_config("llama-tiny", tie_word_embeddings=tied)
    tensors = _hf_tensors(cfg)
    tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = np.ones(4, np.float32)  # buffer
    _write(tmp_path, tensors, cfg)
    model, params, report = M.from_pretrained(tmp_path, "lm", dtype=F64, return_report=True)
    assert report.new == () and report.ignored == ("layers.0.self_attn.rotary_emb.inv_freq",)
    params = jax.tree.map(lambda p: jnp.asarray(p, F64), params)
    out = np.asarray(model.apply({"params": params}, IDS))
    np.testing.assert_allclose(out, _numpy_llama(tensors, IDS, cfg), rtol=1e-10, atol=1e-10)


@pytest.mark.slow
def test_heads_padding_and_causality(x64):
    lm = M.LlamaModel(CFG, head="lm", dtype=F64)
    params = _f64(lm)
    full = lm.apply({"params": params}, IDS)
    assert full.shape == (3, 9, CFG.vocab_size)
    hidden = M.LlamaModel(CFG, dtype=F64).apply({"params": params}, IDS)
    assert hidden.shape == (3, 9, CFG.hidden_size)
    np.testing.assert_allclose(hidden @ params["embed_tokens"]["embedding"].T, full, rtol=1e-12)
    # causality: changing token 5 changes nothing before it
    changed = IDS.copy()
    changed[:, 5] = (changed[:, 5] + 1) % CFG.vocab_size
    other = lm.apply({"params": params}, changed)
    np.testing.assert_array_equal(other[:, :5], full[:, :5])
    assert not np.allclose(other[:, 5:], full[:, 5:])
    # right padding: real positions unchanged, whatever the pad ids
    mask = np.ones((3, 9), np.int32)
    mask[1, 6:] = 0
    padded = IDS.copy()
    padded[1, 6:] = 0
    out = lm.apply({"params": params}, padded, mask)
    np.testing.assert_allclose(out[1, :6], full[1, :6], rtol=1e-12)
    # classification: the score of the last real token
    cls = M.LlamaModel(CFG, head="classification", num_labels=3, dtype=F64)
    p_cls = {**params, "score": {"kernel": jnp.ones((CFG.hidden_size, 3), F64)}}
    logits = cls.apply({"params": p_cls}, padded, mask)
    alone = cls.apply({"params": p_cls}, IDS[1:2, :6])
    assert logits.shape == (3, 3)
    np.testing.assert_allclose(logits[1], alone[0], rtol=1e-12)


def test_position_shift_invariance_and_rope_relative_property(x64):
    """RoPE has no absolute position: shifting every position id changes nothing."""
    lm = M.LlamaModel(CFG, head="lm", dtype=F64)
    params = _f64(lm)
    base = lm.apply({"params": params}, IDS)
    shifted = lm.apply({"params": params}, IDS, position_ids=np.arange(9)[None] + 17)
    np.testing.assert_allclose(shifted, base, rtol=1e-9, atol=1e-12)
    rng = np.random.default_rng(0)
    q, k = (jnp.asarray(rng.standard_normal((1, 1, 2, 8))) for _ in range(2))
    inv = CFG.rope_frequencies()

    def score(m, n):
        rq = apply_rope(q, jnp.full((1, 1), m), inv)
        rk = apply_rope(k, jnp.full((1, 1), n), inv)
        return np.asarray(jnp.sum(rq * rk, -1))

    np.testing.assert_allclose(score(7, 3), score(11, 7), rtol=1e-12)  # depends on m - n
    assert not np.allclose(score(7, 3), score(7, 4))
    x = apply_rope(q, jnp.full((1, 1), 5), inv)
    np.testing.assert_allclose(jnp.linalg.norm(x), jnp.linalg.norm(q), rtol=1e-12)  # rotation


def test_rope_scaling(x64):
    plain = CFG.rope_frequencies()
    linear = M.get_config("llama-tiny", rope_scaling={"rope_type": "linear", "factor": 4.0})
    np.testing.assert_allclose(linear.rope_frequencies(), plain / 4)
    c = M.get_config("llama-1b")
    inv = 1.0 / c.rope_theta ** (np.arange(0, 64, 2) / 64)
    scaled = c.rope_frequencies()
    wavelen = 2 * np.pi / inv
    high, low = wavelen < 8192 / 4, wavelen > 8192 / 1
    np.testing.assert_allclose(scaled[high], inv[high])  # short wavelengths kept
    np.testing.assert_allclose(scaled[low], inv[low] / 32)  # long ones divided by factor
    mid = ~high & ~low
    assert mid.any() and np.all((scaled[mid] < inv[mid]) & (scaled[mid] > inv[mid] / 32))
    with pytest.raises(ValueError, match="rope_type='yarn' unsupported"):
        M.get_config("llama-tiny", rope_scaling={"rope_type": "yarn", "factor": 2.0})
    with pytest.raises(ValueError, match="lacks 'low_freq_factor'"):
        M.get_config("llama-tiny", rope_scaling={"rope_type": "llama3", "factor": 2.0})


def test_gqa_equals_repeated_kv_heads(x64):
    """Grouped-query attention == multi-head attention with each kv head repeated."""
    gqa = M.LlamaModel(CFG, head="lm", dtype=F64)
    params = _f64(gqa)
    mha_cfg = M.get_config("llama-tiny", num_key_value_heads=CFG.num_attention_heads)
    G, D = CFG.num_attention_heads // CFG.num_key_value_heads, CFG.head_dim

    def repeat(kernel):  # [d, KV*D] -> [d, H*D], head h reads kv head h // G
        d = kernel.shape[0]
        return jnp.repeat(kernel.reshape(d, -1, D), G, axis=1).reshape(d, -1)

    mha_params = jax.tree.map(lambda x: x, params)
    for i in range(CFG.num_hidden_layers):
        attn = mha_params[f"layers_{i}"]["self_attn"]
        for name in ("k_proj", "v_proj"):
            attn[name] = {"kernel": repeat(attn[name]["kernel"])}
    mha = M.LlamaModel(mha_cfg, head="lm", dtype=F64)
    np.testing.assert_allclose(
        mha.apply({"params": mha_params}, IDS), gqa.apply({"params": params}, IDS), rtol=1e-12
    )


# ----------------------------------------------------------------- KV cache and generation
@pytest.mark.slow
def test_kv_cache_matches_full_forward_and_generation(x64):
    lm = M.LlamaModel(CFG, head="lm", dtype=F64)
    params = _f64(lm)
    full = lm.apply({"params": params}, IDS)
    cache = M.llama.init_cache(CFG, 3, 9, F64)
    assert cache[0][0].shape == (3, 9, CFG.num_key_value_heads, CFG.head_dim)
    out, cache = lm.apply({"params": params}, IDS[:, :4], cache=cache, cache_index=0)
    steps = [out]
    for t in range(4, 9):
        out, cache = lm.apply({"params": params}, IDS[:, t : t + 1], cache=cache, cache_index=t)
        steps.append(out)
    np.testing.assert_allclose(np.concatenate(steps, 1), full, rtol=1e-10, atol=1e-12)
    # greedy == argmax loop without a cache; a left-padded prompt generates the same
    got = M.greedy_generate(lm, params, IDS[:1, :5], max_new_tokens=4)
    seq = IDS[:1, :5]
    for _ in range(4):
        nxt = np.asarray(lm.apply({"params": params}, seq))[:, -1].argmax(-1)
        seq = np.concatenate([seq, nxt[:, None]], 1)
    np.testing.assert_array_equal(got, seq[:, 5:])
    padded = np.concatenate([np.zeros((1, 3), np.int64), IDS[:1, :5]], 1)
    mask = np.concatenate([np.zeros((1, 3)), np.ones((1, 5))], 1)
    np.testing.assert_array_equal(
        M.greedy_generate(lm, params, padded, mask, max_new_tokens=4), got
    )
    beams, _ = M.beam_search(lm, params, IDS[:1, :5], num_beams=1, max_new_tokens=4)
    np.testing.assert_array_equal(beams, got)
    with pytest.raises(ValueError, match="exceeds max_position_embeddings=64"):
        M.greedy_generate(lm, params, IDS[:1, :5], max_new_tokens=60)
    with pytest.raises(ValueError, match="LlamaModel with head=None"):
        M.greedy_generate(M.LlamaModel(CFG), params, IDS[:1, :5], max_new_tokens=2)


# ----------------------------------------------------------------- checkpoints
@pytest.mark.slow
@pytest.mark.parametrize("tied", [True, False])
def test_safetensors_round_trip(tmp_path, tied):
    cfg = M.get_config("llama-tiny", tie_word_embeddings=tied)
    model = M.LlamaModel(cfg, head="lm")
    params = model.init(jax.random.key(2), IDS)["params"]
    assert ("lm_head" in params) is not tied
    M.save_pretrained(tmp_path, model, params)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    assert ("lm_head.weight" in tensors) is not tied
    q = params["layers_1"]["self_attn"]["q_proj"]["kernel"]
    np.testing.assert_array_equal(tensors["model.layers.1.self_attn.q_proj.weight"], q.T)
    np.testing.assert_array_equal(
        tensors["model.layers.0.post_attention_layernorm.weight"],
        params["layers_0"]["post_attention_layernorm"]["scale"],
    )
    loaded_model, loaded = M.from_pretrained(tmp_path, "lm")
    assert loaded_model.config == cfg
    jax.tree.map(np.testing.assert_array_equal, loaded, params)
    hidden_model, hidden, report = M.from_pretrained(tmp_path, return_report=True)
    assert report.ignored == (() if tied else ("lm_head.weight",))
    assert hidden_model.apply({"params": hidden}, IDS).shape == (3, 9, cfg.hidden_size)
    _, cls, report = M.from_pretrained(tmp_path, "classification", num_labels=4, return_report=True)
    assert report.new == ("score/kernel",) and cls["score"]["kernel"].shape == (cfg.hidden_size, 4)


def test_mismatch_errors_and_config(tmp_path):
    tensors = _hf_tensors(CFG)
    del tensors["model.layers.1.mlp.up_proj.weight"]
    tensors["model.layers.0.self_attn.k_proj.weight"] = np.zeros((8, 8), np.float32)
    tensors["model.layers.0.self_attn.qkv.weight"] = np.zeros(3, np.float32)
    _write(tmp_path, tensors)
    with pytest.raises(M.CheckpointMismatchError) as err:
        M.from_pretrained(tmp_path, "lm")
    e = err.value
    assert e.missing == ["layers_1/mlp/up_proj/kernel -> layers.1.mlp.up_proj.weight"]
    assert e.unexpected == ["layers.0.self_attn.qkv.weight"]
    assert len(e.mis_shaped) == 1 and "layers_0/self_attn/k_proj/kernel" in e.mis_shaped[0]
    # transformers 5 writes rope_parameters; older configs rope_theta / rope_scaling
    hf = {"model_type": "llama", "hidden_size": 32, "num_attention_heads": 4,
          "rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 5e5},
          "eos_token_id": [5, 6], "torch_dtype": "bfloat16"}  # fmt: skip
    cfg = M.config_from_hf(hf)
    assert (cfg.rope_theta, cfg.rope, cfg.eos_token_id) == (
        5e5,
        {"rope_type": "linear", "factor": 2.0},
        (5, 6),
    )
    assert M.config_from_hf(M.config_to_hf(cfg)) == cfg
    assert M.config_from_hf(M.config_to_hf(M.get_config("llama-1b"))) == M.get_config("llama-1b")
    with pytest.raises(
        ValueError, match="num_attention_heads=4 is not a multiple of num_key_value_heads=3"
    ):
        M.get_config("llama-tiny", num_key_value_heads=3)
    with pytest.raises(ValueError, match="hidden_act must be 'silu'"):
        M.get_config("llama-tiny", hidden_act="gelu")


def test_named_config_parameter_counts():
    from dpjax.models.configs import dummy_inputs

    def count(name):
        cfg = M.get_config(name)
        shapes = jax.eval_shape(
            M.create_model(cfg, "lm").init, jax.random.key(0), dummy_inputs(cfg)
        )
        return sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes))

    assert count("smollm2-135m") == 134_515_008  # HF num_parameters()
    assert count("llama-1b") == 1_235_814_400  # Llama-3.2-1B


# ----------------------------------------------------------------- GGUF
def _llama_cpp_permute(w, heads):
    """llama.cpp's convert_hf_to_gguf row order for q/k: pairs (j, j + D/2) made adjacent."""
    return (
        w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
    )


_GGUF = {"embed_tokens": "token_embd", "norm": "output_norm", "lm_head": "output",
         "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
         "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
         "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm",
         "post_attention_layernorm": "ffn_norm"}  # fmt: skip


def _write_gguf(path, cfg, tensors, quantise=False, extra=None):
    import gguf

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(0)
    for name, value in tensors.items():
        name = name.removeprefix("model.")
        block = name.split(".")[1] if name.startswith("layers.") else None
        inner = name.split(".", 2)[2] if block else name
        module, leaf = inner.rsplit(".", 1)
        if module.endswith("q_proj"):
            value = _llama_cpp_permute(value, cfg.num_attention_heads)
        if module.endswith("k_proj"):
            value = _llama_cpp_permute(value, cfg.num_key_value_heads)
        g = (f"blk.{block}." if block else "") + f"{_GGUF[module]}.{leaf}"
        if quantise and value.ndim == 2:
            q = gguf.quants.quantize(value, gguf.GGMLQuantizationType.Q8_0)
            w.add_tensor(g, q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(g, value)
    for name, value in (extra or {}).items():
        w.add_tensor(name, value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize("tied", [True, False])
def test_gguf_matches_hf_layout(x64, tmp_path, tied):
    """llama.cpp's layout (reversed dims, permuted q/k rows) loads to the HF model."""
    cfg = M.get_config("llama-tiny", tie_word_embeddings=tied, pad_token_id=0)
    tensors = _hf_tensors(cfg, seed=3)
    _write_gguf(tmp_path / "tiny.gguf", cfg, tensors)
    model, params = M.from_gguf(tmp_path / "tiny.gguf", head="lm", dtype=F64)
    assert model.config == cfg
    params = jax.tree.map(lambda p: jnp.asarray(p, F64), params)
    out = np.asarray(model.apply({"params": params}, IDS))
    np.testing.assert_allclose(out, _numpy_llama(tensors, IDS, cfg), rtol=1e-10, atol=1e-10)
    # Q8_0: the dequantised weights are within a quantisation step of the originals
    _write_gguf(tmp_path / "q8.gguf", cfg, tensors, quantise=True)
    _, q8 = M.from_gguf(tmp_path / "q8.gguf", head="lm")
    q = q8["layers_0"]["self_attn"]["q_proj"]["kernel"]
    ref = tensors["model.layers.0.self_attn.q_proj.weight"].T
    assert 0 < np.abs(q - ref).max() <= np.abs(ref).max() / 127


def test_gguf_llama3_rope_freqs(tmp_path):
    """Llama 3.1+ GGUFs store the scaled rope as per-frequency divisors, ``rope_freqs``."""
    from dpjax.models.gguf import gguf_config

    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}  # fmt: skip
    cfg = M.get_config("llama-tiny", rope_theta=500000.0, pad_token_id=0)
    divisors = (
        cfg.rope_frequencies()
        / M.get_config("llama-tiny", rope_theta=500000.0, rope_scaling=scaling).rope_frequencies()
    )
    assert divisors.min() == 1.0 and divisors.max() == 8.0
    tensors = _hf_tensors(cfg)
    _write_gguf(
        tmp_path / "l3.gguf", cfg, tensors, extra={"rope_freqs.weight": divisors.astype(np.float32)}
    )
    assert gguf_config(tmp_path / "l3.gguf").rope == scaling
    model, _ = M.from_gguf(tmp_path / "l3.gguf", head="lm")  # rope_freqs is no parameter
    assert model.config.rope == scaling
    _write_gguf(
        tmp_path / "odd.gguf",
        cfg,
        tensors,
        extra={"rope_freqs.weight": divisors[::-1].astype(np.float32)},
    )
    with pytest.raises(ValueError, match="is not Llama 3's rope scaling"):
        gguf_config(tmp_path / "odd.gguf")


def test_unpermute_rotary_inverts_llama_cpp():
    from dpjax.models.gguf import unpermute_rotary

    w = np.random.default_rng(0).standard_normal((3 * 8, 5))
    np.testing.assert_array_equal(unpermute_rotary(_llama_cpp_permute(w, 3), 3), w)
    with pytest.raises(ValueError, match="do not split into 5 heads"):
        unpermute_rotary(w, 5)


def test_tokenizer_from_gguf(tmp_path):
    import gguf

    from dpjax.data.tokenizers import bytes_to_unicode, from_gguf

    alphabet = sorted(set(bytes_to_unicode().values()))
    tokens = ["<|endoftext|>", "<s>", "</s>", *alphabet, "Ġ1", "ĠĠ", "he", "hel", "hell"]
    merges = ["Ġ 1", "Ġ Ġ", "h e", "he l", "hel l"]
    w = gguf.GGUFWriter(str(tmp_path / "tok.gguf"), "llama")
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_merges(merges)
    w.add_token_types([3, 3, 3] + [1] * (len(tokens) - 3))
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(True)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    tok = from_gguf(tmp_path / "tok.gguf")
    assert (tok.kind, tok.bos_id, tok.eos_id, tok.pad_id) == ("llama", 1, 2, 2)
    hell, space2, one = tokens.index("hell"), tokens.index("ĠĠ"), tokens.index("1")
    assert tok.encode("hell") == [1, hell]
    # digits are split first (smollm): " 1" never becomes the "Ġ1" token, and the run of
    # spaces before a digit stays whole
    assert tok.encode("  1") == [1, space2, one]
    assert tok.encode("x</s>")[-1] == 2  # control tokens are matched whole
    batch = tok.encode_batch(["hell", "hell hell"], max_length=4)
    assert (
        batch["input_ids"][0].tolist() == [1, hell, 2, 2] and batch["attention_mask"][0].sum() == 2
    )
    assert tok.decode([1, hell, 2]) == "hell"


# ----------------------------------------------------------------- engines
def _lm_case(cfg, b=4, t=7):
    """(loss_fn, params, batch): row 1 right-padded, row 2 masked out of the batch."""
    model = M.LlamaModel(cfg, head="lm", dtype=F64)
    params = _f64(model, seed=5)
    rng = np.random.default_rng(7)
    ids = rng.integers(3, cfg.vocab_size, (b, t)).astype(np.int32)
    ids[:, 2] = 7  # a repeated token (equal-token pairs of the embedding norm)
    am = np.ones((b, t), np.int32)
    am[1, 4:] = 0
    batch = {"ids": ids, "am": am, "mask": np.arange(b) != 2}

    def loss_fn(params, batch):
        logits = model.apply({"params": params}, batch["ids"], batch["am"])
        logp = jax.nn.log_softmax(logits[:, :-1])
        nll = -jnp.take_along_axis(logp, batch["ids"][:, 1:, None], -1)[..., 0]
        w = batch["am"][:, 1:]
        return (nll * w).sum(-1) / w.sum(-1)

    return loss_fn, params, batch


def _both(loss_fn, params, batch, method="ghost", **kw):
    want = jax.jit(dpjax.clipped_grad(loss_fn, method="vmap", **kw))(params, batch)
    got = jax.jit(dpjax.clipped_grad(loss_fn, method=method, **kw))(params, batch)
    return want, got


def _assert_same(want, got, rtol=1e-8):
    (gv, iv), (gg, ig) = want, got
    assert jax.tree.structure(gv) == jax.tree.structure(gg)
    scale = max(float(np.abs(a).max()) for a in jax.tree.leaves(gv))
    for path, a, b in zip(leaf_paths(gv), jax.tree.leaves(gv), jax.tree.leaves(gg), strict=True):
        np.testing.assert_allclose(b, a, rtol=rtol, atol=rtol * scale, err_msg=path_to_str(path))
    np.testing.assert_allclose(ig.norms, iv.norms, rtol=1e-9)
    assert float(iv.norms[2]) == 0.0 and int(iv.num_clipped) > 0


@pytest.mark.slow
def test_ghost_equals_vmap(x64):
    """Tied embeddings (lookup + attend), GQA, RMSNorm scales, a padded and a masked row."""
    loss_fn, params, batch = _lm_case(CFG)
    paths = leaf_paths(params)
    plan = plan_taps(loss_fn, params, batch, paths, GHOST)
    assert {path_to_str(paths[i]) for i in plan.direct} == set()  # every leaf tapped
    _assert_same(*_both(loss_fn, params, batch, l2_clip=0.5))


@pytest.mark.slow
def test_biases_untied_head_ghost_and_bitfit_equal_vmap(x64):
    cfg = M.get_config("llama-tiny", attention_bias=True, mlp_bias=True, tie_word_embeddings=False)
    loss_fn, params, batch = _lm_case(cfg)
    assert "bias" in params["layers_0"]["self_attn"]["q_proj"] and "lm_head" in params
    _assert_same(*_both(loss_fn, params, batch, l2_clip=0.5))
    _assert_same(*_both(loss_fn, params, batch, "bitfit", l2_clip=0.05, trainable=dpjax.bias_only))


@pytest.mark.slow
def test_lora_ghost_equals_vmap(x64):
    loss_fn, params, batch = _lm_case(CFG)
    spec = peft.lora(rank=2, alpha=4.0, targets="(q_proj|v_proj)$")
    adapters = spec.init(jax.random.key(1), loss_fn, params, batch)
    assert sorted(adapters["layers_0"]["self_attn"]) == ["q_proj", "v_proj"]
    adapters = jax.tree_util.tree_map_with_path(  # B != 0, so that A gets gradients
        lambda kp, x: 0.3 * jax.random.normal(jax.random.key(len(kp)), x.shape, F64)
        if str(kp[-1].key) == "lora_b" else jnp.asarray(x, F64), adapters,
    )  # fmt: skip
    full = {**params, peft.KEY: adapters}
    adapted = spec.apply(loss_fn)
    want, got = _both(adapted, full, batch, l2_clip=0.05, trainable=peft.is_adapter)
    _assert_same(want, got)
    assert jax.tree.leaves(got[0][peft.KEY])  # the adapters are trained, nothing else is
    assert not jax.tree.leaves({k: v for k, v in got[0].items() if k != peft.KEY})
