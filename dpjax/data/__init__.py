"""Data: samplers, tokenizers, dataset loaders and prompt templates.

Submodules are imported on demand (``dpjax.data.sampling``, ``dpjax.data.tokenizers``,
...) so that importing dpjax never pulls in TensorFlow Datasets.
"""
