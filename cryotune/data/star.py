r"""RELION particle STAR files (3.0, 3.1, 4 and 5): reading and writing.

Parsing uses the ``starfile`` package; this module makes the dialects look alike:

- **Blocks.** RELION 3.1+ has ``data_optics`` and ``data_particles`` in either order; 3.0 has a
  single particle block, often unnamed (``data_``) or ``data_images``, with the optics values
  (voltage, Cs, ...) as per-particle columns. The particle block is ``data_particles`` if
  present, else the one block with ``rlnImageName``. Key-value blocks (one particle written
  without ``loop_``, which ``starfile`` returns as a dict) become one-row tables.
- **Per-particle values.** A value is taken from the particle's own column when it has one,
  else from its optics group (``rlnOpticsGroup``; a lone optics group needs no column).
- **Pixel size** (Angstrom): ``rlnImagePixelSize``, else ``rlnPixelSize``, else
  ``rlnDetectorPixelSize * 1e4 / rlnMagnification`` (micrometre and magnification, RELION 3.0).
- **Images.** ``rlnImageName`` is ``000123@path/stack.mrcs``: image 123, counted from 1, of that
  stack. A name without ``@`` is a file holding one image (an error if it holds more: a STAR row
  is one particle). A relative path is tried against, in order, the STAR file's folder, its
  parent, and its grandparent, which is the RELION project folder for the usual
  ``<project>/<JobType>/jobNNN/particles.star`` layout; the first existing file wins.
- **Poses.** ``rlnAngleRot``, ``rlnAngleTilt``, ``rlnAnglePsi`` in degrees, RELION's ZYZ
  convention; :mod:`cryotune.data.geometry` converts them (``relion_euler_to_matrix``).
- **Origin shifts.** ``rlnOriginXAngst``/``rlnOriginYAngst`` (3.1+, Angstrom, divided by the
  particle's pixel size) or ``rlnOriginX``/``rlnOriginY`` (3.0, pixels). RELION's sign: the
  particle's centre lies at the box centre *minus* the origin, so translating the image by
  *plus* the origin centres it (RELION re-centres extraction at ``rlnCoordinateX - originX``).
  Equivalently the image is the centred projection of ``R @ r`` translated by ``-origin``.
  ``shifts_px`` holds ``(originX, originY)`` in pixels, with that sign, unchanged.
- **CTF.** ``rlnDefocusU``, ``rlnDefocusV`` (Angstrom) and ``rlnDefocusAngle`` (degrees) per
  particle; ``rlnVoltage`` (kV), ``rlnSphericalAberration`` (mm) and ``rlnAmplitudeContrast``
  per optics group or per particle. ``ctf`` is set only when those three agree for every particle;
  ``ctf_rows`` keeps every particle's own values (with ``rlnPhaseShift``, 0 when absent) as a
  :class:`~cryotune.data.ctf.CTF`, for projecting references per optics group.

Example::

    import numpy as np
    from pathlib import Path
    from cryotune.data.mrc import write_stack
    from cryotune.data.star import read_particles, stack_image_names, write_particles
    write_stack("/tmp/parts.mrcs", np.zeros((2, 32, 32), np.float32), pixel_size=1.0)
    Path("/tmp/parts.star").write_text(
        "data_optics\nloop_\n_rlnOpticsGroup #1\n_rlnImagePixelSize #2\n1 1.3\n"
        "data_particles\nloop_\n_rlnImageName #1\n_rlnAngleRot #2\n_rlnAngleTilt #3\n"
        "_rlnAnglePsi #4\n1@parts.mrcs 10 20 30\n2@parts.mrcs 40 50 60\n")
    table = read_particles("/tmp/parts.star")
    print(len(table), table.pixel_size, table.quaternions().shape)   # 2 1.3 (2, 4)
    names = stack_image_names("/tmp/parts.mrcs", len(table), relative_to="/tmp")
    write_particles("/tmp/copy.star", table, names)   # every other block and column kept
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import starfile

from cryotune._io import atomic_write
from cryotune.data.ctf import CTF
from cryotune.data.geometry import matrix_to_quaternion, relion_euler_to_matrix
from cryotune.data.mrc import open_stack
from cryotune.errors import BadInput

__all__ = ["ParticleTable", "read_particles", "stack_image_names", "write_particles"]

log = logging.getLogger(__name__)

# columns that look numeric in some files but are names: keep them as text
_TEXT_COLUMNS = ["rlnImageName", "rlnMicrographName", "rlnOpticsGroupName", "rlnGroupName",
                 "rlnImageOriginalName", "rlnCtfImage", "rlnMicrographMovieName",
                 "rlnReferenceImage"]
_VERSION = re.compile(r"^#\s*version\s+(\d+)", re.MULTILINE)
_FIX_STAR = "fix the STAR file or export it again from RELION"


@dataclass
class ParticleTable:
    """One particle STAR file, as read.

    Attributes:
        path: the STAR file.
        blocks: every data block in file order (name -> DataFrame, or dict for key-value blocks).
        particles_block: the name of the particle block in ``blocks``.
        version: ``"3.0"`` (no optics block) or ``"3.1"`` (optics block: RELION 3.1 to 5).
        stacks: the distinct image files, resolved to existing paths.
        stack_ids: (n,) index into ``stacks`` per particle.
        indices: (n,) 0-based image index within its stack per particle.
        pixel_sizes: (n,) Angstrom per particle, NaN where the file does not say.
        poses: (n, 3) rot, tilt, psi in degrees, or None.
        shifts_px: (n, 2) RELION origin (x, y) in pixels, or None (sign: module docstring).
        defocus: (n, 3) defocus U, V (Angstrom) and astigmatism angle (degrees), or None.
        ctf: ``{"voltage_kv", "cs_mm", "amplitude_contrast"}`` when uniform, else None.
        ctf_rows: every particle's CTF (defocus U/V/angle, its optics group's voltage, Cs and
            amplitude contrast, ``rlnPhaseShift`` or 0) when the file has all of them, else None.
    """

    path: Path
    blocks: dict
    particles_block: str
    version: str
    stacks: list[Path]
    stack_ids: np.ndarray
    indices: np.ndarray
    pixel_sizes: np.ndarray
    poses: np.ndarray | None = None
    shifts_px: np.ndarray | None = None
    defocus: np.ndarray | None = None
    ctf: dict | None = None
    version_tag: str = field(default="30001", repr=False)
    ctf_rows: CTF | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.indices)

    def __repr__(self) -> str:
        return (f"ParticleTable({str(self.path)!r}, n={len(self)}, version={self.version}, "
                f"stacks={len(self.stacks)}, poses={self.poses is not None}, "
                f"shifts={self.shifts_px is not None}, ctf={self.ctf})")

    @property
    def particles(self) -> pd.DataFrame:
        """The particle rows, every column as read."""
        return _as_frame(self.blocks[self.particles_block])

    @property
    def optics(self) -> pd.DataFrame | None:
        """The optics groups (RELION 3.1+), or None."""
        block = self.blocks.get("optics")
        return None if block is None else _as_frame(block)

    @property
    def image_refs(self) -> list[tuple[int, Path]]:
        """``(index0, stack_path)`` per particle."""
        return [(int(i), self.stacks[s]) for i, s in zip(self.indices, self.stack_ids, strict=True)]

    @property
    def pixel_size(self) -> float | None:
        """The common pixel size in Angstrom, or None when the file gives none.

        Raises:
            BadInput: particles disagree on the pixel size.
        """
        known = self.pixel_sizes[np.isfinite(self.pixel_sizes)]
        if known.size == 0:
            return None
        lo, hi = float(known.min()), float(known.max())
        if hi - lo > 1e-4 * hi:
            row = int(np.nanargmax(self.pixel_sizes)) + 1
            raise BadInput(f"particles have different pixel sizes ({lo:g} and {hi:g} A)",
                           f"{self.path} row {row}",
                           "ingest one optics group at a time, or pass --pixel-size")
        return float(np.median(known))

    def quaternions(self, rows: slice = slice(None)) -> np.ndarray | None:
        """Poses of ``rows`` as (k, 4) unit quaternions (w, x, y, z), or None without poses."""
        if self.poses is None:
            return None
        return matrix_to_quaternion(relion_euler_to_matrix(*self.poses[rows].T))


def _as_frame(block) -> pd.DataFrame:
    if isinstance(block, pd.DataFrame):
        return block
    if isinstance(block, pd.Series):
        return block.to_frame().T.reset_index(drop=True)
    return pd.DataFrame({k: [v] for k, v in block.items()})


class _Reader:
    """Column access with row-named errors for one STAR file."""

    def __init__(self, path: Path, block: str, particles: pd.DataFrame, optics: pd.DataFrame | None):
        self.path, self.block, self.df, self.optics = path, block, particles, optics
        self.group_rows = self._group_rows() if optics is not None else None

    def where(self, row: int, block: str | None = None) -> str:
        return f"{self.path} data_{self.block if block is None else block} row {row + 1}"

    def _numbers(self, frame: pd.DataFrame, col: str, block: str) -> np.ndarray:
        values = pd.to_numeric(frame[col], errors="coerce").to_numpy(dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            r = int(bad[0])
            raise BadInput(f"{col} is not a finite number ({frame[col].iloc[r]!r})",
                           self.where(r, block), _FIX_STAR)
        return values

    def _group_rows(self) -> np.ndarray:
        optics = self.optics
        if "rlnOpticsGroup" not in self.df.columns:
            if len(optics) == 1:
                return np.zeros(len(self.df), dtype=np.int64)
            raise BadInput(f"particles have no rlnOpticsGroup but there are {len(optics)} optics "
                           "groups", f"{self.path} data_{self.block}", _FIX_STAR)
        if "rlnOpticsGroup" not in optics.columns:
            raise BadInput("optics block has no rlnOpticsGroup column", f"{self.path} data_optics",
                           _FIX_STAR)
        groups = self._numbers(self.df, "rlnOpticsGroup", self.block).astype(np.int64)
        known = self._numbers(optics, "rlnOpticsGroup", "optics").astype(np.int64)
        lookup = {int(g): i for i, g in enumerate(known)}
        rows = np.array([lookup.get(int(g), -1) for g in groups], dtype=np.int64)
        missing = np.flatnonzero(rows < 0)
        if missing.size:
            r = int(missing[0])
            raise BadInput(f"rlnOpticsGroup {groups[r]} is not in the optics block", self.where(r),
                           _FIX_STAR)
        return rows

    def column(self, col: str) -> np.ndarray | None:
        """Per-particle float values: the particle's column, else its optics group's."""
        if col in self.df.columns:
            return self._numbers(self.df, col, self.block)
        if self.optics is not None and col in self.optics.columns:
            return self._numbers(self.optics, col, "optics")[self.group_rows]
        return None


def _pick_blocks(path: Path, blocks: dict) -> tuple[str, pd.DataFrame | None]:
    with_names = [k for k, b in blocks.items() if k != "optics" and "rlnImageName" in _as_frame(b)]
    name = "particles" if "particles" in blocks else (with_names or [None])[0]
    if name not in with_names:
        raise BadInput("STAR file has no rlnImageName column",
                       str(path) if name is None else f"{path} data_{name}",
                       "pass a particle STAR file whose rows name their images "
                       "(rlnImageName such as 000001@stack.mrcs)")
    optics = blocks.get("optics")
    return name, None if optics is None else _as_frame(optics)


def _pixel_sizes(reader: _Reader) -> np.ndarray:
    sizes = reader.column("rlnImagePixelSize")
    if sizes is None:
        sizes = reader.column("rlnPixelSize")
    if sizes is None:
        detector, mag = reader.column("rlnDetectorPixelSize"), reader.column("rlnMagnification")
        if detector is None or mag is None:
            return np.full(len(reader.df), np.nan)
        with np.errstate(divide="ignore", invalid="ignore"):
            sizes = detector * 1e4 / mag  # micrometre -> Angstrom at the specimen
    return np.where(np.isfinite(sizes) & (sizes > 0), sizes, np.nan)


def _resolve(path: Path, name: str, row: int) -> Path:
    candidate = Path(name)
    if candidate.is_absolute():
        if candidate.is_file():
            return candidate
        tried = [candidate.parent]
    else:
        folder = path.absolute().parent  # not resolved: RELION projects are full of symlinks
        tried = [folder, folder.parent, folder.parent.parent]
        for base in tried:
            if (base / candidate).is_file():
                return base / candidate
    raise BadInput(f"image stack '{name}' not found", f"{path} row {row + 1} (rlnImageName)",
                   "put the stack there or fix rlnImageName; looked in "
                   + ", ".join(str(t) for t in dict.fromkeys(tried)))


def _images(reader: _Reader) -> tuple[list[Path], np.ndarray, np.ndarray]:
    names = reader.df["rlnImageName"]
    stacks: dict[str, int] = {}
    paths: list[Path] = []
    stack_ids = np.empty(len(names), dtype=np.int64)
    indices = np.empty(len(names), dtype=np.int64)
    fix = "write image names as <index from 1>@<stack file>, e.g. 000001@stack.mrcs"
    for r, value in enumerate(names):
        text = "" if pd.isna(value) else str(value).strip()
        number, at, file = text.partition("@")
        if not at:
            number, file = "", text
        if not file or (at and not number.isdigit()) or (at and int(number) < 1):
            raise BadInput(f"rlnImageName {text!r} is not an image name", reader.where(r), fix)
        sid = stacks.get(file)
        if sid is None:
            sid = stacks[file] = len(paths)
            paths.append(_resolve(reader.path, file, r))
            if not at:  # a bare file name: the file must hold exactly one image
                with open_stack(paths[sid], force_stack=True) as single:
                    if len(single) != 1:
                        raise BadInput(f"rlnImageName {text!r} has no image index but the file "
                                       f"holds {len(single)} images", reader.where(r), fix)
        stack_ids[r] = sid
        indices[r] = int(number) - 1 if at else 0
    return paths, stack_ids, indices


def _pair(reader: _Reader, x: str, y: str) -> np.ndarray | None:
    x, y = reader.column(x), reader.column(y)
    return None if x is None or y is None else np.stack([x, y], axis=1)


def _shifts(reader: _Reader, pixel_sizes: np.ndarray, pixel_size: float | None):
    angst = _pair(reader, "rlnOriginXAngst", "rlnOriginYAngst")
    if angst is None:
        return _pair(reader, "rlnOriginX", "rlnOriginY")
    sizes = np.where(np.isfinite(pixel_sizes), pixel_sizes, np.nan if pixel_size is None
                     else pixel_size)
    if not np.isfinite(sizes).all():
        raise BadInput("origin shifts are in Angstrom but the file gives no pixel size",
                       reader.where(int(np.flatnonzero(~np.isfinite(sizes))[0])),
                       "pass --pixel-size")
    return angst / sizes[:, None]


def _ctf(reader: _Reader) -> tuple[np.ndarray | None, dict | None]:
    defocus = _pair(reader, "rlnDefocusU", "rlnDefocusV")
    if defocus is None:
        return None, None
    angle = reader.column("rlnDefocusAngle")
    defocus = np.column_stack([defocus, np.zeros(len(defocus)) if angle is None else angle])
    params = {}
    for key, col in (("voltage_kv", "rlnVoltage"), ("cs_mm", "rlnSphericalAberration"),
                     ("amplitude_contrast", "rlnAmplitudeContrast")):
        values = reader.column(col)
        if values is None:
            log.info("%s: no %s; CTF parameters not recorded", reader.path, col)
            return defocus, None
        if np.ptp(values) > 1e-6 * max(abs(values).max(), 1.0):
            log.warning("%s: %s differs between particles; CTF parameters not recorded",
                        reader.path, col)
            return defocus, None
        params[key] = float(values[0])
    return defocus, params


def _ctf_rows(reader: _Reader, defocus: np.ndarray | None) -> CTF | None:
    """Each particle's full CTF, values from its own columns or its optics group's."""
    if defocus is None:
        return None
    cols = [reader.column(c) for c in ("rlnVoltage", "rlnSphericalAberration",
                                       "rlnAmplitudeContrast")]
    if any(c is None for c in cols):
        return None
    phase = reader.column("rlnPhaseShift")
    return CTF.from_arrays(defocus_u=defocus[:, 0], defocus_v=defocus[:, 1], angle=defocus[:, 2],
                           voltage_kv=cols[0], cs_mm=cols[1], amplitude_contrast=cols[2],
                           phase_shift=0.0 if phase is None else phase)


def read_particles(star_path: str | Path, *, pixel_size: float | None = None) -> ParticleTable:
    """Read a RELION particle STAR file (3.0 to 5) and resolve its image stacks.

    Args:
        star_path: the STAR file.
        pixel_size: Angstrom per pixel to convert Angstrom origin shifts where the file gives no
            pixel size (the file's own pixel size is used where it has one).

    Returns:
        A :class:`ParticleTable`.

    Raises:
        BadInput: the file is missing or unparsable, has no ``rlnImageName``, names a missing
            stack, or has a malformed value; the message names the row.
    """
    path = Path(star_path)
    if not path.is_file():
        raise BadInput("STAR file not found", str(path), "check the path")
    try:
        blocks = starfile.read(path, always_dict=True, parse_as_string=_TEXT_COLUMNS)
    except Exception as err:  # the parser raises many types on malformed text
        raise BadInput(f"STAR file cannot be parsed ({err})", str(path), _FIX_STAR) from None
    if not blocks:
        raise BadInput("STAR file has no data blocks", str(path), _FIX_STAR)
    name, optics = _pick_blocks(path, blocks)
    particles = _as_frame(blocks[name])
    if len(particles) == 0:
        raise BadInput("STAR file has no particle rows", f"{path} data_{name}", _FIX_STAR)
    reader = _Reader(path, name, particles, optics)
    stacks, stack_ids, indices = _images(reader)
    sizes = _pixel_sizes(reader)
    angles = [reader.column(c) for c in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")]
    poses = None if any(a is None for a in angles) else np.stack(angles, axis=1)
    defocus, ctf = _ctf(reader)
    with open(path, errors="replace") as f:
        match = _VERSION.search(f.read(65536))
    return ParticleTable(
        path=path, blocks=blocks, particles_block=name,
        version="3.0" if optics is None else "3.1",
        stacks=stacks, stack_ids=stack_ids, indices=indices, pixel_sizes=sizes, poses=poses,
        shifts_px=_shifts(reader, sizes, pixel_size), defocus=defocus, ctf=ctf,
        version_tag=match.group(1) if match else "30001", ctf_rows=_ctf_rows(reader, defocus),
    )


def stack_image_names(stack: str | Path, count: int, *, relative_to: str | Path | None = None
                      ) -> list[str]:
    """RELION image names ``000001@stack.mrcs`` ... for the first ``count`` images of a stack.

    Args:
        stack: the stack file.
        count: number of images.
        relative_to: write the path relative to this folder (the STAR file's) when given.
    """
    name = Path(stack)
    if relative_to is not None:
        name = Path(os.path.relpath(Path(stack).resolve(), Path(relative_to).resolve()))
    return [f"{i:06d}@{name.as_posix()}" for i in range(1, count + 1)]


def write_particles(star_path: str | Path, table: ParticleTable, image_names: list[str]) -> Path:
    """Write ``table`` with new image names, keeping every other block and column, atomically.

    Args:
        star_path: the STAR file to write (replaced if it exists).
        table: a table from :func:`read_particles`.
        image_names: one ``rlnImageName`` per particle, e.g. from :func:`stack_image_names`.

    Returns:
        The path written.
    """
    if len(image_names) != len(table):
        raise ValueError(f"{len(image_names)} image names for {len(table)} particles")
    blocks = dict(table.blocks)
    particles = table.particles.copy()
    particles["rlnImageName"] = list(image_names)
    blocks[table.particles_block] = particles
    text = starfile.to_string(blocks, float_format="%.6f")
    if table.version != "3.0":  # RELION 3.1+ writes its version before each block
        text = re.sub(r"^data_", f"# version {table.version_tag}\n\ndata_", text, flags=re.M)
    path = Path(star_path)
    atomic_write(path, text)
    return path
