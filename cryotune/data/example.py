"""A small RELION project made from nothing: a map, a particle STAR file, noisy particle stacks.

:func:`write_relion_example` writes what a user brings from a RELION 3D refinement, so the
real-data path (``cryotune ingest --particles P.star --map MAP.mrc``, a sweep with ``validate:
[fsc]``, ``cryotune denoise`` writing a STAR file) runs on a fresh machine with no download::

    OUT/
        run_class001.mrc             the map: the built-in molecule (closed conformation)
                                     rendered at the pixel size, voxel size in the header
        particles.star               RELION 3.1: data_optics (pixel size, voltage, Cs, Q0)
                                     and data_particles (rlnImageName, rlnAngleRot/Tilt/Psi,
                                     rlnOriginX/YAngst, rlnDefocusU/V/Angle, rlnOpticsGroup)
        Particles/particles_NNN.mrcs the noisy particles, ``stack_rows`` a stack

Each particle is the map projected at a uniformly random pose (RELION's Euler angles),
translated by ``-origin`` (origins uniform in +-1.5 px, stored in Angstrom as 3.1 does), times
its CTF (defocus U uniform in [defocus_min, defocus_max], V up to 500 A less, random
astigmatism angle), plus white Gaussian noise at ``snr = var(clean stack) / var(noise)``: the
conventions of :mod:`cryotune.data.project`, so the STAR file's poses are exact.

Example::

    from cryotune.data.example import write_relion_example
    paths = write_relion_example("/tmp/relion-example", size=24, n=300, seed=0)
    print(paths["star"], paths["map"])
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import mrcfile
import numpy as np
import pandas as pd
import starfile

from cryotune.data.ctf import CTF
from cryotune.data.geometry import (
    matrix_to_relion_euler,
    quaternion_to_matrix,
    random_quaternions,
    relion_euler_to_matrix,
)
from cryotune.data.molecules import builtin_conformations
from cryotune.data.mrc import write_stack
from cryotune.data.project import Projector
from cryotune.data.simulate import fit_pixel_size, render_volume
from cryotune.errors import BadInput

__all__ = ["write_relion_example"]

log = logging.getLogger(__name__)

MAP_NAME = "run_class001.mrc"
STAR_NAME = "particles.star"
MAX_ORIGIN_PX = 1.5


def write_relion_example(out: str | Path, *, size: int = 32, n: int = 1000, snr: float = 0.1,
                         pixel_size: float | None = None, defocus_min: float = 10_000.0,
                         defocus_max: float = 20_000.0, voltage_kv: float = 300.0,
                         cs_mm: float = 2.7, amplitude_contrast: float = 0.1, seed: int = 0,
                         stack_rows: int = 500, overwrite: bool = False) -> dict[str, Any]:
    """Write a map, a RELION 3.1 particle STAR file and noisy particle stacks under ``out``.

    Args:
        out: the folder to create.
        size: box side in pixels (at least 16).
        n: particles.
        snr: var(clean stack) / var(noise), the project's real-space convention.
        pixel_size: Angstrom per pixel (default: fit the molecule in the box).
        defocus_min, defocus_max: range of defocus U in Angstrom, underfocus positive.
        voltage_kv, cs_mm, amplitude_contrast: the optics group's microscope values.
        seed: seed of every random draw.
        stack_rows: particles per ``.mrcs`` stack.
        overwrite: replace ``out`` if it exists.

    Returns:
        ``{"map", "star", "folder"}`` paths and ``pixel_size`` (Angstrom).

    Raises:
        BadInput: an out-of-range value, or ``out`` exists without ``overwrite``.
    """
    out = Path(out)
    _check(out, size, n, snr, defocus_min, defocus_max, stack_rows, overwrite)
    rng = np.random.default_rng(seed)
    atoms = builtin_conformations(1)[0]
    pixel_size = float(pixel_size or fit_pixel_size([atoms], size))
    volume = render_volume(atoms, size, pixel_size)
    rotations = quaternion_to_matrix(random_quaternions(n, rng))
    # the images are made at the angles as written (6 decimals), so the STAR file is exact
    rot, tilt, psi = (np.round(a, 6) for a in matrix_to_relion_euler(rotations))
    origins = rng.uniform(-MAX_ORIGIN_PX, MAX_ORIGIN_PX, (n, 2))
    defocus_u = rng.uniform(defocus_min, defocus_max, n)
    defocus_v = defocus_u - rng.uniform(0.0, 500.0, n)
    angle = rng.uniform(0.0, 180.0, n)
    ctf = CTF.from_arrays(defocus_u=defocus_u, defocus_v=defocus_v, angle=angle,
                          voltage_kv=voltage_kv, cs_mm=cs_mm,
                          amplitude_contrast=amplitude_contrast)
    clean = Projector(volume).project(relion_euler_to_matrix(rot, tilt, psi),
                                      shifts_px=origins, ctf=ctf, pixel_size=pixel_size)
    sigma = float(np.sqrt(clean.var(dtype=np.float64) / snr))
    noisy = (clean + sigma * rng.standard_normal(clean.shape)).astype(np.float32)

    if out.exists():
        shutil.rmtree(out)
    (out / "Particles").mkdir(parents=True)
    names = []
    for k, start in enumerate(range(0, n, stack_rows)):
        stack = f"Particles/particles_{k:03d}.mrcs"
        write_stack(out / stack, noisy[start:start + stack_rows], pixel_size)
        names += [f"{i + 1:06d}@{stack}" for i in range(min(stack_rows, n - start))]
    with mrcfile.new(out / MAP_NAME, overwrite=True) as mrc:
        mrc.set_data(volume.astype(np.float32))
        mrc.voxel_size = pixel_size
        mrc.header.ispg = 1  # a volume, not an image stack
    optics = pd.DataFrame({
        "rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"],
        "rlnAmplitudeContrast": [amplitude_contrast], "rlnSphericalAberration": [cs_mm],
        "rlnVoltage": [voltage_kv], "rlnImagePixelSize": [pixel_size], "rlnImageSize": [size],
        "rlnImageDimensionality": [2]})
    particles = pd.DataFrame({
        "rlnImageName": names, "rlnAngleRot": rot, "rlnAngleTilt": tilt, "rlnAnglePsi": psi,
        "rlnOriginXAngst": origins[:, 0] * pixel_size,
        "rlnOriginYAngst": origins[:, 1] * pixel_size,
        "rlnDefocusU": defocus_u, "rlnDefocusV": defocus_v, "rlnDefocusAngle": angle,
        "rlnOpticsGroup": np.ones(n, dtype=np.int64)})
    starfile.write({"optics": optics, "particles": particles}, out / STAR_NAME,
                   float_format="%.6f")
    log.info("wrote %d particles of %d px at %.3g A/px (SNR %.3g) to %s", n, size, pixel_size,
             snr, out)
    return {"map": out / MAP_NAME, "star": out / STAR_NAME, "folder": out,
            "pixel_size": pixel_size}


def _check(out: Path, size, n, snr, defocus_min, defocus_max, stack_rows, overwrite) -> None:
    if out.exists() and not overwrite:
        raise BadInput("output already exists", str(out), "choose another path or pass --overwrite")
    if size < 16 or n < 2 or not snr > 0 or stack_rows < 1:
        raise BadInput(f"size {size}, {n} particles, SNR {snr}, {stack_rows} per stack",
                       "--size/--n-train/--snr", "use a box of at least 16 px, 2 or more "
                       "particles and a positive SNR")
    if not 0 < defocus_min <= defocus_max:
        raise BadInput(f"defocus range {defocus_min:g}-{defocus_max:g} A", "--defocus-min/max",
                       "pass 0 < --defocus-min <= --defocus-max (underfocus positive)")
