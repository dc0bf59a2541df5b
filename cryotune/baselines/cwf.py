"""Covariance Wiener filtering (after Bhamre, Zhang & Singer 2016), without the CTF.

The images are modelled as y = x + e with x ~ N(mu, C) and white noise e ~ N(0, sigma^2 I).
From the noisy stack itself:

1. mu from every image, and the sample covariance S of the (flattened) images from at most
   ``max_images`` of them, drawn at random, through the eigendecomposition of the smaller of
   the covariance and the Gram matrix (so 128 px images with n < p pixels stay cheap);
2. sigma^2 when not given: the median eigenvalue of S matched to the median of the
   Marchenko-Pastur law (Gavish & Donoho 2014), since nearly all of S's spectrum is noise;
3. the eigenvalues above the Marchenko-Pastur edge sigma^2 (1 + sqrt(p / n))^2 are shrunk to
   estimates of the clean eigenvalues of the spiked model; the rest are set to zero;
4. x_hat = mu + C_clean (C_clean + sigma^2 I)^-1 (y - mu), applied in the kept eigenbasis.

The shrinkers are ASPIRE's: ``frobenius_norm`` (the default: the spike ell - 1 times the
squared cosine between sample and population eigenvectors, so the Wiener weight is the best
one for a noisy eigenvector and falls to zero at the edge), ``operator_norm`` (ell - 1) and
``soft_threshold`` (lambda - edge). Unlike Bhamre et al. there is no CTF correction and no
steerable basis: with CTF-modulated data the filter is not their CWF, hence its name.
:class:`AspireCWF` runs ASPIRE's own implementation when the ``aspire`` extra is installed.

Example::

    import numpy as np
    from cryotune.baselines.cwf import CovarianceWiener
    noisy = np.random.default_rng(0).normal(0.5, 0.3, (64, 16, 16)).astype(np.float32)
    print(CovarianceWiener().denoise(noisy).shape)   # (64, 16, 16)
"""

from __future__ import annotations

import dataclasses
import functools
import logging

import numpy as np

from cryotune.baselines._base import Baseline
from cryotune.errors import BadInput, MissingExtra

__all__ = ["SHRINKERS", "AspireCWF", "CovarianceWiener", "marchenko_pastur_median", "shrink"]

logger = logging.getLogger(__name__)

SHRINKERS = ("frobenius_norm", "operator_norm", "soft_threshold")


@functools.lru_cache(maxsize=64)
def marchenko_pastur_median(beta: float) -> float:
    """Median of the Marchenko-Pastur law of aspect ratio ``beta`` in (0, 1], unit variance.

    That is the limit median eigenvalue of Z Z^T / N for a (beta N) x N matrix Z of i.i.d.
    standard normals.
    """
    from scipy.integrate import quad
    from scipy.optimize import brentq

    lo, hi = (1 - np.sqrt(beta)) ** 2, (1 + np.sqrt(beta)) ** 2

    def cdf(t: float) -> float:
        # substitute x = lo + u^2 to take the 1/sqrt(x - lo) edge singularity at beta = 1
        def integrand(u: float) -> float:
            x = lo + u * u
            return 2 * u * np.sqrt(max((hi - x) * (x - lo), 0.0)) / (2 * np.pi * beta * x)

        return quad(integrand, 0.0, np.sqrt(t - lo), limit=200)[0]

    return float(brentq(lambda t: cdf(t) - 0.5, lo + 1e-12, hi, xtol=1e-12))


def shrink(eigenvalues: np.ndarray, gamma: float, shrinker: str = "frobenius_norm") -> np.ndarray:
    """Clean-eigenvalue estimates, in units of sigma^2, from sample eigenvalues of S / sigma^2.

    Args:
        eigenvalues: sample covariance eigenvalues divided by the noise variance.
        gamma: aspect ratio p / n (pixels over images).
        shrinker: one of :data:`SHRINKERS`.

    Returns:
        Nonnegative clean eigenvalues; zero at and below the edge (1 + sqrt(gamma))^2.
    """
    lam = np.asarray(eigenvalues, dtype=np.float64)
    edge = (1 + np.sqrt(gamma)) ** 2
    out = np.zeros_like(lam)
    above = lam > edge
    x = lam[above]
    if shrinker == "soft_threshold":
        out[above] = x - edge
        return out
    # the population spike ell of the spiked covariance model whose sample spike is x
    b = x + 1 - gamma
    ell = (b + np.sqrt(np.maximum(b * b - 4 * x, 0.0))) / 2
    clean = ell - 1
    if shrinker == "frobenius_norm":
        clean = clean * (1 - gamma / clean**2) / (1 + gamma / clean)
    out[above] = np.maximum(clean, 0.0)
    return out


@dataclasses.dataclass
class CovarianceWiener(Baseline):
    """Covariance Wiener filter in pixel space, fit on the noisy stack itself (no CTF)."""

    name = "CWF (no CTF)"
    licence_note = ("cryotune's own covariance Wiener filter (MIT). It ignores the CTF: on "
                    "CTF-modulated images it is not Bhamre et al.'s CWF.")

    shrinker: str = dataclasses.field(default="frobenius_norm", metadata={"choices": SHRINKERS})
    # images that enter the mean and covariance; the covariance error falls as sqrt(p / n)
    max_images: int = dataclasses.field(default=4000, metadata={"range": (2, None)})
    seed: int = dataclasses.field(default=0, metadata={"range": (0, None)})  # image subsample

    def fit(self, stack: np.ndarray, sigma: float | None = None
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        """Estimate the filter from a noisy stack.

        Args:
            stack: (n, H, W) noisy images, n >= 2.
            sigma: noise std; None estimates it from the Marchenko-Pastur bulk.

        Returns:
            (mean (p,), eigenvectors (p, r), Wiener weights (r,), sigma) with p = H * W.
        """
        n = len(stack)
        if n < 2:
            raise BadInput("a covariance needs at least 2 images", "noisy",
                           "pass a stack of several images")
        flat = stack.reshape(n, -1)
        mean = flat.mean(axis=0, dtype=np.float64)  # cheap: always from every image
        if n > self.max_images:
            pick = np.random.default_rng(self.seed).choice(n, self.max_images, replace=False)
            flat = flat[np.sort(pick)]
        data = flat.astype(np.float64) - mean
        m, p = data.shape
        dof = m - 1 if m == n else m  # a mean from these very images took one degree of freedom
        if dof <= p:  # Gram route: eigenvalues of data data^T share S's nonzero ones
            values, vectors = np.linalg.eigh(data @ data.T)
            values, vectors = values[::-1][:dof] / dof, vectors[:, ::-1][:, :dof]
        else:
            values, vectors = np.linalg.eigh(data.T @ data)
            values, vectors = values[::-1] / dof, vectors[:, ::-1]
        gamma = p / dof
        if sigma is None:
            big, small = max(dof, p), min(dof, p)
            sigma2 = float(np.median(values) / (big / dof * marchenko_pastur_median(small / big)))
            if not sigma2 > 0:
                raise BadInput("cannot estimate the noise level: the images hold no measurable "
                               "noise", f"{self.name} sigma", "pass sigma explicitly")
            sigma = float(np.sqrt(sigma2))
            logger.debug("CWF: Marchenko-Pastur noise sigma %.4g", sigma)
        clean = shrink(values / sigma**2, gamma, self.shrinker)
        keep = np.flatnonzero(clean > 0)
        weights = clean[keep] / (clean[keep] + 1.0)
        if dof <= p:  # Gram eigenvectors v give pixel eigenvectors data^T v / ||data^T v||
            basis = data.T @ vectors[:, keep]
            basis /= np.linalg.norm(basis, axis=0)
        else:
            basis = vectors[:, keep]
        logger.debug("CWF: %d of %d components above the Marchenko-Pastur edge", keep.size,
                     values.size)
        return mean, basis, weights, sigma

    def _denoise(self, stack: np.ndarray, sigma: float | None) -> np.ndarray:
        mean, basis, weights, _ = self.fit(stack, sigma)
        flat = stack.reshape(len(stack), -1).astype(np.float64) - mean
        out = mean + ((flat @ basis) * weights) @ basis.T
        return out.reshape(stack.shape)


@dataclasses.dataclass
class AspireCWF(Baseline):
    """ASPIRE's CWF (steerable Fourier-Bessel basis, Frobenius shrinkage), no CTF.

    Needs the ``aspire`` extra (ASPIRE >= 0.12, whose basis methods take and return
    ``Image``/``Coef`` objects). ASPIRE creates a ``logs/`` folder and sets a global exception
    hook when imported, so it is imported only here, when this baseline runs.
    """

    name = "CWF (ASPIRE, no CTF)"
    licence_note = "ASPIRE-Python's covariance Wiener filter (GPL-3.0); no CTF is given to it."

    def __post_init__(self) -> None:
        _import_aspire()

    def _denoise(self, stack: np.ndarray, sigma: float | None) -> np.ndarray:
        _import_aspire()
        from aspire.basis import FFBBasis2D
        from aspire.covariance import RotCov2D
        from aspire.image import Image

        if stack.shape[1] != stack.shape[2]:
            raise BadInput(f"ASPIRE's CWF needs square images, got {stack.shape[1:]}", "noisy",
                           "crop the images to a square box or use the 'cwf' baseline")
        if sigma is None:
            _, _, _, sigma = CovarianceWiener().fit(stack)
        basis = FFBBasis2D(stack.shape[1], dtype=np.float64)
        coefs = basis.evaluate_t(Image(stack.astype(np.float64)))
        cov = RotCov2D(basis)
        mean = cov.get_mean(coefs)
        covar = cov.get_covar(coefs, mean_coef=mean, noise_var=sigma**2,
                              covar_est_opt={"shrinker": "frobenius_norm"})
        estimate = cov.get_cwf_coefs(coefs, mean_coef=mean, covar_coef=covar,
                                     noise_var=sigma**2)
        return basis.evaluate(estimate).asnumpy()


def _import_aspire() -> None:
    try:
        import aspire  # noqa: F401
    except ImportError:
        raise MissingExtra("ASPIRE CWF", "aspire", "aspire") from None
