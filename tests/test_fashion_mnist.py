"""The Fashion-MNIST CNN row: the model under every engine, and the config end to end.

The engine check needs no data (random images); the smoke run skips when the offline
Fashion-MNIST files are not installed (``bash scripts/install_assets.sh``).
"""

from __future__ import annotations

import json
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dpjax
import dpjax.models as M
from dpjax.engines import layers
from experiments.configs import fashion_mnist

CLIP = 0.05


def _cnn_case(name: str, batch_size: int = 3):
    """``(loss_fn, float64 params, batch)`` of the named CNN on random grey images."""
    model = M.create_model(M.get_config(name), "classification", 10, dtype=jnp.float64)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch_size, 28, 28, 1))
    batch = {"x": x, "y": rng.integers(0, 10, batch_size)}
    params = model.init(jax.random.key(1), jnp.asarray(batch["x"]))["params"]
    params = jax.tree.map(lambda p: jnp.asarray(p, jnp.float64), params)

    def loss_fn(params, batch):
        logits = model.apply({"params": params}, batch["x"])
        logp = jax.nn.log_softmax(logits)
        return -jnp.take_along_axis(logp, batch["y"][:, None], -1)[:, 0]

    return loss_fn, params, batch


def test_cnn_layers_are_all_tapped_by_ghost():
    for kind in (nn.Conv, nn.Dense, nn.GroupNorm):
        entry = layers.lookup(kind)
        assert entry is not None and entry.ghost, f"{kind.__name__} has no ghost adapter"


@pytest.mark.slow
def test_cnn_ghost_clipped_grad_equals_vmap_in_float64(x64):
    """``cnn-fmnist-gn`` holds every layer kind of the CNNs (conv, GroupNorm, dense)."""
    loss_fn, params, batch = _cnn_case("cnn-fmnist-gn")
    kw = dict(l2_clip=CLIP)  # every leaf trains (dp_full)
    g_ghost, i_ghost = jax.jit(dpjax.clipped_grad(loss_fn, method="ghost", **kw))(params, batch)
    g_vmap, i_vmap = jax.jit(dpjax.clipped_grad(loss_fn, method="vmap", **kw))(params, batch)
    assert bool(jnp.all(i_vmap.norms > CLIP))  # clipping is active for every example
    np.testing.assert_allclose(i_ghost.norms, i_vmap.norms, rtol=1e-9)
    assert jax.tree.structure(g_ghost) == jax.tree.structure(g_vmap)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-13), g_ghost, g_vmap
    )


@pytest.mark.slow
def test_smoke_variant_trains_end_to_end(tmp_path):
    from dpjax import training

    config = fashion_mnist.get_config("smoke")
    try:
        results = training.train(config, str(tmp_path), progress=False)
    except FileNotFoundError as e:  # MissingDataError: the IDX files are not installed
        pytest.skip(f"offline Fashion-MNIST not installed ({e}); run scripts/install_assets.sh")
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["steps"] == results["steps"] == config.steps == 2
    assert 0 < on_disk["epsilon"] <= 3.0 + 1e-6 and on_disk["delta"] == 1e-5
    assert on_disk["noise_multiplier"] > 0
    accuracy = on_disk["eval"]["test/accuracy"]
    assert 0.0 <= accuracy <= 1.0 and math.isfinite(on_disk["eval"]["test/loss"])


def test_variants_and_the_measured_row():
    dp = fashion_mnist.get_config()
    assert (dp.method, dp.privacy.target_epsilon, dp.privacy.delta) == ("dp_full", 3.0, 1e-5)
    assert (dp.task.model, dp.task.resolution, dp.task.channels) == ("cnn-fmnist-gn", 28, 1)
    assert fashion_mnist.get_config("nonprivate").method == "nonprivate_full"
    with pytest.raises(ValueError, match="unknown"):
        fashion_mnist.get_config("eps8")
