"""Parameter-efficient methods added by interception, never by editing the model.

* :mod:`dpjax.peft.lora`: LoRA adapters on matched ``nn.Dense`` / ``nn.DenseGeneral``
  calls (``params["lora"]``), covered by every engine.
* :mod:`dpjax.peft.biases`: zero-initialised biases on bias-free ``nn.Dense`` /
  ``nn.DenseGeneral`` / ``nn.Conv`` calls (``params["added_bias"]``) for DP-BiTFiT-Add,
  covered by every engine (``bitfit`` analytically).

Example:
    >>> from dpjax import peft
    >>> peft.lora(rank=8).targets, peft.add_biases().targets
    ('(query|value)$', '.')
"""

from dpjax.peft import biases
from dpjax.peft.biases import AddedBiases, BiasSite, add_biases, is_added_bias
from dpjax.peft.lora import KEY, LoRA, Site, is_adapter, lora

__all__ = [
    "KEY",
    "AddedBiases",
    "BiasSite",
    "LoRA",
    "Site",
    "add_biases",
    "biases",
    "is_adapter",
    "is_added_bias",
    "lora",
]
