"""Model zoo: BERT/RoBERTa, GPT-2, Llama, ViT, ResNet, a small CNN (Flax linen), checkpoints.

Example:
    >>> import dpjax.models as M
    >>> model = M.create_model(M.get_config("bert-tiny"), head="classification", num_labels=2)
    >>> type(model).__name__
    'BertModel'

``from_pretrained(directory, head=..., num_labels=..., dtype=...)`` loads a Hugging Face
``config.json`` + ``model.safetensors``; ``save_pretrained`` writes one.
``from_gguf(path, head=..., num_labels=..., dtype=...)`` loads a Llama-family GGUF file
(llama.cpp's format, quantised weights dequantised to float32).
"""

from dpjax.models.bert import BertConfig, BertModel
from dpjax.models.cnn import CNN, CNNConfig
from dpjax.models.configs import CONFIGS, config_from_hf, config_to_hf, create_model, get_config
from dpjax.models.convert import (
    CheckpointMismatchError,
    LoadReport,
    from_pretrained,
    load_params,
    save_pretrained,
    to_hf_tensors,
)
from dpjax.models.decoding import beam_search, greedy_generate
from dpjax.models.gguf import from_gguf
from dpjax.models.gpt2 import GPT2Config, GPT2Model, init_cache
from dpjax.models.llama import LlamaConfig, LlamaModel
from dpjax.models.resnet import ResNet, ResNetConfig
from dpjax.models.vit import ViT, ViTConfig

__all__ = [
    "CNN",
    "CONFIGS",
    "BertConfig",
    "BertModel",
    "CNNConfig",
    "CheckpointMismatchError",
    "GPT2Config",
    "GPT2Model",
    "LlamaConfig",
    "LlamaModel",
    "LoadReport",
    "ResNet",
    "ResNetConfig",
    "ViT",
    "ViTConfig",
    "beam_search",
    "config_from_hf",
    "config_to_hf",
    "create_model",
    "from_gguf",
    "from_pretrained",
    "get_config",
    "greedy_generate",
    "init_cache",
    "load_params",
    "save_pretrained",
    "to_hf_tensors",
]
