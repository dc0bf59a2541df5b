"""Ingest a user's particle images and clean references into a dataset store.

``particles`` (noisy) and ``references`` (clean) are each an MRC/MRCS stack or a RELION particle
STAR file (:mod:`cryotune.data.star`); pairs match by position, so both must hold the same number
of images of the same shape. Stacks are read through memory maps in chunks of ``shard_rows``
images, in two passes: the first finds the references' minimum and maximum, the second
normalises and writes. Memory stays bounded by the shard size, whatever the stack size.

- **References from a map** (``map_path`` instead of ``references``): the particles are a STAR
  or cryoSPARC ``.cs`` file (:mod:`cryotune.data.cryosparc`) with poses, and each reference is
  the map projected at its particle's pose and origin, times its CTF unless ``ctf="none"``
  (:mod:`cryotune.data.project`), made chunk by chunk in each pass; the manifest's
  ``references`` entry records the map, the mask and whether the CTF was applied.

- **Normalisation** (as for simulated data): clean references are mapped to [0, 1] over the
  whole dataset, ``x -> (x - min) / (max - min)``, and the noisy particles by the same map.
- **Crop**: ``crop=N`` keeps the central N x N pixels, starting at ``n // 2 - N // 2`` on each
  axis, so the image centre (index ``n // 2``) stays the centre and origin shifts stay valid.
- **Pixel size** (Angstrom): ``pixel_size`` if given; else the particles' STAR file, the
  references' STAR file, the particles' MRC header, the references' MRC header, in that order
  (header voxel sizes of 0 or 1 mean unset); none found is an error asking for ``--pixel-size``.
- **Poses, shifts, CTF** come from the particles' STAR file, else the references'. Rotations are
  stored as quaternions (w, x, y, z) of RELION's matrix, shifts as RELION's origin in pixels
  (translate the image by ``+shift`` to centre the particle; see :mod:`cryotune.data.star`).
- **Split**: ``round(n * test_fraction)`` images (at least one when the fraction is positive),
  drawn with ``numpy.random.default_rng(seed)``, form the test split; of the others,
  ``round(val_fraction * n_rest)`` (at least one when the fraction is positive), drawn from a
  generator seeded by ``(seed, 1)``, form the validation split; ids are the 0-based positions
  in the input. The test split is the one a store without validation had at that seed.

Every problem is a :class:`~cryotune.errors.BadInput` naming the file and row or image; the store
is built in a temporary folder, so an error leaves nothing at ``out``.

Example::

    import numpy as np
    from cryotune.data.ingest import ingest
    from cryotune.data.mrc import write_stack
    clean = np.random.default_rng(0).random((100, 40, 40), dtype=np.float32)
    write_stack("/tmp/clean.mrcs", clean, pixel_size=1.3)
    write_stack("/tmp/noisy.mrcs", clean + np.float32(0.5), pixel_size=1.3)
    ingest("/tmp/toy-ingest", particles="/tmp/noisy.mrcs", references="/tmp/clean.mrcs",
           crop=32, test_fraction=0.1, seed=0, overwrite=True)
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from cryotune.data.cryosparc import read_cs
from cryotune.data.mrc import StackSource, open_stack
from cryotune.data.project import ProjectedSource
from cryotune.data.star import ParticleTable, read_particles
from cryotune.data.store import DatasetWriter
from cryotune.errors import BadInput

__all__ = ["StarSource", "ingest", "open_images"]

log = logging.getLogger(__name__)

SHIFT_CONVENTION = "RELION origin (x, y) in pixels: translate the image by +shift to centre it"
Progress = Callable[[str, int, int], None]


class StarSource:
    """The images a particle STAR file names, read in row order from their stacks.

    Every stack is checked when the source opens (image shape, and every index within its
    stack); stacks are then opened on demand, a few at a time.

    Attributes:
        table: the :class:`~cryotune.data.star.ParticleTable`.
        path: the STAR file.
        shape: ``(n, H, W)``.
        pixel_size: the STAR file's pixel size (None when it gives none).
        header_pixel_size: the first stack's MRC header pixel size (None when unset).
    """

    max_open = 32  # stacks kept open at once (a STAR file may name thousands)

    def __init__(self, table: ParticleTable):
        self.table = table
        self.path = table.path
        counts = np.empty(len(table.stacks), dtype=np.int64)
        image_shape = None
        for sid, stack_path in enumerate(table.stacks):
            with open_stack(stack_path, force_stack=True) as stack:  # 'k@file' says stack
                counts[sid] = len(stack)
                if image_shape is None:
                    image_shape, self.header_pixel_size = stack.shape[1:], stack.pixel_size
                elif stack.shape[1:] != image_shape:
                    row = int(np.argmax(table.stack_ids == sid))
                    raise BadInput(
                        f"stack {stack_path} has {stack.shape[1]}x{stack.shape[2]} images but "
                        f"{table.stacks[0]} has {image_shape[0]}x{image_shape[1]}",
                        f"{self.path} row {row + 1}", "pass images of one box size")
        past = np.flatnonzero(table.indices >= counts[table.stack_ids])
        if past.size:
            r = int(past[0])
            stack = table.stacks[table.stack_ids[r]]
            raise BadInput(f"image {table.indices[r] + 1} is past the end of {stack} "
                           f"({counts[table.stack_ids[r]]} images)", f"{self.path} row {r + 1}",
                           "fix rlnImageName or pass the complete stack")
        self.shape = (len(table), *image_shape)
        self._open: OrderedDict[int, StackSource] = OrderedDict()

    @property
    def pixel_size(self) -> float | None:
        return self.table.pixel_size

    def __len__(self) -> int:
        return self.shape[0]

    def __enter__(self) -> StarSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close every open stack."""
        while self._open:
            self._open.popitem()[1].close()

    def describe(self, i: int) -> str:
        """Where particle ``i`` (0-based row) lives, for error messages."""
        t = self.table
        return f"{self.path} row {i + 1} ({t.indices[i] + 1}@{t.stacks[t.stack_ids[i]]})"

    def _stack(self, sid: int) -> StackSource:
        stack = self._open.pop(sid, None)
        if stack is None:
            stack = open_stack(self.table.stacks[sid], force_stack=True)
            if len(self._open) >= self.max_open:
                self._open.popitem(last=False)[1].close()
        self._open[sid] = stack
        return stack

    def read(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Particles ``start`` to ``stop`` (rows, 0-based) as a new float32 ``(k, H, W)`` array."""
        stop = len(self) if stop is None else stop
        ids = self.table.stack_ids[start:stop]
        indices = self.table.indices[start:stop]
        out = np.empty((len(ids), *self.shape[1:]), dtype=np.float32)
        for sid in np.unique(ids):
            rows = ids == sid
            out[rows] = self._stack(int(sid)).take(indices[rows])
        return out


def open_images(path: str | Path, *, force_stack: bool = False,
                pixel_size: float | None = None,
                require: Sequence[str] = ()) -> StackSource | StarSource:
    """Open an MRC/MRCS stack, or the images of a STAR or cryoSPARC ``.cs`` file (by extension).

    Args:
        path: the stack or STAR file.
        force_stack: read an MRC file that looks like a 3D volume as a stack anyway.
        pixel_size: for STAR files, converts Angstrom origins where the file gives no pixel size.
        require: for ``.cs`` files, field groups that must be present ("poses", "ctf").

    Returns:
        A source with ``path``, ``shape`` (n, H, W), ``read(start, stop)``, ``describe(i)`` and
        ``close()``.
    """
    path = Path(path)
    if path.suffix.lower() == ".star":
        source = StarSource(read_particles(path, pixel_size=pixel_size))
    elif path.suffix.lower() == ".cs":
        source = StarSource(read_cs(path, require=require))
    else:
        source = open_stack(path, force_stack=force_stack)
    n, h, w = source.shape
    if h != w:
        source.close()
        raise BadInput(f"images are {w} x {h} pixels, not square ({n} of them: a "
                       "crystallographic map or a micrograph?)", str(path),
                       "pass square particle images, extracted in a square box")
    return source


def _resolve_pixel_size(override: float | None, particles, references) -> tuple[float, str]:
    if override is not None:
        return float(override), "--pixel-size"
    roles = (("particles", particles), ("references", references))
    found = [(src.pixel_size, f"{role} STAR file") for role, src in roles
             if isinstance(src, StarSource)]
    found += [(src.header_pixel_size if isinstance(src, StarSource) else src.pixel_size,
               f"{role} MRC header") for role, src in roles]
    found = [(v, where) for v, where in found if v is not None]
    if not found:
        raise BadInput("no pixel size in the STAR files or MRC headers (voxel size 0 or 1 is "
                       "unset)", f"{particles.path} and {references.path}",
                       "pass --pixel-size in Angstrom")
    value, where = found[0]
    for other, other_where in found[1:]:
        if abs(other - value) > 1e-3 * value:
            log.warning("pixel size %.4g A from the %s differs from %.4g A in the %s; using %.4g",
                        value, where, other, other_where, value)
    return value, where


def _check_pair(particles, references, crop: int | None) -> None:
    (n, h, w), (nr, hr, wr) = particles.shape, references.shape
    where = f"{particles.path} and {references.path}"
    if n != nr:
        raise BadInput(f"{n} particle images but {nr} references", where,
                       "pass one reference per particle, in the same order")
    if (h, w) != (hr, wr):
        raise BadInput(f"particle images are {h}x{w} but references are {hr}x{wr}", where,
                       "pass references of the particles' box size")
    if crop is not None and not 1 <= crop <= min(h, w):
        raise BadInput(f"--crop {crop} does not fit the {h}x{w} images", str(particles.path),
                       f"pass a crop between 1 and {min(h, w)}")


def _crop(images: np.ndarray, crop: int | None) -> np.ndarray:
    if crop is None:
        return images
    h, w = images.shape[1:]
    y, x = h // 2 - crop // 2, w // 2 - crop // 2
    return images[:, y:y + crop, x:x + crop]


def _check_finite(images: np.ndarray, source, start: int) -> None:
    bad = ~np.isfinite(images).reshape(len(images), -1).all(axis=1)
    if bad.any():
        raise BadInput("image has NaN or inf pixels", source.describe(start + int(np.argmax(bad))),
                       "remove or repair that image")


def _split(n: int, test_fraction: float, seed: int) -> np.ndarray:
    if not 0 <= test_fraction < 1:
        raise BadInput(f"test fraction {test_fraction} is outside [0, 1)", "--test-fraction",
                       "pass a fraction such as 0.05")
    n_test = int(round(n * test_fraction))
    n_test = max(n_test, 1) if test_fraction > 0 else 0
    if n - n_test < 1:
        raise BadInput(f"{n} images leave none for training at test fraction {test_fraction}",
                       "--test-fraction", "pass more images or a smaller fraction")
    is_test = np.zeros(n, dtype=bool)
    is_test[np.random.default_rng(seed).choice(n, size=n_test, replace=False)] = True
    return is_test


def _val_split(is_test: np.ndarray, val_fraction: float, seed: int) -> np.ndarray:
    """Validation rows: ``round(val_fraction * rest)`` of the non-test rows (at least one when
    the fraction is positive), from a stream of their own so the test split does not move."""
    if not 0 <= val_fraction < 1:
        raise BadInput(f"validation fraction {val_fraction} is outside [0, 1)", "--val-fraction",
                       "pass a fraction of the training pairs such as 0.1, or 0 for none")
    rest = np.flatnonzero(~is_test)
    n_val = int(round(len(rest) * val_fraction))
    n_val = max(n_val, 1) if val_fraction > 0 else 0
    if len(rest) - n_val < 1:
        raise BadInput(f"{len(rest)} training images leave none for training at validation "
                       f"fraction {val_fraction}", "--val-fraction",
                       "pass more images or a smaller fraction")
    is_val = np.zeros_like(is_test)
    is_val[np.random.default_rng([seed, 1]).choice(rest, size=n_val, replace=False)] = True
    return is_val


def _value_range(references, crop: int | None, rows: int, progress: Progress | None):
    lo, hi = np.inf, -np.inf
    n = len(references)
    for start in range(0, n, rows):
        clean = _crop(references.read(start, min(start + rows, n)), crop)
        _check_finite(clean, references, start)
        lo, hi = min(lo, float(clean.min())), max(hi, float(clean.max()))
        if progress:
            progress("scan", min(start + rows, n), n)
    if not hi > lo:
        raise BadInput(f"every reference pixel equals {lo:g}", str(references.path),
                       "pass clean references with some contrast")
    return lo, hi


def _metadata(particles, references) -> ParticleTable | None:
    for src in (particles, references):
        if isinstance(src, StarSource):
            return src.table
    return None


def ingest(out: str | Path, *, particles: str | Path, references: str | Path | None = None,
           map_path: str | Path | None = None, ctf: str = "auto",
           mask: str | Path | None = None,
           crop: int | None = None, test_fraction: float = 0.05, seed: int = 0,
           formats: Sequence[str] = ("parquet",), pixel_size: float | None = None,
           shard_rows: int = 1024, overwrite: bool = False, force_stack: bool = False,
           name: str | None = None, command: str | None = None,
           progress: Progress | None = None, val_fraction: float = 0.1) -> Path:
    """Build a dataset store at ``out`` from particle images and clean references.

    Args:
        out: the dataset folder to create.
        particles: noisy images: an MRC/MRCS stack, a RELION particle STAR file or a
            cryoSPARC particle ``.cs`` file.
        references: clean references, likewise, one per particle in the same order.
        map_path: instead of ``references``, a 3D map (``.mrc``) projected at each particle's
            pose (:class:`~cryotune.data.project.ProjectedSource`); the particles must then be
            a STAR or cryoSPARC ``.cs`` file with poses.
        ctf: with ``map_path``: "apply" multiplies each projection by its particle's CTF,
            "none" keeps plain projections, "auto" applies it when the file has every CTF value.
        mask: with ``map_path``, a mask (``.mrc``) multiplied into the map.
        crop: keep the central ``crop`` x ``crop`` pixels (e.g. 360 -> 256).
        test_fraction: fraction of the images in the test split.
        val_fraction: fraction of the other (training) pairs in the validation split; 0: none.
        seed: seed of the train/validation/test split.
        formats: store formats, any of "parquet" and "mrc".
        pixel_size: Angstrom per pixel; overrides the STAR files and MRC headers.
        shard_rows: images per shard, also the read chunk size (memory bound).
        overwrite: replace an existing ``out``.
        force_stack: read MRC files that look like 3D volumes as image stacks.
        name: the dataset's name (default: the folder name).
        command: the command line, stamped into the manifest.
        progress: called as ``progress(stage, done, total)`` with stage "scan" then "write".

    Returns:
        The dataset folder.

    Raises:
        BadInput: unreadable or inconsistent inputs, with the file and row or image named.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise BadInput("output already exists", str(out), "choose another path or pass --overwrite")
    if shard_rows < 1:
        raise BadInput(f"shard rows {shard_rows} must be at least 1", "--shard-rows",
                       "pass a positive number such as 1024")
    if pixel_size is not None and not pixel_size > 0:
        raise BadInput(f"pixel size {pixel_size} must be positive", "--pixel-size",
                       "pass the pixel size in Angstrom, e.g. --pixel-size 1.06")
    with ExitStack() as stack:
        needs = () if map_path is None else ("poses", "ctf") if ctf == "apply" else ("poses",)
        noisy_src = stack.enter_context(open_images(particles, force_stack=force_stack,
                                                    pixel_size=pixel_size, require=needs))
        clean_src = stack.enter_context(_references(noisy_src, references, map_path, ctf, mask,
                                                    force_stack, pixel_size))
        _check_pair(noisy_src, clean_src, crop)
        size, size_from = _resolve_pixel_size(pixel_size, noisy_src, clean_src)
        if isinstance(clean_src, ProjectedSource):
            clean_src.bind(size)
        is_test = _split(len(noisy_src), test_fraction, seed)
        is_val = _val_split(is_test, val_fraction, seed)
        table = _metadata(noisy_src, clean_src)
        lo, hi = _value_range(clean_src, crop, shard_rows, progress)
        image_shape = noisy_src.shape[1:] if crop is None else (crop, crop)
        writer = stack.enter_context(DatasetWriter(
            out, name=name or out.name, kind="ingested", image_shape=image_shape,
            pixel_size=size, formats=tuple(formats), shard_rows=shard_rows,
            overwrite=overwrite, command=command))
        snr = _write(writer, noisy_src, clean_src, table, is_test, crop, (lo, hi), shard_rows,
                     progress, is_val=is_val)
        source = {
            "particles": str(Path(particles).absolute()),
            "references": str(Path(clean_src.path).absolute()),
            "count": len(noisy_src), "original_shape": list(noisy_src.shape[1:]), "crop": crop,
            "pixel_size_from": size_from, "test_fraction": test_fraction,
            "val_fraction": val_fraction, "seed": seed,
            "poses_from": None if table is None else str(table.path),
            "shift_convention": SHIFT_CONVENTION,
        }
        return writer.commit(
            snr=None, snr_measured=snr, conformations=None,
            normalization={"method": "minmax_clean", "min": lo, "max": hi},
            has_poses=table is not None and table.poses is not None,
            ctf=None if table is None else table.ctf, source=source,
            references=(clean_src.manifest() if isinstance(clean_src, ProjectedSource)
                        else {"source": "images", "path": str(Path(references).absolute())}))


def _references(particles, references, map_path, ctf: str, mask, force_stack: bool,
                pixel_size: float | None):
    """The clean side: a stack or STAR file of references, or the map projected at the poses."""
    if (references is None) == (map_path is None):
        raise BadInput("pass either references or a map, not both" if references is not None
                       else "no clean references and no map", "--references/--map",
                       "pass --references R (clean images) or --map MAP.mrc (projected at the "
                       "particles' poses)")
    if references is not None:
        if mask is not None or ctf != "auto":
            raise BadInput("--mask and --ctf apply to a projected --map only", "--mask/--ctf",
                           "leave them out with --references")
        return open_images(references, force_stack=force_stack, pixel_size=pixel_size)
    if not isinstance(particles, StarSource):
        raise BadInput("--map needs the particles' poses, and an MRC stack has none",
                       str(particles.path), "pass a RELION STAR or cryoSPARC .cs file as "
                       "--particles")
    return ProjectedSource(particles.table, particles.shape[1:], map_path, mask=mask, ctf=ctf)


def _write(writer: DatasetWriter, noisy_src, clean_src, table: ParticleTable | None,
           is_test: np.ndarray, crop: int | None, value_range: tuple[float, float], rows: int,
           progress: Progress | None, *, is_val: np.ndarray | None = None) -> float | None:
    """Second pass: normalise and add every pair; returns var(clean) / var(noisy - clean)."""
    if is_val is None:
        is_val = np.zeros_like(is_test)
    lo, hi = value_range
    scale = 1.0 / (hi - lo)
    sums = np.zeros(4)  # clean sum, clean sum of squares, noise sum, noise sum of squares
    n = len(noisy_src)
    for start in range(0, n, rows):
        stop = min(start + rows, n)
        noisy = _crop(noisy_src.read(start, stop), crop)
        _check_finite(noisy, noisy_src, start)
        clean = (_crop(clean_src.read(start, stop), crop) - lo) * scale
        noisy = (noisy - lo) * scale
        noise = noisy - clean
        sums += [_sum(clean), _sum(np.square(clean)), _sum(noise), _sum(np.square(noise))]
        del noise
        meta = _chunk_metadata(table, slice(start, stop))
        for split, mask in (("train", ~(is_test | is_val)[start:stop]),
                            ("val", is_val[start:stop]), ("test", is_test[start:stop])):
            if mask.any():
                writer.add(split, id=np.arange(start, stop)[mask], clean=clean[mask],
                           noisy=noisy[mask], **{k: v[mask] for k, v in meta.items()})
        if progress:
            progress("write", stop, n)
    count = float(n) * np.prod(clean.shape[1:])
    var_clean = sums[1] / count - (sums[0] / count) ** 2
    var_noise = sums[3] / count - (sums[2] / count) ** 2
    return float(var_clean / var_noise) if var_noise > 0 else None


def _chunk_metadata(table: ParticleTable | None, rows: slice) -> dict[str, np.ndarray]:
    if table is None:
        return {}
    meta = {"rotation": table.quaternions(rows),
            "shift": None if table.shifts_px is None else table.shifts_px[rows],
            "defocus": None if table.defocus is None else table.defocus[rows]}
    return {k: v for k, v in meta.items() if v is not None}


def _sum(x: np.ndarray) -> float:
    return float(x.sum(dtype=np.float64))
