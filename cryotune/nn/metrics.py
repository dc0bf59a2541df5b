"""Image-quality metrics per image, batched on the tensors' device: MSE, PSNR, SSIM.

Images are N x 1 x H x W or N x H x W, clean references normalised to [0, 1] (data range 1).
Each function returns one value per image, shape (N,), in the inputs' dtype (float32 for
half-precision or integer inputs). ``ssim`` is scikit-image's
``structural_similarity(x_i, y_i, data_range=...)`` with its defaults: a 7 x 7 uniform window,
sample covariance (N / (N - 1) with N = 49), K1 = 0.01, K2 = 0.03, averaged over the region
where the window fits (scikit-image crops (7 - 1) // 2 pixels from each side).

Example::

    import torch
    from cryotune.nn.metrics import mse, psnr, ssim

    clean = torch.rand(8, 1, 32, 32)
    noisy = clean + 0.1 * torch.randn_like(clean)
    print(mse(noisy, clean), psnr(noisy, clean), ssim(noisy, clean))
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["mse", "psnr", "ssim"]

_WIN = 7  # scikit-image's default win_size
_K1, _K2 = 0.01, 0.03


def _as_images(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Check shapes and return N x H x W images of one float32 or float64 dtype."""
    if x.shape != y.shape:
        raise ValueError(f"images differ in shape: {tuple(x.shape)} and {tuple(y.shape)}")
    dtype = torch.promote_types(x.dtype, y.dtype)
    if dtype not in (torch.float32, torch.float64):  # half precision cannot resolve SSIM
        dtype = torch.float32
    x, y = x.to(dtype), y.to(dtype)
    if x.dim() == 4 and x.shape[1] == 1:
        return x[:, 0], y[:, 0]
    if x.dim() == 3:
        return x, y
    raise ValueError(f"expected N x 1 x H x W or N x H x W images, got shape {tuple(x.shape)}")


def mse(x: Tensor, y: Tensor) -> Tensor:
    """Mean squared error of each image pair.

    Args:
        x, y: N x 1 x H x W or N x H x W.

    Returns:
        (N,) tensor.
    """
    x, y = _as_images(x, y)
    return (x - y).square().mean(dim=(-2, -1))


def psnr(x: Tensor, y: Tensor, data_range: float = 1.0) -> Tensor:
    """Peak signal-to-noise ratio 10 log10(data_range^2 / MSE) in dB (inf for equal images).

    Args:
        x, y: N x 1 x H x W or N x H x W.
        data_range: the images' value range (1 for normalised references).

    Returns:
        (N,) tensor.
    """
    return 10 * torch.log10(data_range**2 / mse(x, y))


def ssim(x: Tensor, y: Tensor, data_range: float = 1.0) -> Tensor:
    """Mean structural similarity of each image pair, as scikit-image defines it.

    Args:
        x, y: N x 1 x H x W or N x H x W, at least 7 x 7.
        data_range: the images' value range (1 for normalised references).

    Returns:
        (N,) tensor.

    Raises:
        ValueError: for mismatched shapes or images smaller than the 7 x 7 window.
    """
    x, y = _as_images(x, y)
    if min(x.shape[-2:]) < _WIN:
        raise ValueError(f"SSIM needs images of at least {_WIN} x {_WIN} pixels, got "
                         f"{tuple(x.shape[-2:])}")
    # Local means of x, y, x^2, y^2, xy over every 7 x 7 window that fits, in one pass.
    stack = torch.stack([x, y, x * x, y * y, x * y], dim=1)
    ux, uy, uxx, uyy, uxy = F.avg_pool2d(stack, _WIN, stride=1).unbind(dim=1)
    cov_norm = _WIN**2 / (_WIN**2 - 1)
    vx = cov_norm * (uxx - ux * ux)
    vy = cov_norm * (uyy - uy * uy)
    vxy = cov_norm * (uxy - ux * uy)
    c1 = (_K1 * data_range) ** 2
    c2 = (_K2 * data_range) ** 2
    s = (2 * ux * uy + c1) * (2 * vxy + c2) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.mean(dim=(-2, -1))
