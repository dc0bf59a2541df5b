"""Report sections of the paired comparisons and the robust picks.

- :func:`comparisons`: each GAN method against the ℓ1 autoencoder, paired on dataset, eps, type
  and seed and pooled over the contaminated cells (:mod:`cryotune.study.compare`), one
  sentence each, with n, the CI and what was left out.
- :func:`selection`: the configurations ranked by each robustness goal on the validation
  selection score (:mod:`cryotune.study.select`), the test metric beside, and the Pareto front
  of clean score against worst case drawn as an SVG scatter.

Both take the prepared trial frame (:func:`cryotune.report.tables.prepare`) and return HTML, or
a ``missing`` note saying what the studies lack.
"""

from __future__ import annotations

import math

import pandas as pd

from cryotune import vocab
from cryotune.errors import BadInput
from cryotune.report.charts import PALETTE, Series, line_chart
from cryotune.report.html import esc, fmt, missing, table
from cryotune.study.compare import compare_trials
from cryotune.study.select import select_trials

__all__ = ["comparisons", "selection"]

REFERENCE = "l1_ae"  # what every GAN method is compared with
_IN_LABEL = ("config.method", "config.alpha", "config.beta", "config.lambda", "config.p",
             "config.reduction", "config.lr_g")


def _ci(low: float, high: float, kind: str) -> str:
    if math.isnan(low):
        return "–"
    return f"{fmt(low, kind)} to {fmt(high, kind)}"


def comparisons(t: pd.DataFrame) -> str:
    if t.empty or "config.method" not in t:
        return missing("No trials to compare.")
    cont = t[(t["eps"] > 0) & t["status"].isin(["finished", "diverged", "stopped", "error"])]
    ref = cont["config.method"] == REFERENCE
    gans = cont[cont["config.method"].isin(vocab.ADVERSARIAL)]
    if not ref.any() or gans.empty:
        return missing("Needs ℓ1-AE and GAN trials at eps > 0 with the same seeds, types and "
                       "datasets (search_spaces/paper-fig5-robustness.yaml).")
    sentences, rows = [], []
    for label in sorted(gans["label"].unique()):
        try:
            c = compare_trials(cont, ref, cont["label"] == label)
        except BadInput as err:
            sentences.append(f"{label} against ℓ1-AE: not compared ({err.what}).")
            continue
        sentences += [*c.sentences(), *c.notes]
        for _, r in c.pooled.iterrows():
            rows.append([esc(c.b), esc(c.a), esc(c.metric), str(int(r["n"])),
                         fmt(r["diff"], "e"), esc(_ci(r["diff_low"], r["diff_high"], "e")),
                         fmt(r["ratio"], "f2"), esc(_ci(r["ratio_low"], r["ratio_high"], "f2")),
                         esc(r["ci"]), fmt(r["p"], "g") if r["p"] is not None and
                         not pd.isna(r["p"]) else "–"])
    note = ('<p class="note">Trials paired on dataset, ε, contamination type and seed, pooled '
            "over every contaminated cell (n = seeds × cells). Difference: mean of B − A with a "
            "95% CI (Student t below 10 pairs, fixed-seed percentile bootstrap from 10); ratio: "
            "geometric mean of B / A per pair, its CI on the log scale; p: Wilcoxon "
            "signed-rank, not given below 6 pairs (it cannot reach 0.05 there). Diverged and "
            "failed trials are left out with their partners and counted.</p>")
    body = "".join(f'<p class="finding">• {esc(s)}</p>' for s in sentences)
    header = ["B", "A", "metric", "pairs", "B − A", "95% CI", "B / A", "95% CI", "CI", "p"]
    return note + body + (table(header, rows, left=3) if rows else "")


def _configuration(row: pd.Series, columns: list[str]) -> str:
    extra = [f"{c.removeprefix('config.')}={row[c]}" for c in columns
             if c not in _IN_LABEL and str(row[c]) != "-"]
    return str(row["label"]) + (f" ({', '.join(extra)})" if extra else "")


def _pareto_chart(d: pd.DataFrame, score: str, title: str, varying: list[str]) -> str:
    el = d[d["eligible"] & d["clean"].notna() & d["worst"].notna()]
    if el.empty:
        return ""
    front = el[el["pareto"]].sort_values("clean")
    rest = el[~el["pareto"]]
    series = [Series("Pareto front", front["clean"].tolist(), front["worst"].tolist(),
                     dashed=True, color="#555555")]
    series += [Series(_configuration(r, varying), [r["clean"]], [r["worst"]], line=False,
                      color=PALETTE[i % len(PALETTE)]) for i, (_, r) in enumerate(front.iterrows())]
    if len(rest):
        series.append(Series("other configurations", rest["clean"].tolist(),
                             rest["worst"].tolist(), line=False, color="#bbbbbb"))
    return line_chart(series, f"clean {score} (validation, ε = 0)",
                      f"worst contaminated {score}", title=title)


def selection(t: pd.DataFrame) -> str:
    if t.empty or "select_score" not in t or t["select_score"].isna().all():
        return missing("Needs trials with a validation selection score (select_score): studies "
                       "whose datasets have a validation split.")
    t = t[t["config.method"].isin(vocab.METHOD_NAMES)]  # learned methods; baselines have no score
    picks, why = {}, []
    for goal in vocab.ROBUSTNESS_GOALS:
        try:
            picks[goal] = select_trials(t, goal)
        except BadInput as err:
            why.append(f"{goal}: {err.what}")
    if not picks:
        return missing("No configuration to rank: " + "; ".join(why) + ".")
    base = next(picks[g] for g in ("worst_ratio", "clean", "worst", "cvar") if g in picks)
    test = base.test
    parts = [f'<p class="note">Configurations (method and hyperparameters, mean over seeds) '
             f"ranked on the validation selection score ({esc(base.score)}, lower is better), "
             f"never on test; {esc(test)} of the same cells beside it. A configuration with a "
             "diverged trial, or without a result in a cell, ranks last.</p>"]
    left = ", ".join(f"{n} {why}" for why, n in base.excluded.items())
    if left:
        parts.append(f'<p class="note">Left out of the scores: {esc(left)}.</p>')
    parts += [f'<p class="note">{esc(n)}</p>' for n in [*base.notes, *why]]
    for dataset, d in base.table.groupby("dataset", sort=True):
        varying = [c for c in d if c.startswith("config.")]
        rows = []
        for goal, pick in picks.items():
            g = pick.table[pick.table["dataset"] == dataset]
            best = g.iloc[0]
            rows.append([esc(goal), esc(vocab.ROBUSTNESS_GOALS[goal]),
                         esc(_configuration(best, varying)) + ("" if best["eligible"] else
                                                              " (no eligible configuration)"),
                         fmt(best["score"], "f2" if goal == "worst_ratio" else "e"),
                         fmt(best["test"], "f2" if goal == "worst_ratio" else "e")])
        parts.append(f"<h3>Dataset {esc(dataset)}</h3>" + table(
            ["goal", "means", "chosen on validation", "validation", f"test ({esc(test)})"],
            rows, left=3))
        ranked = []
        for _, r in d.iterrows():
            ranked.append([str(int(r["rank"])), esc(_configuration(r, varying)),
                           fmt(r["clean"], "e"), fmt(r["worst"], "e"), fmt(r["worst_ratio"], "f2"),
                           fmt(r["cvar"], "e"), fmt(r["test_clean"], "e"), fmt(r["test_worst"], "e"),
                           str(int(r["trials"])), str(int(r["diverged"])),
                           "yes" if r["pareto"] else ""])
        parts.append(table([f"rank ({esc(base.goal)})", "configuration", "clean", "worst",
                            "worst / clean", "CVaR", "test clean", "test at worst",
                            "trials", "diverged", "Pareto"], ranked, left=2))
        chart = _pareto_chart(d, base.score, f"Pareto front, dataset {dataset}", varying)
        if chart:
            parts.append('<div class="figs">' + chart + "</div>")
    return "\n".join(parts)
