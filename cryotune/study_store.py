"""The study store on disk: its layout, and its writer :class:`StudyStore`.

A study lives in a folder (a local path, ``file://`` or any pyarrow filesystem URI such as
``s3://bucket/studies``), next to Ray Tune's own experiment files::

    <root>/<name>/
        spec.yaml                  the resolved sweep spec
        trials.parquet             one row a trial (rewritten atomically as trials end)
        history.parquet/           one row a (trial, epoch): a part file a recorded trial,
                                   merged into one file by compact_history() (the folder's
                                   files and their write order: cryotune.study_history);
                                   plain ``pandas.read_parquet`` reads the folder
        trials/<trial_id>/*.npy    per-trial arrays: gallery images, FSC curves
        datasets/<key>/            each dataset the study read: manifest.json and the gallery's
                                   clean and noisy test images (gallery_clean.npy, ...)

Every file is written atomically. Columns of ``trials.parquet``: ``study``, ``trial_id``,
``status`` (:data:`STATUSES`), ``error``, ``epochs``, ``wall_s``, ``node_id``, ``config.<key>``
for every config entry (nested keys joined with dots), the final metrics under their own names
(``test_mse``, ``test_psnr``, ...), ``best_<metric>`` and ``best_epoch`` for the study's metric,
and any extra scalar columns a writer adds (``fsc_res_0143_A``, ``cluster_acc``,
``restarts``). Columns of the history: ``study``, ``trial_id``, ``epoch``, every reported
metric, and ``write_seq`` (the write order).

Example::

    store = StudyStore("studies", "demo")
    store.record_trial({"trial_id": "t1", "status": "finished"}, [{"epoch": 1, "test_mse": 0.1}])
    store.record_trial({"trial_id": "t2", "status": "finished"}, [{"epoch": 1, "test_mse": 0.2}])
    store.compact_history()   # 2: two part files merged into one
"""

from __future__ import annotations

import io
import json
import logging
import re
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import yaml

from cryotune.errors import BadInput
from cryotune.study_history import SEQ, compact, history_files, last_seq, part_name

log = logging.getLogger(__name__)

__all__ = [
    "HISTORY_DIR",
    "STATUSES",
    "STUDY_SCHEMA_VERSION",
    "StudyStore",
    "flatten_config",
    "read_table",
]

# 2: history files carry write_seq (version 1 studies read as write_seq 0)
STUDY_SCHEMA_VERSION = 2
STATUSES = ("finished", "stopped", "diverged", "error", "running", "pending")
# statuses of trials that ended without an error in the platform
ENDED_OK = ("finished", "stopped", "diverged")
TRIALS_FILE = "trials.parquet"
HISTORY_DIR = "history.parquet"
SPEC_FILE = "spec.yaml"
_BASE_COLUMNS = ("study", "trial_id", "status", "error", "epochs", "wall_s", "node_id")


def resolve(uri: str | Path) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and the path in it for a local path or a URI."""
    text = str(uri)
    if "://" in text:
        try:
            return pafs.FileSystem.from_uri(text)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as err:
            raise BadInput(f"cannot open storage URI ({err})", text,
                           "use a local folder, file://, s3:// or gs:// URI") from None
    return pafs.LocalFileSystem(), str(Path(text).expanduser().resolve())


def join(*parts: str) -> str:
    return "/".join(p.rstrip("/") for p in parts if p)


def safe_name(trial_id: str) -> str:
    """A trial id as a file name: characters other than letters, digits, ``._-`` become ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", str(trial_id))


def flatten_config(config: Mapping[str, Any], prefix: str = "config") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"config.a.b": 1}``; lists and tuples become strings."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}.{key}"
        if isinstance(value, Mapping):
            out.update(flatten_config(value, name))
        elif isinstance(value, (list, tuple)):
            out[name] = str(list(value))
        else:
            out[name] = value
    return out


def _clean_scalar(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return value


class StudyStore:
    """Writes one study's tables. One writer per study at a time (the sweep's driver, or a
    command that adds rows afterwards).

    Args:
        root: the storage folder or URI that holds studies.
        name: the study's name; its folder is ``<root>/<name>``.
    """

    def __init__(self, root: str | Path, name: str):
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
            raise BadInput(f"invalid study name {name!r}", "name",
                           "use letters, digits, '.', '_' and '-' only")
        self.fs, base = resolve(root)
        self.name = name
        self.path = join(base, name)
        self.uri = join(str(root), name) if "://" in str(root) else self.path
        self.history_path = join(self.path, HISTORY_DIR)
        self.fs.create_dir(self.history_path, recursive=True)
        self._rows: dict[str, dict[str, Any]] = {}
        existing = read_table(self.fs, join(self.path, TRIALS_FILE))
        if existing is not None:
            for row in existing.to_pandas().to_dict("records"):
                self._rows[str(row["trial_id"])] = row
        files = history_files(self.fs, self.history_path)
        self._seq = last_seq(files)
        # history parts written or found since the last compaction
        self.history_parts = sum(f.base_name.startswith("part-") for f in files)

    # -- spec -----------------------------------------------------------------------------
    def write_spec(self, spec: Mapping[str, Any]) -> None:
        """Write the resolved sweep spec as ``spec.yaml``."""
        text = yaml.safe_dump(dict(spec), sort_keys=False)
        self._write_bytes(join(self.path, SPEC_FILE), text.encode())

    # -- trials ---------------------------------------------------------------------------
    def record_trial(self, row: Mapping[str, Any], history: Sequence[Mapping[str, Any]] = ()) -> None:
        """Add or replace one trial's row and its per-epoch history.

        Args:
            row: ``trial_id``, ``status`` and optionally ``config`` (nested mapping, flattened
                to ``config.<key>``), ``metrics`` (final values), ``best`` (``best_<metric>``
                and ``best_epoch``), ``epochs``, ``wall_s``, ``error``, ``node_id`` and extra
                scalar columns.
            history: one mapping per reported epoch with an ``epoch`` key; it replaces the
                trial's earlier history, and an epoch reported twice (a trial restored from a
                checkpoint) keeps its last row.
        """
        flat = self._flatten_row(row)
        trial_id = flat["trial_id"]
        if history:
            self._write_history(trial_id, history)
        self._rows[trial_id] = flat
        self._write_trials()

    def _flatten_row(self, row: Mapping[str, Any]) -> dict[str, Any]:
        if "trial_id" not in row or "status" not in row:
            raise ValueError("a trial row needs trial_id and status")
        if row["status"] not in STATUSES:
            raise ValueError(f"unknown trial status {row['status']!r}")
        flat: dict[str, Any] = {"study": self.name}
        for key, value in row.items():
            if key == "config":
                flat.update(flatten_config(value))
            elif key in ("metrics", "best"):
                flat.update({k: _clean_scalar(v) for k, v in dict(value).items()})
            else:
                flat[key] = _clean_scalar(value)
        flat["trial_id"] = str(flat["trial_id"])
        for key in _BASE_COLUMNS:
            flat.setdefault(key, None)
        return flat

    def _write_trials(self) -> None:
        frame = pd.DataFrame.from_records(list(self._rows.values()))
        head = [c for c in _BASE_COLUMNS if c in frame]
        config = sorted(c for c in frame if c.startswith("config."))
        rest = [c for c in frame if c not in head and c not in config]
        frame = frame[head + config + rest]
        self._write_table(frame, join(self.path, TRIALS_FILE))

    def _write_history(self, trial_id: str, history: Sequence[Mapping[str, Any]]) -> None:
        frame = pd.DataFrame.from_records([{k: _clean_scalar(v) for k, v in h.items()} for h in history])
        if "epoch" not in frame:
            raise ValueError("history rows need an 'epoch' key")
        frame = frame.drop_duplicates("epoch", keep="last").sort_values("epoch")
        frame.insert(0, "trial_id", trial_id)
        frame.insert(0, "study", self.name)
        frame["epoch"] = frame["epoch"].astype("int64")
        seq = self._next_seq()
        frame[SEQ] = np.int64(seq)
        self._write_table(frame, join(self.history_path, part_name(seq, safe_name(trial_id))))
        self.history_parts += 1

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    # -- history compaction ---------------------------------------------------------------
    def compact_history(self) -> int:
        """Merge the history's files into one (see :func:`cryotune.study_history.compact`).

        A reader at any moment, or after a crash, sees every (trial, epoch) once, its newest
        record; parts written later stay beside the merged file until the next compaction.

        Returns:
            How many files were merged (0: there were fewer than two, nothing changed).

        Raises:
            BadInput: a history file is unreadable (nothing is changed).
        """
        meta = {b"cryotune.study_schema": str(STUDY_SCHEMA_VERSION).encode()}
        files, rows = compact(self.fs, self.history_path, self._next_seq(), meta)
        if files:
            self.history_parts = 0
            log.info("compacted %d history files (%d rows) in %s", files, rows, self.history_path)
        return files

    # -- arrays ---------------------------------------------------------------------------
    def trial_dir(self, trial_id: str) -> str:
        return join(self.path, "trials", safe_name(trial_id))

    def write_array(self, trial_id: str, name: str, array: np.ndarray) -> str:
        """Store ``array`` as ``trials/<trial_id>/<name>.npy``; returns its path in the store."""
        buf = io.BytesIO()
        np.save(buf, np.asarray(array), allow_pickle=False)
        folder = self.trial_dir(trial_id)
        self.fs.create_dir(folder, recursive=True)
        path = join(folder, f"{name}.npy")
        self._write_bytes(path, buf.getvalue())
        return path

    def write_dataset(self, key: str, manifest: Mapping[str, Any],
                      arrays: Mapping[str, np.ndarray] | None = None) -> None:
        """Keep a dataset's manifest and reference arrays (e.g. ``gallery_clean``,
        ``gallery_noisy``, ``gallery_ids``) under ``datasets/<key>/``; trials name the dataset
        by ``config.dataset = key``."""
        folder = join(self.path, "datasets", safe_name(key))
        self.fs.create_dir(folder, recursive=True)
        for name, array in (arrays or {}).items():
            buf = io.BytesIO()
            np.save(buf, np.asarray(array), allow_pickle=False)
            self._write_bytes(join(folder, f"{name}.npy"), buf.getvalue())
        self._write_bytes(join(folder, "manifest.json"),
                          json.dumps(dict(manifest), indent=1, default=str).encode())

    # -- atomic writes --------------------------------------------------------------------
    def _write_table(self, frame: pd.DataFrame, path: str) -> None:
        sink = io.BytesIO()
        table = pa.Table.from_pandas(frame, preserve_index=False)
        meta = dict(table.schema.metadata or {})
        meta[b"cryotune.study_schema"] = str(STUDY_SCHEMA_VERSION).encode()
        pq.write_table(table.replace_schema_metadata(meta), sink)
        self._write_bytes(path, sink.getvalue())

    def _write_bytes(self, path: str, data: bytes) -> None:
        # A local rename is atomic; an object store's single PUT is atomic by itself. Temporary
        # names start with '.', which every reader of the store skips.
        folder, base = path.rsplit("/", 1)
        if isinstance(self.fs, pafs.LocalFileSystem):
            tmp = join(folder, f".{base}.{uuid.uuid4().hex}.tmp")
            with self.fs.open_output_stream(tmp) as out:
                out.write(data)
            self.fs.move(tmp, path)
        else:
            with self.fs.open_output_stream(path) as out:
                out.write(data)


def read_table(fs: pafs.FileSystem, path: str) -> pa.Table | None:
    """One Parquet file of the store, or None when it does not exist.

    Raises:
        BadInput: the file is unreadable.
    """
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return None
    try:
        # one open file, not pq.read_table(path): a dataset reader sizes the file before it
        # opens it, and a writer's rename in between leaves it reading the old size
        with fs.open_input_file(path) as f:
            return pq.read_table(f)
    except (pa.ArrowInvalid, OSError) as err:
        raise BadInput(f"unreadable study table ({err})", path,
                       "restore the file, or rerun the sweep with --resume") from None
