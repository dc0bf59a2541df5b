"""Paired comparison of two methods in a study: per cell, pooled over cells, with CIs and n.

Trials pair when they differ only in the method: the same dataset (``config.dataset``, the
dataset's content key, so pairs may cross studies), contamination rate ``eps``, contamination
type and ``seed`` (same seed: same contaminated set, same batches). The method side of a pair
is whatever the expressions ``a`` and ``b`` pick (method, alpha, beta, lambda, p, reduction,
learning rates...). A cell is a (dataset, contamination, eps); the seeds are its replicates.

Statistics, per cell (``by``) and pooled over the cells asked for (``pool``: n = seeds x cells,
where the power is), on the differences d = b - a of the metric:

- the mean paired difference with a 95% CI: Student t on the differences
  (``mean ± t(0.975, n-1) · sd / sqrt(n)``) below 10 pairs, a percentile bootstrap of the
  pairs (10,000 resamples, fixed seed 0, so the numbers repeat) from 10 pairs on;
- the ratio of b to a as the geometric mean of the per-pair ratios, ``exp(mean(log(b/a)))``,
  with the same CI computed on ``log(b/a)`` and exponentiated. Per-pair ratios weigh every
  cell alike when cells of very different scale are pooled (a type A cell at eps 0.3 may have
  four times the MSE of a clean one; a ratio of means would let it dominate), and the log
  makes "2x worse" and "2x better" symmetric. Absent when a value is not positive;
- the Wilcoxon signed-rank p of the differences (``scipy.stats.wilcoxon``, two-sided, zero
  differences dropped). With fewer than 6 non-zero differences its smallest two-sided p is
  above 0.05 (2/32 at 5), so no p is given and the sentence says so.

Trials that are not ``finished`` with a finite metric (diverged, errored, interrupted, stopped
by the scheduler) are left out of the pairs and counted, per side and status; a left-out trial's
partner is counted as unpaired. Leaving out a diverged trial flatters its method, which is why
the count is part of every answer.

Example::

    import cryotune
    study = cryotune.load_study("studies/fig5")
    c = study.compare(a="label == 'l1-AE'", b="label == '(0.5,0.5)-GAN + l1'",
                      where="eps > 0", by=["contamination", "eps"])
    print(c.sentences()[0])   # "(0.5,0.5)-GAN + ℓ1 is better than ℓ1-AE by 12% (95% CI ..."
    c.cells                   # one row a (contamination, eps): n, diff, CI, ratio, p
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from cryotune import vocab
from cryotune.errors import BadInput
from cryotune.expr import column_resolver, mask
from cryotune.study.labels import method_labels

__all__ = ["CELL", "Comparison", "PairedStats", "compare_trials", "paired_stats", "prepare_cells"]

# the columns that name a cell, and the replicate: trials pair on all four
CELL = ("dataset", "contamination", "eps")
REPLICATE = "seed"
LEVEL = 0.95
BOOTSTRAP_FROM = 10  # pairs; below it the t interval
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
WILCOXON_FROM = 6  # non-zero differences; below it a two-sided p cannot reach 0.05
_ALIASES = {"type": "contamination", "config.contamination": "contamination",
            "config.eps": "eps", "config.dataset": "dataset"}


@dataclass(frozen=True)
class PairedStats:
    """The statistics of one set of pairs (values ``a`` and ``b``, the same length).

    Attributes:
        n: pairs.
        mean_a, mean_b: the means of each side.
        diff, diff_low, diff_high: the mean of b - a and its 95% CI (NaN below 2 pairs).
        ratio, ratio_low, ratio_high: the geometric mean of b / a and its 95% CI (NaN when a
            value is not positive, or the CI below 2 pairs).
        ci: how the CIs were computed: ``t``, ``bootstrap`` or ``none``.
        p: the two-sided Wilcoxon signed-rank p of b - a, or None when too few pairs.
        note: why there is no p (or no CI), else empty.
    """

    n: int
    mean_a: float
    mean_b: float
    diff: float
    diff_low: float
    diff_high: float
    ratio: float
    ratio_low: float
    ratio_high: float
    ci: str
    p: float | None
    note: str

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _interval(values: np.ndarray, boot_index: np.ndarray | None) -> tuple[float, float]:
    n = len(values)
    if n < 2:
        return math.nan, math.nan
    if boot_index is not None:
        means = values[boot_index].mean(axis=1)
        lo, hi = np.percentile(means, [50 * (1 - LEVEL), 50 * (1 + LEVEL)])
        return float(lo), float(hi)
    mean = float(values.mean())
    half = float(stats.t.ppf(0.5 + LEVEL / 2, n - 1) * values.std(ddof=1) / math.sqrt(n))
    return mean - half, mean + half


def paired_stats(a: Sequence[float], b: Sequence[float]) -> PairedStats:
    """Paired statistics of b against a (see the module docstring for the choices).

    Args:
        a, b: the metric of each pair's two trials, in pair order.

    Raises:
        BadInput: the two sides differ in length.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise BadInput(f"{len(a)} values against {len(b)}", "paired_stats",
                       "pass the two sides of the same pairs")
    n = len(a)
    d = b - a
    boot = None
    if n >= BOOTSTRAP_FROM:
        rng = np.random.default_rng(BOOTSTRAP_SEED)
        boot = rng.integers(0, n, size=(BOOTSTRAP_RESAMPLES, n))
    ci = "none" if n < 2 else ("bootstrap" if boot is not None else "t")
    diff = float(d.mean()) if n else math.nan
    diff_low, diff_high = _interval(d, boot)
    ratio = ratio_low = ratio_high = math.nan
    if n and (a > 0).all() and (b > 0).all():
        logs = np.log(b) - np.log(a)
        ratio = math.exp(float(logs.mean()))
        lo, hi = _interval(logs, boot)
        ratio_low, ratio_high = math.exp(lo), math.exp(hi)
    nonzero = int(np.count_nonzero(d))
    p: float | None = None
    note = ""
    if n < 2:
        note = f"{n} pair{'s' if n != 1 else ''}: too few for a CI or a test"
    elif nonzero < WILCOXON_FROM:
        note = (f"too few pairs for a signed-rank test ({nonzero} non-zero differences; "
                f"below {WILCOXON_FROM} it cannot reach p < 0.05)")
    else:
        p = float(stats.wilcoxon(d).pvalue)
    return PairedStats(n, float(a.mean()) if n else math.nan, float(b.mean()) if n else math.nan,
                       diff, diff_low, diff_high, ratio, ratio_low, ratio_high, ci, p, note)


def fold_label(text: str) -> str:
    """A label or expression with ℓ written ``l``, so ``label == 'l1-AE'`` matches ``ℓ1-AE``."""
    return str(text).replace("ℓ", "l")


def prepare_cells(trials: pd.DataFrame) -> pd.DataFrame:
    """``trials`` with the pairing columns ``dataset``, ``contamination``, ``eps``, ``seed``
    (``contamination`` is ``none`` at eps 0; missing values read ``-``), ``label`` (the
    method's display name, ℓ written ``l`` for expressions) and ``display`` (with ℓ)."""
    t = trials.copy()

    def col(name: str, default: Any) -> pd.Series:
        return t[name] if name in t else pd.Series(default, index=t.index, dtype=object)

    t["eps"] = pd.to_numeric(col("config.eps", np.nan), errors="coerce").fillna(0.0)
    kind = col("config.contamination", None).astype(object)
    t["contamination"] = kind.where(kind.notna(), "none").astype(str).where(t["eps"] > 0, "none")
    dataset = col("config.dataset", None).astype(object)
    t["dataset"] = dataset.where(dataset.notna(), "-").astype(str)
    seed = pd.to_numeric(col("config.seed", np.nan), errors="coerce")
    t["seed"] = seed.fillna(-1).astype("int64")
    if "config.method" in t:
        t["display"] = method_labels(t) if len(t) else pd.Series(dtype=object)
    else:
        t["display"] = "?"
    t["label"] = t["display"].map(fold_label)
    return t


def _pick(t: pd.DataFrame, expr: str | pd.Series, name: str) -> pd.Series:
    if isinstance(expr, pd.Series):
        return expr.reindex(t.index, fill_value=False).astype(bool)
    return mask(t, fold_label(expr), resolve=column_resolver(t.columns)).astype(bool)


def _cell_names(names: Sequence[str] | str | None, what: str) -> list[str]:
    if names is None:
        return []
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    out = []
    for name in names:
        name = _ALIASES.get(name, name)
        if name not in CELL:
            raise BadInput(f"{name!r} is not a cell column", what,
                           f"use some of {', '.join(CELL)} (the seed is always the replicate)")
        out.append(name)
    return list(dict.fromkeys(out))


def _direction(metric: str) -> str:
    base = metric.removesuffix("_at_best")
    return vocab.goal(base)


@dataclass
class Comparison:
    """The answer of :func:`compare_trials`.

    Attributes:
        a, b: display names of the two sides (their label when one, else the expression).
        metric: the column compared (``test_mse`` when the study predates ``*_at_best``).
        mode: ``min`` or ``max``: which way the metric is better.
        pairs: one row a pair: ``dataset``, ``contamination``, ``eps``, ``seed``, ``a``, ``b``
            (the metric), ``trial_a``, ``trial_b``, ``study_a``, ``study_b``.
        cells: one row a ``by`` group: its columns, the :class:`PairedStats` fields, ``sentence``.
        pooled: the same per pooled group (the cell columns not in ``pool``).
        excluded: side (``a``/``b``) -> reason (status, ``no <metric>``, ``unpaired``) -> count.
        notes: what the reader must know (a fallback metric...).
    """

    a: str
    b: str
    metric: str
    mode: str
    pairs: pd.DataFrame
    cells: pd.DataFrame
    pooled: pd.DataFrame
    excluded: dict[str, dict[str, int]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def sentences(self) -> list[str]:
        """The pooled groups' sentences, then what was left out."""
        out = list(self.pooled["sentence"]) if len(self.pooled) else [
            f"No pairs of {self.b} and {self.a}."]
        return out + self.exclusions()

    def exclusions(self) -> list[str]:
        """One line a side with trials left out, e.g. ``B: 2 of 9 trials diverged, ...``."""
        lines = []
        for side, name in (("a", self.a), ("b", self.b)):
            counts = self.excluded.get(side, {})
            total = counts.get("matched", 0)
            parts = [f"{n} {reason}" for reason, n in counts.items()
                     if reason != "matched" and n]
            if parts:
                lines.append(f"{name}: of {total} trials, " + ", ".join(parts)
                             + "; left out of the pairs.")
        return lines


def _span(values: Sequence[Any], word: str, plural: str) -> str:
    vals = sorted(set(values))
    if not vals:
        return ""
    if all(isinstance(v, (int, float)) for v in vals):
        text = f"{vals[0]:g}" if len(vals) == 1 else f"{vals[0]:g}-{vals[-1]:g}"
        return f"{word} {text}"
    vals = [str(v) for v in vals]
    if len(vals) == 1:
        return f"{word} {vals[0]}"
    letters = all(len(v) == 1 and v.isalpha() for v in vals)
    if letters and len(vals) >= 3 and ord(vals[-1]) - ord(vals[0]) == len(vals) - 1:
        return f"{plural} {vals[0]}-{vals[-1]}"
    return f"{plural} " + ", ".join(vals[:-1]) + f" and {vals[-1]}"


def _where(pairs: pd.DataFrame) -> str:
    parts = []
    eps = pairs["eps"].tolist()
    parts.append(_span(eps, "ε", "ε"))
    kinds = [k for k in pairs["contamination"].tolist() if k != "none"]
    if kinds:
        parts.append(_span(kinds, "type", "types"))
    datasets = pairs["dataset"].unique()
    if len(datasets) > 1:
        parts.append(f"{len(datasets)} datasets")
    return " and ".join(p for p in parts if p)


def _pct(x: float) -> str:
    return f"{x:.1f}" if abs(x) < 10 else f"{x:.0f}"


def _range(lo: float, hi: float, unit: str = "%") -> str:
    if lo < 0 or hi < 0:
        return f"{_pct(lo)}{unit} to {_pct(hi)}{unit}"
    return f"{_pct(lo)}-{_pct(hi)}{unit}"


def sentence(s: PairedStats, a: str, b: str, where: str, metric: str, mode: str) -> str:
    """One plain sentence: ``B is worse than A by 12% (95% CI 4-20%) over ..., 27 pairs``."""
    pairs = f"{s.n} pair{'s' if s.n != 1 else ''}"
    over = f" over {where}" if where else ""
    if s.n == 0:
        return f"No pairs of {b} and {a}{over}."
    if not math.isnan(s.ratio):
        change = (s.ratio - 1) * 100
        low, high = (s.ratio_low - 1) * 100, (s.ratio_high - 1) * 100
        unit = "%"
    else:
        change, low, high, unit = s.diff, s.diff_low, s.diff_high, ""
    if change == 0:
        head = f"{b} and {a} score the same in {metric}"
        ci_lo, ci_hi = low, high
    else:
        worse = (change > 0) == (mode == "min")
        head = f"{b} is {'worse' if worse else 'better'} than {a} by "
        if unit:
            head += f"{_pct(abs(change))}%"
        else:
            head += f"{abs(change):.3g}"
        head += f" in {metric}"
        sign = 1 if change > 0 else -1  # the CI on the same side as the estimate
        ci_lo, ci_hi = sorted((sign * low, sign * high))
    if s.n >= 2:
        ci = (_range(ci_lo, ci_hi) if unit else f"{ci_lo:.3g} to {ci_hi:.3g}")
        resolved = not (low <= 0 <= high)
        head += f" (95% CI {ci}{'' if resolved else ', not resolved'})"
    text = f"{head}{over}, {pairs}"
    if s.p is not None:
        text += f"; Wilcoxon signed-rank p = {s.p:.2g}"
    elif s.note:
        text += f"; {s.note}"
    return text + "."


def _group_rows(pairs: pd.DataFrame, keys: list[str], a: str, b: str, metric: str,
                mode: str) -> pd.DataFrame:
    rows = []
    groups = pairs.groupby(keys, sort=True) if keys else [((), pairs)]
    for key, g in groups:
        key = key if isinstance(key, tuple) else (key,)
        s = paired_stats(g["a"].to_numpy(), g["b"].to_numpy())
        rows.append({**dict(zip(keys, key, strict=True)), **s.as_dict(),
                     "sentence": sentence(s, a, b, _where(g), metric, mode)})
    columns = [*keys, *PairedStats.__dataclass_fields__, "sentence"]
    return pd.DataFrame(rows, columns=columns)


def _side_name(t: pd.DataFrame, chosen: pd.Series, expr: str | pd.Series) -> str:
    labels = t.loc[chosen, "display"].unique()
    if len(labels) == 1:
        return str(labels[0])
    return expr if isinstance(expr, str) else "the selection"


def compare_trials(trials: pd.DataFrame, a: str | pd.Series, b: str | pd.Series, *,
                   by: Sequence[str] | str | None = None,
                   pool: Sequence[str] | str | None = None,
                   metric: str = "test_mse_at_best", where: str | None = None) -> Comparison:
    """Pair the trials of ``a`` with those of ``b`` and compare ``metric`` (b against a).

    Args:
        trials: study rows (``Study.trials``).
        a, b: which trials each side is: a query expression (:mod:`cryotune.expr`; bare config
            names, ``label`` the method's display name with ℓ written ``l``) or a boolean mask.
        by: cell columns to break the comparison down by (default: those of ``dataset``,
            ``contamination``, ``eps`` that vary among the pairs).
        pool: cell columns to pool over; the pooled groups are the other cell columns
            (default: all of them, one pooled answer).
        metric: the column to compare; ``test_mse_at_best`` (the test MSE at the best
            validation epoch) falls back to ``test_mse`` for studies that predate it, noted.
        where: an expression both sides must also satisfy (e.g. ``eps > 0``).

    Returns:
        A :class:`Comparison`.

    Raises:
        BadInput: an expression is invalid, a trial matches both sides, a side has two trials
            in one (cell, seed), an unknown cell column or metric.
    """
    by_cols = _cell_names(by, "--by")
    pool_cols = _cell_names(pool, "--pool") if pool is not None else list(CELL)
    t = prepare_cells(trials)
    notes: list[str] = []
    if where:
        t = t[_pick(t, where, "where")]
    in_a, in_b = _pick(t, a, "--a"), _pick(t, b, "--b")
    both = in_a & in_b
    if both.any():
        raise BadInput(f"{int(both.sum())} trials match both sides "
                       f"(e.g. {t.loc[both, 'trial_id'].iloc[0]})", "--a/--b",
                       "make the two expressions exclusive, e.g. by method or lambda")
    if not in_a.any() or not in_b.any():
        side = "--a" if not in_a.any() else "--b"
        raise BadInput("no trial matches the expression", side,
                       "check it with `cryotune query STUDY --where ...`")
    name_a, name_b = _side_name(t, in_a, a), _side_name(t, in_b, b)
    chosen = t[in_a | in_b]
    if metric not in t or chosen[metric].isna().all():
        base = metric.removesuffix("_at_best")
        if base != metric and base in t and chosen[base].notna().any():
            notes.append(f"these trials have no {metric} (studies without a validation split):"
                         f" comparing the last epoch's {base}")
            metric = base
        else:
            raise BadInput(f"no values of {metric!r} in these trials", "--metric",
                           "name a metric column of the trials, e.g. test_mse_at_best")
    mode = _direction(metric)
    values = pd.to_numeric(t[metric], errors="coerce")
    ok = (t["status"] == "finished") & np.isfinite(values)
    excluded: dict[str, dict[str, int]] = {}
    sides = {}
    for side, pick in (("a", in_a), ("b", in_b)):
        rows = t[pick]
        counts = {"matched": len(rows)}
        for status, n in rows.loc[rows["status"] != "finished", "status"].value_counts().items():
            counts[str(status)] = int(n)
        missing = int((pick & (t["status"] == "finished") & ~np.isfinite(values)).sum())
        if missing:
            counts[f"no finite {metric}"] = missing
        excluded[side] = counts
        good = t[pick & ok].assign(value=values[pick & ok])
        dup = good.duplicated(["dataset", "contamination", "eps", "seed"], keep=False)
        if dup.any():
            first = good[dup].iloc[0]
            same = good[dup & (good["dataset"] == first["dataset"]) & (good["eps"] == first["eps"])
                        & (good["contamination"] == first["contamination"])
                        & (good["seed"] == first["seed"])]
            differ = [c for c in same if c.startswith("config.") or c == "study"]
            differ = [c for c in differ if same[c].astype(str).nunique() > 1]
            raise BadInput(
                f"{len(same)} trials of one side share dataset {first['dataset']}, eps "
                f"{first['eps']:g}, type {first['contamination']}, seed {first['seed']}",
                f"--{side}", "narrow the expression so each side has one trial per cell and "
                f"seed (they differ in {', '.join(differ) or 'nothing recorded'})")
        sides[side] = good
    keys = ["dataset", "contamination", "eps", "seed"]
    left = sides["a"][[*keys, "value", "trial_id", "study"]]
    right = sides["b"][[*keys, "value", "trial_id", "study"]]
    pairs = left.merge(right, on=keys, suffixes=("_a", "_b"), how="inner").rename(
        columns={"value_a": "a", "value_b": "b"})
    pairs = pairs.sort_values(keys).reset_index(drop=True)
    for side, own in (("a", left), ("b", right)):
        unpaired = len(own) - len(pairs)
        if unpaired:
            excluded[side]["without a partner"] = unpaired
    if not by_cols and by is None:
        by_cols = [c for c in CELL if pairs[c].nunique() > 1]
    group = [c for c in CELL if c not in pool_cols]
    cells = _group_rows(pairs, by_cols, name_a, name_b, metric, mode)
    pooled = _group_rows(pairs, group, name_a, name_b, metric, mode)
    return Comparison(name_a, name_b, metric, mode, pairs, cells, pooled, excluded, notes)
