"""MRC/MRCS image stacks: permissive reading through memory maps, atomic writing.

Files from other programs are often slightly off the MRC2014 standard, so reading is permissive
(``mrcfile`` permissive mode: no ``MAP`` id string, wrong machine stamp) but every problem that
would give wrong pixels is a :class:`~cryotune.errors.BadInput` naming the file: an empty, short,
truncated or non-MRC file, an unknown or complex data mode, or a 3D volume where a stack is
expected.

Stack or volume? An MRC file with ``nz`` sections is read as a stack of ``nz`` images unless it
looks like a real 3D map. The rule, in order:

1. ``force_stack=True`` (the command line's ``--stack``): always a stack;
2. ``nz == 1``: a single image, i.e. a stack of one;
3. extension ``.mrcs``: a stack (RELION's convention; the space group is often wrong);
4. space group 0 (MRC2014: image or image stack): a stack;
5. otherwise (space group 1 or another volume group, as ``mrcfile`` and many tools write for any
   3D array): a volume if ``nz == ny == nx`` (cryo-EM maps are cubic), else a stack whose
   space group is mislabelled.

A cubic file that rule 5 calls a volume but that really is a stack of ``nx`` images needs
``force_stack``.

Pixel size: the header's voxel size (``cella.x / mx``) unless it is 0, 1, negative or not
finite, which writers use for "unset"; then ``pixel_size`` is None.

Example::

    import numpy as np
    from cryotune.data.mrc import open_stack, write_stack
    write_stack("/tmp/example.mrcs", np.zeros((10, 32, 32), np.float32), pixel_size=1.5)
    with open_stack("/tmp/example.mrcs") as stack:
        print(stack.shape, stack.pixel_size)       # (10, 32, 32) 1.5
        for start, images in stack.iter_chunks(4):  # at most 4 images in memory at a time
            print(start, images.shape)
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import mrcfile
import numpy as np
from mrcfile import utils as mrc_utils

from cryotune._temps import owned_name, remove_stale
from cryotune.errors import BadInput

__all__ = ["StackSource", "StackWriter", "open_stack", "write_stack"]

log = logging.getLogger(__name__)

_HEADER_BYTES = 1024
_FIX_READ = "pass an MRC/MRCS image stack (re-export or re-copy the file if it was cut short)"


def _header_pixel_size(header) -> float | None:
    mx = int(header.mx)
    if mx <= 0:
        return None
    size = float(header.cella.x) / mx
    if not math.isfinite(size) or size <= 0 or abs(size - 1.0) < 1e-6:
        return None  # 0 and 1 are what writers leave when they do not know
    return size


def _is_volume(path: Path, header, shape: tuple[int, int, int]) -> bool:
    """The stack-or-volume rule of the module docstring (rules 2 to 5)."""
    nz, ny, nx = shape
    if nz == 1 or path.suffix.lower() == ".mrcs" or int(header.ispg) == 0:
        return False
    return nz == ny == nx


class StackSource:
    """A read-only image stack on disk, mapped into memory and read in slices.

    Only the images asked for are copied into memory (as float32); the rest stays on disk.

    Attributes:
        path: the file.
        shape: ``(n, H, W)``.
        pixel_size: Angstrom per pixel from the header, None when unset (0 or 1).
        dtype: the file's data type.
    """

    def __init__(self, path: Path, mrc, shape: tuple[int, int, int], pixel_size: float | None):
        self.path = path
        self.shape = shape
        self.pixel_size = pixel_size
        self._mrc = mrc
        self._data = mrc.data.reshape(shape)  # a view of the memory map: nothing is read yet
        self.dtype = self._data.dtype

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"StackSource({str(self.path)!r}, shape={self.shape}, pixel_size={self.pixel_size})"

    def __enter__(self) -> StackSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Release the memory map and the file handle."""
        if self._mrc is not None:
            self._data = None
            self._mrc.close()
            self._mrc = None

    def read(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Images ``start`` to ``stop`` (0-based, stop excluded) as a new float32 array.

        Args:
            start: first image.
            stop: one past the last image; None for the end of the stack.

        Returns:
            float32 array ``(stop - start, H, W)``.
        """
        n = self.shape[0]
        stop = n if stop is None else stop
        if not 0 <= start <= stop <= n:
            raise IndexError(f"images {start}:{stop} outside a stack of {n} ({self.path})")
        return np.array(self._data[start:stop], dtype=np.float32)

    def take(self, indices: np.ndarray) -> np.ndarray:
        """The images at 0-based ``indices`` (any order) as a new float32 array ``(len, H, W)``."""
        indices = np.asarray(indices, dtype=np.int64)
        n = self.shape[0]
        if indices.size and (indices.min() < 0 or indices.max() >= n):
            raise IndexError(f"image index outside a stack of {n} ({self.path})")
        return np.array(self._data[indices], dtype=np.float32)

    def describe(self, i: int) -> str:
        """Where image ``i`` (0-based) lives, for error messages."""
        return f"{self.path} image {i + 1} of {self.shape[0]} (counted from 1)"

    def iter_chunks(self, rows: int) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(start, images)`` for consecutive chunks of at most ``rows`` images."""
        if rows < 1:
            raise ValueError("rows must be >= 1")
        for start in range(0, self.shape[0], rows):
            yield start, self.read(start, min(start + rows, self.shape[0]))


def open_stack(path: str | Path, *, force_stack: bool = False) -> StackSource:
    """Open an MRC/MRCS image stack for reading through a memory map.

    Args:
        path: the file (any extension; ``.mrcs`` and ``.mrc`` are usual).
        force_stack: read a file that looks like a 3D volume as a stack of images anyway.

    Returns:
        An open :class:`StackSource`; close it (or use it as a context manager) when done.

    Raises:
        BadInput: the file is missing, empty, truncated, not MRC, of an unsupported mode, or a
            3D volume (unless ``force_stack``).
    """
    path = Path(path)
    if not path.is_file():
        raise BadInput("MRC file not found", str(path), "check the path")
    size = path.stat().st_size
    if size == 0:
        raise BadInput("MRC file is empty", str(path), _FIX_READ)
    if size < _HEADER_BYTES:
        raise BadInput(f"not an MRC file: {size} bytes is shorter than the 1024-byte header",
                       str(path), _FIX_READ)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            mrc = mrcfile.mmap(path, mode="r", permissive=True)
        except (ValueError, OSError) as err:
            raise BadInput(f"not a readable MRC file ({err})", str(path), _FIX_READ) from None
    for w in caught:
        log.debug("%s: %s", path, w.message)
    try:
        return _checked_source(path, mrc, size, force_stack)
    except BaseException:
        mrc.close()
        raise


def _checked_source(path: Path, mrc, size: int, force_stack: bool) -> StackSource:
    header = mrc.header
    nx, ny, nz = int(header.nx), int(header.ny), int(header.nz)
    try:
        dtype = mrc_utils.data_dtype_from_header(header)
    except ValueError:
        raise BadInput(f"not an MRC file: unknown data mode {int(header.mode)}",
                       str(path), _FIX_READ) from None
    if dtype.kind == "c":
        raise BadInput(f"MRC data mode {int(header.mode)} is complex (Fourier) data, not images",
                       str(path), "pass real-space images (mode 0, 1, 2, 6 or 12)")
    if min(nx, ny, nz) <= 0:
        raise BadInput(f"not an MRC file: header dimensions nx={nx} ny={ny} nz={nz}",
                       str(path), _FIX_READ)
    expected = _HEADER_BYTES + max(int(header.nsymbt), 0) + nx * ny * nz * dtype.itemsize
    if mrc.data is None or size < expected:
        raise BadInput(
            f"MRC file is truncated or corrupt: its header promises {nz} images of {ny}x{nx} "
            f"({expected} bytes) but the file has {size} bytes", str(path), _FIX_READ)
    shape = (nz, ny, nx)
    sizes = [float(header.cella.x) / max(int(header.mx), 1),
             float(header.cella.y) / max(int(header.my), 1)]
    if all(math.isfinite(v) and v > 0 for v in sizes) and abs(sizes[0] - sizes[1]) > (
            1e-3 * max(sizes)):
        raise BadInput(f"pixel size is anisotropic ({sizes[0]:g} x {sizes[1]:g} A)", str(path),
                       "pass images with square pixels (resample them first)")
    if not force_stack and _is_volume(path, header, shape):
        raise BadInput(
            f"looks like a 3D volume, not an image stack (space group {int(header.ispg)}, "
            f"nz = ny = nx = {nx})", str(path),
            "pass an image stack (e.g. a .mrcs file), or --stack if this file is one")
    if path.suffix.lower() != ".mrcs" and int(header.ispg) != 0 and nz > 1:
        log.info("%s: space group %d but read as a stack of %d images", path, int(header.ispg), nz)
    return StackSource(path, mrc, shape, _header_pixel_size(header))


class StackWriter:
    """Write an image stack image by image, atomically: the file appears only on success.

    Writes into a temporary sibling through a memory map and renames it onto ``path`` when the
    ``with`` block ends without an error and every image was written; otherwise the temporary
    file is removed and nothing is left at ``path``.

    Args:
        path: the stack to write (``.mrcs`` by convention).
        shape: ``(n, H, W)``.
        pixel_size: Angstrom per pixel, stored as the voxel size.
    """

    def __init__(self, path: str | Path, shape: tuple[int, int, int], pixel_size: float):
        self.path = Path(path)
        self.shape = tuple(int(s) for s in shape)
        if len(self.shape) != 3 or min(self.shape) < 1:
            raise ValueError(f"stack shape must be (n, H, W) with n, H, W >= 1, got {shape}")
        self.pixel_size = float(pixel_size)
        self.written = 0
        # running statistics for the header, so closing never re-reads the whole stack
        self._min, self._max, self._sum, self._sumsq = np.inf, -np.inf, 0.0, 0.0
        # a hidden sibling on the same file system, so the final rename is atomic
        remove_stale(self.path.parent, f".{self.path.name}.", ".tmp")  # a killed earlier run's
        self._tmp = self.path.with_name(owned_name(f".{self.path.name}.", ".tmp"))
        try:
            self._mrc = mrcfile.new_mmap(self._tmp, self.shape, mrc_mode=2)
            self._mrc.set_image_stack()
            self._mrc.voxel_size = self.pixel_size
        except BaseException:
            self._tmp.unlink(missing_ok=True)
            raise

    def __enter__(self) -> StackWriter:
        return self

    def write(self, images: np.ndarray) -> None:
        """Append images ``(k, H, W)`` (or one image ``(H, W)``) after those already written."""
        images = np.asarray(images, dtype=np.float32)
        if images.ndim == 2:
            images = images[None]
        k = images.shape[0]
        if images.shape[1:] != self.shape[1:] or self.written + k > self.shape[0]:
            raise ValueError(f"cannot write {images.shape} at image {self.written} "
                             f"of a stack {self.shape}")
        self._mrc.data[self.written:self.written + k] = images
        self.written += k
        if k:
            self._min = min(self._min, float(images.min()))
            self._max = max(self._max, float(images.max()))
            self._sum += float(images.sum(dtype=np.float64))
            self._sumsq += float(np.square(images, dtype=np.float64).sum())

    def __exit__(self, exc_type, exc, tb) -> None:
        complete = exc_type is None and self.written == self.shape[0]
        try:
            if complete:
                count = float(np.prod(self.shape))
                mean = self._sum / count
                header = self._mrc.header
                header.dmin, header.dmax, header.dmean = self._min, self._max, mean
                header.rms = math.sqrt(max(self._sumsq / count - mean * mean, 0.0))
            self._mrc.close()
            if complete:
                os.replace(self._tmp, self.path)
        finally:
            self._tmp.unlink(missing_ok=True)
        if exc_type is None and not complete:
            raise ValueError(f"only {self.written} of {self.shape[0]} images were written "
                             f"to {self.path}; nothing was saved")


def write_stack(path: str | Path, array: np.ndarray, pixel_size: float) -> Path:
    """Write images as an MRC stack, atomically (temporary file, then rename).

    Args:
        path: the file to write (``.mrcs`` by convention); replaced if it exists.
        array: ``(n, H, W)`` images, or one ``(H, W)`` image; stored as float32.
        pixel_size: Angstrom per pixel, stored as the voxel size.

    Returns:
        The path written. The header has space group 0 (image stack) and ``mz = 1``.
    """
    array = np.asarray(array)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3:
        raise ValueError(f"write_stack needs (n, H, W) images, got shape {array.shape}")
    with StackWriter(path, array.shape, pixel_size) as writer:
        writer.write(array)
    return Path(path)
