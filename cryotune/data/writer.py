"""Build a dataset store atomically: :class:`DatasetWriter` (re-exported by ``cryotune.data.store``).

Example::

    import numpy as np
    from cryotune.data.store import DatasetWriter
    with DatasetWriter("/tmp/toy", name="toy", kind="simulated", image_shape=(16, 16),
                       pixel_size=2.0, overwrite=True) as w:
        x = np.random.default_rng(0).random((4, 16, 16), dtype=np.float32)
        w.add("train", id=np.arange(4), clean=x, noisy=x)
        w.commit(snr=None)
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from cryotune._temps import owned_name, remove_stale
from cryotune._version import __version__
from cryotune.data.shards import (
    FORMATS,
    META,
    SCHEMA_VERSION,
    SPLITS,
    sha256,
    write_mrcs,
    write_parquet,
)
from cryotune.errors import BadInput

log = logging.getLogger(__name__)

__all__ = ["DatasetWriter"]

SNR_CONVENTION = "var(clean)/var(noise), real space, whole box"


class _Moments:
    """Streaming mean and variance of every pixel seen, merged per chunk (Chan et al.) in float64."""

    def __init__(self) -> None:
        self.n, self.mean, self.m2 = 0, 0.0, 0.0

    def add(self, x: np.ndarray) -> None:
        n_b = x.size
        if n_b == 0:
            return
        x64 = x.astype(np.float64, copy=False)
        mean_b = float(x64.mean())
        m2_b = float(np.square(x64 - mean_b).sum())
        n = self.n + n_b
        delta = mean_b - self.mean
        self.mean += delta * n_b / n
        self.m2 += m2_b + delta * delta * self.n * n_b / n
        self.n = n

    @property
    def var(self) -> float:
        return self.m2 / self.n if self.n else float("nan")


class DatasetWriter:
    """Build a dataset store atomically; use as a context manager.

    Everything is written into a hidden temporary sibling of ``out`` (same filesystem) and
    renamed into place by :meth:`commit`. An exception (or Ctrl-C) inside the ``with`` block
    removes the temporary folder, so nothing is left at ``out``. Memory stays bounded by the
    shard size: :meth:`add` may be called with chunks of any size and shards are flushed every
    ``shard_rows`` rows.

    Args:
        out: the dataset folder to create.
        name: the dataset's name (manifest and Parquet metadata).
        kind: "simulated" or "ingested".
        image_shape: (H, W) of every image.
        pixel_size: Angstrom per pixel.
        formats: any of "parquet" and "mrc".
        shard_rows: rows per shard file.
        overwrite: replace an existing ``out`` (the old tree is removed only after the new one
            is in place).
        command: the command line that made the dataset, stamped into the manifest.
    """

    def __init__(self, out: str | Path, *, name: str, kind: str, image_shape: tuple[int, int],
                 pixel_size: float, formats: tuple[str, ...] = ("parquet",), shard_rows: int = 1024,
                 overwrite: bool = False, command: str | None = None):
        self.out = Path(out).absolute()
        if kind not in ("simulated", "ingested"):
            raise BadInput(f"unknown dataset kind {kind!r}", "DatasetWriter(kind=...)",
                           "use 'simulated' or 'ingested'")
        formats = tuple(dict.fromkeys(formats))
        if not formats or any(f not in FORMATS for f in formats):
            raise BadInput(f"unknown store format in {formats!r}", "formats",
                           "use 'parquet', 'mrc' or both")
        if len(image_shape) != 2 or min(image_shape) < 1 or shard_rows < 1 or not pixel_size > 0:
            raise BadInput(f"bad image_shape {image_shape}, shard_rows {shard_rows} or pixel_size "
                           f"{pixel_size}", str(self.out), "pass (H, W) >= 1, shard_rows >= 1 and pixel_size > 0")
        if self.out.exists() and not overwrite:
            raise BadInput("output already exists", str(self.out),
                           "choose another path or pass --overwrite")
        self.name, self.kind, self.command = name, kind, command
        self.image_shape = (int(image_shape[0]), int(image_shape[1]))
        self.pixel_size = float(pixel_size)
        self.formats, self.shard_rows, self.overwrite = formats, int(shard_rows), overwrite
        self.out.parent.mkdir(parents=True, exist_ok=True)
        for kind_ in ("tmp", "old"):  # what a killed earlier run left
            remove_stale(self.out.parent, f".{self.out.name}.{kind_}-")
        self.tmp = self.out.parent / owned_name(f".{self.out.name}.tmp-")
        self.tmp.mkdir()
        self._buffers: dict[str, list[dict[str, np.ndarray]]] = {s: [] for s in SPLITS}
        self._buffered = {s: 0 for s in SPLITS}
        self._rows = {s: 0 for s in SPLITS}
        self._shards: dict[str, list[dict]] = {s: [] for s in SPLITS}
        self._ids: list[np.ndarray] = []
        self._files: dict[str, str] = {}
        self._has_defocus: bool | None = None
        self._stats = {"clean": _Moments(), "noisy": _Moments()}
        self._done = False

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self._done:
            if exc_type is None:
                log.warning("dataset %s was not committed: nothing written", self.out)
            self.abort()

    def abort(self) -> None:
        """Remove the temporary folder; nothing is left at ``out``."""
        shutil.rmtree(self.tmp, ignore_errors=True)
        self._done = True

    def add(self, split: str, *, id, clean, noisy, conformation=None, rotation=None, shift=None,
            defocus=None) -> None:
        """Append rows to a split.

        Args:
            split: "train", "val" or "test".
            id: int64 (N,), unique across the dataset (across the splits).
            clean, noisy: float32 (N, H, W), already normalised by the caller.
            conformation: int (N,); -1 (the default) when unknown.
            rotation: float32 (N, 4) quaternions (w, x, y, z); NaN (the default) when unknown.
            shift: float32 (N, 2) in pixels; 0 (the default: images centred).
            defocus: float32 (N, 3) defocus_u_A, defocus_v_A, astig_angle_deg; give it for every
                row of the dataset or for none.
        """
        if split not in SPLITS:
            raise BadInput(f"unknown split {split!r}", "DatasetWriter.add", "use 'train', 'val' or 'test'")
        ids = np.asarray(id, dtype=np.int64).reshape(-1)
        n = ids.size
        first_row = self._rows[split] + self._buffered[split]
        chunk = {"id": ids}
        for key, value in (("clean", clean), ("noisy", noisy)):
            arr = np.asarray(value, dtype=np.float32)
            if arr.shape != (n, *self.image_shape):
                raise BadInput(f"{key} has shape {arr.shape}, expected {(n, *self.image_shape)}",
                               f"{split} rows {first_row}-{first_row + n - 1}",
                               "pass one H x W image per id")
            bad = ~np.isfinite(arr).reshape(n, -1).all(axis=1)
            if bad.any():
                row = first_row + int(np.argmax(bad))
                raise BadInput(f"{key} image has NaN or inf pixels", f"{split} row {row} (id {ids[row - first_row]})",
                               "remove or repair that image")
            chunk[key] = arr
        defaults = {"conformation": -1, "rotation": np.nan, "shift": 0.0}
        given = {"conformation": conformation, "rotation": rotation, "shift": shift, "defocus": defocus}
        if self._has_defocus is None:
            self._has_defocus = defocus is not None
        if (defocus is not None) != self._has_defocus:
            raise BadInput("defocus given for some rows but not others", f"{split} row {first_row}",
                           "pass defocus with every add() call or with none")
        for key, value in given.items():
            if key == "defocus" and not self._has_defocus:
                continue
            dtype, width = META[key]
            shape = (n,) if width is None else (n, width)
            arr = np.full(shape, defaults[key], dtype) if value is None else np.asarray(value, dtype)
            if arr.shape != shape:
                raise BadInput(f"{key} has shape {arr.shape}, expected {shape}",
                               f"{split} rows {first_row}-{first_row + n - 1}", f"pass {key} as {shape}")
            chunk[key] = arr
        if split == "train":
            self._stats["clean"].add(chunk["clean"])
            self._stats["noisy"].add(chunk["noisy"])
        self._ids.append(ids)
        self._buffers[split].append(chunk)
        self._buffered[split] += n
        while self._buffered[split] >= self.shard_rows:
            self._flush(split, self.shard_rows)

    def add_file(self, relpath: str, data: bytes | Path) -> None:
        """Add an extra file (e.g. ``truth/conformation-00.npz``), checksummed in the manifest."""
        rel = Path(relpath)
        if rel.is_absolute() or ".." in rel.parts or rel.parts[:1] in tuple((s,) for s in SPLITS):
            raise BadInput(f"bad extra file path {relpath!r}", "DatasetWriter.add_file",
                           "use a relative path outside train/, val/ and test/, e.g. truth/x.npz")
        target = self.tmp / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, bytes):
            target.write_bytes(data)
        else:
            shutil.copyfile(data, target)
        self._files[rel.as_posix()] = sha256(target)

    def _flush(self, split: str, rows: int) -> None:
        merged = {k: np.concatenate([c[k] for c in self._buffers[split]]) for k in self._buffers[split][0]}
        shard = {k: v[:rows] for k, v in merged.items()}
        rest = {k: v[rows:] for k, v in merged.items()}
        self._buffers[split] = [rest] if len(rest["id"]) else []
        self._buffered[split] -= rows
        index = len(self._shards[split])
        entry: dict[str, Any] = {"rows": rows, "sha256": {}}
        (self.tmp / split).mkdir(exist_ok=True)
        metadata = {"cryotune_version": __version__, "dataset": self.name, "split": split}
        if "parquet" in self.formats:
            entry["parquet"] = f"{split}/part-{index:05d}.parquet"
            write_parquet(self.tmp / entry["parquet"], shard, metadata)
        if "mrc" in self.formats:
            for key in ("clean", "noisy"):
                entry[key] = f"{split}/{key}-{index:05d}.mrcs"
                write_mrcs(self.tmp / entry[key], shard[key], self.pixel_size)
            entry["meta"] = f"{split}/meta-{index:05d}.parquet"
            meta = {k: v for k, v in shard.items() if k not in ("clean", "noisy")}
            write_parquet(self.tmp / entry["meta"], meta, metadata)
        for key in ("parquet", "clean", "noisy", "meta"):
            if key in entry:
                entry["sha256"][entry[key]] = sha256(self.tmp / entry[key])
        self._shards[split].append(entry)
        self._rows[split] += rows

    def commit(self, **manifest_fields: Any) -> Path:
        """Flush the last shards, write ``manifest.json`` and rename the folder into place.

        Args:
            **manifest_fields: manifest keys set by the caller: snr, snr_measured,
                normalization, conformations, has_poses, ctf, generator or source.

        Returns:
            The dataset folder.
        """
        for split in SPLITS:
            if self._buffered[split]:
                self._flush(split, self._buffered[split])
        if self._rows["train"] == 0:
            raise BadInput("the train split is empty", str(self.out), "add at least one train image")
        ids = np.concatenate(self._ids)
        uniq, counts = np.unique(ids, return_counts=True)
        if uniq.size != ids.size:
            raise BadInput(f"id {int(uniq[counts > 1][0])} appears more than once", str(self.out),
                           "give every image a unique id")
        stats = {f"{k}_{m}": getattr(self._stats[k], m) for k in ("clean", "noisy") for m in ("mean", "var")}
        manifest = {
            "schema_version": SCHEMA_VERSION, "name": self.name, "kind": self.kind,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "cryotune_version": __version__, "command": self.command,
            "image_shape": list(self.image_shape), "pixel_size": self.pixel_size, "dtype": "float32",
            "snr": None, "snr_measured": None, "snr_convention": SNR_CONVENTION,
            "normalization": None, "formats": list(self.formats), "stats": stats,
            "splits": {s: {"count": self._rows[s], "shards": self._shards[s]} for s in SPLITS},
            "conformations": None, "has_poses": False, "has_defocus": bool(self._has_defocus),
            "ctf": None, "files": self._files,
        }
        manifest.update(manifest_fields)
        with open(self.tmp / "manifest.json", "w") as f:
            json.dump(manifest, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        self._install()
        self._done = True
        log.info("wrote dataset %s (%d train, %d val, %d test)", self.out, self._rows["train"],
                 self._rows["val"], self._rows["test"])
        return self.out

    def _install(self) -> None:
        if not self.out.exists():
            os.rename(self.tmp, self.out)
            return
        if not self.overwrite:
            raise BadInput("output appeared while writing", str(self.out), "choose another path")
        old = self.out.parent / owned_name(f".{self.out.name}.old-")
        os.rename(self.out, old)
        try:
            os.rename(self.tmp, self.out)
        except BaseException:
            os.rename(old, self.out)
            raise
        shutil.rmtree(old, ignore_errors=True)
