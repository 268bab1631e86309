"""Parameter-efficient methods added by interception, never by editing the model.

* :mod:`dpjax.peft.lora`: LoRA adapters on matched ``nn.Dense`` / ``nn.DenseGeneral``
  calls (``params["lora"]``), covered by every engine.

Example:
    >>> from dpjax import peft
    >>> peft.lora(rank=8).targets
    '(query|value)$'
"""

from dpjax.peft.lora import KEY, LoRA, Site, is_adapter, lora

__all__ = ["KEY", "LoRA", "Site", "is_adapter", "lora"]
