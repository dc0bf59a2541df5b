"""The shared baseline base: input checks, noise estimates, the explicit registry."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from cryotune.baselines import (
    BASELINES,
    BM3D,
    KSVD,
    AspireCWF,
    CovarianceWiener,
    NLMeans,
    estimate_noise_sigma,
    make_baseline,
    sigma_from_stats,
)
from cryotune.errors import BadConfig, BadInput


def test_registry_is_explicit_and_complete():
    assert BASELINES == {"nlm": NLMeans, "ksvd": KSVD, "cwf": CovarianceWiener,
                         "cwf_aspire": AspireCWF, "bm3d": BM3D}
    for cls in BASELINES.values():
        assert cls.name and cls.licence_note
    assert CovarianceWiener.name == "CWF (no CTF)"
    assert "CTF" in CovarianceWiener.licence_note
    assert "non-commercial" in BM3D.licence_note


@pytest.mark.parametrize("sigma", [0.05, 0.3, 1.0])
def test_noise_estimate_matches_known_sigma(blobs, sigma):
    _, noisy = blobs(32, 32, sigma, seed=3)
    assert estimate_noise_sigma(noisy) == pytest.approx(sigma, rel=0.05)


def test_noise_estimate_agrees_with_scikit_image():
    pytest.importorskip("pywt")
    from skimage.restoration import estimate_sigma

    noisy = np.random.default_rng(1).normal(0.0, 0.4, (64, 64))
    assert estimate_noise_sigma(noisy[None]) == pytest.approx(estimate_sigma(noisy), rel=0.1)


def test_sigma_from_stats():
    assert sigma_from_stats({"clean_var": 0.02, "noisy_var": 0.27}) == pytest.approx(0.5)
    with pytest.raises(BadInput, match="does not exceed"):
        sigma_from_stats({"clean_var": 0.02, "noisy_var": 0.02})


@pytest.mark.parametrize("bad, message", [
    (np.zeros((4, 4)), "expected an \\(n, H, W\\) image stack"),
    (np.zeros((0, 4, 4)), "expected an \\(n, H, W\\) image stack"),
    (np.array([[["a"]]]), "real-valued"),
])
def test_bad_stacks_are_rejected(bad, message):
    with pytest.raises(BadInput, match=message):
        CovarianceWiener().denoise(bad)


def test_nan_names_the_image_and_bad_sigma_is_rejected():
    stack = np.zeros((3, 8, 8), np.float32)
    stack[2, 1, 1] = np.nan
    with pytest.raises(BadInput) as err:
        NLMeans().denoise(stack, sigma=0.1)
    assert err.value.where == "noisy[2]"
    with pytest.raises(BadInput, match="positive"):
        NLMeans().denoise(np.zeros((2, 8, 8)), sigma=-1.0)


def test_noise_free_stack_asks_for_sigma():
    flat = np.ones((4, 16, 16), np.float32)
    with pytest.raises(BadInput, match="no measurable noise"):
        NLMeans().denoise(flat)


def test_make_baseline_validates_with_key_paths():
    assert make_baseline("ksvd", {"stride": 4}).stride == 4
    with pytest.raises(BadConfig) as err:
        make_baseline("ksvd", {"stride": 0}, path="baselines.ksvd")
    assert err.value.where == "baselines.ksvd.stride"
    with pytest.raises(BadConfig, match="unknown key 'patch'"):
        make_baseline("nlm", {"patch": 3})
    with pytest.raises(BadConfig, match="unknown baseline 'wiener'"):
        make_baseline("wiener")


@pytest.mark.parametrize("method", ["nlm", "ksvd", "cwf"])
def test_baselines_pickle_with_their_params(method):
    baseline = make_baseline(method)
    copy = pickle.loads(pickle.dumps(baseline))
    assert copy == baseline and copy.params() == baseline.params()
