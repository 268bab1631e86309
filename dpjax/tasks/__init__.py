"""Task builders named by experiment configs (``task.builder = "dpjax.tasks.<module>:build"``).

* :mod:`dpjax.tasks.text_classification`: GLUE / offline text sets with BERT or RoBERTa,
  prompt (masked-LM label words) or head format.
* :mod:`dpjax.tasks.image_classification`: CIFAR, CelebA, Fashion-MNIST with ViT / ResNet.
* :mod:`dpjax.tasks.generation`: E2E / DART table-to-text with GPT-2, BLEU / ROUGE-L hook.

Each ``build(task_config)`` returns a :class:`dpjax.training.task.Task`.
"""
