"""Data: samplers, tokenizers, dataset loaders and prompt templates.

Submodules load on first attribute access (``dpjax.data.sampling``,
``dpjax.data.tokenizers``, ``dpjax.data.glue``, ...) so that importing dpjax never pulls
in TensorFlow Datasets.
"""

import importlib
from typing import Any

_SUBMODULES = (
    "arrays",
    "generation_metrics",
    "glue",
    "images",
    "lengths",
    "losses",
    "offline",
    "prompts",
    "sampling",
    "table2text",
    "text_encoding",
    "tfds_source",
    "tokenizers",
)


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        module = importlib.import_module(f"dpjax.data.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'dpjax.data' has no attribute {name!r}")
