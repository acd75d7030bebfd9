"""PSNR and SSIM: known answers, and SSIM against an independent computation with scipy's Gaussian filter."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hayai.speed.quality import psnr, ssim


def _image(seed: int, size=(32, 40)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(*size, 3)).astype(np.uint8)


def test_psnr_known_values():
    a = np.full((16, 16, 3), 100, np.uint8)
    assert psnr(a, a) == math.inf
    assert psnr(a, a + 10) == pytest.approx(10 * math.log10(255**2 / 100))


def test_ssim_is_one_for_identical_images_and_falls_with_noise():
    a = _image(0)
    noise = np.random.default_rng(1).integers(-1, 2, a.shape)
    some, more = (np.clip(a.astype(int) + k * noise, 0, 255).astype(np.uint8) for k in (20, 80))
    assert ssim(a, a) == pytest.approx(1.0)
    assert 0 < ssim(a, more) < ssim(a, some) < 1
    assert ssim(a, some) == pytest.approx(ssim(some, a))


def test_ssim_matches_a_gaussian_filter_computation():
    """Wang et al.'s SSIM as scikit-image computes it (Gaussian sigma 1.5, truncated at 11 taps, the border
    where the window does not fit cropped), written with scipy.ndimage instead of our separable filter."""
    from scipy.ndimage import gaussian_filter

    a, b = _image(2).astype(float), _image(3).astype(float)
    b = (0.6 * a + 0.4 * b).astype(np.uint8).astype(float)  # related images: SSIM well above 0
    luma = lambda x: x[..., 0] * 0.299 + x[..., 1] * 0.587 + x[..., 2] * 0.114
    x, y = luma(a), luma(b)
    f = lambda z: gaussian_filter(z, 1.5, truncate=3.5)[5:-5, 5:-5]
    mx, my = f(x), f(y)
    vx, vy, cov = f(x * x) - mx**2, f(y * y) - my**2, f(x * y) - mx * my
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    expected = (((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))).mean()
    assert ssim(a.astype(np.uint8), b.astype(np.uint8)) == pytest.approx(expected, rel=1e-9)


def test_sizes_must_match():
    with pytest.raises(ValueError, match="differ in size"):
        psnr(_image(0, (8, 8)), _image(0, (8, 9)))
