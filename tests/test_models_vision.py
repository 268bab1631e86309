"""ViT and ResNet: HF layouts against lax/numpy references, round trips, GroupNorm safety.

Oracles: Hugging Face conv weights (OIHW, NCHW images) applied with
``lax.conv_general_dilated`` in those layouts, a numpy ViT embedding, HF tensor names
and shapes written from the transformers conventions, and per-example independence.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import dpjax.models as M


def _images(config, n=2, size=32, seed=0):
    return np.random.default_rng(seed).standard_normal((n, size, size, 3)).astype(np.float32)


def _nchw_conv(x_nhwc, w_oihw, stride, pad):
    y = jax.lax.conv_general_dilated(
        jnp.transpose(jnp.asarray(x_nhwc), (0, 3, 1, 2)),
        jnp.asarray(w_oihw),
        (stride, stride),
        [(pad, pad), (pad, pad)],
        dimension_numbers=("NCHW", "OIHW", "NCHW"),
        precision="highest",
    )
    return np.transpose(np.asarray(y), (0, 2, 3, 1))


def _round_trip(tmp_path, model, x, seed=1):
    params = model.init(jax.random.key(seed), x)["params"]
    params = jax.tree.map(lambda p: p + 0.01 * jnp.arange(p.size).reshape(p.shape) % 1, params)
    M.save_pretrained(tmp_path, model, params)
    loaded_model, loaded = M.from_pretrained(tmp_path, model.head)
    assert loaded_model == model
    jax.tree.map(np.testing.assert_array_equal, loaded, params)
    np.testing.assert_array_equal(
        loaded_model.apply({"params": loaded}, x), model.apply({"params": params}, x)
    )
    return params, load_file(str(tmp_path / "model.safetensors"))


@pytest.mark.slow
def test_vit_round_trip_and_hf_layout(tmp_path):
    cfg = M.get_config("vit-tiny")
    model = M.ViT(cfg, head="classification", num_labels=5)
    x = _images(cfg)
    params, t = _round_trip(tmp_path, model, x)
    expected = {
        "vit.embeddings.cls_token": (1, 1, 16),
        "vit.embeddings.position_embeddings": (1, 17, 16),
        "vit.embeddings.patch_embeddings.projection.weight": (16, 3, 8, 8),
        "vit.encoder.layer.1.attention.attention.query.weight": (16, 16),
        "vit.encoder.layer.0.attention.output.dense.weight": (16, 16),
        "vit.encoder.layer.0.intermediate.dense.weight": (32, 16),
        "vit.encoder.layer.0.output.dense.weight": (16, 32),
        "vit.encoder.layer.0.layernorm_before.weight": (16,),
        "vit.layernorm.bias": (16,),
        "classifier.weight": (5, 16),
    }
    for key, shape in expected.items():
        assert t[key].shape == shape, key
    # Embeddings from the HF tensors: NCHW conv, flatten (h, w), cls first, + positions.
    patches = (
        _nchw_conv(x, t["vit.embeddings.patch_embeddings.projection.weight"], 8, 0)
        + t["vit.embeddings.patch_embeddings.projection.bias"]
    )
    ref = (
        np.concatenate(
            [
                np.broadcast_to(t["vit.embeddings.cls_token"], (2, 1, 16)),
                patches.reshape(2, 16, 16),
            ],
            axis=1,
        )
        + t["vit.embeddings.position_embeddings"]
    )
    _, inter = model.apply({"params": params}, x, capture_intermediates=True)
    np.testing.assert_allclose(inter["intermediates"]["embeddings"]["__call__"][0], ref, atol=1e-4)


def test_vit_hidden_states_and_examples_do_not_mix():
    cfg = M.get_config("vit-tiny")
    model = M.ViT(cfg)
    x = _images(cfg, n=3)
    params = model.init(jax.random.key(0), x)["params"]
    out = model.apply({"params": params}, x)
    assert out.shape == (3, 17, 16)
    x2 = x.copy()
    x2[1:] = _images(cfg, n=2, seed=9)
    np.testing.assert_allclose(model.apply({"params": params}, x2)[0], out[0], atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet-tiny", "resnet-tiny-bottleneck"])
def test_resnet_round_trip_and_hf_layout(tmp_path, name):
    cfg = M.get_config(name)
    model = M.ResNet(cfg, head="classification", num_labels=3)
    x = _images(cfg)
    params, t = _round_trip(tmp_path, model, x)
    stem = t["resnet.embedder.embedder.convolution.weight"]
    assert stem.shape == (8, 3, 7, 7)
    assert t["classifier.1.weight"].shape == (3, cfg.hidden_sizes[-1])
    assert "resnet.encoder.stages.1.layers.0.shortcut.convolution.weight" in t
    assert "resnet.encoder.stages.0.layers.0.layer.1.normalization.weight" in t
    if cfg.layer_type == "bottleneck":  # 1x1 reduce, 3x3 (carries the stride), 1x1 expand
        assert t["resnet.encoder.stages.1.layers.0.layer.0.convolution.weight"].shape == (
            8,
            16,
            1,
            1,
        )
        assert t["resnet.encoder.stages.1.layers.0.layer.1.convolution.weight"].shape == (
            8,
            8,
            3,
            3,
        )
    _, inter = model.apply({"params": params}, x, capture_intermediates=True)
    conv = inter["intermediates"]["embedder"]["embedder"]["convolution"]["__call__"][0]
    np.testing.assert_allclose(conv, _nchw_conv(x, stem, 2, 3), atol=1e-4)
    assert model.apply({"params": params}, x).shape == (2, 3)


def test_resnet_hf_batchnorm_stats_ignored_and_conv_bias_added(tmp_path):
    cfg = M.get_config("resnet-tiny")
    model = M.ResNet(cfg)
    x = _images(cfg)
    params = model.init(jax.random.key(0), x)["params"]
    M.save_pretrained(tmp_path, model, params)
    t = load_file(str(tmp_path / "model.safetensors"))
    for key in [k for k in t if k.endswith("normalization.weight")]:
        stem = key.removesuffix("weight")
        t[stem + "running_mean"] = np.zeros_like(t[key])
        t[stem + "running_var"] = np.ones_like(t[key])
        t[stem + "num_batches_tracked"] = np.zeros((), np.int64)
    save_file(t, str(tmp_path / "model.safetensors"))
    plain, p_plain, report = M.from_pretrained(tmp_path, return_report=True)
    assert report.new == () and len(report.ignored) == 3 * len(
        [k for k in t if k.endswith("normalization.weight")]
    )
    added, p_added, report = M.from_pretrained(tmp_path, conv_bias=True, return_report=True)
    n_convs = len([k for k in t if k.endswith("convolution.weight")])
    assert len(report.new) == n_convs and all(p.endswith("convolution/bias") for p in report.new)
    # zero-initialised added biases: same function as the pretrained model
    np.testing.assert_allclose(
        added.apply({"params": p_added}, x), plain.apply({"params": p_plain}, x), atol=1e-6
    )


def test_resnet_groupnorm_is_per_example():
    cfg = M.get_config("resnet-tiny")
    model = M.ResNet(cfg, head="classification", num_labels=2)
    x = _images(cfg, n=3)
    params = model.init(jax.random.key(0), x)["params"]
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    assert not any("BatchNorm" in jax.tree_util.keystr(p) for p, _ in flat)
    out = model.apply({"params": params}, x)
    x2 = x.copy()
    x2[1:] *= 7.0
    np.testing.assert_allclose(model.apply({"params": params}, x2)[0], out[0], atol=1e-5)


def test_vision_config_validation():
    with pytest.raises(ValueError, match="num_groups=32 must divide"):
        M.ResNetConfig(embedding_size=8, hidden_sizes=(8,), depths=(1,), layer_type="basic")
    with pytest.raises(ValueError, match="image_size=30 is not divisible by patch_size=8"):
        M.ViTConfig(image_size=30, patch_size=8)
    with pytest.raises(ValueError, match="layer_type"):
        M.get_config("resnet18", layer_type="dense")
