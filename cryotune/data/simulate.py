"""Simulated cryo-EM image pairs: exact projections, optional CTF, Gaussian noise at a target SNR.

The molecule is a set of Gaussian pseudo-atoms (:mod:`cryotune.data.molecules`). An isotropic 3D
Gaussian projects to an isotropic 2D Gaussian, and a 2D Gaussian integrated over a square pixel
is a product of two 1D integrals, so every image is exact and separable::

    image[y, x] = sum_m w_m * gy[m, y] * gx[m, x],  g[m, j] = integral of N(mu_m, sigma_m^2) over pixel j

computed as one batched matrix product per chunk of images. :func:`render_volume` integrates
the same Gaussians over voxels, so its sum along z equals :func:`project` at the identity pose.

Example::

    import numpy as np
    from cryotune.data.molecules import builtin_conformations
    from cryotune.data.simulate import project, render_volume
    atoms = builtin_conformations(5)[0]
    images = project(atoms, np.eye(3)[None], size=32, pixel_size=7.0)     # (1, 32, 32)
    volume = render_volume(atoms, size=32, pixel_size=7.0)                # (32, 32, 32) [z, y, x]
    assert np.allclose(volume.sum(0), images[0], rtol=1e-4, atol=1e-6)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from cryotune.data.ctf import CTFParams, apply_ctf
from cryotune.data.geometry import quaternion_to_matrix, random_quaternions
from cryotune.data.molecules import (
    Atoms,
    builtin_conformations,
    hinge_angles,
    load_pdb_conformations,
)
from cryotune.data.store import DatasetWriter
from cryotune.errors import BadInput

__all__ = [
    "Progress",
    "fit_pixel_size",
    "project",
    "render_volume",
    "simulate",
]

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]

_CHUNK_ELEMENTS = 1 << 19  # images per chunk x atoms x edges: 2 MB buffers, measured fastest
_CHUNK_IMAGES = 512  # images per simulation step: 32 MB per array at 128 px
_CACHE_BYTES = 512 << 20  # clean stacks up to this size are projected once, not twice


def _pixel_profiles(mu: torch.Tensor, sigma: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """Mass of N(mu, sigma^2) in each pixel: (..., M) centres -> (..., M, len(edges) - 1)."""
    cdf = torch.erf((edges - mu[..., None]) / (math.sqrt(2.0) * sigma[:, None]))
    return 0.5 * (cdf[..., 1:] - cdf[..., :-1])


def _edges(size: int, pixel_size: float, dtype: torch.dtype) -> torch.Tensor:
    """Pixel boundaries in Angstrom; pixel j is centred at (j - size // 2) * pixel_size."""
    return (torch.arange(size + 1, dtype=torch.float64) - size // 2 - 0.5).mul(pixel_size).to(dtype)


def fit_pixel_size(conformations: Sequence[Atoms], size: int, margin: float = 1.15) -> float:
    """Pixel size (A) at which every conformation in every view fits in the box with a margin.

    Args:
        conformations: the molecules.
        size: box size in pixels.
        margin: box width over the molecule's diameter (3 sigma included).

    Returns:
        The pixel size, rounded up to 0.01 A.
    """
    diameter = 2.0 * max(a.radius() for a in conformations)
    return math.ceil(100.0 * margin * diameter / size) / 100.0


def project(atoms: Atoms, rotations: np.ndarray, size: int, pixel_size: float) -> np.ndarray:
    """Exact projections of Gaussian pseudo-atoms along z after rotating them.

    Image x is ``R[0] . r`` and image y is ``R[1] . r`` (:mod:`cryotune.data.geometry`); the
    pixel ``[y, x]`` holds the molecule's mass over that pixel, so an image sums to the total
    weight when the molecule lies inside the box. Runs in float32 with torch, in chunks of images.

    Args:
        atoms: the molecule (Angstrom).
        rotations: (n, 3, 3) pose rotations.
        size: image side in pixels; the origin is pixel ``size // 2``.
        pixel_size: Angstrom per pixel.

    Returns:
        float32 array (n, size, size), indexed ``[image, y, x]``.
    """
    rot = torch.as_tensor(np.asarray(rotations, dtype=np.float64)[:, :2, :], dtype=torch.float32)
    m = len(atoms)
    scale = torch.as_tensor(1.0 / (math.sqrt(2.0) * atoms.sigma))[:, None]
    # erf arguments (edge - mu) / (sqrt(2) sigma) = edge_scaled - mu_scaled: one pass per axis
    edges = (_edges(size, pixel_size, torch.float64)[None, :] * scale).float()  # (M, size + 1)
    coords = (torch.as_tensor(atoms.coords) * scale).float()
    weight = torch.as_tensor(atoms.weight / 4.0, dtype=torch.float32)  # the two 1/2 of the cdfs
    out = np.empty((len(rot), size, size), dtype=np.float32)
    step = max(1, _CHUNK_ELEMENTS // (m * (size + 1)))
    cdf = torch.empty(step, m, size + 1)  # buffers reused by every chunk: no page faults
    gx, gy = torch.empty(step, m, size), torch.empty(step, m, size)
    with torch.no_grad():
        for start in range(0, len(rot), step):
            xy = torch.einsum("nij,mj->nim", rot[start:start + step], coords)  # (c, 2, M)
            c = len(xy)
            for axis, g in ((0, gx[:c]), (1, gy[:c])):
                torch.sub(edges, xy[:, axis, :, None], out=cdf[:c])
                torch.erf(cdf[:c], out=cdf[:c])
                torch.sub(cdf[:c, :, 1:], cdf[:c, :, :-1], out=g)
            gy[:c].mul_(weight[:, None])
            torch.bmm(gy[:c].transpose(1, 2), gx[:c], out=torch.from_numpy(out[start:start + c]))
    return out


def render_volume(atoms: Atoms, size: int, pixel_size: float) -> np.ndarray:
    """The molecule's mass in each voxel of a ``size``^3 box, indexed ``[z, y, x]``.

    Voxels integrate the same Gaussians as :func:`project`'s pixels, in float64, so
    ``render_volume(a, n, p).sum(axis=0)`` equals ``project(a, identity, n, p)``.

    Args:
        atoms: the molecule (Angstrom).
        size: box side in voxels; the origin is voxel ``size // 2`` on each axis.
        pixel_size: Angstrom per voxel.

    Returns:
        float32 array (size, size, size).
    """
    coords = torch.as_tensor(atoms.coords, dtype=torch.float64)
    sigma = torch.as_tensor(atoms.sigma, dtype=torch.float64)
    edges = _edges(size, pixel_size, torch.float64)
    gx, gy, gz = (_pixel_profiles(coords[:, i], sigma, edges) for i in range(3))  # (M, size)
    gz = gz * torch.as_tensor(atoms.weight, dtype=torch.float64)[:, None]
    volume = np.empty((size, size, size), dtype=np.float32)
    step = max(1, _CHUNK_ELEMENTS // (len(coords) * size))
    with torch.no_grad():
        for z0 in range(0, size, step):
            zy = gz[:, z0:z0 + step, None] * gy[:, None, :]  # (M, c, size)
            slab = zy.reshape(len(coords), -1).T @ gx  # (c * size, size)
            volume[z0:z0 + step] = slab.reshape(-1, size, size).numpy()
    return volume


def _sums(images: np.ndarray) -> np.ndarray:
    """(sum, sum of squares) in float64, reduced per image in float32 (no float64 copy)."""
    flat = images.reshape(len(images), -1)
    return np.array([flat.sum(1).sum(dtype=np.float64),
                     np.einsum("ij,ij->i", flat, flat).sum(dtype=np.float64)])


def _molecule(conformations: int | None, pdb, ca_only: bool) -> tuple[list[Atoms], dict]:
    if not pdb:
        k = 5 if conformations is None else conformations
        confs = builtin_conformations(k)
        return confs, {"model": "builtin-hinged-clamp", "hinge_angles_deg": hinge_angles(k).tolist()}
    if conformations is not None and conformations != len(pdb):
        raise BadInput(f"--conformations {conformations} but {len(pdb)} PDB files", "--pdb",
                       "give one PDB file per conformation, or leave out --conformations")
    confs = load_pdb_conformations(pdb, ca_only=ca_only)
    return confs, {"model": "pdb", "pdb": [str(Path(p).absolute()) for p in pdb],
                   "ca_only": ca_only}


def _check(size, pixel_size, n_train, n_test, snr, ctf: CTFParams | None, shard_rows) -> None:
    checks = [
        (size >= 16, f"image size {size} px is below 16", "--size", "pass --size 16 or more"),
        (pixel_size is None or pixel_size > 0, f"pixel size {pixel_size} must be positive",
         "--pixel-size", "pass Angstrom per pixel, or leave it out to fit the molecule"),
        (n_train >= 1, f"{n_train} train images", "--n-train", "pass at least 1"),
        (n_test >= 0, f"{n_test} test images", "--n-test", "pass 0 or more"),
        (math.isfinite(snr) and snr > 0, f"SNR {snr} must be positive", "--snr",
         "pass e.g. --snr 0.1"),
        (shard_rows >= 1, f"shard rows {shard_rows} must be at least 1", "--shard-rows",
         "pass e.g. 1024"),
    ]
    if ctf is not None:
        checks += [
            (0 < ctf.defocus_min <= ctf.defocus_max,
             f"defocus range {ctf.defocus_min:g}-{ctf.defocus_max:g} A",
             "--defocus-min/--defocus-max", "pass 0 < min <= max in Angstrom, e.g. 10000 25000"),
            (ctf.voltage_kv > 0, f"voltage {ctf.voltage_kv:g} kV", "--voltage", "pass e.g. 300"),
            (ctf.cs_mm >= 0, f"Cs {ctf.cs_mm:g} mm", "--cs", "pass 0 or more, e.g. 2.7"),
            (0 <= ctf.amplitude_contrast < 1, f"amplitude contrast {ctf.amplitude_contrast:g}",
             "--amplitude-contrast", "pass a fraction in [0, 1), e.g. 0.1"),
        ]
    for ok, what, where, fix in checks:
        if not ok:
            raise BadInput(what, where, fix)


class _CleanStack:
    """Clean images of the whole dataset, made chunk by chunk (kept in memory when small)."""

    def __init__(self, confs, rotations, labels, defocus, size, pixel_size, ctf):
        self.confs, self.labels, self.defocus = confs, labels, defocus
        self.matrices = quaternion_to_matrix(rotations)
        self.size, self.pixel_size, self.ctf = size, pixel_size, ctf
        self.cache: dict[int, np.ndarray] | None = (
            {} if len(labels) * size * size * 4 <= _CACHE_BYTES else None)

    def chunk(self, start: int, stop: int) -> np.ndarray:
        if self.cache is not None and start in self.cache:
            return self.cache.pop(start)
        images = np.empty((stop - start, self.size, self.size), dtype=np.float32)
        labels = self.labels[start:stop]
        for k, atoms in enumerate(self.confs):
            mine = labels == k
            if mine.any():
                images[mine] = project(atoms, self.matrices[start:stop][mine], self.size,
                                       self.pixel_size)
        if self.ctf is not None:
            c = self.ctf
            images = apply_ctf(images, self.defocus[start:stop], self.pixel_size, c.voltage_kv,
                               c.cs_mm, c.amplitude_contrast)
        return images

    def keep(self, start: int, images: np.ndarray) -> None:
        if self.cache is not None:
            self.cache[start] = images


def simulate(out: str | Path, *, size: int = 32, pixel_size: float | None = None, n_train: int,
             n_test: int, snr: float, conformations: int | None = None,
             pdb: Sequence[str | Path] | None = None, ca_only: bool = False,
             ctf: CTFParams | None = None, seed: int = 0, formats: Sequence[str] = ("parquet",),
             shard_rows: int = 1024, overwrite: bool = False, name: str | None = None,
             command: str | None = None, progress: Progress | None = None,
             val_fraction: float = 0.1) -> Path:
    """Simulate a dataset store of clean/noisy image pairs with known poses and conformations.

    Views are uniform on SO(3), conformations uniform over the K molecules, images centred.
    Clean images (with the CTF when ``ctf`` is given) are normalised to [0, 1] by the min and
    max over all of them (train, validation and test); the noise is Gaussian with variance
    var(clean stack) / ``snr`` and the noisy images go through the same affine map. Views,
    conformations, noise and defocus draw from independent streams spawned from ``seed``.
    Two passes (statistics, then writing) keep memory bounded by a chunk; the clean images are
    kept between passes only when they fit in 512 MB. The atoms of every conformation are
    written to ``truth/conformation-XX.npz`` (:meth:`Atoms.from_npz`).

    Args:
        out: the dataset folder to create.
        size: image side in pixels (>= 16).
        pixel_size: Angstrom per pixel; None fits every conformation in the box (15% margin).
        n_train, n_test: images per split (ids 0..n_train-1 are train, the next n_test test).
        val_fraction: validation pairs as a fraction of ``n_train``, made in addition to them
            (ids after the test ids, so the train and test ids are those of a store without
            validation); 0 makes none (a study then holds out part of the
            training pairs, :mod:`cryotune.data.pipeline`).
        snr: target var(clean) / var(noise), real space, whole box.
        conformations: K for the built-in model (default 5); with ``pdb``, None or len(pdb).
        pdb: one PDB file per conformation instead of the built-in model.
        ca_only: with ``pdb``, C-alpha atoms only.
        ctf: apply a CTF with these settings and a per-image defocus; None for no CTF.
        seed: the seed of every random stream.
        formats: store formats, any of "parquet" and "mrc".
        shard_rows: images per shard file.
        overwrite: replace an existing ``out``.
        name: the dataset's name (default: the folder name).
        command: the command line, stamped into the manifest.
        progress: called as ``progress(stage, done, total)``, stage "project" then "write".

    Returns:
        The dataset folder.

    Raises:
        BadInput: a bad argument or PDB file, or ``out`` exists without ``overwrite``.
    """
    out = Path(out)
    _check(size, pixel_size, n_train, n_test, snr, ctf, shard_rows)
    if not (math.isfinite(val_fraction) and 0.0 <= val_fraction <= 1.0):
        raise BadInput(f"validation fraction {val_fraction} is outside [0, 1]", "--val-fraction",
                       "pass e.g. 0.1 (of the training pairs), or 0 for none")
    n_val = int(round(n_train * val_fraction))
    if out.exists() and not overwrite:
        raise BadInput("output already exists", str(out), "choose another path or pass --overwrite")
    confs, generator = _molecule(conformations, pdb, ca_only)
    fitted = fit_pixel_size(confs, size)
    if pixel_size is None:
        pixel_size = fitted
    elif pixel_size * size < 2.0 * max(a.radius() for a in confs):
        log.warning("the molecule is wider than the %.0f A box: some views are cut off",
                    pixel_size * size)
    n = n_train + n_test + n_val
    views, picks, noises, defoci = (np.random.default_rng(s)
                                    for s in np.random.SeedSequence(seed).spawn(4))
    rotations = random_quaternions(n, views).astype(np.float32)  # the stored poses made the images
    labels = picks.integers(0, len(confs), n).astype(np.int32)
    defocus = None
    if ctf is not None:
        d = defoci.uniform(ctf.defocus_min, ctf.defocus_max, n)
        defocus = np.stack([d, d, np.zeros(n)], 1).astype(np.float32)
    stack = _CleanStack(confs, rotations, labels, defocus, size, pixel_size, ctf)
    chunks = [(a, min(a + _CHUNK_IMAGES, n)) for a in range(0, n, _CHUNK_IMAGES)]

    lo, hi, sums = np.inf, -np.inf, np.zeros(2)
    for start, stop in chunks:
        images = stack.chunk(start, stop)
        lo, hi = min(lo, float(images.min())), max(hi, float(images.max()))
        sums += _sums(images)
        stack.keep(start, images)
        if progress:
            progress("project", stop, n)
    pixels = float(n) * size * size
    var_clean = sums[1] / pixels - (sums[0] / pixels) ** 2
    if not hi > lo:
        raise BadInput("every clean pixel is equal: the molecule is outside the box",
                       "--pixel-size", "leave out --pixel-size to fit the molecule")
    sigma = math.sqrt(var_clean / snr)

    scale = 1.0 / (hi - lo)
    noise_sums = np.zeros(2)
    with DatasetWriter(out, name=name or out.name, kind="simulated", image_shape=(size, size),
                       pixel_size=pixel_size, formats=tuple(formats), shard_rows=shard_rows,
                       overwrite=overwrite, command=command) as writer:
        for start, stop in chunks:
            clean = stack.chunk(start, stop)
            noisy = noises.standard_normal(clean.shape, dtype=np.float32)
            noisy *= np.float32(sigma)
            noise_sums += _sums(noisy)
            noisy += clean  # in place from here on: no 32 MB temporaries at 128 px
            for images in (noisy, clean):
                images -= np.float32(lo)
                images *= np.float32(scale)
            ids = np.arange(start, stop)
            for split, rows in (("train", ids < n_train),
                                ("test", (ids >= n_train) & (ids < n_train + n_test)),
                                ("val", ids >= n_train + n_test)):
                if rows.any():
                    writer.add(split, id=ids[rows], clean=clean[rows], noisy=noisy[rows],
                               conformation=labels[ids[rows]], rotation=rotations[ids[rows]],
                               shift=np.zeros((int(rows.sum()), 2), np.float32),
                               defocus=None if defocus is None else defocus[ids[rows]])
            if progress:
                progress("write", stop, n)
        var_noise = noise_sums[1] / pixels - (noise_sums[0] / pixels) ** 2
        for k, atoms in enumerate(confs):
            writer.add_file(f"truth/conformation-{k:02d}.npz", atoms.to_npz())
        generator.update({
            "seed": seed, "n_train": n_train, "n_test": n_test, "n_val": n_val,
            "val_fraction": val_fraction, "size": size,
            "pixel_size": pixel_size, "pixel_size_fitted": fitted, "atoms": [len(a) for a in confs],
            "views": "uniform SO(3)", "conformation_draw": "uniform",
            "projection": "exact pixel-integrated Gaussians (render_volume(...).sum(0))",
            "noise": "white Gaussian", "noise_sigma": sigma * scale,
            "truth": "truth/conformation-XX.npz: Atoms (coords A, weight, sigma A); images are "
                     "(project - min) / (max - min) with the manifest's normalization"})
        return writer.commit(
            snr=snr, snr_measured=float(var_clean / var_noise), conformations=len(confs),
            normalization={"method": "minmax_clean", "min": lo, "max": hi}, has_poses=True,
            ctf=None if ctf is None else ctf.manifest(), generator=generator)
