"""The ScatterNet transform (``dpjax.models.scattering``): shapes, filters, invariances.

References are computed independently in numpy float64 (a spatial Gaussian, not the
Fourier-domain bank), and every relation below is one the construction truly satisfies.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dpjax.models.scattering import filter_bank, num_channels, scattering2d

J, L = 2, 8


def _images(batch: int = 3, side: int = 28, seed: int = 0) -> np.ndarray:
    """Smooth random shapes on a zero background (like Fashion-MNIST), float32 in [0, 1]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:side, :side].astype(np.float64)
    out = np.zeros((batch, side, side))
    for b in range(batch):
        for _ in range(4):
            cy, cx = rng.uniform(side * 0.3, side * 0.7, 2)
            sy, sx = rng.uniform(1.5, 5.0, 2)
            out[b] += rng.uniform(0.3, 1.0) * np.exp(
                -0.5 * (((yy - cy) / sy) ** 2 + ((xx - cx) / sx) ** 2)
            )
        out[b] += 0.1 * rng.random((side, side)) * (out[b] > 0.2)  # texture on the object
    return (out / out.max(axis=(1, 2), keepdims=True)).astype(np.float32)


def test_shape_channels_and_dtype_under_jit():
    x = _images(2)
    assert num_channels(J, L) == 81
    out = jax.jit(scattering2d, static_argnames=("J", "L"))(x, J=J, L=L)
    assert out.shape == (2, 7, 7, 81) and out.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(out)))
    np.testing.assert_allclose(scattering2d(x[..., None]), out, rtol=1e-5, atol=1e-6)  # NHWC
    assert scattering2d(x, J=1, L=4).shape == (2, 14, 14, 1 + 4)
    with pytest.raises(ValueError, match="images must be"):
        scattering2d(np.zeros((2, 28, 27)))


def test_order0_is_a_spatial_gaussian_blur_then_subsample():
    """Channel 0 == reflect-pad, circular convolution with a sampled spatial Gaussian of
    sigma 0.8 * 2^J (numpy float64, summed directly), sampled every 4 pixels from pixel 2."""
    x = _images(2).astype(np.float64)
    p, sigma = 2**J, 0.8 * 2**J
    padded = np.pad(x, ((0, 0), (p, p), (p, p)), mode="reflect")
    n = padded.shape[1]
    centres = p + p // 2 + p * np.arange(28 // p)
    grid = np.arange(n)
    expected = np.zeros((2, len(centres), len(centres)))
    for a, ci in enumerate(centres):
        for b, cj in enumerate(centres):
            # circular offsets, periodised over neighbouring copies of the grid
            di = ((ci - grid + n // 2) % n - n // 2)[:, None]
            dj = ((cj - grid + n // 2) % n - n // 2)[None, :]
            kernel = sum(
                np.exp(-((di + k0 * n) ** 2 + (dj + k1 * n) ** 2) / (2 * sigma**2))
                for k0 in (-1, 0, 1)
                for k1 in (-1, 0, 1)
            ) / (2 * np.pi * sigma**2)
            expected[:, a, b] = (padded * kernel).sum(axis=(1, 2))
    got = np.asarray(scattering2d(x.astype(np.float32)))[..., 0]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_wavelets_have_zero_mean_and_bounded_littlewood_paley_sum():
    bank = filter_bank(36, J, L)
    psi, phi = bank["psi"], bank["phi"]
    assert psi.shape == (J, L, 36, 36) and phi.shape == (36, 36)
    np.testing.assert_allclose(psi[:, :, 0, 0], 0.0, atol=1e-12)  # zero mean
    spatial = np.fft.ifft2(psi)
    np.testing.assert_allclose(spatial.sum(axis=(-2, -1)), 0.0, atol=1e-12)
    assert abs(phi[0, 0] - 1.0) < 1e-9  # the low-pass keeps the mean
    # Each wavelet peaks near its centre frequency 3 pi / 4 / 2^j, about 1 there.
    w = 2 * np.pi * np.fft.fftfreq(36)
    radius = np.hypot(*np.meshgrid(w, w, indexing="ij"))
    for j in range(J):
        peaks = radius[np.unravel_index(np.argmax(psi[j].reshape(L, -1), axis=1), (36, 36))]
        np.testing.assert_allclose(peaks, 3 * np.pi / 4 / 2**j, atol=2 * np.pi / 36 * 1.5)
        assert 0.85 < psi[j].max() <= 1.0
    # Littlewood-Paley: |phi|^2 + 1/2 sum |psi(w)|^2 + |psi(-w)|^2 (real signals). Not a
    # tight frame: above ~0.3 on the disc |w| <= pi, never above 1 (the filters are
    # contractive), 1 at frequency 0 (phi alone).
    flip = np.roll(np.flip(psi, (-2, -1)), 1, axis=(-2, -1))  # psi(-w)
    lp = np.abs(phi) ** 2 + 0.5 * (np.abs(psi) ** 2 + np.abs(flip) ** 2).sum((0, 1))
    assert lp.max() <= 1.0 + 1e-9 and abs(lp[0, 0] - 1.0) < 1e-9
    assert 0.3 < lp[radius <= np.pi].min() < 0.5
    assert lp.min() > 0.1  # the corners (|w| up to pi sqrt 2) are covered too


def test_small_translations_change_the_features_much_less_than_the_image():
    """A 1-2 pixel shift of a textured object moves most pixels (relative change ~0.8) but
    the features little: they are averaged over 2^J = 4 pixels."""
    rng = np.random.default_rng(1)
    x = _images(4, seed=1)
    x = ((x > 0.3) * rng.random(x.shape)).astype(np.float32)  # textured shapes on zero
    base = np.asarray(scattering2d(x))
    for shift, bound in (((1, 0), 0.25), ((0, -1), 0.25), ((2, 0), 0.45), ((0, 2), 0.45)):
        moved = np.roll(x, shift, axis=(1, 2))  # zero background: a true translation
        image_change = np.linalg.norm(moved - x) / np.linalg.norm(x)
        out = np.asarray(scattering2d(moved))
        feature_change = np.linalg.norm(out - base) / np.linalg.norm(base)
        assert image_change > 0.6
        assert feature_change < bound * image_change, (shift, feature_change, image_change)


def test_rotation_by_90_degrees_permutes_the_orientations():
    """For ``H = 4k + 1`` the output grid (image pixels 2, 6, ...) is symmetric, so rotating
    the image rotates every channel and shifts each orientation index by L/2 (90 degrees;
    orientations are taken modulo pi, as |x * psi_theta| = |x * psi_(theta + pi)|)."""
    x = _images(2, side=29, seed=2)
    turned = np.rot90(x, 1, axes=(1, 2)).copy()
    out = np.asarray(scattering2d(x))
    out_turned = np.asarray(scattering2d(turned))
    shift = lambda l: (l + L // 2) % L  # noqa: E731
    perm = [0]
    perm += [1 + j * L + shift(l) for j in range(J) for l in range(L)]
    perm += [1 + J * L + shift(l1) * L + shift(l2) for l1 in range(L) for l2 in range(L)]
    expected = np.rot90(out, 1, axes=(1, 2))[..., perm]
    scale = np.abs(out).max(axis=(0, 1, 2))
    np.testing.assert_allclose(out_turned / scale, expected / scale, atol=2e-5)
    # ... and the identity permutation does not fit (orientation matters).
    assert np.abs(out_turned - np.rot90(out, 1, axes=(1, 2))).max() > 1e-2 * scale.max()


@pytest.mark.slow
def test_task_features_and_the_scatter_cnn():
    """``scattered`` replaces a split's images by the transform (labels kept, no
    transform left) and ``cnn-scatter`` maps ``[B, 7, 7, 81]`` to logits."""
    import dpjax.models as M
    from dpjax.data import images
    from dpjax.tasks.image_classification import scattered

    x = (_images(5) * 255).astype(np.uint8)[..., None]
    config = images.ImageConfig(resolution=28, normalize="zero_one", channels=1)
    split = images.from_arrays(x, np.arange(5) % 3, 3, config, "fashion_mnist")
    out = scattered(split, batch_size=2)  # 3 calls, the last one padded
    assert out.arrays["image"].shape == (5, 7, 7, 81) and out.transform is None
    np.testing.assert_array_equal(out.arrays["label"], np.arange(5) % 3)
    np.testing.assert_allclose(out.arrays["image"], scattering2d(x / 255.0), rtol=1e-5, atol=1e-6)
    model = M.create_model(M.get_config("cnn-scatter"), "classification", 10)
    params = model.init(jax.random.key(0), M.configs.dummy_inputs(M.get_config("cnn-scatter")))
    count = sum(p.size for p in jax.tree.leaves(params))
    assert count == (81 * 9 * 32 + 32) + (32 * 9 * 64 + 64) + (3 * 3 * 64 * 10 + 10)
    assert model.apply(params, out.arrays["image"]).shape == (5, 10)
