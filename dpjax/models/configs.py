"""Named model sizes, Hugging Face ``config.json`` <-> config, and the model factory.

Standard sizes: ``bert-base``, ``bert-large``, ``roberta-base``, ``roberta-large``,
``gpt2``, ``gpt2-medium``, ``gpt2-large``, ``gpt2-xl``, ``distilgpt2``,
``vit-base-patch16-224``, ``vit-large-patch16-224``, ``resnet18``, ``resnet50``,
``smollm2-135m`` (SmolLM2-135M, Llama architecture) and ``llama-1b`` (Llama-3.2-1B); the
small from-scratch CNNs ``cnn-fmnist`` (Tramer & Boneh's, grey input),
``cnn-fmnist-gn`` (GroupNorm after each convolution) and ``cnn-scatter`` (Tramer &
Boneh's CNN on ``[7, 7, 81]`` ScatterNet features, :mod:`dpjax.models.scattering`).
Tiny sizes for tests: ``bert-tiny``, ``roberta-tiny``, ``gpt2-tiny``, ``llama-tiny``,
``vit-tiny``, ``resnet-tiny`` (basic blocks), ``resnet-tiny-bottleneck``.

Example:
    >>> from dpjax.models import get_config
    >>> get_config("roberta-large").hidden_size
    1024
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from dpjax.models.bert import BertConfig, BertModel
from dpjax.models.cnn import CNN, CNNConfig
from dpjax.models.gpt2 import GPT2Config, GPT2Model
from dpjax.models.llama import LlamaConfig, LlamaModel
from dpjax.models.resnet import ResNet, ResNetConfig
from dpjax.models.vit import ViT, ViTConfig

__all__ = [
    "CONFIGS",
    "Config",
    "config_from_hf",
    "config_to_hf",
    "create_model",
    "dummy_inputs",
    "get_config",
    "model_type",
]

#: Any model configuration :func:`create_model` builds from.
Config = BertConfig | GPT2Config | LlamaConfig | ViTConfig | ResNetConfig | CNNConfig

_ROBERTA = dict(
    vocab_size=50265,
    max_position_embeddings=514,
    type_vocab_size=1,
    layer_norm_eps=1e-5,
    pad_token_id=1,
    model_type="roberta",
)

#: The named model sizes of :func:`get_config` (real architectures and tiny test ones).
CONFIGS: dict[str, Config] = {
    "bert-base": BertConfig(),
    "bert-large": BertConfig(
        hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096
    ),
    "roberta-base": BertConfig(**_ROBERTA),
    "roberta-large": BertConfig(
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        intermediate_size=4096,
        **_ROBERTA,
    ),
    "gpt2": GPT2Config(),
    "gpt2-medium": GPT2Config(n_embd=1024, n_layer=24, n_head=16),
    "gpt2-large": GPT2Config(n_embd=1280, n_layer=36, n_head=20),
    "gpt2-xl": GPT2Config(n_embd=1600, n_layer=48, n_head=25),
    "distilgpt2": GPT2Config(n_layer=6),
    # SmolLM2-135M(-Instruct): the real weights install offline as a GGUF (dpjax.models.gguf).
    "smollm2-135m": LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        head_dim=64,
        max_position_embeddings=8192,
        rms_norm_eps=1e-5,
        rope_theta=100000.0,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    ),
    "llama-1b": LlamaConfig(  # Llama-3.2-1B
        vocab_size=128256,
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=64,
        max_position_embeddings=131072,
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 32.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        tie_word_embeddings=True,
        bos_token_id=128000,
        eos_token_id=128001,
    ),
    "vit-base-patch16-224": ViTConfig(),
    "vit-large-patch16-224": ViTConfig(
        hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096
    ),
    "resnet18": ResNetConfig(
        hidden_sizes=(64, 128, 256, 512), depths=(2, 2, 2, 2), layer_type="basic"
    ),
    "resnet50": ResNetConfig(),
    "cnn-fmnist": CNNConfig(),
    "cnn-fmnist-gn": CNNConfig(num_groups=4),
    # GroupNorm(27) of the 81 scattering channels, conv 32 3x3, tanh, max-pool 2x2/2,
    # conv 64 3x3, tanh, classifier (the first convolution holds most of the compute: 32
    # channels rather than 64 fit a one-core budget).
    "cnn-scatter": CNNConfig(
        num_channels=81,
        input_groups=27,
        features=(32, 64),
        kernel_sizes=(3, 3),
        strides=(1, 1),
        paddings=(1, 1),
        pool_sizes=(2, 0),
        pool_stride=2,
        dense_sizes=(),
        image_size=7,
    ),
    # Tiny configurations for tests.
    "bert-tiny": BertConfig(
        vocab_size=128,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=32,
        max_position_embeddings=32,
    ),
    "roberta-tiny": BertConfig(
        **{**_ROBERTA, "vocab_size": 128, "max_position_embeddings": 34},
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=32,
    ),
    "gpt2-tiny": GPT2Config(
        vocab_size=128,
        n_positions=32,
        n_embd=16,
        n_layer=2,
        n_head=4,
        bos_token_id=0,
        eos_token_id=0,
    ),
    "llama-tiny": LlamaConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=64,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    ),
    "vit-tiny": ViTConfig(
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=32,
        image_size=32,
        patch_size=8,
    ),
    "resnet-tiny": ResNetConfig(
        embedding_size=8, hidden_sizes=(8, 16), depths=(1, 1), layer_type="basic", num_groups=4
    ),
    "resnet-tiny-bottleneck": ResNetConfig(
        embedding_size=8, hidden_sizes=(16, 32), depths=(1, 2), num_groups=4
    ),
}

# model_type -> (config class, model class); "roberta" shares BERT's classes.
_ARCH: dict[str, tuple[type, type[nn.Module]]] = {
    "bert": (BertConfig, BertModel),
    "roberta": (BertConfig, BertModel),
    "gpt2": (GPT2Config, GPT2Model),
    "llama": (LlamaConfig, LlamaModel),
    "vit": (ViTConfig, ViT),
    "resnet": (ResNetConfig, ResNet),
    "cnn": (CNNConfig, CNN),
}


def get_config(name: str, **overrides: Any) -> Config:
    """The named configuration, optionally with fields replaced (``conv_bias=True``)."""
    if name not in CONFIGS:
        raise ValueError(f"unknown model config {name!r}; known: {sorted(CONFIGS)}")
    return dataclasses.replace(CONFIGS[name], **overrides) if overrides else CONFIGS[name]


def model_type(config: Config) -> str:
    """The Hugging Face ``model_type`` of a config."""
    if isinstance(config, BertConfig):
        return config.model_type
    for name, (cls, _) in _ARCH.items():
        if isinstance(config, cls):
            return name
    raise TypeError(f"not a dpjax model config: {type(config).__name__}")


def config_from_hf(hf: dict[str, Any], **overrides: Any) -> Config:
    """Builds a config from a Hugging Face ``config.json`` dict (unknown keys ignored)."""
    kind = hf.get("model_type")
    if kind not in _ARCH:
        raise ValueError(f"unsupported model_type {kind!r}; supported: {sorted(_ARCH)}")
    cls = _ARCH[kind][0]
    if cls is LlamaConfig:
        return LlamaConfig.from_hf(hf, **overrides)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in hf.items() if k in names}
    for key in ("hidden_sizes", "depths"):
        if key in kwargs:
            kwargs[key] = tuple(kwargs[key])
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields in overrides: {unknown}")
    return cls(**{**kwargs, **overrides})


def config_to_hf(config: Config) -> dict[str, Any]:
    """The ``config.json`` dict for ``config`` (HF field names plus ``model_type``)."""
    if isinstance(config, LlamaConfig):
        return config.to_hf()
    out = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}
    out["model_type"] = model_type(config)
    return out


def create_model(
    config: Config, head: str | None = None, num_labels: int = 2, dtype: Any = jnp.float32
) -> nn.Module:
    """The linen module for ``config`` with the given head."""
    cls = _ARCH[model_type(config)][1]
    if cls is GPT2Model:
        if head not in (None, "lm"):
            raise ValueError(f"GPT-2 heads are None or 'lm', got {head!r}")
        return cls(config, head=head, dtype=dtype)
    return cls(config, head=head, num_labels=num_labels, dtype=dtype)


def dummy_inputs(config: Config, batch: int = 1) -> np.ndarray:
    """A zero input of the right kind (token ids ``[B, 8]`` or NHWC images)."""
    if isinstance(config, (BertConfig, GPT2Config, LlamaConfig)):
        return np.zeros((batch, 8), np.int32)
    if isinstance(config, ViTConfig):
        return np.zeros((batch, config.image_size, config.image_size, config.num_channels))
    if isinstance(config, CNNConfig):
        side = config.image_size
        return np.zeros((batch, side, side, config.num_channels), np.float32)
    return np.zeros((batch, 32, 32, config.num_channels), np.float32)
