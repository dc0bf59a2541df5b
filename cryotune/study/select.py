"""Pick a configuration by a robustness goal, on the validation selection score alone.

A configuration is a method with its hyperparameters: every ``config.*`` value except the
cell (``dataset``, ``snr``, ``eps``, ``contamination``) and the ``seed``. Its score in a cell
(dataset, contamination, eps) is the mean over seeds of ``select_score``, the validation
selection score at the trial's best epoch. The test split is never read to rank: the test
metric (``test_mse_at_best``) of the same cells is reported beside the score, aggregated the
same way.

The goals (:data:`cryotune.vocab.ROBUSTNESS_GOALS`), per dataset, for a score where lower is
better (a ``max`` score flips every comparison):

- ``clean``: the eps 0 score;
- ``worst``: the worst score over the contaminated cells (eps > 0);
- ``worst_ratio``: that worst score divided by the clean score (how much contamination costs);
- ``cvar``: the mean of the worst ``q`` of the contaminated cells (``ceil(q * cells)`` of
  them, at least one; q = 0.25 by default).

Diverged trials are left out of the means and counted; a configuration with a diverged trial
in the cells its goal reads, or without a result in one of them (every seed errored or
diverged), ranks after every configuration without, whatever its score: the seeds left would
flatter it. The Pareto front (clean score against worst case) is drawn among the others.

Example::

    import cryotune
    pick = cryotune.load_study("studies/fig5").select(goal="worst_ratio")
    pick.best["label"], pick.best["score"], pick.best["test"]
    pick.front            # the configurations no other beats on both clean and worst
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from cryotune import vocab
from cryotune.errors import BadInput
from cryotune.study.compare import prepare_cells

__all__ = ["NOT_HYPERPARAMETERS", "Selection", "select_trials"]

# config columns that place a trial in a cell or replicate it, not part of its configuration
NOT_HYPERPARAMETERS = ("config.dataset", "config.snr", "config.eps", "config.contamination",
                       "config.seed", "config.checkpoint_every")
SCORE = "select_score"
TEST = "test_mse_at_best"


@dataclass
class Selection:
    """The answer of :func:`select_trials`.

    Attributes:
        goal, q: the goal ranked by, and the cvar fraction.
        score, test: the validation column ranked on and the test column reported.
        mode: ``min`` or ``max``, the better direction of the score.
        table: one row a (dataset, configuration), ranked within each dataset: ``rank``,
            ``dataset``, ``label``, the hyperparameters that vary (``config.*``), ``score``
            (the goal's value on validation), ``test`` (the same aggregate of the test metric
            over the same cells), ``clean``, ``worst``, ``worst_ratio``, ``cvar`` (validation),
            ``test_clean``, ``test_worst`` (the test metric in the clean cells and in the cell
            worst on validation), ``cells``, ``trials``, ``diverged`` (in the goal's cells),
            ``eligible`` and ``pareto``.
        excluded: reason -> trials left out (``diverged``, ``error``, ``no select_score``...).
        notes: what the reader must know (a fallback test metric...).
    """

    goal: str
    q: float
    score: str
    test: str
    mode: str
    table: pd.DataFrame
    excluded: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def best(self) -> pd.Series:
        """The first-ranked configuration (of the first dataset)."""
        return self.table.iloc[0]

    @property
    def front(self) -> pd.DataFrame:
        """The Pareto front, clean score against worst case, sorted by clean score."""
        return self.table[self.table["pareto"]].sort_values(["dataset", "clean"])


def _key_columns(t: pd.DataFrame) -> list[str]:
    cols = [c for c in t if c.startswith("config.") and c not in NOT_HYPERPARAMETERS]
    return [c for c in cols if t[c].notna().any()]


def _worst_cells(cells: pd.DataFrame, sign: float, k: int) -> pd.DataFrame:
    return cells.assign(_s=sign * cells["score"]).sort_values("_s", ascending=False).head(k)


def pareto(x: Sequence[float], y: Sequence[float]) -> np.ndarray:
    """Which points no other point matches or beats on both (lower is better on both)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    out = np.zeros(len(x), dtype=bool)
    for i in range(len(x)):
        if not (math.isfinite(x[i]) and math.isfinite(y[i])):
            continue
        beaten = (x <= x[i]) & (y <= y[i]) & ((x < x[i]) | (y < y[i]))
        out[i] = not beaten.any()
    return out


def select_trials(trials: pd.DataFrame, goal: str = "worst_ratio", *, q: float = 0.25,
                  score: str = SCORE, test: str = TEST, mode: str = "min") -> Selection:
    """Rank configurations by a robustness goal on the validation score.

    Args:
        trials: study rows (``Study.trials``).
        goal: one of :data:`cryotune.vocab.ROBUSTNESS_GOALS`.
        q: the fraction of contaminated cells ``cvar`` averages (0 < q <= 1).
        score: the validation column to rank on; never a test metric.
        test: the test column reported beside it (``test_mse`` for studies without
            ``test_mse_at_best``, noted).
        mode: ``min`` or ``max``, the better direction of ``score``.

    Raises:
        BadInput: an unknown goal, q out of range, a test column as the score, no trial with
            a score, or a contamination goal on a study without contaminated cells.
    """
    if goal not in vocab.ROBUSTNESS_GOALS:
        raise BadInput(f"unknown robustness goal {goal!r}", "--rank-by",
                       f"use one of {', '.join(vocab.ROBUSTNESS_GOALS)}")
    if not 0 < q <= 1:
        raise BadInput(f"cvar fraction {q:g} is out of range", "--q", "use 0 < q <= 1")
    if score.startswith("test"):
        raise BadInput(f"{score!r} is a test metric", "select(score=...)",
                       "rank on a validation score (select_score); the test split is reported, "
                       "never selected on")
    if mode not in ("min", "max"):
        raise BadInput(f"unknown mode {mode!r}", "select(mode=...)", "use min or max")
    if score not in trials or pd.to_numeric(trials[score], errors="coerce").notna().sum() == 0:
        raise BadInput(f"no trial has a {score}", "the study",
                       "rerun the sweep with a dataset that has a validation split")
    notes: list[str] = []
    if test not in trials or trials[test].isna().all():
        base = test.removesuffix("_at_best")
        if base in trials:
            notes.append(f"no {test} in the study: reporting the last epoch's {base}")
            test = base
    sign = 1.0 if mode == "min" else -1.0
    t = prepare_cells(trials)
    t["_score"] = pd.to_numeric(t[score], errors="coerce")
    t["_test"] = pd.to_numeric(t[test], errors="coerce") if test in t else np.nan
    ok = (t["status"] == "finished") & np.isfinite(t["_score"])
    excluded = {str(k): int(v) for k, v in t.loc[t["status"] != "finished", "status"]
                .value_counts().items()}
    missing = int(((t["status"] == "finished") & ~np.isfinite(t["_score"])).sum())
    if missing:
        excluded[f"no {score}"] = missing
    keys = _key_columns(t[ok])
    for c in keys:  # NaN (alpha of an autoencoder) must group, not vanish
        t[c] = t[c].astype(object).where(t[c].notna(), "-")
    t["_config"] = list(zip(*[t[c].astype(str) for c in keys], strict=True)) if keys else [()] * len(t)
    t["_cell"] = list(zip(t["contamination"], t["eps"], strict=True))
    rows = []
    for dataset, d in t.groupby("dataset", sort=True):
        good = d[ok.loc[d.index]]
        all_cells = set(good["_cell"])
        contaminated_cells = {c for c in all_cells if c[1] > 0}
        clean_cells = all_cells - contaminated_cells
        if goal != "clean" and not contaminated_cells:
            raise BadInput(f"dataset {dataset} has no contaminated trials with a {score}",
                           f"--rank-by {goal}", "rank by clean, or add eps > 0 to the sweep")
        if goal in ("clean", "worst_ratio") and not clean_cells:
            raise BadInput(f"dataset {dataset} has no eps 0 trials with a {score}",
                           f"--rank-by {goal}", "rank by worst or cvar, or add eps 0 to the sweep")
        reads = clean_cells if goal == "clean" else all_cells
        for _, c in d.groupby("_config", sort=False):
            cg = c[ok.loc[c.index]]
            if cg.empty and not (c["status"] == "diverged").any():
                continue  # no result at all (baselines have no validation score): counted
            cells = cg.groupby("_cell").agg(score=("_score", "mean"), test=("_test", "mean"))
            cells["eps"] = [k[1] for k in cells.index]
            clean = cells[cells["eps"] == 0]
            cont = cells[cells["eps"] > 0]
            clean_v = float(clean["score"].mean()) if len(clean) else math.nan
            test_clean = float(clean["test"].mean()) if len(clean) else math.nan
            worst = worst_ratio = cvar = test_worst = test_ratio = test_cvar = math.nan
            if len(cont):
                top = _worst_cells(cont, sign, 1).iloc[0]
                worst, test_worst = float(top["score"]), float(top["test"])
                worst_ratio = worst / clean_v if clean_v else math.nan
                test_ratio = test_worst / test_clean if test_clean else math.nan
                k = max(1, math.ceil(q * len(cont)))
                tail = _worst_cells(cont, sign, k)
                cvar, test_cvar = float(tail["score"].mean()), float(tail["test"].mean())
            diverged = int(((c["status"] == "diverged") & c["_cell"].isin(reads)).sum())
            complete = reads <= set(cells.index)
            value = {"clean": (clean_v, test_clean), "worst": (worst, test_worst),
                     "worst_ratio": (worst_ratio, test_ratio), "cvar": (cvar, test_cvar)}[goal]
            first = c.iloc[0]
            rows.append({
                "dataset": dataset, "label": first["display"],
                **{k: first[k] for k in keys},
                "score": value[0], "test": value[1], "clean": clean_v, "worst": worst,
                "worst_ratio": worst_ratio, "cvar": cvar, "test_clean": test_clean,
                "test_worst": test_worst, "cells": len(cells), "trials": len(cg),
                "diverged": diverged,
                "eligible": bool(complete and diverged == 0 and math.isfinite(value[0])),
            })
    table = pd.DataFrame(rows)
    if table.empty:
        raise BadInput(f"no finished trial with a {score}", "the study",
                       "let the sweep finish")
    # the ratio is better low for a min score; for a max score higher is better
    table["_key"] = sign * table["score"].astype(float)
    table = table.sort_values(["dataset", "eligible", "_key"], ascending=[True, False, True],
                              na_position="last", kind="mergesort")
    table["rank"] = table.groupby("dataset").cumcount() + 1
    table["pareto"] = False
    for _, d in table.groupby("dataset"):
        el = d[d["eligible"]]
        front = pareto(sign * el["clean"].to_numpy(float), sign * el["worst"].to_numpy(float))
        table.loc[el.index[front], "pareto"] = True
    varying = [k for k in keys if table[k].astype(str).nunique() > 1]
    head = ["rank", "dataset", "label", *varying]
    rest = ["score", "test", "clean", "worst", "worst_ratio", "cvar", "test_clean",
            "test_worst", "cells", "trials", "diverged", "eligible", "pareto"]
    table = table[head + rest].reset_index(drop=True)
    return Selection(goal, q, score, test, mode, table, excluded, notes)
