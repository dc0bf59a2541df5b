"""The base every classical baseline shares, and the noise-level helpers they use.

A baseline is a dataclass of its parameters with one method, ``denoise(noisy, *, sigma=None)``,
that maps an (n, H, W) float32 stack to a denoised stack of the same shape. ``sigma`` is the
noise standard deviation in the stack's own (normalised) units; when it is None the baseline
estimates it from the stack.

Example::

    import numpy as np
    from cryotune.baselines import estimate_noise_sigma
    noisy = np.random.default_rng(0).normal(0.5, 0.3, (8, 32, 32)).astype(np.float32)
    print(round(estimate_noise_sigma(noisy), 2))   # ~0.3
"""

from __future__ import annotations

import abc
import dataclasses
import logging
from typing import Any, ClassVar

import numpy as np

from cryotune.errors import BadInput

logger = logging.getLogger(__name__)

__all__ = [
    "Baseline",
    "check_stack",
    "estimate_noise_sigma",
    "resolve_sigma",
    "sigma_from_stats",
]

# median(|N(0, 1)|): Donoho's MAD rule turns a median absolute coefficient into a std
_MAD_TO_STD = 0.6744897501960817


class Baseline(abc.ABC):
    """A classical denoiser: parameters as dataclass fields, one abstract method.

    Subclasses set ``name`` (the label reports show), ``licence_note`` (the licence of the code
    it runs and what the method leaves out) and implement :meth:`_denoise`.
    """

    name: ClassVar[str]
    licence_note: ClassVar[str]

    def denoise(self, noisy: np.ndarray, *, sigma: float | None = None) -> np.ndarray:
        """Denoise a stack of images.

        Args:
            noisy: (n, H, W) images, any real dtype; every value must be finite.
            sigma: the noise standard deviation in the images' units (known from the dataset:
                the noise std after normalisation); None estimates it from ``noisy``.

        Returns:
            The denoised (n, H, W) float32 stack.

        Raises:
            BadInput: when ``noisy`` is not a finite (n, H, W) stack or ``sigma`` is not a
                positive number.
        """
        stack = check_stack(noisy)
        if sigma is not None and not (np.isfinite(sigma) and sigma > 0):
            raise BadInput(f"noise sigma must be a positive number, got {sigma!r}",
                           f"{self.name} sigma", "pass the noise std, or None to estimate it")
        out = self._denoise(stack, None if sigma is None else float(sigma))
        return np.asarray(out, dtype=np.float32)

    @abc.abstractmethod
    def _denoise(self, stack: np.ndarray, sigma: float | None) -> np.ndarray:
        """Denoise a checked float32 (n, H, W) stack; ``sigma`` is positive or None."""

    def params(self) -> dict[str, Any]:
        """The baseline's parameters, for the ``config.*`` columns of a study row."""
        return dataclasses.asdict(self)  # type: ignore[call-overload]


def check_stack(noisy: np.ndarray) -> np.ndarray:
    """Return ``noisy`` as a C-contiguous float32 (n, H, W) array, or raise BadInput."""
    stack = np.asarray(noisy)
    if stack.ndim != 3 or min(stack.shape) < 1:
        raise BadInput(f"expected an (n, H, W) image stack, got shape {stack.shape}",
                       "noisy", "pass a non-empty stack of 2-D images")
    if not np.issubdtype(stack.dtype, np.number) or np.iscomplexobj(stack):
        raise BadInput(f"expected real-valued images, got dtype {stack.dtype}", "noisy",
                       "pass float images")
    stack = np.ascontiguousarray(stack, dtype=np.float32)
    bad = ~np.isfinite(stack)
    if bad.any():
        row = int(np.argmax(bad.reshape(len(stack), -1).any(axis=1)))
        raise BadInput("image holds NaN or inf", f"noisy[{row}]", "remove or repair that image")
    return stack


def estimate_noise_sigma(stack: np.ndarray) -> float:
    """Estimate the std of white Gaussian noise in a stack of smooth images.

    Donoho's MAD rule on the finest diagonal wavelet coefficients, pooled over the whole stack
    (the rule of ``skimage.restoration.estimate_sigma``, with orthonormal Haar wavelets so it
    needs no PyWavelets): a smooth image puts almost no energy in the finest diagonal band,
    where white noise of std sigma gives coefficients of std sigma.

    Args:
        stack: (n, H, W) images; images of one pixel in either direction are not allowed.

    Returns:
        The estimated noise std (0 for a noise-free piecewise-constant stack).
    """
    stack = np.asarray(stack, dtype=np.float64)
    h, w = (stack.shape[1] // 2) * 2, (stack.shape[2] // 2) * 2
    if h == 0 or w == 0:
        raise BadInput(f"images of shape {stack.shape[1:]} are too small to estimate noise",
                       "noisy", "pass images of at least 2 x 2 pixels or give sigma")
    x = stack[:, :h, :w]
    diagonal = (x[:, 0::2, 0::2] - x[:, 0::2, 1::2] - x[:, 1::2, 0::2] + x[:, 1::2, 1::2]) / 2
    return float(np.median(np.abs(diagonal)) / _MAD_TO_STD)


def resolve_sigma(stack: np.ndarray, sigma: float | None, name: str) -> float:
    """``sigma`` when given, else :func:`estimate_noise_sigma` of ``stack``.

    Raises:
        BadInput: when the estimate is zero (a noise-free stack): a baseline cannot tune itself
            to no noise.
    """
    if sigma is not None:
        return sigma
    estimate = estimate_noise_sigma(stack)
    if not estimate > 0:
        raise BadInput("cannot estimate the noise level: the images hold no measurable noise",
                       f"{name} sigma", "pass sigma explicitly")
    logger.debug("%s: estimated noise sigma %.4g", name, estimate)
    return estimate


def sigma_from_stats(stats: dict[str, float]) -> float:
    """The noise std implied by a dataset's train statistics (``Dataset.stats()``).

    With noise independent of the signal, var(noisy) = var(clean) + sigma^2.

    Args:
        stats: a mapping with ``clean_var`` and ``noisy_var``.

    Returns:
        sqrt(noisy_var - clean_var).

    Raises:
        BadInput: when noisy_var does not exceed clean_var (no measurable noise).
    """
    excess = float(stats["noisy_var"]) - float(stats["clean_var"])
    if not excess > 0:
        raise BadInput(f"noisy variance {stats['noisy_var']:g} does not exceed clean variance "
                       f"{stats['clean_var']:g}", "manifest stats",
                       "give sigma explicitly or let the baseline estimate it")
    return float(np.sqrt(excess))
