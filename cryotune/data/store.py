"""The dataset store: a folder of ``manifest.json`` plus ``train/``, ``val/`` and ``test/`` shards.

The validation split (``val``) holds pairs like the training ones, which a study contaminates
exactly as it contaminates training pairs and selects on; the test split is only reported.
Stores written before the validation split existed have ``train`` and ``test`` only: they open
as before, with an empty ``val`` split, and say so once (the pipeline then holds out a
validation split from the training pairs, :mod:`cryotune.data.pipeline`).

A store holds pairs of clean references and noisy images (float32, H x W) with their
metadata, as Parquet shards, MRC stack pairs, or both. :class:`DatasetWriter` builds one
atomically (in a hidden sibling folder, renamed into place on commit); :func:`open_dataset`
reads it back, verifying the sha256 of every shard.

Example::

    import numpy as np
    from cryotune.data.store import DatasetWriter, open_dataset
    rng = np.random.default_rng(0)
    with DatasetWriter("/tmp/toy", name="toy", kind="simulated", image_shape=(16, 16),
                       pixel_size=2.0, formats=("parquet", "mrc"), overwrite=True) as w:
        clean = rng.random((10, 16, 16), dtype=np.float32)
        w.add("train", id=np.arange(8), clean=clean[:8], noisy=clean[:8] + 0.1)
        w.add("test", id=np.arange(8, 10), clean=clean[8:], noisy=clean[8:] + 0.1)
        w.commit()
    ds = open_dataset("/tmp/toy")
    print(ds.count("train"), ds.stats(), ds.read("test", ["id", "noisy"])["noisy"].shape)
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import mrcfile
import numpy as np
import pyarrow.parquet as pq

from cryotune.data.shards import (
    COLUMNS,
    SCHEMA_VERSION,
    SPLITS,
    MrcShard,
    empty_columns,
    sha256,
    table_to_numpy,
)
from cryotune.data.writer import DatasetWriter
from cryotune.errors import BadInput, ChecksumMismatch

log = logging.getLogger(__name__)

__all__ = ["Dataset", "DatasetWriter", "MrcShard", "open_dataset"]

_NO_VAL_SAID: set[str] = set()  # stores without a val split already reported in this process

_FIX_RECREATE = "re-create the dataset or restore the file"


class Dataset:
    """A dataset store opened for reading (see :func:`open_dataset`)."""

    def __init__(self, path: Path, manifest: dict, *, verified: bool):
        self.path = path
        self.manifest = manifest
        self.image_shape: tuple[int, int] = tuple(manifest["image_shape"])  # type: ignore[assignment]
        self.pixel_size = float(manifest["pixel_size"])
        self.formats: tuple[str, ...] = tuple(manifest["formats"])
        self._verified: set[str] = set(self._all_files()) if verified else set()

    def __repr__(self) -> str:
        return (f"Dataset({str(self.path)!r}, train={self.count('train')}, val={self.count('val')}, "
                f"test={self.count('test')}, "
                f"shape={self.image_shape}, formats={self.formats})")

    def _all_files(self) -> dict[str, str]:
        files = dict(self.manifest.get("files") or {})
        for split in SPLITS:
            for shard in self._split(split)["shards"]:
                files.update(shard["sha256"])
        return files

    @property
    def has_val_split(self) -> bool:
        """Whether the store was written with a validation split (possibly empty:
        ``--val-fraction 0``); False for stores written before the split existed."""
        return "val" in self.manifest["splits"]

    def _split(self, split: str) -> dict:
        if split not in SPLITS:
            raise BadInput(f"unknown split {split!r}", str(self.path), "use 'train', 'val' or 'test'")
        if split == "val" and not self.has_val_split:
            return {"count": 0, "shards": []}
        return self.manifest["splits"][split]

    def verify(self, relpaths: list[str] | None = None) -> None:
        """Check sha256 of the given files (default: all), each at most once per Dataset.

        Raises:
            ChecksumMismatch: a file changed or is missing.
        """
        expected = self._all_files()
        for rel in expected if relpaths is None else relpaths:
            if rel in self._verified:
                continue
            path = self.path / rel
            if not path.is_file():
                raise ChecksumMismatch("dataset file is missing", str(path), _FIX_RECREATE)
            if sha256(path) != expected[rel]:
                raise ChecksumMismatch("dataset file changed after it was written (sha256 mismatch)",
                                       str(path), _FIX_RECREATE)
            self._verified.add(rel)

    def count(self, split: str) -> int:
        """Rows in ``split`` ("train", "val" or "test"; 0 for "val" of an older store)."""
        return int(self._split(split)["count"])

    def stats(self) -> dict[str, float]:
        """Train split pixel statistics: clean_mean, clean_var, noisy_mean, noisy_var (population)."""
        return dict(self.manifest["stats"])

    def ctf_params(self) -> dict | None:
        """voltage_kv, cs_mm, amplitude_contrast when the images carry a CTF, else None."""
        return self.manifest.get("ctf")

    def truth_volumes(self) -> list[Path] | None:
        """Ground-truth files under ``truth/`` (simulated stores), else None."""
        paths = [self.path / rel for rel in sorted(self.manifest.get("files") or {}) if rel.startswith("truth/")]
        return paths or None

    def _fmt(self, fmt: str | None) -> str:
        if fmt is None:
            return self.formats[0]
        if fmt not in self.formats:
            raise BadInput(f"format {fmt!r} is not in this dataset ({', '.join(self.formats)})",
                           str(self.path), f"use one of {', '.join(self.formats)}")
        return fmt

    def shard_files(self, split: str, fmt: str) -> list[Path] | list[MrcShard]:
        """Shard paths of ``split``: Parquet files, or :class:`MrcShard` triples for "mrc"."""
        fmt = self._fmt(fmt)
        shards = self._split(split)["shards"]
        if fmt == "parquet":
            return [self.path / s["parquet"] for s in shards]
        return [MrcShard(self.path / s["clean"], self.path / s["noisy"], self.path / s["meta"], s["rows"])
                for s in shards]

    def _read_shard(self, shard: dict, fmt: str, columns: tuple[str, ...], lo: int, hi: int) -> dict:
        self.verify([shard["parquet"]] if fmt == "parquet" else [shard[k] for k in ("clean", "noisy", "meta")])
        if fmt == "parquet":
            return table_to_numpy(pq.read_table(self.path / shard["parquet"], columns=list(columns)).slice(lo, hi - lo))
        meta_cols = [c for c in columns if c not in ("clean", "noisy")]
        out = table_to_numpy(pq.read_table(self.path / shard["meta"], columns=meta_cols).slice(lo, hi - lo)) if meta_cols else {}
        for key in ("clean", "noisy"):
            if key in columns:
                with mrcfile.mmap(self.path / shard[key], mode="r") as mrc:
                    out[key] = np.array(mrc.data[lo:hi], dtype=np.float32)
        return out

    def _columns(self, columns) -> tuple[str, ...]:
        available = [c for c in COLUMNS if c != "defocus" or self.manifest.get("has_defocus")]
        columns = tuple(available if columns is None else columns)
        unknown = [c for c in columns if c not in available]
        if unknown:
            raise BadInput(f"unknown column {unknown[0]!r}", str(self.path), f"use any of {', '.join(available)}")
        return columns

    def read(self, split: str, columns=None, *, start: int = 0, stop: int | None = None,
             fmt: str | None = None) -> dict[str, np.ndarray]:
        """Rows ``start:stop`` of a split as numpy arrays.

        Args:
            split: "train", "val" or "test".
            columns: any of id, clean, noisy, conformation, rotation, shift, defocus (default all).
            start, stop: row range (stop None: to the end).
            fmt: read from "parquet" or "mrc" (default: the first format of the dataset).

        Returns:
            column -> array; Parquet images may be read-only views on Arrow memory.
        """
        columns, fmt = self._columns(columns), self._fmt(fmt)
        stop = self.count(split) if stop is None else min(stop, self.count(split))
        parts, offset = [], 0
        for shard in self._split(split)["shards"]:
            lo, hi = max(start - offset, 0), min(stop - offset, shard["rows"])
            if lo < hi:
                parts.append(self._read_shard(shard, fmt, columns, lo, hi))
            offset += shard["rows"]
        if not parts:
            return empty_columns(columns, self.image_shape)
        if len(parts) == 1:
            return {c: parts[0][c] for c in columns}
        return {c: np.concatenate([p[c] for p in parts]) for c in columns}

    def iter_chunks(self, split: str, rows: int, columns=None, *, fmt: str | None = None
                    ) -> Iterator[dict[str, np.ndarray]]:
        """Yield a split in order, ``rows`` rows at a time, reading each shard once."""
        columns, fmt = self._columns(columns), self._fmt(fmt)
        buffer: list[dict] = []
        held = 0
        for shard in self._split(split)["shards"]:
            buffer.append(self._read_shard(shard, fmt, columns, 0, shard["rows"]))
            held += shard["rows"]
            while held >= rows:
                merged = {c: np.concatenate([b[c] for b in buffer]) for c in columns}
                yield {c: v[:rows] for c, v in merged.items()}
                buffer, held = [{c: v[rows:] for c, v in merged.items()}], held - rows
        if held:
            yield {c: np.concatenate([b[c] for b in buffer]) for c in columns}


def open_dataset(path: str | Path, *, verify: bool = True) -> Dataset:
    """Open a dataset store.

    Args:
        path: the dataset folder (the one holding ``manifest.json``).
        verify: check every file's sha256 now; with False each shard is checked lazily,
            before this Dataset first reads it.

    Returns:
        The :class:`Dataset`.

    Raises:
        BadInput: not a dataset folder, unreadable manifest or unknown schema version.
        ChecksumMismatch: a file changed after the dataset was written.
    """
    path = Path(path)
    manifest_path = path / "manifest.json"
    if not path.is_dir():
        raise BadInput("dataset folder not found", str(path), "pass a folder made by cryotune simulate or ingest")
    if not manifest_path.is_file():
        raise BadInput("not a cryotune dataset (no manifest.json)", str(path),
                       "pass a folder made by cryotune simulate or ingest")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BadInput(f"unreadable manifest ({err})", str(manifest_path), _FIX_RECREATE) from err
    if not isinstance(manifest, dict) or manifest.get("schema_version") != SCHEMA_VERSION:
        version = manifest.get("schema_version") if isinstance(manifest, dict) else None
        raise BadInput(f"unknown dataset schema_version {version!r} (this cryotune reads {SCHEMA_VERSION})",
                       str(manifest_path), "re-create the dataset with this cryotune version")
    required = ("image_shape", "pixel_size", "formats", "stats", "splits")
    missing = [k for k in required if k not in manifest] + [
        f"splits.{s}" for s in ("train", "test") if s not in manifest.get("splits", {})]
    if missing:
        raise BadInput(f"manifest lacks {missing[0]!r}", str(manifest_path), _FIX_RECREATE)
    dataset = Dataset(path, manifest, verified=False)
    if not dataset.has_val_split and str(path.absolute()) not in _NO_VAL_SAID:
        _NO_VAL_SAID.add(str(path.absolute()))
        log.warning("dataset %s has no validation split (written before cryotune made one); "
                    "studies hold one out of its training pairs", path)
    if verify:
        dataset.verify()
    return dataset
