"""``losses.cross_entropy``: its hand-written backward pass against autodiff of
``log_softmax`` in float64, and the logits-sized buffer it saves (XLA's memory analysis)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dpjax.data.losses import classification_loss, cross_entropy, lm_loss


def reference(logits, labels):
    logp = jax.nn.log_softmax(logits.astype(jnp.promote_types(logits.dtype, jnp.float32)), -1)
    return -jnp.take_along_axis(logp, labels[..., None], -1)[..., 0]


def draw(seed, shape, classes, dtype=jnp.float64):
    rng = np.random.default_rng(seed)
    logits = jnp.asarray(3 * rng.standard_normal((*shape, classes)), dtype)
    labels = jnp.asarray(rng.integers(0, classes, shape), jnp.int32)
    weights = jnp.asarray(rng.standard_normal(shape), dtype)
    return logits, labels, weights


@settings(max_examples=12, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    shape=st.sampled_from([(3,), (2, 5)]),
    classes=st.sampled_from([1, 2, 40]),
)
def test_value_and_gradient_equal_log_softmax_in_float64(seed, shape, classes):
    with jax.enable_x64(True):
        logits, labels, w = draw(seed, tuple(shape), classes)

        def weighted(fn):
            return lambda x: jnp.sum(w * fn(x, labels))

        value, grad = jax.jit(jax.value_and_grad(weighted(cross_entropy)))(logits)
        ref_value, ref_grad = jax.jit(jax.value_and_grad(weighted(reference)))(logits)
        np.testing.assert_allclose(value, ref_value, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(grad, ref_grad, rtol=1e-10, atol=1e-12)
        assert grad.dtype == jnp.float64


def test_per_example_gradients_under_vmap_equal_the_oracle(x64):
    logits, labels, _ = draw(1, (6, 7), 11)

    def per_example(fn):
        return jax.vmap(jax.grad(lambda x, y: fn(x[None], y[None]).sum()))(logits, labels)

    np.testing.assert_allclose(per_example(cross_entropy), per_example(reference), rtol=1e-10)


def test_bfloat16_logits_get_float32_losses_and_bfloat16_gradients():
    logits, labels, _ = draw(2, (4, 3), 50, jnp.float32)
    low = logits.astype(jnp.bfloat16)
    out = cross_entropy(low, labels)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, reference(low, labels), rtol=1e-6)
    grad = jax.grad(lambda x: cross_entropy(x, labels).sum())(low)
    ref = jax.grad(lambda x: reference(x, labels).sum())(low)
    assert grad.dtype == jnp.bfloat16
    np.testing.assert_allclose(grad.astype(np.float32), ref.astype(np.float32), atol=1e-2)


def test_the_task_losses_use_it(x64):
    logits, labels, _ = draw(3, (5, 9), 13)
    ids = labels
    mask = jnp.ones_like(ids).at[:, :3].set(0)
    ref_nll = reference(logits[:, :-1], ids[:, 1:]) * mask[:, 1:]
    np.testing.assert_allclose(lm_loss(logits, ids, mask, "sum"), ref_nll.sum(-1), rtol=1e-12)
    np.testing.assert_allclose(
        classification_loss(logits[:, 0], labels[:, 0]), reference(logits[:, 0], labels[:, 0])
    )


def test_the_lean_backward_keeps_fewer_logits_sized_buffers():
    """XLA's compiled temp memory for an LM head (``h @ W``, logits sliced as ``lm_loss``
    does): autodiff of ``log_softmax`` keeps 3 logits-sized buffers for the gradient and 4
    when the value is asked for too; ``cross_entropy`` keeps 2 either way."""
    b, t, d, v = 4, 32, 16, 8192
    buffer = b * (t - 1) * v * 4
    shapes = (
        jax.ShapeDtypeStruct((d, v), jnp.float32),
        jax.ShapeDtypeStruct((b, t, d), jnp.float32),
        jax.ShapeDtypeStruct((b, t), jnp.int32),
    )

    def buffers(fn, value):
        def loss(w, h, ids):
            return jnp.sum(fn((h @ w)[:, :-1], ids[:, 1:]))

        step = (jax.value_and_grad if value else jax.grad)(loss, argnums=1)
        temp = jax.jit(step).lower(*shapes).compile().memory_analysis().temp_size_in_bytes
        return temp / buffer

    for value in (False, True):
        lean, ref = buffers(cross_entropy, value), buffers(reference, value)
        assert lean < 2.5, (value, lean)
        assert ref - lean > 0.9 + value, (value, ref, lean)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), classes=st.sampled_from([2, 6]),
       alpha=st.sampled_from([0.05, 0.3]))  # fmt: skip
def test_label_smoothing_equals_the_smoothed_target_cross_entropy(seed, classes, alpha):
    """Oracle: -sum_k q_k log p_k with q = (1 - a) one_hot + a / C, in numpy float64."""
    with jax.enable_x64(True):
        logits, labels, w = draw(seed, (4,), classes)
        x = np.asarray(logits)
        logp = x - np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True))
        logp -= x.max(-1, keepdims=True)
        q = (1 - alpha) * np.eye(classes)[np.asarray(labels)] + alpha / classes
        want = -(q * logp).sum(-1)
        got = classification_loss(logits, labels, alpha)
        np.testing.assert_allclose(got, want, rtol=1e-12)
        grad = jax.grad(lambda z: jnp.sum(w * classification_loss(z, labels, alpha)))(logits)
        p = np.exp(logp)
        np.testing.assert_allclose(grad, np.asarray(w)[:, None] * (p - q), rtol=1e-9, atol=1e-12)


def test_label_smoothing_stops_at_a_finite_margin_and_is_validated():
    """The smoothed loss's gradient vanishes at logit gap log((1 - a + a/2) / (a/2))."""
    alpha = 0.1
    gap = float(np.log((1 - alpha / 2) / (alpha / 2)))
    grad = jax.grad(lambda z: classification_loss(z, jnp.array([0]), alpha)[0])
    np.testing.assert_allclose(grad(jnp.array([[gap, 0.0]])), 0.0, atol=1e-6)
    assert float(grad(jnp.array([[gap + 2, 0.0]]))[0, 0]) > 0  # pulls an overconfident row back
    for bad in (-0.1, 1.0, float("nan")):
        with pytest.raises(ValueError, match="label_smoothing"):
            classification_loss(jnp.zeros((1, 2)), jnp.array([0]), bad)
