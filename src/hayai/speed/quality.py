"""Distance between two images of the same size, computed locally (no learned weights): PSNR and SSIM.

SSIM follows Wang et al. 2004 ("Image quality assessment: from error visibility to structural
similarity"): an 11x11 Gaussian window with sigma 1.5, K1 = 0.01, K2 = 0.03, on the luma (ITU-R BT.601)
of 8-bit images, the mean of the SSIM map over the positions where the window fits (as scikit-image's
`structural_similarity(..., gaussian_weights=True, use_sample_covariance=False)`).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["psnr", "ssim"]


def _array(image) -> np.ndarray:
    return np.asarray(image.convert("RGB") if hasattr(image, "convert") else image, dtype=np.float64)


def psnr(a, b) -> float:
    """Peak signal-to-noise ratio in dB of 8-bit RGB images (inf when they are identical)."""
    x, y = _array(a), _array(b)
    if x.shape != y.shape:
        raise ValueError(f"images differ in size: {x.shape} and {y.shape}")
    mse = float(np.mean((x - y) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def _luma(x: np.ndarray) -> np.ndarray:
    return x[..., 0] * 0.299 + x[..., 1] * 0.587 + x[..., 2] * 0.114 if x.ndim == 3 else x


def _filter(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Separable 'valid' filtering of a 2-D array with a 1-D kernel along both axes."""
    rows = np.apply_along_axis(lambda r: np.convolve(r, kernel, mode="valid"), 1, x)
    return np.apply_along_axis(lambda c: np.convolve(c, kernel, mode="valid"), 0, rows)


def ssim(a, b, *, window: int = 11, sigma: float = 1.5) -> float:
    """Mean structural similarity of the luma of two 8-bit images (1 when identical)."""
    x, y = _luma(_array(a)), _luma(_array(b))
    if x.shape != y.shape:
        raise ValueError(f"images differ in size: {x.shape} and {y.shape}")
    if min(x.shape) < window:
        raise ValueError(f"images of {x.shape[1]}x{x.shape[0]} are smaller than the {window}px window")
    offsets = np.arange(window) - (window - 1) / 2
    kernel = np.exp(-(offsets**2) / (2 * sigma**2))
    kernel /= kernel.sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = _filter(x, kernel), _filter(y, kernel)
    vx = _filter(x * x, kernel) - mx * mx
    vy = _filter(y * y, kernel) - my * my
    cov = _filter(x * y, kernel) - mx * my
    ssim_map = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(ssim_map.mean())
