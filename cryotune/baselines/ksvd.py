"""K-SVD denoising (Elad & Aharon 2006) on scikit-learn's orthogonal matching pursuit.

The dictionary is learned on the noisy stack itself, which is how K-SVD denoising works:

1. Start from the 2-D overcomplete DCT (64 x 256 for 8 x 8 patches).
2. Take a random sample of 8 x 8 patches from the stack, remove each patch's mean (DC), and
   alternate ``iterations`` times: error-bounded OMP codes every patch to a residual
   ||x - D a||^2 <= 64 (C sigma)^2 (C = 1.15), then each atom used by some patch becomes the
   first left singular vector of the residual restricted to those patches, with its
   coefficients the matching row (the rank-1 SVD update, which never increases the residual).
3. Code the patches of every image on a grid of the given ``stride`` (1 = every patch, the
   best quality; 2 = a quarter of them, the default; 4 = the fast one), add the DC back and
   average the overlapping estimates together with the noisy image weighted by
   lambda = 30 / sigma (Elad & Aharon's value on a 0-255 scale, i.e. 30 / (255 sigma) for our
   [0, 1] images).

Example::

    import numpy as np
    from cryotune.baselines.ksvd import KSVD
    noisy = np.random.default_rng(0).normal(0.5, 0.3, (8, 32, 32)).astype(np.float32)
    print(KSVD(iterations=2).denoise(noisy, sigma=0.3).shape)   # (8, 32, 32)
"""

from __future__ import annotations

import dataclasses
import logging
import warnings

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from cryotune.baselines._base import Baseline, resolve_sigma
from cryotune.errors import BadInput

__all__ = ["KSVD", "average_patches", "overcomplete_dct", "patch_grid", "sparse_code",
           "update_atoms"]

logger = logging.getLogger(__name__)

PATCH = 8  # Elad & Aharon's patch side
_CHUNK = 16384  # patches coded per OMP call: bounds the (256 x chunk) float64 arrays


def overcomplete_dct(patch: int = PATCH, atoms: int = 256) -> np.ndarray:
    """The separable 2-D overcomplete DCT dictionary of Elad & Aharon.

    Args:
        patch: patch side p.
        atoms: number of atoms, a square k^2 with k >= p.

    Returns:
        (p * p, atoms) float64; columns have unit norm, all but the first have zero mean, and
        row y * p + x holds pixel (y, x) of a patch flattened in C order.
    """
    per_axis = round(np.sqrt(atoms))
    if per_axis * per_axis != atoms or per_axis < patch:
        raise BadInput(f"{atoms} atoms is not a square of at least {patch}^2", "atoms",
                       "use 256 atoms for 8 x 8 patches")
    one_d = np.cos(np.outer(np.arange(patch), np.arange(per_axis)) * np.pi / per_axis)
    one_d[:, 1:] -= one_d[:, 1:].mean(axis=0)
    one_d /= np.linalg.norm(one_d, axis=0)
    return np.kron(one_d, one_d)


def sparse_code(dictionary: np.ndarray, signals: np.ndarray, tol: float) -> np.ndarray:
    """Error-bounded OMP of each column of ``signals`` (scikit-learn's Cholesky Gram OMP).

    Args:
        dictionary: (d, K) with unit-norm columns.
        signals: (d, N) signals, one a column.
        tol: bound on each squared residual ||x - D a||^2.

    Returns:
        (K, N) codes. A signal already within the bound gets no atom; OMP stops early (and may
        miss the bound) only when the selected atoms become linearly dependent.
    """
    from sklearn.linear_model import orthogonal_mp_gram

    codes = np.zeros((dictionary.shape[1], signals.shape[1]))
    norms = np.einsum("ij,ij->j", signals, signals)
    active = np.flatnonzero(norms > tol)
    if active.size:
        with warnings.catch_warnings():
            # dependent atoms at the bound: OMP keeps the best code so far, which is fine here
            warnings.filterwarnings("ignore", message="Orthogonal matching pursuit ended",
                                    category=RuntimeWarning)
            found = orthogonal_mp_gram(dictionary.T @ dictionary, dictionary.T @ signals[:, active],
                                       tol=tol, norms_squared=norms[active], copy_Xy=False)
        codes[:, active] = found.reshape(dictionary.shape[1], -1)
    return codes


def update_atoms(dictionary: np.ndarray, codes: np.ndarray,
                 signals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One K-SVD dictionary pass: a rank-1 SVD update of every atom some signal uses.

    For atom k with users w = {i : codes[k, i] != 0}, the residual without atom k restricted
    to w, E = X_w - D Gamma_w + d_k gamma_k,w, is replaced by its best rank-1 approximation
    s u v^T: d_k = u, gamma_k,w = s v. The supports stay fixed, so the residual
    ||X - D Gamma||_F never increases. Unused atoms are left as they are.

    Args:
        dictionary: (d, K) current dictionary.
        codes: (K, N) current codes.
        signals: (d, N) the signals the codes represent.

    Returns:
        The updated (dictionary, codes), new arrays.
    """
    dictionary = dictionary.copy()
    codes = codes.copy()
    residual = signals - dictionary @ codes
    for k in range(dictionary.shape[1]):
        users = np.flatnonzero(codes[k])
        if users.size == 0:
            continue
        error = residual[:, users] + np.outer(dictionary[:, k], codes[k, users])
        u, s, vt = np.linalg.svd(error, full_matrices=False)
        dictionary[:, k] = u[:, 0]
        codes[k, users] = s[0] * vt[0]
        residual[:, users] = error - np.outer(dictionary[:, k], codes[k, users])
    return dictionary, codes


def _check_side(length: int, patch: int) -> None:
    if length < patch:
        raise BadInput(f"images of side {length} px are smaller than the {patch} px patches",
                       "noisy", f"use images of at least {patch} x {patch} pixels")


def patch_grid(length: int, patch: int, stride: int) -> np.ndarray:
    """Patch start positions along one axis: every ``stride``, plus the last so all is covered."""
    _check_side(length, patch)
    starts = np.arange(0, length - patch + 1, stride)
    if starts[-1] != length - patch:
        starts = np.append(starts, length - patch)
    return starts


def average_patches(patches: np.ndarray, ys: np.ndarray, xs: np.ndarray,
                    noisy: np.ndarray, lam: float) -> np.ndarray:
    """Elad & Aharon's final step: (lam y + sum R^T p) / (lam + number of patches over a pixel).

    Args:
        patches: (n, len(ys), len(xs), p, p) patch estimates at positions (ys[i], xs[j]).
        ys, xs: patch start rows and columns.
        noisy: (n, H, W) noisy images y.
        lam: weight of the noisy image; 0 gives the plain average of the patches.

    Returns:
        (n, H, W) float64 images.
    """
    p = patches.shape[-1]
    total = lam * noisy.astype(np.float64)
    weight = np.full(noisy.shape[1:], float(lam))
    for dy in range(p):
        rows = (ys + dy)[:, None]
        for dx in range(p):
            cols = (xs + dx)[None, :]
            total[:, rows, cols] += patches[:, :, :, dy, dx]  # positions distinct per offset
            weight[rows, cols] += 1.0
    return total / weight


@dataclasses.dataclass
class KSVD(Baseline):
    """K-SVD denoising with a dictionary learned on the noisy stack (8 x 8 patches)."""

    name = "K-SVD"
    licence_note = ("cryotune's own K-SVD (MIT) on scikit-learn's orthogonal matching pursuit "
                    "(BSD-3-Clause).")

    # patch grid step when denoising: 1 is best and 4x slower than 2; 4 is 4x faster than 2
    stride: int = dataclasses.field(default=2, metadata={"range": (1, PATCH)})
    atoms: int = dataclasses.field(default=256, metadata={"choices": (64, 144, 256, 400)})
    # Elad & Aharon's 10 passes; on particle stacks 0 (the plain DCT) is close behind
    iterations: int = dataclasses.field(default=10, metadata={"range": (0, 100)})
    # patches sampled to learn the dictionary; 10000 denoised no better in our trials
    train_patches: int = dataclasses.field(default=4000, metadata={"range": (1, None)})
    c: float = dataclasses.field(default=1.15, metadata={"range": (0.1, 10.0)})  # error-bound gain
    # weight of the noisy image in the final average; None = 30 / (255 sigma)
    lam: float | None = dataclasses.field(default=None, metadata={"range": (0.0, None)})
    seed: int = dataclasses.field(default=0, metadata={"range": (0, None)})  # the patch sample

    def learn(self, stack: np.ndarray, sigma: float) -> np.ndarray:
        """The dictionary K-SVD learns from a random sample of the stack's patches.

        Args:
            stack: (n, H, W) noisy images.
            sigma: noise std.

        Returns:
            (64, atoms) dictionary with unit-norm columns.
        """
        n, h, w = stack.shape
        _check_side(min(h, w), PATCH)
        rng = np.random.default_rng(self.seed)
        count = min(self.train_patches, n * (h - PATCH + 1) * (w - PATCH + 1))
        idx = rng.integers(0, n, count)
        ys = rng.integers(0, h - PATCH + 1, count)
        xs = rng.integers(0, w - PATCH + 1, count)
        windows = sliding_window_view(stack, (PATCH, PATCH), axis=(1, 2))
        sample = windows[idx, ys, xs].reshape(count, -1).astype(np.float64)
        sample = (sample - sample.mean(axis=1, keepdims=True)).T
        tol = PATCH * PATCH * (self.c * sigma) ** 2
        dictionary = overcomplete_dct(PATCH, self.atoms)
        for it in range(self.iterations):
            codes = sparse_code(dictionary, sample, tol)
            dictionary, codes = update_atoms(dictionary, codes, sample)
            logger.debug("K-SVD iteration %d: %.2f atoms per patch", it,
                         np.count_nonzero(codes) / count)
        return dictionary

    def _denoise(self, stack: np.ndarray, sigma: float | None) -> np.ndarray:
        sigma = resolve_sigma(stack, sigma, self.name)
        dictionary = self.learn(stack, sigma)
        tol = PATCH * PATCH * (self.c * sigma) ** 2
        lam = self.lam if self.lam is not None else 30.0 / (255.0 * sigma)
        n, h, w = stack.shape
        ys, xs = patch_grid(h, PATCH, self.stride), patch_grid(w, PATCH, self.stride)
        windows = sliding_window_view(stack, (PATCH, PATCH), axis=(1, 2))
        out = np.empty_like(stack)
        per_image = len(ys) * len(xs)
        step = max(1, _CHUNK // per_image)
        for start in range(0, n, step):
            stop = min(start + step, n)
            patches = windows[start:stop][:, ys][:, :, xs].reshape(-1, PATCH * PATCH)
            patches = patches.astype(np.float64)
            dc = patches.mean(axis=1, keepdims=True)
            codes = sparse_code(dictionary, (patches - dc).T, tol)
            estimate = (dictionary @ codes).T + dc
            estimate = estimate.reshape(stop - start, len(ys), len(xs), PATCH, PATCH)
            out[start:stop] = average_patches(estimate, ys, xs, stack[start:stop], lam)
        return out
