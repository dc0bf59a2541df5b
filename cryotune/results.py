"""Studies as pandas tables: load one or more study stores, filter, summarize, label.

The store's layout, its columns and its writer are in :mod:`cryotune.study_store` (the history
folder's files in :mod:`cryotune.study_history`); this module reads what they write and
re-exports the writer's public names, so ``cryotune.results`` is the one place to import the
study tables from. No running Ray is needed.

Example::

    import cryotune
    study = cryotune.load_study("studies/smoke")
    print(study.summary(by=["config.method", "config.eps"], metrics=["test_mse"]))
    l2 = study.query("`config.method` == 'l2_ae' and `config.eps` > 0")
    l2.history  # one row a (trial, epoch), read on first use
"""

from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import yaml

from cryotune.errors import BadInput
from cryotune.study_history import SEQ, read_history
from cryotune.study_store import (
    ENDED_OK,
    HISTORY_DIR,
    SPEC_FILE,
    STATUSES,
    STUDY_SCHEMA_VERSION,
    TRIALS_FILE,
    StudyStore,
    flatten_config,
    join,
    read_table,
    resolve,
    safe_name,
)

__all__ = [
    "ENDED_OK",
    "STATUSES",
    "STUDY_SCHEMA_VERSION",
    "Study",
    "StudyStore",
    "dataset_key",
    "finite_or_none",
    "flatten_config",
    "load_study",
    "method_labels",
]


@dataclass
class Study:
    """One or more studies' tables, loaded into pandas.

    Attributes:
        trials: one row a trial (columns as in :mod:`cryotune.study_store`).
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
        """One row a (trial, epoch), read on first use; only the trials in :attr:`trials`.

        Columns: ``study``, ``trial_id``, ``epoch`` and every reported metric. A trial recorded
        more than once (retried) has the rows of its last record only.
        """
        if self._history is None:
            frames = []
            for fs, path in self._sources:
                table = read_history(fs, join(path, HISTORY_DIR))
                if table is not None:
                    frames.append(self._of_trials(table).drop_columns([SEQ]).to_pandas())
            if len(frames) == 1:  # sorted by trial and epoch already
                hist = frames[0]
            elif frames:
                hist = pd.concat(frames, ignore_index=True).sort_values(
                    ["study", "trial_id", "epoch"]).reset_index(drop=True)
            else:
                hist = pd.DataFrame(columns=["study", "trial_id", "epoch"])
            self._history = hist
        return self._history

    def _of_trials(self, history: pa.Table) -> pa.Table:
        """The history rows of the trials in :attr:`trials` (one study's history)."""
        studies = pc.unique(history["study"]).to_pylist()
        ids = self.trials.loc[self.trials["study"].isin(studies), "trial_id"].astype(str)
        kind = history.schema.field("trial_id").type
        keep = pc.is_in(history["trial_id"], value_set=pa.array(ids.unique(), kind))
        return history if pc.all(keep).as_py() else history.filter(keep)

    def array(self, study: str, trial_id: str, name: str) -> np.ndarray | None:
        """A per-trial array (e.g. ``gallery``), or None when the trial has none."""
        return self._load_npy(study, "trials", safe_name(trial_id), f"{name}.npy")

    def dataset_array(self, study: str, key: str, name: str) -> np.ndarray | None:
        """A dataset's reference array (e.g. ``gallery_clean``), or None."""
        return self._load_npy(study, "datasets", safe_name(key), f"{name}.npy")

    @property
    def datasets(self) -> dict[tuple[str, str], dict[str, Any]]:
        """Manifests of the datasets each study read, keyed by (study, dataset key)."""

        out = {}
        for fs, path in self._sources:
            study = path.rstrip("/").rsplit("/", 1)[-1]
            folder = join(path, "datasets")
            if fs.get_file_info(folder).type != pafs.FileType.Directory:
                continue
            for info in fs.get_file_info(pafs.FileSelector(folder)):
                file = join(info.path, "manifest.json")
                if info.type == pafs.FileType.Directory and \
                        fs.get_file_info(file).type == pafs.FileType.File:
                    with fs.open_input_stream(file) as f:
                        out[(study, info.base_name)] = json.loads(f.read().decode())
        return out

    def _load_npy(self, study: str, *parts: str) -> np.ndarray | None:
        for fs, path in self._sources:
            if path.rstrip("/").rsplit("/", 1)[-1] != study:
                continue
            file = join(path, *parts)
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
        fs, path = resolve(p)
        table = read_table(fs, join(path, TRIALS_FILE))
        if table is None:
            raise BadInput("not a cryotune study (no trials.parquet)", str(p),
                           "pass the folder a sweep wrote: <storage>/<name>")
        trials = table.to_pandas()
        spec_file = join(path, SPEC_FILE)
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
