"""Fourier shell correlation, resolution, and the gold-standard and ground-truth FSC.

:func:`fsc` correlates two volumes shell by shell (``np.fft`` conventions, see its docstring);
:func:`resolution` reads the resolution in Angstrom off the first crossing of a threshold (0.143
for half maps, 0.5 against a known truth); :func:`half_map_fsc` splits the images in two seeded
random halves by sample id, reconstructs each with
:func:`cryotune.validate.reconstruct.reconstruct` and correlates them; :func:`truth_fsc`
correlates the full reconstruction with a known volume.

Example::

    import numpy as np
    from cryotune.validate.fsc import fsc, resolution
    rng = np.random.default_rng(0)
    a = rng.standard_normal((32, 32, 32))
    freq, curve = fsc(a, a + 0.5 * rng.standard_normal(a.shape))
    print(resolution(freq, curve, pixel_size=1.5))     # Nyquist (3.0): never below 0.143
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from cryotune.errors import BadInput

__all__ = ["crossing", "fsc", "fsc_summary", "half_map_fsc", "resolution", "truth_fsc"]


def fsc(v1, v2) -> tuple[np.ndarray, np.ndarray]:
    """Fourier shell correlation of two volumes on the same cubic grid.

    Shells follow ``np.fft`` conventions: a voxel of ``np.fft.fftn(v)`` has the integer frequency
    vector ``k = np.fft.fftfreq(n) * n`` per axis and lies in shell ``s = round(|k|)``; shells run
    from 0 to ``n // 2`` (Nyquist); voxels beyond are left out. The volumes' origins must agree
    (the correlation is then independent of where that origin is).

    Args:
        v1, v2: real volumes of equal shape ``(n, n, n)``.

    Returns:
        ``(freq, curve)``: shell frequencies ``s / n`` in cycles per pixel (divide by the pixel
        size for 1/Angstrom), and ``sum Re(F1 conj F2) / sqrt(sum |F1|^2 sum |F2|^2)`` per shell
        (0 for an empty shell).
    """
    v1, v2 = np.asarray(v1, dtype=np.float64), np.asarray(v2, dtype=np.float64)
    if v1.shape != v2.shape or v1.ndim != 3 or len(set(v1.shape)) != 1:
        raise BadInput(f"FSC needs two cubic volumes of one shape, got {v1.shape} and {v2.shape}",
                       "fsc", "reconstruct both volumes at the same box size")
    n = v1.shape[0]
    F1, F2 = np.fft.fftn(v1), np.fft.fftn(v2)
    k = np.fft.fftfreq(n) * n
    shell = np.rint(np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2))
    keep = shell <= n // 2
    s = shell[keep].astype(np.int64)
    num = np.bincount(s, (F1 * F2.conj()).real[keep], minlength=n // 2 + 1)
    den = np.sqrt(np.bincount(s, np.abs(F1[keep]) ** 2, minlength=n // 2 + 1)
                  * np.bincount(s, np.abs(F2[keep]) ** 2, minlength=n // 2 + 1))
    curve = np.divide(num, den, out=np.zeros_like(num), where=den > 0)
    return np.arange(n // 2 + 1) / n, curve


def crossing(freq, curve, threshold: float = 0.143) -> float | None:
    """Frequency where ``curve`` first falls below ``threshold``; None when it never does.

    The search starts at shell 1: shell 0 is the lone zero-frequency voxel, whose correlation is
    +-1 by construction (the sign of the product of the two volumes' sums), not a resolution.
    The crossing is interpolated linearly between the last shell at or above the threshold and
    the first below it (exact for a curve that is linear between them); a curve below the
    threshold from shell 1 on crosses at ``freq[1]``, the coarsest resolution a box can show.
    """
    freq, curve = np.asarray(freq, dtype=np.float64), np.asarray(curve, dtype=np.float64)
    below = np.nonzero(curve[1:] < threshold)[0]
    if len(below) == 0:
        return None
    i = int(below[0]) + 1
    if curve[i - 1] < threshold:
        return float(freq[i])
    t = (curve[i - 1] - threshold) / (curve[i - 1] - curve[i])
    return float(freq[i - 1] + t * (freq[i] - freq[i - 1]))


def resolution(freq, curve, pixel_size: float, threshold: float = 0.143) -> float:
    """Resolution in Angstrom at the first crossing of ``threshold`` (see :func:`crossing`).

    Args:
        freq: shell frequencies in cycles per pixel, as :func:`fsc` returns.
        curve: FSC values per shell.
        pixel_size: Angstrom per pixel.
        threshold: 0.143 for half maps (gold standard), 0.5 against a known truth.

    Returns:
        ``pixel_size / f_cross``; ``2 * pixel_size`` (Nyquist) when the curve never falls below
        the threshold (:func:`fsc_summary` flags that case).
    """
    f = crossing(freq, curve, threshold)
    return 2.0 * pixel_size if f is None else float(pixel_size / f)


def fsc_summary(v1, v2, pixel_size: float) -> dict:
    """FSC of two volumes with the resolutions at 0.143 and 0.5.

    Returns:
        dict with ``freq`` (cycles per pixel), ``curve``, ``res_0143_A``, ``res_05_A`` and
        ``crossed_0143``, ``crossed_05`` (False: the curve stays above the threshold up to
        Nyquist and the resolution is reported as Nyquist, ``2 * pixel_size``).
    """
    freq, curve = fsc(v1, v2)
    out = {"freq": freq, "curve": curve}
    for key, thr in (("0143", 0.143), ("05", 0.5)):
        out[f"res_{key}_A"] = resolution(freq, curve, pixel_size, thr)
        out[f"crossed_{key}"] = crossing(freq, curve, thr) is not None
    return out


def _subset(shifts_px, ctf, rows):
    shifts = None if shifts_px is None else np.asarray(shifts_px)[rows]
    if ctf is None:
        return shifts, None
    return shifts, {**ctf, "defocus": np.asarray(ctf["defocus"])[rows]}


def half_map_fsc(images, rotations, ids, *, pixel_size: float, seed: int = 0, shifts_px=None,
                 ctf: Mapping | None = None, **kwargs) -> dict:
    """Gold-standard FSC: reconstruct two random halves of the images and correlate them.

    The halves are a seeded random split of the sorted sample ids, so the same ids and seed give
    the same halves whatever the order of the images.

    Args:
        images, rotations, shifts_px, ctf: as for :func:`reconstruct`.
        ids: ``(n,)`` unique sample ids.
        pixel_size: Angstrom per pixel.
        seed: seed of the split.
        **kwargs: passed to :func:`reconstruct` (``interpolation``, ``pad``, ``device``...).

    Returns:
        :func:`fsc_summary`'s dict plus ``half_maps`` (the two volumes) and ``n_half``.
    """
    ids = np.asarray(ids)
    if ids.shape != (len(images),) or len(np.unique(ids)) != len(ids) or len(ids) < 2:
        raise BadInput(f"ids must be {len(images)} unique values, one per image", "ids",
                       "pass the dataset's sample ids")
    order = np.argsort(ids, kind="stable")
    first = np.zeros(len(ids), dtype=bool)
    first[order[np.random.default_rng(seed).permutation(len(ids))[: len(ids) // 2]]] = True
    from cryotune.validate.reconstruct import reconstruct  # torch loads only when needed

    maps = []
    for rows in (first, ~first):
        shifts, sub_ctf = _subset(shifts_px, ctf, rows)
        maps.append(reconstruct(np.asarray(images)[rows], np.asarray(rotations)[rows],
                                shifts_px=shifts, ctf=sub_ctf, **kwargs))
    out = fsc_summary(maps[0], maps[1], pixel_size)
    out.update(half_maps=tuple(maps), n_half=(int(first.sum()), int((~first).sum())))
    return out


def truth_fsc(images, rotations, truth, *, pixel_size: float, **kwargs) -> dict:
    """FSC of the reconstruction from all images against a known volume (simulated data).

    Args:
        images, rotations: as for :func:`reconstruct`.
        truth: ``(H, H, H)`` volume on the same grid (``[z, y, x]``, origin at ``H // 2``), e.g.
            the pseudo-atom model rendered at the dataset's pixel size and normalisation.
        pixel_size: Angstrom per pixel.
        **kwargs: passed to :func:`reconstruct`.

    Returns:
        :func:`fsc_summary`'s dict (read ``res_05_A``, the usual criterion against a truth) plus
        ``volume``.
    """
    from cryotune.validate.reconstruct import reconstruct

    volume = reconstruct(images, rotations, **kwargs)
    return {**fsc_summary(volume, truth, pixel_size), "volume": volume}
