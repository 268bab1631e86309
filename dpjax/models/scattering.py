"""A 2-D scattering transform (Mallat's ScatterNet) in pure JAX, for small grey images.

A fixed, data-independent feature map (no parameters, no privacy cost): Tramer & Boneh
(2021, "Differentially Private Learning Needs Better Features") train DP models on it.
With ``J`` scales and ``L`` orientations, an image ``x`` gives ``1 + J*L + L^2*J*(J-1)/2``
channels (81 for ``J=2, L=8``), each low-passed by ``phi_J`` and subsampled by ``2^J``:

* order 0: ``x * phi_J``;
* order 1: ``|x * psi_{j,l}| * phi_J`` for ``j < J``, ``l < L`` (``j``-major);
* order 2: ``||x * psi_{j1,l1}| * psi_{j2,l2}| * phi_J`` for ``j1 < j2`` (ordered by
  ``j1``, ``j2``, ``l1``, ``l2``).

Filters are built directly in the Fourier domain (so they are real there). A Morlet
wavelet ``psi_{j,l}`` is a Gabor filter minus a multiple of its Gaussian envelope so that
its mean is zero: the envelope has spatial standard deviation ``sigma = 0.8 * 2^j`` along
the direction ``theta_l = l * pi / L`` and ``sigma / slant`` across it (``slant = 4/L``),
the carrier frequency is ``xi = 3 pi / 4 / 2^j`` along ``theta_l``. The low-pass
``phi_J`` is an isotropic Gaussian with ``sigma = 0.8 * 2^J`` and unit gain at frequency
0. Each filter is the continuous Fourier transform summed over the 2-pi shifts (aliasing),
i.e. exactly the DFT of the sampled spatial filter, periodised over the grid.

Boundary: the square image is reflect-padded by ``2^J`` pixels on every side (28 -> 36)
and all convolutions are circular on the padded grid (FFTs); reflection avoids the jump
that wrapping an edge to the opposite edge would create. Output samples sit at image
pixels ``2^(J-1) + 2^J k`` for ``k < H // 2^J`` (2, 6, ..., 26 for 28 pixels, J = 2).
Orientations cover ``[0, pi)``: for a real image ``|x * psi_theta| = |x * psi_{theta+pi}|``.

Example:
    >>> import jax.numpy as jnp
    >>> from dpjax.models.scattering import scattering2d
    >>> features = scattering2d(jnp.ones((2, 28, 28)), J=2, L=8)
    >>> features.shape, str(features.dtype)
    ((2, 7, 7, 81), 'float32')
    >>> bool(jnp.allclose(features[..., 0], 1.0, atol=1e-4))  # a flat image: order 0 only
    True
    >>> float(jnp.abs(features[..., 1:]).max()) < 1e-4
    True
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["filter_bank", "num_channels", "scattering2d"]

#: The standard Morlet constants (Kymatio's): envelope width and carrier of scale 0.
SIGMA0 = 0.8
XI0 = 3.0 * np.pi / 4.0
#: How many 2-pi shifts on each side are summed when periodising the spectra.
_ALIAS = 2


def num_channels(J: int, L: int) -> int:
    """Channels of :func:`scattering2d`: ``1 + J*L + L^2 * J*(J-1)/2``."""
    return 1 + J * L + L * L * J * (J - 1) // 2


def _gaussian_hat(
    size: int, sigma: float, slant: float, theta: float, centre: tuple[float, float]
) -> np.ndarray:
    """``sum_k G(w + 2 pi k - centre)`` on the ``size x size`` DFT grid (``fft`` order).

    ``G`` is the Fourier transform of a unit-integral anisotropic Gaussian: spatial
    standard deviation ``sigma`` along ``(cos theta, sin theta)`` (array axes 0 and 1) and
    ``sigma / slant`` across it; the sum over 2-pi shifts ``k`` is the aliasing of sampling.
    """
    w = 2.0 * np.pi * np.fft.fftfreq(size)
    out = np.zeros((size, size))
    for k0 in range(-_ALIAS, _ALIAS + 1):
        for k1 in range(-_ALIAS, _ALIAS + 1):
            w0, w1 = np.meshgrid(
                w + 2 * np.pi * k0 - centre[0], w + 2 * np.pi * k1 - centre[1], indexing="ij"
            )
            along = w0 * np.cos(theta) + w1 * np.sin(theta)
            across = -w0 * np.sin(theta) + w1 * np.cos(theta)
            out += np.exp(-0.5 * (sigma**2 * along**2 + (sigma / slant) ** 2 * across**2))
    return out


@functools.lru_cache(maxsize=16)
def filter_bank(size: int, J: int = 2, L: int = 8) -> dict[str, np.ndarray]:
    """The Fourier-domain Morlet bank of a ``size x size`` periodic grid (float64).

    Args:
      size: side of the (padded) grid the filters act on.
      J: number of scales (the low-pass averages over ``2^J`` pixels).
      L: number of orientations in ``[0, pi)``.

    Returns:
      ``{"psi": [J, L, size, size], "phi": [size, size]}``: real Fourier transforms in
      ``numpy.fft`` frequency order (index 0 is frequency 0), read-only (cached).

    Raises:
      ValueError: ``J < 1``, ``L < 1`` or ``size < 2``.
    """
    if J < 1 or L < 1 or size < 2:
        raise ValueError(f"need J >= 1, L >= 1 and size >= 2, got J={J}, L={L}, size={size}")
    slant = 4.0 / L
    psi = np.zeros((J, L, size, size))
    for j in range(J):
        sigma, xi = SIGMA0 * 2**j, XI0 / 2**j
        for l in range(L):
            theta = l * np.pi / L
            centre = (xi * np.cos(theta), xi * np.sin(theta))
            gabor = _gaussian_hat(size, sigma, slant, theta, centre)
            envelope = _gaussian_hat(size, sigma, slant, theta, (0.0, 0.0))
            # Zero-mean correction: remove the envelope's share at frequency 0.
            psi[j, l] = gabor - gabor[0, 0] / envelope[0, 0] * envelope
    sigma_J = SIGMA0 * 2**J
    phi = _gaussian_hat(size, sigma_J, 1.0, 0.0, (0.0, 0.0))
    for array in (psi, phi):
        array.setflags(write=False)
    return {"psi": psi, "phi": phi}


def scattering2d(images: Any, J: int = 2, L: int = 8) -> jax.Array:
    """Scattering coefficients of orders 0, 1 and 2 of square grey images (float32).

    Args:
      images: ``[B, H, H]`` or ``[B, H, H, 1]`` real images (any scale); ``H > 2^J``.
      J: number of scales; the output is subsampled by ``2^J``.
      L: number of orientations.

    Returns:
      ``[B, H // 2^J, H // 2^J, num_channels(J, L)]`` channels-last features (see the
      module docstring for the channel order). Jittable (``J`` and ``L`` static).

    Raises:
      ValueError: the images are not square grey ``[B, H, H(, 1)]`` or are too small.
    """
    x = jnp.asarray(images, jnp.float32)
    if x.ndim == 4 and x.shape[-1] == 1:
        x = x[..., 0]
    p = 2**J
    if x.ndim != 3 or x.shape[1] != x.shape[2] or x.shape[1] <= p:
        raise ValueError(f"images must be [B, H, H] or [B, H, H, 1] with H > {p}, got {x.shape}")
    batch, side = x.shape[0], x.shape[1]
    x = jnp.pad(x, ((0, 0), (p, p), (p, p)), mode="reflect")
    size = side + 2 * p
    bank = filter_bank(size, J, L)
    psi = jnp.asarray(bank["psi"], jnp.float32)  # [J, L, N, N]
    phi = jnp.asarray(bank["phi"][:, : size // 2 + 1], jnp.float32)  # rfft half-plane

    x_hat = jnp.fft.fft2(x)[:, None, None]  # [B, 1, 1, N, N]
    u1 = jnp.abs(jnp.fft.ifft2(x_hat * psi))  # [B, J, L, N, N]
    u1_hat = jnp.fft.fft2(u1)
    maps = [x[:, None], u1.reshape(batch, J * L, size, size)]
    for j1 in range(J):
        for j2 in range(j1 + 1, J):
            u2 = jnp.abs(jnp.fft.ifft2(u1_hat[:, j1, :, None] * psi[j2][None, None]))
            maps.append(u2.reshape(batch, L * L, size, size))  # [B, L1 * L2, N, N]
    u = jnp.concatenate(maps, axis=1)
    smooth = jnp.fft.irfft2(jnp.fft.rfft2(u) * phi, s=(size, size))
    start, count = p + p // 2, side // p
    out = smooth[:, :, start : start + p * count : p, start : start + p * count : p]
    return jnp.moveaxis(out, 1, -1).astype(jnp.float32)
