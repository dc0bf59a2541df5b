"""Studies as pandas tables: load one or more study stores, filter, summarize, label, and
pick the best trial.

The store's layout, its columns and its writer are in :mod:`cryotune.study.store` (the history
folder's files in :mod:`cryotune.study.history`); this module reads what they write. No
running Ray is needed. :func:`best_trial` (:meth:`Study.best`) is the one rule for "the best
trial": ``cryotune status``, ``cryotune denoise --model STUDY`` and the report all use it. It
reads validation only: each trial's ``select_score`` (its best validation epoch's score), never
a test column, among trials neither diverged nor errored nor interrupted.

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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from cryotune import vocab
from cryotune._io import join, resolve
from cryotune.errors import BadInput
from cryotune.expr import mask
from cryotune.study.compare import compare_trials
from cryotune.study.history import SEQ, read_history
from cryotune.study.labels import trial_reductions
from cryotune.study.select import select_trials
from cryotune.study.store import (
    HISTORY_DIR,
    SELECTABLE,
    TRIALS_FILE,
    read_spec,
    read_table,
    safe_name,
)

__all__ = ["Study", "best_trial", "load_study"]


@dataclass
class Study:
    """One or more studies' tables, loaded into pandas.

    Attributes:
        trials: one row a trial (columns as in :mod:`cryotune.study.store`).
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
        """Trials matching a query expression (:mod:`cryotune.expr`: column names, literals,
        comparisons, ``in`` lists, ``and``/``or``/``not``); bare config names work
        (``method == 'l2_ae' and eps > 0``), nulls compare False.

        Raises:
            BadInput: the expression names an unknown column (the message lists the known ones)
                or goes outside the grammar (a call, an attribute, ``@name``...).
        """
        trials = self.trials[mask(self.trials, where)]
        return Study(trials=trials.reset_index(drop=True), specs=self.specs, uris=self.uris,
                     _history=None, _sources=self._sources)

    def best(self, *, with_model: bool = False) -> pd.Series:
        """The study's best trial by :func:`best_trial`: chosen on validation only.

        Args:
            with_model: only trials with a model (the one ``denoise`` would apply).

        Returns:
            Its row: ``select_metric``/``select_score`` (what chose it), ``best_epoch`` and
            ``test_*_at_best`` (the test metrics of that epoch, reported only).

        Raises:
            BadInput: the study predates validation selection, its trials select on different
                scores, or no trial qualifies.
        """
        where = ", ".join(self.uris) or "study"
        scored = self.trials.get("select_score", pd.Series(dtype=float)).notna().any()
        tested = self.trials.get("test_mse", pd.Series(dtype=float)).notna().any()
        if tested and not scored:  # test results and no selection score: an older study
            raise BadInput("this study predates validation selection; no trial is selected",
                           where, "rerun the sweep to select on validation, or name a trial "
                           "(cryotune denoise --trial ID)")
        best = best_trial(self.trials, with_model=with_model)
        if best is None:
            model = " with a model" if with_model else ""
            raise BadInput(f"no finished or stopped trial{model} has a validation selection "
                           "score", where, "let the sweep finish, or name a trial")
        return best

    def compare(self, a: str, b: str, *, by: Sequence[str] | str | None = None,
                pool: Sequence[str] | str | None = None, metric: str = "test_mse_at_best",
                where: str | None = None):
        """Paired comparison of the trials ``b`` picks against those ``a`` picks, per cell and
        pooled, with CIs, Wilcoxon p and n (:func:`cryotune.study.compare.compare_trials`).

        Example: ``study.compare(a="label == 'l1-AE'", b="method == 'beta_gan'",
        where="eps > 0").sentences()``.
        """
        return compare_trials(self.trials, a, b, by=by, pool=pool, metric=metric, where=where)

    def select(self, goal: str = "worst_ratio", *, q: float = 0.25,
               score: str = "select_score", test: str = "test_mse_at_best",
               mode: str | None = None):
        """Rank configurations by a robustness goal on the validation score
        (:func:`cryotune.study.select.select_trials`); ``mode`` defaults to the spec's
        ``select: {mode: ...}``, else ``min``."""
        if mode is None:
            spec = next(iter(self.specs.values()), {}) if self.specs else {}
            chosen = spec.get("select") if isinstance(spec.get("select"), dict) else {}
            mode = chosen.get("mode") or "min"
        return select_trials(self.trials, goal, q=q, score=score, test=test, mode=mode)

    def summary(
        self,
        by: Sequence[str] = ("config.method",),
        metrics: Sequence[str] = ("test_mse", "test_psnr", "test_ssim"),
        agg: Sequence[str] = ("mean", "std", "count"),
    ) -> pd.DataFrame:
        """Aggregate metrics over trials grouped by ``by`` (config names may omit ``config.``).
        Interrupted trials (cut short by Ctrl-C or SIGTERM, rerun by ``--resume``) are no
        results and take no part.

        Returns:
            A frame with one row per group and columns ``<metric>_<agg>``.
        """
        cols = self.trials.columns
        by = [_column(name, cols) for name in by]
        metrics = [_column(name, cols) for name in metrics]
        unknown = [a for a in agg if a not in AGGREGATIONS]
        if unknown or not agg:
            raise BadInput(f"unknown aggregation {unknown[0]!r}" if unknown else "no aggregation",
                           "--agg", f"use some of {', '.join(AGGREGATIONS)}")
        frame = self.trials.copy()
        if "status" in frame:
            frame = frame[frame["status"] != "interrupted"]
        for name in by:  # NaN groups (e.g. alpha of an autoencoder) must not vanish
            if frame[name].isna().any():
                frame[name] = frame[name].astype(object).where(frame[name].notna(), "-")
        grouped = frame.groupby(by, sort=True, dropna=False)[metrics].agg(list(agg))
        grouped.columns = [f"{m}_{a}" for m, a in grouped.columns]
        return grouped.reset_index()


# what Study.summary aggregates with: pandas' reductions by name, no other callable
AGGREGATIONS = ("mean", "std", "sem", "var", "median", "min", "max", "sum", "count", "nunique",
                "first", "last")


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


def best_trial(trials: pd.DataFrame, *, with_model: bool = False) -> pd.Series | None:
    """The one rule for "the best trial", on validation only: among the trials that ended
    finished or stopped by the scheduler (:data:`~cryotune.study.store.SELECTABLE`: not
    diverged, errored or interrupted) with a finite ``select_score`` (and, with
    ``with_model``, a checkpoint), the best score in the direction of its ``select_metric``
    (:func:`cryotune.vocab.goal`); the first in table order on a tie. No test column is read.

    Args:
        trials: study rows (a whole study, or a group of it).
        with_model: skip trials without a checkpoint (baselines, errored trials).

    Returns:
        The trial's row, or None when none qualifies (as for a study recorded before
        validation selection, which has no ``select_score``).

    Raises:
        BadInput: the qualifying trials were selected on different scores.
    """
    if trials.empty or "select_score" not in trials:
        return None
    values = pd.to_numeric(trials["select_score"], errors="coerce")
    ok = trials["status"].isin(SELECTABLE) & np.isfinite(values)
    if with_model:
        ok &= trials["checkpoint"].notna() if "checkpoint" in trials else False
    if not ok.any():
        return None
    metrics = (trials.loc[ok, "select_metric"].dropna().unique() if "select_metric" in trials
               else [])
    if len(metrics) > 1:
        raise BadInput(f"the trials were selected on different scores ({', '.join(metrics)})",
                       "study tables", "compare studies that share a select.metric")
    # no select_metric: recorded while every study selected on val_mse_median (min)
    mode = vocab.goal(metrics[0]) if len(metrics) else "min"
    values = values[ok]
    return trials.loc[values.idxmin() if mode == "min" else values.idxmax()]


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
        spec = read_spec(fs, path)
        if spec is not None:
            specs[str(trials["study"].iloc[0]) if len(trials) else Path(path).name] = spec
        frames.append(trials)
        uris.append(str(p))
        sources.append((fs, path))
    trials = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    trials["config.reduction"] = trial_reductions(trials)
    return Study(trials=trials, specs=specs, uris=uris, _sources=sources)
