"""K-SVD: the DCT start, error-bounded OMP, the rank-1 atom update, patch averaging, and that
it lowers the MSE of noisy particle stacks."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.linalg import svdvals

from cryotune.baselines.ksvd import (
    KSVD,
    average_patches,
    overcomplete_dct,
    patch_grid,
    sparse_code,
    update_atoms,
)
from cryotune.errors import BadInput


def _signals(count: int, seed: int = 0) -> tuple[np.ndarray, float]:
    """DC-free 8 x 8 patches: three DCT atoms each plus white noise, and the OMP bound."""
    rng = np.random.default_rng(seed)
    dct = overcomplete_dct()
    picks = rng.integers(1, 256, (count, 3))
    signals = np.stack([dct[:, p] @ rng.normal(0, 1, 3) for p in picks], axis=1)
    sigma = 0.1
    signals += rng.normal(0, sigma, signals.shape)
    signals -= signals.mean(axis=0)
    return signals, 64 * (1.15 * sigma) ** 2


def test_overcomplete_dct_is_the_separable_unit_norm_dictionary():
    dct = overcomplete_dct()
    assert dct.shape == (64, 256)
    np.testing.assert_allclose(np.linalg.norm(dct, axis=0), 1.0, rtol=1e-12)
    np.testing.assert_allclose(dct[:, 0], 1 / 8)  # the DC atom
    np.testing.assert_allclose(dct[:, 1:].sum(axis=0), 0.0, atol=1e-12)
    assert np.linalg.matrix_rank(dct) == 64
    # atom (k1, k2) is the outer product of the 1-D atoms, rows then columns
    i = np.arange(8)
    v3 = np.cos(i * 3 * np.pi / 16)
    v3 -= v3.mean()
    v5 = np.cos(i * 5 * np.pi / 16)
    v5 -= v5.mean()
    atom = np.outer(v3, v5) / (np.linalg.norm(v3) * np.linalg.norm(v5))
    np.testing.assert_allclose(dct[:, 3 * 16 + 5].reshape(8, 8), atom, atol=1e-12)


def test_omp_respects_the_error_bound():
    signals, tol = _signals(300)
    signals[:, :20] *= 0.01  # already within the bound: no atom at all
    dct = overcomplete_dct()
    codes = sparse_code(dct, signals, tol)
    residual = np.sum((signals - dct @ codes) ** 2, axis=0)
    assert np.all(residual <= tol * (1 + 1e-9))
    assert not codes[:, :20].any()
    used = np.count_nonzero(codes, axis=0)
    above = np.sum(signals**2, axis=0) > tol
    assert np.all(used[above] >= 1) and not used[~above].any()
    assert np.median(used[above]) <= 8  # sparse: the patches hold three atoms


def test_atom_update_does_not_increase_the_residual():
    signals, tol = _signals(400, seed=1)
    dct = overcomplete_dct()
    codes = sparse_code(dct, signals, tol)
    before = np.linalg.norm(signals - dct @ codes)
    new_dict, new_codes = update_atoms(dct, codes, signals)
    after = np.linalg.norm(signals - new_dict @ new_codes)
    assert after <= before * (1 + 1e-12)
    assert after < 0.99 * before
    assert np.all((new_codes != 0) <= (codes != 0))  # supports kept
    np.testing.assert_allclose(np.linalg.norm(new_dict, axis=0), 1.0, rtol=1e-12)
    unused = ~codes.any(axis=1)
    np.testing.assert_array_equal(new_dict[:, unused], dct[:, unused])


def test_single_atom_update_is_the_best_rank_one_fit():
    signals, tol = _signals(200, seed=2)
    dct = overcomplete_dct()
    codes = sparse_code(dct, signals, tol)
    k = int(np.argmax(np.count_nonzero(codes, axis=1)))
    users = np.flatnonzero(codes[k])
    others = codes.copy()
    others[k] = 0
    error = (signals - dct @ others)[:, users]  # the residual without atom k, on its users
    # with atom k the only one in use, the update touches it alone and must reach the
    # Eckart-Young optimum: the rank-1 fit error is the norm of the other singular values
    only_k = np.zeros_like(codes)
    only_k[k, users] = codes[k, users]
    new_dict, new_codes = update_atoms(dct, only_k, _embed(error, users, signals.shape[1]))
    fit = np.linalg.norm(error - np.outer(new_dict[:, k], new_codes[k, users]))
    assert fit == pytest.approx(np.sqrt(np.sum(svdvals(error)[1:] ** 2)), rel=1e-9)
    np.testing.assert_array_equal(np.delete(new_dict, k, axis=1), np.delete(dct, k, axis=1))


def _embed(block: np.ndarray, columns: np.ndarray, total: int) -> np.ndarray:
    out = np.zeros((block.shape[0], total))
    out[:, columns] = block
    return out


@pytest.mark.parametrize("size, stride", [(19, 3), (24, 1), (16, 8)])
def test_patch_averaging_reproduces_exact_patches(size, stride):
    images = np.random.default_rng(size).normal(size=(2, size, size + 1))
    ys, xs = patch_grid(size, 8, stride), patch_grid(size + 1, 8, stride)
    assert ys[-1] == size - 8 and xs[-1] == size + 1 - 8
    patches = np.stack([[[img[y:y + 8, x:x + 8] for x in xs] for y in ys] for img in images])
    for lam in (0.0, 0.7):
        np.testing.assert_allclose(average_patches(patches, ys, xs, images, lam), images,
                                   atol=1e-12)


def test_images_smaller_than_a_patch_are_rejected():
    with pytest.raises(BadInput, match="smaller than the 8 px patches"):
        KSVD().denoise(np.zeros((2, 6, 6)), sigma=0.1)


@pytest.mark.parametrize("size", [24, 21])
@pytest.mark.parametrize("known", [True, False])
def test_lowers_mse(blobs, mse, size, known):
    sigma = 0.2
    clean, noisy = blobs(24, size, sigma, seed=size)
    ksvd = KSVD(iterations=3, train_patches=2000)
    out = ksvd.denoise(noisy, sigma=sigma if known else None)
    assert out.shape == noisy.shape and out.dtype == np.float32
    assert mse(out, clean) < 0.25 * mse(noisy, clean)
