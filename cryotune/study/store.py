"""The study store on disk: its layout, and its writer :class:`StudyStore`.

A study lives in a folder (a local path, ``file://`` or any pyarrow filesystem URI such as
``s3://bucket/studies``), next to Ray Tune's own experiment files::

    <root>/<name>/
        spec.yaml                  the resolved sweep spec
        trials.parquet             one row a trial (rewritten atomically as trials end)
        history.parquet/           one row a (trial, epoch): a part file a recorded trial,
                                   merged into one file by compact_history() (the folder's
                                   files and their write order: cryotune.study.history);
                                   plain ``pandas.read_parquet`` reads the folder
        trials/<trial_id>/*.npy    per-trial arrays: gallery images, FSC curves
        datasets/<key>/            each dataset the study read: manifest.json and the gallery's
                                   clean and noisy test images (gallery_clean.npy, ...)

Every file is written atomically. This module alone declares the columns of
``trials.parquet``, and every writer (the sweep's recorder, the baselines, the validation)
goes through :meth:`StudyStore.record_trial`, which refuses a column the declaration lacks:

- :data:`COLUMNS`, one each: ``study``, ``trial_id``, ``status`` (:data:`STATUSES`), ``error``,
  ``epochs``, ``wall_s``, ``node_id``, ``checkpoint``, ``restarts``, ``started_at``,
  ``ended_at``, ``resumed_from_epoch``, and the selection: ``best_epoch``, ``select_metric``,
  ``select_score`` (the trial's best validation epoch and its score), ``test_mse_at_best``,
  ``test_psnr_at_best``, ``test_ssim_at_best`` (the test metrics of that epoch) and
  ``noisy_test_mse`` (the noisy input's, the divergence threshold);
- :data:`GROUPS`, passed as mappings: ``config`` (``config.<key>`` for every config entry,
  nested keys joined with dots), ``metrics`` (the last epoch's metrics under their own names,
  ``test_mse``, ``val_mse_median``, ...) and ``validation`` (``fsc_res_0143_A``,
  ``cluster_acc``, ``validate_needs``, ...; :data:`FSC_COLUMNS` names the FSC ones and
  :data:`VALIDATION_COLUMNS` the others every validated row has, ``validated_epoch``).

A trial ended without an error whose selected test MSE is above the noisy input's made the
images worse: :meth:`StudyStore.record_trial` records it as ``diverged`` (:func:`worse_than_noisy`),
whatever its writer said, so a trial ASHA stopped early is judged like one that finished.

Columns of the history (:data:`HISTORY_COLUMNS`): ``study``, ``trial_id``, ``epoch``,
``write_seq`` (the write order) and every reported metric.

Example::

    store = StudyStore("studies", "demo")
    store.record_trial({"trial_id": "t1", "status": "finished"}, [{"epoch": 1, "test_mse": 0.1}])
    store.record_trial({"trial_id": "t2", "status": "finished"}, [{"epoch": 1, "test_mse": 0.2}])
    store.compact_history()   # 2: two part files merged into one
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import yaml

from cryotune._io import atomic_write, join, resolve
from cryotune.config import load_yaml_text
from cryotune.errors import BadInput
from cryotune.study.history import SEQ, compact, history_files, last_seq, part_name

log = logging.getLogger(__name__)

__all__ = [
    "COLUMNS",
    "ENDED_OK",
    "FSC_COLUMNS",
    "GROUPS",
    "HISTORY_COLUMNS",
    "HISTORY_DIR",
    "SELECTABLE",
    "SELECTION",
    "SPEC_FILE",
    "STATUSES",
    "STUDY_SCHEMA_VERSION",
    "TRIALS_FILE",
    "VALIDATION_COLUMNS",
    "StudyStore",
    "dataset_key",
    "finite_or_none",
    "flatten_config",
    "worse_than_noisy",
    "read_spec",
    "read_table",
    "safe_name",
]

# 2: history files carry write_seq (version 1 studies read as write_seq 0)
STUDY_SCHEMA_VERSION = 2
# "stopped": ended early by the scheduler (ASHA); "interrupted": cut short by Ctrl-C or
# SIGTERM of the sweep, which `--resume` reruns; never a result
STATUSES = ("finished", "stopped", "diverged", "error", "interrupted", "running", "pending")
# statuses of trials that ended without an error in the platform
ENDED_OK = ("finished", "stopped", "diverged")
# statuses of trials a study may select (cryotune.study.tables.best_trial): ended whole or
# stopped by the scheduler, neither diverged nor errored nor cut short by the platform
SELECTABLE = ("finished", "stopped")
TRIALS_FILE = "trials.parquet"
HISTORY_DIR = "history.parquet"
SPEC_FILE = "spec.yaml"

# The trial table's single columns, in table order, and what each holds.
COLUMNS = {
    "study": "the study's name",
    "trial_id": "the trial's name in the study (trial_00003, baseline-nlm-<dataset>)",
    "status": "one of STATUSES",
    "error": "the one-line error of an errored or diverged trial",
    "epochs": "epochs recorded",
    "wall_s": "seconds the trial ran",
    "node_id": "the Ray node it ended on",
    "checkpoint": "its last model (checkpoint.pt), which denoise and validate load",
    "restarts": "times Ray Tune restarted it after a failure",
    "started_at": "Unix time its last run started",
    "ended_at": "Unix time its last epoch ended",
    "resumed_from_epoch": "the checkpoint's epoch its last run started from",
    "best_epoch": "its best validation epoch (its best.pt), by select_metric",
    "select_metric": "the validation score that picked best_epoch (the study's select.metric)",
    "select_score": "that score at best_epoch: what the study's best trial is chosen on",
    "test_mse_at_best": "the test MSE at best_epoch (reported, never selected on)",
    "test_psnr_at_best": "the test PSNR at best_epoch",
    "test_ssim_at_best": "the test SSIM at best_epoch",
    "noisy_test_mse": "the noisy input's test MSE: above it, a trial is diverged",
}
# the selection columns, as a trial reports them (cryotune.nn.train.BestEpoch)
SELECTION = ("best_epoch", "select_score", "test_mse_at_best", "test_psnr_at_best",
             "test_ssim_at_best", "noisy_test_mse")
# Groups of columns a writer passes as one mapping each: group -> (prefix, what they hold).
GROUPS = {
    "config": ("config.", "the trial config, nested keys joined with dots"),
    "metrics": ("", "the last epoch's metrics under their own names (test_mse, val_mse, ...)"),
    "validation": ("", "validation scalars and validate_needs (cryotune.validate.record)"),
}
HISTORY_COLUMNS = ("study", "trial_id", "epoch", SEQ)  # then every reported metric
# The validation group's FSC columns (cryotune.validate.reference), and what each holds. A
# study without ground truth (real particles) has the half-map and input-map ones only.
FSC_COLUMNS = {
    "fsc_res_0143_A": "resolution at FSC 0.143: against the truth when known, else half maps",
    "fsc_res_05_A": "resolution at FSC 0.5, from the same curve",
    "fsc_vs_truth": "1: fsc_res_* are against the truth; 0: between half maps",
    "fsc_truth_res_0143_A": "the full reconstruction against the truth (simulated data)",
    "fsc_truth_res_05_A": "the same at 0.5",
    "fsc_half_res_0143_A": "half maps of two seeded random halves of the test images",
    "fsc_half_res_05_A": "the same at 0.5",
    "fsc_map_res_0143_A": "the full reconstruction against the input map of `ingest --map`, "
                          "biased toward it (poses and references came from it)",
    "fsc_map_res_05_A": "the same at 0.5",
    "fsc_n_images": "test images reconstructed (each half map holds half)",
}
# The validation group's columns besides the FSC and clustering scores, and what each holds.
VALIDATION_COLUMNS = {
    "validated_epoch": "the epoch whose generator was validated: best_epoch (best.pt), or the "
                       "last epoch for a trial without best.pt",
    "validate_needs": "what a validation could not compute and why (None when complete)",
    "validate_s": "seconds the validation took",
}


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


def finite_or_none(value: Any) -> float | None:
    """A float metric, or None when missing or not finite (NaN/inf never reach the tables)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def worse_than_noisy(row: Mapping[str, Any]) -> str | None:
    """Why a trial row is diverged by its numbers, or None: its selected epoch's test MSE
    (``test_mse_at_best``) above the noisy input's (``noisy_test_mse``)."""
    at_best = finite_or_none(row.get("test_mse_at_best"))
    noisy = finite_or_none(row.get("noisy_test_mse"))
    if at_best is None or noisy is None or at_best <= noisy:
        return None
    return (f"the selected epoch {row.get('best_epoch')}'s test MSE {at_best:.4g} is worse than "
            f"the noisy input's {noisy:.4g}")


def dataset_key(manifest: Mapping[str, Any]) -> str:
    """A short stable name for a dataset in a study: ``<name>-<8 hex of its shard checksums>``.

    Sweeps and baselines name the same dataset the same way, so their rows line up.
    """
    digest = hashlib.sha256()
    for split in sorted(manifest.get("splits", {})):
        for shard in manifest["splits"][split].get("shards", []):
            digest.update(json.dumps(shard, sort_keys=True, default=str).encode())
    name = re.sub(r"[^A-Za-z0-9._-]", "_", str(manifest.get("name", "dataset")))
    return f"{name}-{digest.hexdigest()[:8]}"


def _group_columns(group: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """One group's columns, each name checked against the declaration."""
    if group == "config":
        return flatten_config(values)
    prefix = GROUPS[group][0]
    out = {}
    for key, value in dict(values).items():
        key = str(key)
        if not key.startswith(prefix) or key in COLUMNS or key.startswith("config."):
            raise ValueError(f"{key!r} is not a {group} column: {group} columns "
                             f"{'start with ' + repr(prefix) if prefix else 'are named freely'} "
                             f"and differ from {', '.join(COLUMNS)}")
        out[key] = _clean_scalar(value)
    return out


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
        text = yaml.safe_dump(dict(spec), sort_keys=False, allow_unicode=True)
        self._write_bytes(join(self.path, SPEC_FILE), text.encode())

    # -- trials ---------------------------------------------------------------------------
    def record_trial(self, row: Mapping[str, Any], history: Sequence[Mapping[str, Any]] = ()) -> None:
        """Add or replace one trial's row and its per-epoch history.

        Args:
            row: ``trial_id``, ``status``, any other column of :data:`COLUMNS`, and the
                groups of :data:`GROUPS` as mappings: ``config`` (nested, flattened to
                ``config.<key>``), ``metrics``, ``best``, ``validation``.
            history: one mapping per reported epoch with an ``epoch`` key; it replaces the
                trial's earlier history, and an epoch reported twice (a trial restored from a
                checkpoint) keeps its last row.

        Raises:
            ValueError: a key that is neither a declared column nor a group, a group column
                that breaks its group's naming, or an unknown status.
        """
        flat = self._flatten_row(row)
        trial_id = flat["trial_id"]
        if history:
            self._write_history(trial_id, history)
        self._rows[trial_id] = flat
        self._write_trials()

    def rows(self) -> dict[str, dict[str, Any]]:
        """The study's rows as stored (flat columns), by trial id; a copy."""
        return {k: dict(v) for k, v in self._rows.items()}

    def update_trial(self, trial_id: str, *, validation: Mapping[str, Any] | None = None,
                     drop: Sequence[str] = ()) -> dict[str, Any]:
        """Change columns of a recorded trial's row; its other columns and history stay.

        Args:
            trial_id: a trial in the table.
            validation: validation columns to set (the :data:`GROUPS` ``validation`` group).
            drop: columns to remove from the row (they read as missing).

        Returns:
            The row as now stored (flat columns).

        Raises:
            BadInput: the study has no such trial.
        """
        if trial_id not in self._rows:
            raise BadInput(f"no trial {trial_id!r} in the study", self.uri,
                           "list the trials with `cryotune query`")
        flat = {k: v for k, v in self._rows[trial_id].items() if k not in set(drop)}
        flat.update(_group_columns("validation", validation or {}))
        self._rows[trial_id] = flat
        self._write_trials()
        return dict(flat)

    def _flatten_row(self, row: Mapping[str, Any]) -> dict[str, Any]:
        if "trial_id" not in row or "status" not in row:
            raise ValueError("a trial row needs trial_id and status")
        if row["status"] not in STATUSES:
            raise ValueError(f"unknown trial status {row['status']!r}")
        flat: dict[str, Any] = {"study": self.name}
        for key, value in row.items():
            if key in GROUPS:
                flat.update(_group_columns(key, value or {}))
            elif key in COLUMNS and key != "study":
                flat[key] = _clean_scalar(value)
            else:
                raise ValueError(f"{key!r} is not a column of the study table: declare it in "
                                 "cryotune.study.store.COLUMNS, or pass it in one of "
                                 f"{', '.join(GROUPS)}")
        flat["trial_id"] = str(flat["trial_id"])
        for key in COLUMNS:
            flat.setdefault(key, None)
        worse = worse_than_noisy(flat) if flat["status"] in ("finished", "stopped") else None
        if worse is not None:
            flat["status"], flat["error"] = "diverged", flat["error"] or worse
        return flat

    def _write_trials(self) -> None:
        frame = pd.DataFrame.from_records(list(self._rows.values()))
        head = [c for c in COLUMNS if c in frame]
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
        """Merge the history's files into one (see :func:`cryotune.study.history.compact`).

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

    def kept_manifest(self, key: str) -> dict[str, Any] | None:
        """The manifest kept under ``datasets/<key>/`` by :meth:`write_dataset`, or None."""
        path = join(self.path, "datasets", safe_name(key), "manifest.json")
        try:
            with self.fs.open_input_stream(path) as f:
                return json.loads(f.read().decode())
        except (FileNotFoundError, OSError, ValueError):
            return None

    # -- atomic writes --------------------------------------------------------------------
    def _write_table(self, frame: pd.DataFrame, path: str) -> None:
        sink = io.BytesIO()
        table = pa.Table.from_pandas(frame, preserve_index=False)
        meta = dict(table.schema.metadata or {})
        meta[b"cryotune.study_schema"] = str(STUDY_SCHEMA_VERSION).encode()
        pq.write_table(table.replace_schema_metadata(meta), sink)
        self._write_bytes(path, sink.getvalue())

    def _write_bytes(self, path: str, data: bytes) -> None:
        atomic_write(path, data, fs=self.fs)


def read_spec(fs: pafs.FileSystem, study_path: str) -> dict[str, Any] | None:
    """A study's ``spec.yaml`` as a mapping, or None when it has none.

    Raises:
        BadConfig: the file is not valid YAML, carries a tag or expands past the alias bounds.
    """
    file = join(study_path, SPEC_FILE)
    if fs.get_file_info(file).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(file) as f:
        text = f.read().decode("utf-8", errors="replace")
    return load_yaml_text(text, file)


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
        fix = "restore the file"
        if path.rstrip("/").endswith(f"/{TRIALS_FILE}"):
            study = path.rstrip("/")[: -len(TRIALS_FILE) - 1]
            fix += (f", or run `cryotune sweep {study} --resume`: it sets the file aside and "
                    "rebuilds every row from Ray Tune's experiment folder")
        raise BadInput(f"unreadable study table ({err})", path, fix) from None
