"""Non-local means: sensible window sizes, and it lowers the MSE of noisy particle stacks."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.restoration import denoise_nl_means

from cryotune.baselines.nlm import NLMeans


@pytest.mark.parametrize("shape, expected", [
    ((16, 16), (5, 3)), ((32, 32), (7, 5)), ((33, 40), (7, 5)), ((64, 64), (7, 9)),
    ((128, 128), (7, 11)),
])
def test_window_sizes_follow_the_box(shape, expected):
    assert NLMeans().resolved(shape) == expected
    assert NLMeans(patch_size=3, patch_distance=2).resolved(shape) == (3, 2)


@pytest.mark.parametrize("size", [16, 23])
@pytest.mark.parametrize("known", [True, False])
def test_lowers_mse(blobs, mse, size, known):
    sigma = 0.2
    clean, noisy = blobs(24, size, sigma, seed=size)
    out = NLMeans().denoise(noisy.astype(np.float64), sigma=sigma if known else None)
    assert out.shape == noisy.shape and out.dtype == np.float32
    assert mse(out, clean) < 0.25 * mse(noisy, clean)


def test_is_scikit_image_non_local_means_per_image(blobs):
    _, noisy = blobs(3, 32, 0.3, seed=5)
    out = NLMeans(h_factor=0.7).denoise(noisy, sigma=0.3)
    for image, got in zip(noisy, out, strict=True):
        expected = denoise_nl_means(image, patch_size=7, patch_distance=5, h=0.21, sigma=0.3,
                                    fast_mode=True, preserve_range=True)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
