"""3D reconstruction from images with known poses: direct Fourier inversion.

:func:`reconstruct` inverts the central-slice theorem. With the pose convention of
:mod:`cryotune.data.geometry` (the image is the projection along z of ``R @ r``), the 2D Fourier
transform of an image equals the volume's 3D transform on the plane ``k = R.T @ (kx, ky, 0)
= kx * R[0] + ky * R[1]``. Each image is zero-padded to ``pad * n`` pixels, transformed with
``rfft2(ifftshift(image))`` (so the image origin at index ``n // 2`` is the phase origin) and
every Fourier sample within the Nyquist circle of one half-plane (``kx > 0``, or ``kx == 0`` and
``ky >= 0``) is rotated into a ``(pad * n)^3`` grid with trilinear (or nearest) gridding:
values go into one accumulator, gridding weights into another. The other half-plane is the
Friedel mate (``F(-k) = conj F(k)`` for real images), added in one step at the end by mirroring
both accumulators through the origin. Then the sampling density is divided out, ``V(k) =
A(k) / (W(k) + reg * mean(W))`` (the small ``reg`` keeps barely sampled voxels from blowing
up), the volume comes back with ``fftshift(ifftn(ifftshift(V))).real``, the central ``n^3`` is
cropped, and the real-space apodisation of the gridding kernel is divided out (``sinc^2`` for
trilinear, ``sinc`` for nearest, argument ``x / (pad * n)``). The volume has the same scale as
the images: an image is the sum over z of the volume's voxels.

Padding: 2 by default, chosen by measurement. On 2,000 exact views of a Gaussian-blob molecule
at 32 px (``tests/validate/test_reconstruct.py``), the relative error against the rendered
truth is 17.6% with padding 1, 2.0% with padding 2 and 0.9% with padding 3 (trilinear); FSC
against the truth stays >= 0.99 to 12/16 of Nyquist with padding 2 (10/16 with padding 1).
Padding 2 costs about 4x the gridding work of padding 1 (four times the Fourier samples per
image) and 8x the grid memory (``benchmarks/reconstruct_throughput.py`` has the rates). The
``sinc^2`` correction halves the error at padding 2 (4.1% without) but slightly over-corrects
the lowest frequencies, which every view samples: the total mass comes out about 2% high.

Shifts follow RELION (``rlnOriginX/Y``; ``rlnOriginX/YAngst`` divided by the pixel size): the
origin is the translation that moves the particle to the box centre, i.e. the particle sits at
``-origin`` in the recorded image, and reconstruction translates each image by ``+origin``:
``F(k) *= exp(-2 pi i k . origin)`` with ``k`` in cycles per pixel, as RELION's
``shiftImageInFourierTransform(F, F, N, originX, originY)`` does in ``relion_reconstruct``
(and as :mod:`cryotune.data.star` documents for ``shifts_px``).

CTF: :func:`cryotune.data.ctf.ctf_2d` (RELION's ``CTF::getCTF``, positive
at low frequency, defocus U/V/angle as in ``rlnDefocusU/V/Angle``), evaluated on the padded
grid. ``mode="wiener"`` accumulates ``CTF * F`` and ``CTF^2`` weights (``reg`` is then the
Wiener constant, relative to the mean weight); ``mode="phase_flip"`` accumulates
``sign(CTF) * F`` with unit weights.

Example::

    import numpy as np
    from cryotune.data.geometry import quaternion_to_matrix, random_quaternions
    from cryotune.validate.reconstruct import reconstruct
    rng = np.random.default_rng(0)
    rotations = quaternion_to_matrix(random_quaternions(500, rng))
    images = rng.standard_normal((500, 32, 32)).astype(np.float32)
    volume = reconstruct(images, rotations)          # (32, 32, 32) float32 [z, y, x]
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from itertools import product

import numpy as np
import torch

from cryotune.data.ctf import ctf_2d
from cryotune.errors import BadInput

log = logging.getLogger(__name__)

__all__ = ["CTF_MODES", "INTERPOLATIONS", "reconstruct"]

INTERPOLATIONS = ("trilinear", "nearest")
CTF_MODES = ("wiener", "phase_flip")
CTF_KEYS = ("voltage_kv", "cs_mm", "amplitude_contrast", "pixel_size", "defocus")


def _check(images, rotations, shifts_px, ctf, interpolation, pad, chunk):
    if images.ndim != 3 or images.shape[1] != images.shape[2] or images.shape[0] == 0:
        raise BadInput(f"images must be a non-empty stack of square images (n, H, H), got shape "
                       f"{images.shape}", "images", "pass an (n, H, H) array")
    n = images.shape[0]
    if rotations.shape != (n, 3, 3):
        raise BadInput(f"rotations must have shape ({n}, 3, 3), got {rotations.shape}",
                       "rotations", "pass one 3x3 rotation matrix per image")
    if shifts_px is not None and np.shape(shifts_px) != (n, 2):
        raise BadInput(f"shifts_px must have shape ({n}, 2), got {np.shape(shifts_px)}",
                       "shifts_px", "pass one (x, y) origin in pixels per image, or None")
    if interpolation not in INTERPOLATIONS:
        raise BadInput(f"unknown interpolation {interpolation!r}", "interpolation",
                       f"use one of {', '.join(INTERPOLATIONS)}")
    if int(pad) != pad or pad < 1 or int(chunk) != chunk or chunk < 1:
        raise BadInput(f"pad and chunk must be positive integers, got pad={pad}, chunk={chunk}",
                       "pad/chunk", "pass e.g. pad=2, chunk=32")
    for name, arr in (("images", images), ("rotations", rotations), ("shifts_px", shifts_px)):
        if arr is not None and not np.all(np.isfinite(arr)):
            bad = ~np.isfinite(np.asarray(arr).reshape(n, -1))
            row = int(np.nonzero(bad.any(axis=1))[0][0])
            raise BadInput(f"{name} contains NaN or inf", f"{name}[{row}]",
                           "drop or repair that row (poses must be known to reconstruct)")
    if ctf is not None:
        missing = [k for k in CTF_KEYS if k not in ctf]
        if missing:
            raise BadInput(f"ctf is missing {', '.join(missing)}", "ctf",
                           f"pass a mapping with {', '.join(CTF_KEYS)} (and optionally mode)")
        if len(ctf["defocus"]) != n:
            raise BadInput(f"ctf defocus has {len(ctf['defocus'])} rows for {n} images",
                           "ctf['defocus']", "pass one defocus row per image")
        if ctf.get("mode", "wiener") not in CTF_MODES:
            raise BadInput(f"unknown CTF mode {ctf['mode']!r}", "ctf['mode']",
                           f"use one of {', '.join(CTF_MODES)}")


def _device(device: str):
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _half_plane(P: int):
    """Frequencies (kx, ky) in 1/P cycles per pixel of one Friedel half of the Nyquist disc,
    and their flat indices in ``fftshift(rfft2(x), axes=-2)`` of a (P, P) image."""
    ky, kx = np.meshgrid(np.arange(P) - P // 2, np.arange(P // 2 + 1), indexing="ij")
    keep = ((kx > 0) | ((kx == 0) & (ky >= 0))) & (kx**2 + ky**2 <= (P // 2) ** 2)
    flat = np.nonzero(keep.ravel())[0]
    return kx.ravel()[flat].astype(np.float32), ky.ravel()[flat].astype(np.float32), flat


def _insert(acc, wgt, pos, val, weight, P: int, interpolation: str) -> None:
    """Grid complex values ``val`` (m,) with weights ``weight`` (m,) at fractional voxel positions
    ``pos`` (m, 3) = (x, y, z) in [0, P] into flat ``(P + 2)^3`` accumulators.

    The two extra planes per axis stand for indices P and P + 1, which :func:`_fold` adds back
    onto 0 and 1 (the DFT is periodic); that keeps the inner loop free of index wrapping. The
    eight trilinear corners of a sample are adjacent in the index list, so the scatter revisits
    cache lines it has just touched.
    """
    S = P + 2
    pos = pos.clamp_(0, P)
    if interpolation == "nearest":
        i = torch.round(pos).long()
        flat = (i[:, 2] * S + i[:, 1]) * S + i[:, 0]
        acc.index_add_(0, flat, val * weight)
        wgt.index_add_(0, flat, weight)
        return
    base = torch.floor(pos)
    f1 = pos - base
    f0 = 1.0 - f1
    i = base.long()
    flat = (i[:, 2] * S + i[:, 1]) * S + i[:, 0]
    offsets = torch.tensor([z * S * S + y * S + x for z, y, x in product((0, 1), repeat=3)],
                           device=flat.device)
    w = torch.empty((8, len(flat)), dtype=pos.dtype, device=pos.device)
    for c, (z, y) in enumerate(product((0, 1), repeat=2)):
        wzy = (f1 if z else f0)[:, 2] * (f1 if y else f0)[:, 1] * weight
        torch.mul(wzy, f0[:, 0], out=w[2 * c])
        torch.mul(wzy, f1[:, 0], out=w[2 * c + 1])
    w = w.t().contiguous()
    idx = (flat[:, None] + offsets).reshape(-1)
    acc.index_add_(0, idx, (val[:, None] * w).reshape(-1))
    wgt.index_add_(0, idx, w.reshape(-1))


def _fold(x, P: int):
    """Add the planes at indices P and P + 1 of a ``(P + 2)^3`` grid onto 0 and 1: ``(P)^3``."""
    for axis in range(3):
        x.narrow(axis, 0, 2).add_(x.narrow(axis, P, 2))
    return x[:P, :P, :P]


def _mirror(x):
    """``x[(-k) mod P]`` on each axis of a centred (origin at P // 2) cubic grid."""
    s = 1 - x.shape[0] % 2
    return torch.roll(torch.flip(x, dims=(0, 1, 2)), shifts=(s, s, s), dims=(0, 1, 2))


def reconstruct(images, rotations, *, shifts_px=None, ctf: Mapping | None = None,
                chunk: int = 32, device: str = "auto", interpolation: str = "trilinear",
                pad: int = 2, reg: float = 1e-3) -> np.ndarray:
    """Reconstruct a volume from images with known poses by direct Fourier inversion.

    Args:
        images: ``(n, H, H)`` images ``[y, x]``, origin at ``H // 2``.
        rotations: ``(n, 3, 3)`` pose matrices (:mod:`cryotune.data.geometry` convention, equal to
            RELION's ``Euler_angles2matrix(rot, tilt, psi)``).
        shifts_px: optional ``(n, 2)`` RELION origins ``(x, y)`` in pixels; each image is
            translated by ``+origin`` before insertion.
        ctf: optional mapping with ``voltage_kv``, ``cs_mm``, ``amplitude_contrast``,
            ``pixel_size`` (Angstrom), ``defocus`` (``(n,)`` or ``(n, 3)`` rows of defocus U, V
            in Angstrom and astigmatism angle in degrees) and optionally ``mode``
            (``"wiener"``, the default, or ``"phase_flip"``).
        chunk: images gridded per step; bounds memory (about ``chunk * 100 * (pad * H)^2``
            bytes). 32 keeps the scatter in cache on a CPU; a GPU is faster with a few hundred.
        device: ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda"``.
        interpolation: ``"trilinear"`` or ``"nearest"`` gridding.
        pad: Fourier oversampling factor (2 by default, see the module docstring).
        reg: density-correction regulariser, a fraction of the mean accumulated weight.

    Returns:
        float32 volume ``(H, H, H)`` indexed ``[z, y, x]``, origin at ``H // 2``.

    Raises:
        BadInput: shapes disagree, values are not finite, or an option is unknown.
    """
    images = np.asarray(images)
    rotations = np.asarray(rotations)
    _check(images, rotations, shifts_px, ctf, interpolation, pad, chunk)
    n, N = images.shape[0], images.shape[1]
    dev = _device(device)
    P = int(pad) * N
    kx_np, ky_np, sel_np = _half_plane(P)
    kx, ky = torch.from_numpy(kx_np).to(dev), torch.from_numpy(ky_np).to(dev)
    sel = torch.from_numpy(sel_np).to(dev)
    acc = torch.zeros((P + 2) ** 3, dtype=torch.complex64, device=dev)
    wgt = torch.zeros((P + 2) ** 3, dtype=torch.float32, device=dev)
    lo = P // 2 - N // 2
    t0 = time.perf_counter()
    for start in range(0, n, int(chunk)):
        stop = min(n, start + int(chunk))
        img = torch.as_tensor(images[start:stop], dtype=torch.float32).to(dev)
        img = torch.nn.functional.pad(img, (lo, P - N - lo, lo, P - N - lo))
        F = torch.fft.rfft2(torch.fft.ifftshift(img, dim=(-2, -1)))
        F = torch.fft.fftshift(F, dim=-2).reshape(stop - start, -1)[:, sel]
        if shifts_px is not None:
            s = torch.as_tensor(np.asarray(shifts_px[start:stop]), dtype=torch.float32).to(dev)
            phase = (-2.0 * np.pi / P) * (s[:, :1] * kx + s[:, 1:] * ky)
            F = F * torch.polar(torch.ones_like(phase), phase)
        weight = torch.ones(F.shape, dtype=torch.float32, device=dev)
        if ctf is not None:
            c = ctf_2d((P, P), np.asarray(ctf["defocus"])[start:stop], ctf["pixel_size"],
                       ctf["voltage_kv"], ctf["cs_mm"], ctf["amplitude_contrast"], half=True)
            c = np.fft.fftshift(c, axes=-2).reshape(stop - start, -1)[:, sel_np]
            c = torch.as_tensor(c, dtype=torch.float32).to(dev)
            if ctf.get("mode", "wiener") == "wiener":
                F, weight = F * c, c * c
            else:
                F = F * torch.sign(c)
        R = torch.as_tensor(rotations[start:stop], dtype=torch.float32).to(dev)
        pos = kx[None, :, None] * R[:, None, 0, :] + ky[None, :, None] * R[:, None, 1, :]
        _insert(acc, wgt, pos.reshape(-1, 3) + P // 2, F.reshape(-1), weight.reshape(-1), P,
                interpolation)
    acc, wgt = _fold(acc.view((P + 2,) * 3), P), _fold(wgt.view((P + 2,) * 3), P)
    acc.add_(_mirror(acc).conj())  # in place: the grids are the largest arrays here
    wgt.add_(_mirror(wgt))
    acc.div_(wgt.add_(reg * wgt[wgt > 0].mean()))
    vol = torch.fft.fftshift(torch.fft.ifftn(torch.fft.ifftshift(acc))).real
    vol = vol[lo:lo + N, lo:lo + N, lo:lo + N].double().cpu().numpy()
    apod = np.sinc((np.arange(N) - N // 2) / P) ** (2 if interpolation == "trilinear" else 1)
    vol /= apod[:, None, None] * apod[None, :, None] * apod[None, None, :]
    log.debug("reconstructed %d images into %d^3 (pad %d) on %s in %.2f s", n, N, pad, dev,
              time.perf_counter() - t0)
    return vol.astype(np.float32)

