"""Shard file formats of the dataset store: Parquet tables and MRC stack pairs.

Example::

    import numpy as np
    from cryotune.data.shards import write_parquet, table_to_numpy
    import pyarrow.parquet as pq
    write_parquet("/tmp/s.parquet", {"id": np.arange(3), "clean": np.zeros((3, 16, 16), np.float32)}, {})
    print(table_to_numpy(pq.read_table("/tmp/s.parquet"))["clean"].shape)   # (3, 16, 16)
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import NamedTuple

import mrcfile
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

__all__ = ["COLUMNS", "FORMATS", "META", "SCHEMA_VERSION", "SPLITS", "MrcShard",
           "empty_columns", "numpy_to_table", "sha256", "table_to_numpy", "write_mrcs", "write_parquet"]

SCHEMA_VERSION = 1
SPLITS = ("train", "val", "test")  # stores written before the val split have train and test only
FORMATS = ("parquet", "mrc")
# Per-row metadata columns: name -> (dtype, values per row or None for a scalar).
META = {"id": (np.int64, None), "conformation": (np.int32, None), "rotation": (np.float32, 4),
        "shift": (np.float32, 2), "defocus": (np.float32, 3)}
COLUMNS = ("id", "clean", "noisy", "conformation", "rotation", "shift", "defocus")


def empty_columns(columns, image_shape: tuple[int, int]) -> dict[str, np.ndarray]:
    """Zero-row arrays of the store's dtypes and shapes for ``columns``."""
    out = {}
    for c in columns:
        if c in ("clean", "noisy"):
            out[c] = np.empty((0, *image_shape), np.float32)
        else:
            dtype, width = META[c]
            out[c] = np.empty((0,) if width is None else (0, width), dtype)
    return out


class MrcShard(NamedTuple):
    """The three files of one MRC shard and its row count."""

    clean: Path
    noisy: Path
    meta: Path
    rows: int


def sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def numpy_to_table(columns: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> pa.Table:
    """Store columns as an Arrow table: images (N, H, W) as canonical ``arrow.fixed_shape_tensor``
    float32 [H, W], per-row vectors as fixed-size lists, scalars as plain columns.

    The canonical tensor type is read by plain pyarrow (``to_numpy_ndarray()``), by pandas (an
    object column of flat float32 arrays) and by ``ray.data.read_parquet``, which turns it
    into an (N, H, W) float32 numpy array, so no Ray-specific type is needed.

    Args:
        columns: name -> array.
        metadata: schema metadata, stored under ``cryotune.<key>``.

    Returns:
        The table.
    """
    arrays, names = [], []
    for key, value in columns.items():
        if value.ndim == 3:
            arrays.append(pa.FixedShapeTensorArray.from_numpy_ndarray(np.ascontiguousarray(value)))
        elif value.ndim == 2:
            arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(value.reshape(-1)), value.shape[1]))
        else:
            arrays.append(pa.array(value))
        names.append(key)
    table = pa.Table.from_arrays(arrays, names=names)
    if metadata:
        table = table.replace_schema_metadata({f"cryotune.{k}": v for k, v in metadata.items()})
    return table


def write_parquet(path: str | Path, columns: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
    """Write one Parquet shard (see :func:`numpy_to_table` for the column types)."""
    # Dictionary encoding only pays for the small-integer column; on float pixels it made
    # writes 3x slower and files 15% larger.
    pq.write_table(numpy_to_table(columns, metadata), path, use_dictionary=["conformation"])


def write_mrcs(path: Path, images: np.ndarray, pixel_size: float) -> None:
    """Write an (N, H, W) float32 (mode 2) image stack with its voxel size set."""
    with mrcfile.new(path) as mrc:
        mrc.set_data(np.ascontiguousarray(images, dtype=np.float32))
        mrc.set_image_stack()
        mrc.voxel_size = pixel_size


def table_to_numpy(table: pa.Table) -> dict[str, np.ndarray]:
    """Convert a shard table's columns to numpy (images without copies where Arrow allows).

    Args:
        table: columns of a Parquet shard or sidecar.

    Returns:
        name -> array; clean/noisy (N, H, W) float32 (possibly read-only), vectors (N, k).
    """
    out = {}
    for name in table.column_names:
        col = table.column(name).combine_chunks()
        if isinstance(col.type, pa.FixedShapeTensorType):
            out[name] = col.to_numpy_ndarray()
        elif pa.types.is_fixed_size_list(col.type):
            out[name] = col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), col.type.list_size)
        else:
            out[name] = col.to_numpy(zero_copy_only=False)
    return out
