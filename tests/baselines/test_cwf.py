"""Covariance Wiener filter: Marchenko-Pastur facts, the shrinkers' closed forms, the Wiener
MMSE on data drawn from its own model, and lower MSE on noisy particle stacks."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from cryotune.baselines import make_baseline
from cryotune.baselines.cwf import (
    AspireCWF,
    CovarianceWiener,
    marchenko_pastur_median,
    shrink,
)
from cryotune.errors import BadInput, MissingExtra


@pytest.mark.parametrize("beta", [1.0, 0.3])
def test_marchenko_pastur_median_matches_wishart_eigenvalues(beta):
    rng = np.random.default_rng(0)
    cols = 1200
    z = rng.standard_normal((int(beta * cols), cols))
    eigenvalues = np.linalg.eigvalsh(z @ z.T / cols)
    assert marchenko_pastur_median(beta) == pytest.approx(np.median(eigenvalues), rel=0.015)


def test_shrinkers_invert_the_spiked_model():
    gamma = 0.25
    ell = np.array([2.0, 5.0, 40.0])  # population spikes (sigma^2 units), above 1 + sqrt(gamma)
    sample = ell + gamma * ell / (ell - 1)  # where the sample eigenvalues land (BBP)
    np.testing.assert_allclose(shrink(sample, gamma, "operator_norm"), ell - 1, rtol=1e-10)
    cos2 = (1 - gamma / (ell - 1) ** 2) / (1 + gamma / (ell - 1))
    np.testing.assert_allclose(shrink(sample, gamma, "frobenius_norm"), (ell - 1) * cos2,
                               rtol=1e-10)
    edge = (1 + np.sqrt(gamma)) ** 2
    np.testing.assert_allclose(shrink(sample, gamma, "soft_threshold"), sample - edge)
    bulk = np.array([0.3, 1.0, edge])
    for name in ("operator_norm", "frobenius_norm", "soft_threshold"):
        assert not shrink(bulk, gamma, name).any()
    # the Frobenius shrinker is continuous at the edge; the operator-norm one jumps
    assert shrink([edge * (1 + 1e-9)], gamma, "frobenius_norm")[0] < 1e-3
    assert shrink([edge * (1 + 1e-9)], gamma, "operator_norm")[0] == pytest.approx(
        np.sqrt(gamma), rel=1e-3)


def _low_rank_stack(n: int, size: int, sigma: float, seed: int = 0):
    """Images x ~ N(mu, U diag(tau) U^T) exactly, y = x + white noise; and the Wiener MMSE."""
    rng = np.random.default_rng(seed)
    p = size * size
    tau = np.array([20.0, 10.0, 5.0, 3.0, 2.0]) * sigma**2
    basis = np.linalg.qr(rng.standard_normal((p, tau.size)))[0]
    mean = rng.uniform(0.0, 1.0, p)
    clean = mean + (rng.standard_normal((n, tau.size)) * np.sqrt(tau)) @ basis.T
    noisy = clean + sigma * rng.standard_normal((n, p))
    mmse = float(np.sum(tau * sigma**2 / (tau + sigma**2)) / p)  # per pixel
    shape = (n, size, size)
    return clean.reshape(shape), noisy.reshape(shape).astype(np.float32), mmse


@pytest.mark.parametrize("known", [True, False])
def test_reaches_the_wiener_mmse_on_its_own_model(mse, known):
    sigma = 0.5
    excess = {}
    for n in (2000, 8000):
        clean, noisy, mmse = _low_rank_stack(n, 16, sigma, seed=n)
        cwf = CovarianceWiener(max_images=n)
        _, basis, _, sigma_hat = cwf.fit(noisy, sigma if known else None)
        assert basis.shape == (256, 5)  # exactly the five spikes clear the edge
        assert sigma_hat == pytest.approx(sigma, rel=0.01)
        out = cwf.denoise(noisy, sigma=sigma if known else None)
        excess[n] = mse(out, clean) / mmse - 1
        assert mse(noisy, clean) == pytest.approx(sigma**2, rel=0.01)
    # estimating the filter costs O(p / n) over the oracle's MMSE: about 2 p / n here
    assert 0 < excess[8000] < 0.08
    assert excess[8000] < 0.5 * excess[2000] < 0.15


def test_fits_on_a_subsample_when_asked(mse):
    clean, noisy, mmse = _low_rank_stack(3000, 12, 0.5, seed=1)
    out = CovarianceWiener(max_images=1500).denoise(noisy, sigma=0.5)
    assert mse(out, clean) < 1.2 * mmse


@pytest.mark.parametrize("size", [24, 21])
@pytest.mark.parametrize("known", [True, False])
def test_lowers_mse(blobs, mse, size, known):
    sigma = 0.2
    clean, noisy = blobs(200, size, sigma, seed=size)
    out = CovarianceWiener().denoise(noisy, sigma=sigma if known else None)
    assert out.shape == noisy.shape and out.dtype == np.float32
    assert mse(out, clean) < 0.25 * mse(noisy, clean)


def test_needs_two_images():
    with pytest.raises(BadInput, match="at least 2 images"):
        CovarianceWiener().denoise(np.zeros((1, 8, 8)), sigma=0.1)


def test_aspire_cwf_without_the_extra_says_which_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "aspire", None)  # import aspire -> ImportError
    with pytest.raises(MissingExtra) as err:
        make_baseline("cwf_aspire")
    assert str(err.value) == ("ASPIRE CWF needs the optional package 'aspire', not installed: "
                              "pip install 'cryotune[aspire]'")
    make_baseline("cwf")  # the built-in filter never needs it


def test_aspire_cwf_lowers_mse(blobs, mse):
    pytest.importorskip("aspire")
    clean, noisy = blobs(200, 24, 0.2, seed=2)
    out = AspireCWF().denoise(noisy, sigma=0.2)
    assert out.shape == noisy.shape
    assert mse(out, clean) < 0.25 * mse(noisy, clean)
