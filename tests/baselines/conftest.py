"""Tiny particle-like stacks for the baseline tests: smooth blobs plus white Gaussian noise."""

from __future__ import annotations

import numpy as np
import pytest


def blob_stack(n: int, size: int, sigma: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(clean, noisy) float32 (n, size, size); clean is min/max normalised to [0, 1].

    Each image is a centred "particle" of four Gaussian blobs whose centres, widths and
    amplitudes vary from image to image, like views of one flexible molecule.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size].astype(np.float64)
    template = np.array([[-0.15, -0.1], [0.12, -0.12], [0.0, 0.15], [0.18, 0.1]]) * size
    clean = np.zeros((n, size, size))
    for i in range(n):
        centres = size / 2 + template + rng.normal(0.0, 0.04 * size, template.shape)
        widths = size * rng.uniform(0.07, 0.12, len(template))
        amps = rng.uniform(0.6, 1.2, len(template))
        for (cy, cx), s, a in zip(centres, widths, amps, strict=True):
            clean[i] += a * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))
    clean = (clean - clean.min()) / (clean.max() - clean.min())
    noisy = clean + rng.normal(0.0, sigma, clean.shape)
    return clean.astype(np.float32), noisy.astype(np.float32)


def mse(a: np.ndarray, b: np.ndarray) -> float:
    """Mean squared error in float64, computed independently of the library."""
    return float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))


@pytest.fixture
def blobs():
    """The :func:`blob_stack` maker."""
    return blob_stack


@pytest.fixture(name="mse")
def mse_fixture():
    """The independent :func:`mse`."""
    return mse
