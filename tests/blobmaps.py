"""Test maps with no symmetry and an independent real-space projector (scipy), for the tests of
``cryotune.data.project``, ``cryotune.data.cryosparc`` and ``cryotune ingest --map``.

Example::

    from blobmaps import blob_map, reference_projection
    volume = blob_map(24)
    image = reference_projection(volume, np.eye(3), shift=(1.5, -2.0))
"""

from __future__ import annotations

import mrcfile
import numpy as np
from scipy.ndimage import map_coordinates

# (x, y, z) offsets from the centre in voxels at 24 px, sigma in voxels, weight: no symmetry
BLOBS = [((4, -2, 1), 1.6, 1.0), ((-3, 3, -2), 1.3, 0.7), ((1, 5, 3), 1.0, 0.5),
         ((-1, -4, -4), 1.8, 0.8), ((5, 3, -3), 1.1, 0.6)]


def blob_map(n: int) -> np.ndarray:
    """A (n, n, n) float32 map [z, y, x] of Gaussian blobs placed asymmetrically about n // 2."""
    s = n / 24.0
    zz, yy, xx = np.mgrid[:n, :n, :n] - n // 2
    v = np.zeros((n, n, n))
    for (x, y, z), sigma, w in BLOBS:
        r2 = (xx - x * s) ** 2 + (yy - y * s) ** 2 + (zz - z * s) ** 2
        v += w * np.exp(-r2 / (2 * (sigma * s) ** 2))
    return v.astype(np.float32)


def reference_projection(volume: np.ndarray, A: np.ndarray, shift=(0.0, 0.0)) -> np.ndarray:
    """``image(x, y) = sum_z V(A^T [x + ox, y + oy, z])`` by cubic-spline interpolation.

    The projection at RELION pose ``A`` translated by ``-origin`` (``shift`` = RELION origin in
    pixels), computed voxel by voxel in real space: independent of the Fourier projector.
    """
    n = volume.shape[0]
    c = n // 2
    y, x, z = np.meshgrid(np.arange(n) - c, np.arange(n) - c, np.arange(n) - c, indexing="ij")
    p = np.stack([x + shift[0], y + shift[1], z], -1).astype(np.float64)
    u = p @ np.asarray(A, dtype=np.float64)  # rows p^T A = (A^T p)^T
    coords = np.stack([u[..., 2], u[..., 1], u[..., 0]]) + c
    return map_coordinates(volume.astype(np.float64), coords, order=3).sum(-1)


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


def write_map(path, volume: np.ndarray, voxel: float | tuple = 1.0, space_group: int = 1):
    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(np.asarray(volume, dtype=np.float32))
        m.voxel_size = voxel
        m.header.ispg = space_group
    return path
