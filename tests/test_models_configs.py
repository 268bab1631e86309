"""Named configs: parameter counts equal the published Hugging Face / torchvision counts.

Counts come from ``jax.eval_shape`` of ``init`` (no allocation). References: the
``num_parameters()`` of the Hugging Face base models minus their pooler where dpjax
builds none (BERT/RoBERTa/ViT with ``head=None``), GPT-2 family as published, and
torchvision's ResNet-18/50 (BatchNorm affine = GroupNorm affine) minus ``fc``.
"""

import math

import jax
import pytest

import dpjax.models as M
from dpjax.models.configs import dummy_inputs


def _count(name, head=None, **kw):
    cfg = M.get_config(name)
    model = M.create_model(cfg, head, **kw)
    shapes = jax.eval_shape(model.init, jax.random.key(0), dummy_inputs(cfg))["params"]
    flat = jax.tree_util.tree_flatten_with_path(shapes)[0]
    total = sum(math.prod(s.shape) for _, s in flat)
    bias = sum(math.prod(s.shape) for p, s in flat if p[-1].key == "bias")
    return total, bias


def _pooler(d):
    return d * d + d


PUBLISHED = {
    "bert-base": 109_482_240 - _pooler(768),
    "roberta-base": 124_645_632 - _pooler(768),
    "gpt2": 124_439_808,
    "distilgpt2": 81_912_576,
    "vit-base-patch16-224": 86_389_248 - _pooler(768),
    "resnet18": 11_689_512 - 513_000,
    "resnet50": 25_557_032 - 2_049_000,
}
PUBLISHED_LARGE = {
    "bert-large": 335_141_888 - _pooler(1024),
    "roberta-large": 355_359_744 - _pooler(1024),
    "gpt2-medium": 354_823_168,
    "gpt2-large": 774_030_080,
    "gpt2-xl": 1_557_611_200,
    "vit-large-patch16-224": 304_351_232 - _pooler(1024),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_counts(name):
    assert _count(name)[0] == PUBLISHED[name]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PUBLISHED_LARGE))
def test_parameter_counts_large(name):
    assert _count(name)[0] == PUBLISHED_LARGE[name]


def test_bias_fraction_roberta_large_matches_paper():
    total, bias = _count("roberta-large")
    assert round(100 * bias / total, 3) == 0.077  # DP-BiTFiT paper: 0.077%


def test_get_config_errors_and_overrides():
    with pytest.raises(ValueError, match="unknown model config 'bert-huge'"):
        M.get_config("bert-huge")
    assert M.get_config("resnet18", conv_bias=True).conv_bias
    hf = M.config_to_hf(M.get_config("roberta-base"))
    assert hf["model_type"] == "roberta" and M.config_from_hf(hf) == M.get_config("roberta-base")
    with pytest.raises(ValueError, match="unsupported model_type 't5'"):
        M.config_from_hf({"model_type": "t5"})
