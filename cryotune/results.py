"""The study store: one table a row per trial, one a row per (trial, epoch), and their queries.

This module alone owns the study tables' columns. A study lives in a folder (a local path,
``file://`` or any pyarrow filesystem URI such as ``s3://bucket/studies``), next to Ray Tune's
own experiment files::

    <root>/<name>/
        spec.yaml                  the resolved sweep spec
        trials.parquet             one row a trial (rewritten atomically as trials end)
        history.parquet/           one row a (trial, epoch): a Parquet dataset folder, one part
                                   file a trial, each written atomically; plain
                                   ``pandas.read_parquet`` reads the folder
        trials/<trial_id>/*.npy    per-trial arrays: gallery images, FSC curves
        datasets/<key>/            each dataset the study read: manifest.json and the gallery's
                                   clean and noisy test images (gallery_clean.npy, ...)

Columns of ``trials.parquet``: ``study``, ``trial_id``, ``status`` (:data:`STATUSES`), ``error``,
``epochs``, ``wall_s``, ``node_id``, ``config.<key>`` for every config entry (nested keys joined
with dots), the final metrics under their own names (``test_mse``, ``test_psnr``, ...),
``best_<metric>`` and ``best_epoch`` for the study's metric, and any extra scalar columns a
writer adds (``fsc_res_0143_A``, ``cluster_acc``).

Example::

    import cryotune
    study = cryotune.load_study("studies/smoke")
    print(study.summary(by=["config.method", "config.eps"], metrics=["test_mse"]))
    l2 = study.query("`config.method` == 'l2_ae' and `config.eps` > 0")
"""

from __future__ import annotations

import io
import logging
import math
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import yaml

from cryotune.errors import BadInput

log = logging.getLogger(__name__)

__all__ = [
    "STATUSES",
    "STUDY_SCHEMA_VERSION",
    "Study",
    "StudyStore",
    "load_study",
]

STUDY_SCHEMA_VERSION = 1
STATUSES = ("finished", "stopped", "diverged", "error", "running", "pending")
# statuses of trials that ended without an error in the platform
ENDED_OK = ("finished", "stopped", "diverged")
TRIALS_FILE = "trials.parquet"
HISTORY_DIR = "history.parquet"
SPEC_FILE = "spec.yaml"
_BASE_COLUMNS = ("study", "trial_id", "status", "error", "epochs", "wall_s", "node_id")


def _resolve(uri: str | Path) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and the path in it for a local path or a URI."""
    text = str(uri)
    if "://" in text:
        try:
            return pafs.FileSystem.from_uri(text)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as err:
            raise BadInput(f"cannot open storage URI ({err})", text,
                           "use a local folder, file://, s3:// or gs:// URI") from None
    return pafs.LocalFileSystem(), str(Path(text).expanduser().resolve())


def _join(*parts: str) -> str:
    return "/".join(p.rstrip("/") for p in parts if p)


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
    """Writes one study's tables. Used by the driver only (one writer per study).

    Args:
        root: the storage folder or URI that holds studies.
        name: the study's name; its folder is ``<root>/<name>``.
    """

    def __init__(self, root: str | Path, name: str):
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
            raise BadInput(f"invalid study name {name!r}", "name",
                           "use letters, digits, '.', '_' and '-' only")
        self.fs, base = _resolve(root)
        self.name = name
        self.path = _join(base, name)
        self.uri = _join(str(root), name) if "://" in str(root) else self.path
        self.fs.create_dir(self.path, recursive=True)
        self.fs.create_dir(_join(self.path, HISTORY_DIR), recursive=True)
        self._rows: dict[str, dict[str, Any]] = {}
        existing = _read_table(self.fs, _join(self.path, TRIALS_FILE))
        if existing is not None:
            for row in existing.to_dict("records"):
                self._rows[str(row["trial_id"])] = row

    # -- spec -----------------------------------------------------------------------------
    def write_spec(self, spec: Mapping[str, Any]) -> None:
        """Write the resolved sweep spec as ``spec.yaml``."""
        text = yaml.safe_dump(dict(spec), sort_keys=False)
        self._write_bytes(_join(self.path, SPEC_FILE), text.encode())

    # -- trials ---------------------------------------------------------------------------
    def record_trial(self, row: Mapping[str, Any], history: Sequence[Mapping[str, Any]] = ()) -> None:
        """Add or replace one trial's row and its per-epoch history.

        Args:
            row: ``trial_id``, ``status`` and optionally ``config`` (nested mapping, flattened
                to ``config.<key>``), ``metrics`` (final values), ``best`` (``best_<metric>``
                and ``best_epoch``), ``epochs``, ``wall_s``, ``error``, ``node_id`` and extra
                scalar columns.
            history: one mapping per reported epoch with an ``epoch`` key; an epoch reported
                twice (a trial restored from a checkpoint) keeps its last row.
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
        self._write_table(frame, _join(self.path, TRIALS_FILE))

    def _write_history(self, trial_id: str, history: Sequence[Mapping[str, Any]]) -> None:
        frame = pd.DataFrame.from_records([{k: _clean_scalar(v) for k, v in h.items()} for h in history])
        if "epoch" not in frame:
            raise ValueError("history rows need an 'epoch' key")
        frame = frame.drop_duplicates("epoch", keep="last").sort_values("epoch")
        frame.insert(0, "trial_id", trial_id)
        frame.insert(0, "study", self.name)
        frame["epoch"] = frame["epoch"].astype("int64")
        self._write_table(frame, _join(self.path, HISTORY_DIR, f"{_safe(trial_id)}.parquet"))

    # -- arrays ---------------------------------------------------------------------------
    def trial_dir(self, trial_id: str) -> str:
        return _join(self.path, "trials", _safe(trial_id))

    def write_array(self, trial_id: str, name: str, array: np.ndarray) -> str:
        """Store ``array`` as ``trials/<trial_id>/<name>.npy``; returns its path in the store."""
        buf = io.BytesIO()
        np.save(buf, np.asarray(array), allow_pickle=False)
        folder = self.trial_dir(trial_id)
        self.fs.create_dir(folder, recursive=True)
        path = _join(folder, f"{name}.npy")
        self._write_bytes(path, buf.getvalue())
        return path

    def write_dataset(self, key: str, manifest: Mapping[str, Any],
                      arrays: Mapping[str, np.ndarray] | None = None) -> None:
        """Keep a dataset's manifest and reference arrays (e.g. ``gallery_clean``,
        ``gallery_noisy``, ``gallery_ids``) under ``datasets/<key>/``; trials name the dataset
        by ``config.dataset = key``."""
        import json

        folder = _join(self.path, "datasets", _safe(key))
        self.fs.create_dir(folder, recursive=True)
        for name, array in (arrays or {}).items():
            buf = io.BytesIO()
            np.save(buf, np.asarray(array), allow_pickle=False)
            self._write_bytes(_join(folder, f"{name}.npy"), buf.getvalue())
        self._write_bytes(_join(folder, "manifest.json"),
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
        # names start with '.', which pyarrow's dataset reader skips.
        folder, base = path.rsplit("/", 1)
        if isinstance(self.fs, pafs.LocalFileSystem):
            tmp = _join(folder, f".{base}.{uuid.uuid4().hex}.tmp")
            with self.fs.open_output_stream(tmp) as out:
                out.write(data)
            self.fs.move(tmp, path)
        else:
            with self.fs.open_output_stream(path) as out:
                out.write(data)


def _safe(trial_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", str(trial_id))


def _read_table(fs: pafs.FileSystem, path: str) -> pd.DataFrame | None:
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        return None
    try:
        if info.type == pafs.FileType.Directory:
            import pyarrow.dataset as pads

            parts = [i.path for i in fs.get_file_info(pafs.FileSelector(path))
                     if i.type == pafs.FileType.File and i.base_name.endswith(".parquet")
                     and not i.base_name.startswith((".", "_"))]
            if not parts:
                return None
            table = pads.dataset(parts, filesystem=fs, format="parquet").to_table()
        else:
            table = pq.read_table(path, filesystem=fs)
    except (pa.ArrowInvalid, OSError) as err:
        raise BadInput(f"unreadable study table ({err})", path,
                       "restore the file, or rerun the sweep with --resume") from None
    return table.to_pandas()


@dataclass
class Study:
    """One or more studies' tables, loaded into pandas.

    Attributes:
        trials: one row a trial (columns as in this module's docstring).
        specs: the resolved sweep specs, one per study, keyed by study name.
        uris: where each study was read from.
    """

    trials: pd.DataFrame
    specs: dict[str, dict[str, Any]] = field(default_factory=dict)
    uris: list[str] = field(default_factory=list)
    _history: pd.DataFrame | None = field(default=None, repr=False)
    _sources: list[tuple[pafs.FileSystem, str]] = field(default_factory=list, repr=False)

    @property
    def history(self) -> pd.DataFrame:
        """One row a (trial, epoch), read on first use; only the trials in :attr:`trials`."""
        if self._history is None:
            frames = [f for fs, path in self._sources
                      if (f := _read_table(fs, _join(path, HISTORY_DIR))) is not None]
            hist = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
                columns=["study", "trial_id", "epoch"])
            if len(hist):  # vectorised: a study of 10,000 trials has a million history rows
                keys = pd.MultiIndex.from_arrays([self.trials["study"], self.trials["trial_id"]])
                hist = hist[pd.MultiIndex.from_arrays([hist["study"], hist["trial_id"]]).isin(keys)]
            self._history = hist.sort_values(["study", "trial_id", "epoch"]).reset_index(drop=True)
        return self._history

    def array(self, study: str, trial_id: str, name: str) -> np.ndarray | None:
        """A per-trial array (e.g. ``gallery``), or None when the trial has none."""
        return self._load_npy(study, "trials", _safe(trial_id), f"{name}.npy")

    def dataset_array(self, study: str, key: str, name: str) -> np.ndarray | None:
        """A dataset's reference array (e.g. ``gallery_clean``), or None."""
        return self._load_npy(study, "datasets", _safe(key), f"{name}.npy")

    @property
    def datasets(self) -> dict[tuple[str, str], dict[str, Any]]:
        """Manifests of the datasets each study read, keyed by (study, dataset key)."""
        import json

        out = {}
        for fs, path in self._sources:
            study = path.rstrip("/").rsplit("/", 1)[-1]
            folder = _join(path, "datasets")
            if fs.get_file_info(folder).type != pafs.FileType.Directory:
                continue
            for info in fs.get_file_info(pafs.FileSelector(folder)):
                file = _join(info.path, "manifest.json")
                if info.type == pafs.FileType.Directory and \
                        fs.get_file_info(file).type == pafs.FileType.File:
                    with fs.open_input_stream(file) as f:
                        out[(study, info.base_name)] = json.loads(f.read().decode())
        return out

    def _load_npy(self, study: str, *parts: str) -> np.ndarray | None:
        for fs, path in self._sources:
            if path.rstrip("/").rsplit("/", 1)[-1] != study:
                continue
            file = _join(path, *parts)
            if fs.get_file_info(file).type != pafs.FileType.File:
                return None
            with fs.open_input_file(file) as f:
                return np.load(io.BytesIO(f.read()), allow_pickle=False)
        return None

    def query(self, where: str) -> Study:
        """Trials matching a pandas query; bare config names work (``method == 'l2_ae'``).

        Raises:
            BadInput: the expression names an unknown column (the message lists the known ones)
                or is not valid.
        """
        expr = _expand_names(where, self.trials.columns)
        try:
            trials = self.trials.query(expr, engine="python")
        except pd.errors.UndefinedVariableError as err:
            name = re.search(r"'([^']+)'", str(err))
            known = ", ".join(_display_columns(self.trials.columns))
            raise BadInput(f"unknown column {name.group(1) if name else err!s} in --where",
                           where, f"known columns: {known}") from None
        except (SyntaxError, ValueError, TypeError) as err:
            raise BadInput(f"invalid --where expression ({err})", where,
                           "write a pandas query, e.g. \"method == 'l2_ae' and eps > 0\"") from None
        return Study(trials=trials.reset_index(drop=True), specs=self.specs, uris=self.uris,
                     _history=None, _sources=self._sources)

    def best_trial(self, metric: str | None = None, mode: str | None = None) -> pd.Series:
        """The finished trial with the best final ``metric`` (default: the sweep spec's metric
        and mode, else test_mse / min); baselines and trials without a model are skipped.

        Raises:
            BadInput: no finished trial has a finite value of the metric and a checkpoint.
        """
        spec = next(iter(self.specs.values()), {}) if self.specs else {}
        metric = metric or spec.get("metric", "test_mse")
        mode = mode or spec.get("mode", "min")
        column = _column(metric, self.trials.columns)
        t = self.trials
        ok = (t["status"] == "finished") & np.isfinite(pd.to_numeric(t[column], errors="coerce"))
        if "checkpoint" in t:
            ok &= t["checkpoint"].notna()
        else:
            ok &= False
        if not ok.any():
            raise BadInput(f"no finished trial with a model and a finite {metric}",
                           ", ".join(self.uris), "let the sweep finish, or name a trial")
        values = pd.to_numeric(t.loc[ok, column])
        return t.loc[values.idxmin() if mode == "min" else values.idxmax()]

    def summary(
        self,
        by: Sequence[str] = ("config.method",),
        metrics: Sequence[str] = ("test_mse", "test_psnr", "test_ssim"),
        agg: Sequence[str] = ("mean", "std", "count"),
    ) -> pd.DataFrame:
        """Aggregate metrics over trials grouped by ``by`` (config names may omit ``config.``).

        Returns:
            A frame with one row per group and columns ``<metric>_<agg>``.
        """
        cols = self.trials.columns
        by = [_column(name, cols) for name in by]
        metrics = [_column(name, cols) for name in metrics]
        frame = self.trials.copy()
        for name in by:  # NaN groups (e.g. alpha of an autoencoder) must not vanish
            if frame[name].isna().any():
                frame[name] = frame[name].astype(object).where(frame[name].notna(), "-")
        grouped = frame.groupby(by, sort=True, dropna=False)[metrics].agg(list(agg))
        grouped.columns = [f"{m}_{a}" for m, a in grouped.columns]
        return grouped.reset_index()


def _display_columns(columns: Iterable[str]) -> list[str]:
    return [c.removeprefix("config.") if c.startswith("config.") else c for c in columns]


def _column(name: str, columns: Iterable[str]) -> str:
    columns = list(columns)
    if name in columns:
        return name
    if f"config.{name}" in columns:
        return f"config.{name}"
    raise BadInput(f"unknown column {name!r}", "study tables",
                   f"known columns: {', '.join(_display_columns(columns))}")


_NAME = re.compile(r"`[^`]*`|'[^']*'|\"[^\"]*\"|[A-Za-z_][A-Za-z0-9_.]*")


def _expand_names(expr: str, columns: Iterable[str]) -> str:
    """Backquote column names so dotted names and bare config names work in pandas.query."""
    columns = set(columns)
    keywords = {"and", "or", "not", "in", "is", "True", "False", "None", "nan", "inf"}

    def sub(match: re.Match) -> str:
        token = match.group(0)
        if token[0] in "`'\"" or token in keywords:
            return token
        if token in columns:
            return f"`{token}`"
        if f"config.{token}" in columns:
            return f"`config.{token}`"
        return token

    return _NAME.sub(sub, expr)


def load_study(*paths: str | Path) -> Study:
    """Load one or more studies (folders or URIs); several are merged into one table.

    No running Ray is needed.

    Raises:
        BadInput: a path holds no study, or its tables are unreadable.
    """
    if not paths:
        raise BadInput("no study given", "load_study()", "pass a study folder or URI")
    frames, specs, uris, sources = [], {}, [], []
    for p in paths:
        fs, path = _resolve(p)
        trials = _read_table(fs, _join(path, TRIALS_FILE))
        if trials is None:
            raise BadInput("not a cryotune study (no trials.parquet)", str(p),
                           "pass the folder a sweep wrote: <storage>/<name>")
        spec_file = _join(path, SPEC_FILE)
        if fs.get_file_info(spec_file).type == pafs.FileType.File:
            with fs.open_input_stream(spec_file) as f:
                spec = yaml.safe_load(f.read().decode()) or {}
            specs[str(trials["study"].iloc[0]) if len(trials) else Path(path).name] = spec
        frames.append(trials)
        uris.append(str(p))
        sources.append((fs, path))
    trials = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    return Study(trials=trials, specs=specs, uris=uris, _sources=sources)


def dataset_key(manifest: Mapping[str, Any]) -> str:
    """A short stable name for a dataset in a study: ``<name>-<8 hex of its shard checksums>``.

    Sweeps and baselines name the same dataset the same way, so their rows line up.
    """
    import hashlib

    digest = hashlib.sha256()
    for split in sorted(manifest.get("splits", {})):
        for shard in manifest["splits"][split].get("shards", []):
            digest.update(_json_sorted(shard).encode())
    name = re.sub(r"[^A-Za-z0-9._-]", "_", str(manifest.get("name", "dataset")))
    return f"{name}-{digest.hexdigest()[:8]}"


def _json_sorted(value: Any) -> str:
    import json

    return json.dumps(value, sort_keys=True, default=str)


# display names in the paper's words; the report and the CLI use them
_LABELS = {"l2_ae": "ℓ2-AE", "l1_ae": "ℓ1-AE", "js_gan": "JS-GAN", "wgan": "WGAN",
           "wgan_gp": "WGAN-GP", "bm3d": "BM3D", "ksvd": "KSVD", "nlm": "NLM",
           "cwf": "CWF (no CTF)"}


def method_labels(trials: pd.DataFrame, *, with_lambda: bool = True) -> pd.Series:
    """One display name per trial: ``(0.5,0.5)-GAN + ℓ1``, ``WGAN-GP + ℓ1``, ``ℓ2-AE``...

    GAN methods carry their reconstruction term (``+ ℓp``, omitted when lambda is 0, a pure
    GAN) and, with ``with_lambda``, ``(λ=...)`` when lambda is not the paper's 10.
    """
    def col(name, default=None):
        return trials[name] if name in trials else pd.Series(default, index=trials.index)

    method, alpha, beta = col("config.method", "?"), col("config.alpha"), col("config.beta")
    lam, p = col("config.lambda"), col("config.p")
    out = []
    for m, a, b, la, pp in zip(method, alpha, beta, lam, p, strict=True):
        if m == "beta_gan" and pd.notna(a) and pd.notna(b):
            name = f"({a:g},{b:g})-GAN"
        else:
            name = _LABELS.get(str(m), str(m))
        if m in ("beta_gan", "js_gan", "wgan", "wgan_gp") and pd.notna(la):
            if la > 0:
                name += f" + ℓ{int(pp) if pd.notna(pp) else 1}"
                if with_lambda and la != 10:
                    name += f" (λ={la:g})"
            else:
                name += " (pure)"
        out.append(name)
    return pd.Series(out, index=trials.index, dtype=object)


def finite_or_none(value: Any) -> float | None:
    """A float metric, or None when missing or not finite (NaN/inf never reach the tables)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None
