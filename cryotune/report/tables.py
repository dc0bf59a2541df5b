"""Report sections that are tables: the overview and the paper's Tables 1, 2 and 4.

Each builder takes the prepared trial frame (see :func:`prepare`) and returns HTML, or a
``missing`` note saying what the studies lack. Means and standard deviations are over seeds
(sample std, ddof 1) of the finished trials; diverged trials are counted in the n column
("1 (2 of 3 diverged)") and left out of means and bolding. Test metrics are those at each
trial's best validation epoch (``test_*_at_best``) where the trial recorded them, else the
last epoch's (studies without a validation split; the notes say which).

Bold marks the best mean and every method whose paired difference to it (trials paired on
dataset, eps, contamination type and seed) has a 95% CI containing 0
(:func:`cryotune.study.compare.paired_stats`); below 3 pairs a method is not bold, so a
column with too few seeds bolds only the best. The paper bolded every mean within one of its
own standard deviations of the best, which bolds any method with a wild spread.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import yaml

from cryotune import vocab
from cryotune.report import paper
from cryotune.report.html import esc, fmt, missing, table
from cryotune.study.compare import paired_stats
from cryotune.study.labels import method_labels
from cryotune.study.tables import Study

METRICS = (("test_mse", "MSE", "e", "min"), ("test_psnr", "PSNR", "f2", "max"),
           ("test_ssim", "SSIM", "f2", "max"),
           ("select_score", "validation score", "e", "min"))  # what selection read
TEST_AT_BEST = ("test_mse", "test_psnr", "test_ssim")
BOLD_MIN_PAIRS = 3
PAIR_KEY = ("config.dataset", "eps", "ctype", "config.seed")


def method_key(row: pd.Series) -> str:
    """A canonical method name used to match the paper: ``beta_gan(0.5,0.5)+l1`` ..."""
    m = row.get("config.method")
    a, b = row.get("config.alpha"), row.get("config.beta")
    known = vocab.METHODS.get(str(m))
    if known is not None and known.rule == "beta" and known.pair is not None:  # js_gan
        m, (a, b) = "beta_gan", known.pair
    if m == "beta_gan" and pd.notna(a) and pd.notna(b):
        m = f"beta_gan({a:g},{b:g})"
    lam, p = row.get("config.lambda"), row.get("config.p")
    if row.get("config.method") in vocab.ADVERSARIAL and pd.notna(lam) and lam > 0:
        m += f"+l{int(p) if pd.notna(p) else 1}"
    return str(m)


def prepare(study: Study) -> pd.DataFrame:
    """Trials with display columns: label, key, snr, eps, ctype, lam."""
    t = study.trials.copy()
    for name in ("config.method", "config.eps", "config.contamination", "config.lambda",
                 "config.alpha", "config.beta", "config.seed", "config.dataset", "config.snr", "wall_s"):
        if name not in t:
            t[name] = np.nan
    if t.empty:
        return t.assign(label=[], label_nolam=[], key=[], snr=[], eps=[], ctype=[], lam=[])
    t["label"] = method_labels(t, with_lambda=True)
    t["label_nolam"] = method_labels(t, with_lambda=False)
    t["key"] = t.apply(method_key, axis=1)
    snr = t["config.snr"]
    if snr.isna().any():
        manifests = study.datasets
        lookup = {(s, k): m.get("snr") for (s, k), m in manifests.items()}
        filled = [lookup.get((s, str(k))) for s, k in zip(t["study"], t["config.dataset"], strict=True)]
        snr = snr.fillna(pd.Series(filled, index=t.index, dtype="float64"))
    t["snr"] = pd.to_numeric(snr, errors="coerce")
    t["eps"] = pd.to_numeric(t["config.eps"], errors="coerce").fillna(0.0)
    t["ctype"] = t["config.contamination"].astype(object).fillna("none").astype(str).where(t["eps"] > 0, "none")
    t["lam"] = pd.to_numeric(t["config.lambda"], errors="coerce")
    # the test metrics of the best validation epoch where recorded, the last epoch's else
    t["test_at"] = "last epoch"
    for m in TEST_AT_BEST:
        best = f"{m}_at_best"
        if best in t and m in t:
            at_best = pd.to_numeric(t[best], errors="coerce")
            t[f"{m}_last"] = t[m]
            t[m] = at_best.where(at_best.notna(), pd.to_numeric(t[m], errors="coerce"))
            if m == "test_mse":
                t.loc[at_best.notna(), "test_at"] = "best validation epoch"
    return t


def test_at_note(t: pd.DataFrame) -> str:
    """Which epoch's test metrics a table shows, in words."""
    kinds = set(t["test_at"]) if "test_at" in t and not t.empty else {"last epoch"}
    if kinds == {"best validation epoch"}:
        return "Test metrics at each trial's best validation epoch (test_mse_at_best)."
    if kinds == {"last epoch"}:
        return ("Test metrics at the last epoch: these trials have no validation split "
                "(no test_mse_at_best).")
    return ("Test metrics at each trial's best validation epoch where recorded, at the last "
            "epoch for trials without a validation split (baselines, older studies).")


def ended(t: pd.DataFrame) -> pd.DataFrame:
    """Trials that are results: the usable ones and the diverged (counted, never averaged)."""
    if t.empty or "test_mse" not in t:
        return t.iloc[0:0]
    return pd.concat([usable(t), t[t["status"] == "diverged"]])


def usable(t: pd.DataFrame) -> pd.DataFrame:
    """Trials whose final metrics count: finished (baselines included) with a finite MSE."""
    if t.empty or "test_mse" not in t:
        return t.iloc[0:0]
    ok = t["status"].isin(["finished"]) & np.isfinite(pd.to_numeric(t["test_mse"], errors="coerce"))
    return t[ok]


TABLE1_PAIRS = ((1.0, 1.0), (0.5, 0.5))  # the (alpha, beta)-GANs of the paper's Table 1
REFERENCE_LAMBDA = 10.0  # the paper's lambda for every GAN + l1 row outside Table 4


def at_reference_lambda(t: pd.DataFrame) -> pd.DataFrame:
    """Drop the lambda ablation: GAN rows keep one lambda per method, 10 when it was run.

    A method run at a single lambda keeps it (a study at lambda 5 only still has its rows);
    where several were run (Table 4), the others belong to the lambda table alone.
    """
    if t.empty:
        return t
    gan = t["config.method"].isin(vocab.ADVERSARIAL)
    keep = ~gan
    for _, g in t[gan].groupby("label_nolam", dropna=False):
        lams = g["lam"].dropna()
        if lams.nunique() <= 1:
            keep[g.index] = True
            continue
        ref = REFERENCE_LAMBDA if (lams == REFERENCE_LAMBDA).any() else lams.mode().iloc[0]
        keep[g.index] = (g["lam"] == ref) | g["lam"].isna()
    return t[keep]


def table1_methods(t: pd.DataFrame) -> pd.DataFrame:
    """The rows of Table 1: lambda ablation dropped and, when the paper's two (alpha, beta)
    pairs were run, the other pairs left to Table 2."""
    t = at_reference_lambda(t)
    beta = t["config.method"] == "beta_gan"
    if not beta.any():
        return t
    pairs = list(zip(pd.to_numeric(t["config.alpha"], errors="coerce"),
                     pd.to_numeric(t["config.beta"], errors="coerce"), strict=True))
    in_table1 = pd.Series([p in TABLE1_PAIRS for p in pairs], index=t.index)
    if not (beta & in_table1).any():
        return t
    return t[~beta | in_table1]


def aggregate(t: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    metrics = [m for m, *_ in METRICS if m in t and t[m].notna().any()]
    g = t.groupby(by, dropna=False)[metrics].agg(["mean", "std", "count"])
    g.columns = [f"{m}_{a}" for m, a in g.columns]
    return g.reset_index()


def paired_bold(trials: pd.DataFrame, row_col: str, metric: str, mode: str
                ) -> dict[object, tuple[bool, str]]:
    """Bold flags of one table column: row value -> (bold, why). The best mean is bold; another
    row is bold when its paired difference to the best (pairs on dataset, eps, type, seed) has
    a 95% CI containing 0 and at least :data:`BOLD_MIN_PAIRS` pairs."""
    t = trials[np.isfinite(pd.to_numeric(trials[metric], errors="coerce"))]
    if t.empty:
        return {}
    key = [c for c in PAIR_KEY if c in t]
    filled = t.assign(**{c: t[c].astype(object).where(t[c].notna(), "-").astype(str) for c in key})
    per = filled.groupby([row_col, *key], sort=False)[metric].mean()
    means = filled.groupby(row_col, sort=False)[metric].mean()
    best = means.idxmin() if mode == "min" else means.idxmax()
    out: dict[object, tuple[bool, str]] = {best: (True, "the best mean")}
    ref = per.loc[best]
    for row in means.index:
        if row == best:
            continue
        pairs = pd.concat([ref, per.loc[row]], axis=1, join="inner").dropna()
        s = paired_stats(pairs.iloc[:, 0].to_numpy(), pairs.iloc[:, 1].to_numpy())
        if s.n < BOLD_MIN_PAIRS:
            out[row] = (False, f"{s.n} pairs with the best: too few to compare")
            continue
        tie = s.diff_low <= 0 <= s.diff_high
        out[row] = (tie, f"difference to the best {s.diff:.3g}, 95% CI {s.diff_low:.3g} to "
                         f"{s.diff_high:.3g}, n = {s.n} pairs")
    return out


def _cell(mean, std, kind, bold, why: str = "") -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    text = fmt(mean, kind) + (f"({fmt(std, kind)})" if std is not None and not pd.isna(std) else "")
    title = f' title="{esc(why)}"' if why else ""
    return f"<b{title}>{text}</b>" if bold else (f"<span{title}>{text}</span>" if why else text)


def _count(n: int, diverged: int) -> str:
    return str(n) if not diverged else f"{n} ({diverged} of {n + diverged} diverged)"


def _paper_cell(ref, metric, kind) -> tuple[str, str]:
    if ref is None or metric not in ref:
        return ("", "paper")
    mean, std = ref[metric]
    return (f"{fmt(mean, kind)}({fmt(std, kind)})", "paper")


def metric_table(agg: pd.DataFrame, row_col: str, col_col: str, *, row_label: str,
                 paper_ref=None, trials: pd.DataFrame | None = None) -> str:
    """Rows x (metric, column value) with mean(std); optional paper rows under ours.

    ``paper_ref(row_value, col_value)`` returns the paper's metrics or None. ``trials`` are the
    rows behind ``agg`` (finished and diverged, with ``row_col`` and ``col_col``): they give
    the paired bold rule and the diverged counts; without them only the best mean is bold.
    """
    cols = sorted(agg[col_col].dropna().unique().tolist()) or [np.nan]
    metrics = [m for m in METRICS if f"{m[0]}_mean" in agg]
    if trials is None:
        trials = pd.DataFrame(columns=[row_col, col_col, "status"])
    done = trials[trials["status"] != "diverged"]
    diverged = trials[trials["status"] == "diverged"]
    bold = {}
    for col in cols:
        sub = agg[agg[col_col] == col] if not pd.isna(col) else agg
        rows = done[done[col_col] == col] if not pd.isna(col) else done
        for m, _, _, mode in metrics:
            flags = paired_bold(rows, row_col, m, mode) if m in rows and not rows.empty else {}
            values = sub[f"{m}_mean"]
            if not flags and values.notna().any():  # no trials given: only the best
                best = values.idxmin() if mode == "min" else values.idxmax()
                flags = {sub.loc[best, row_col]: (True, "the best mean")}
            for idx in sub.index:
                bold[(idx, col, m)] = flags.get(sub.loc[idx, row_col], (False, ""))
    header = [esc(row_label), "n"] + [esc(f"{c:g}") if not pd.isna(c) else "–"
                                      for _ in metrics for c in cols]
    top = [("", 2)] + [(esc(name), len(cols)) for _, name, _, _ in metrics]
    rows = []
    for name, grp in agg.groupby(row_col, sort=False):
        div = diverged[diverged[row_col] == name]
        counts = "/".join(_count(int(grp[grp[col_col] == c][f"{metrics[0][0]}_count"].sum()),
                                 int((div[col_col] == c).sum()))
                          if not pd.isna(c) else _count(int(grp[f"{metrics[0][0]}_count"].sum()),
                                                        len(div))
                          for c in cols)
        row = [esc(name), counts]
        for m, _, kind, _ in metrics:
            for c in cols:
                r = grp[grp[col_col] == c] if not pd.isna(c) else grp
                if r.empty:
                    row.append("–")
                    continue
                idx = r.index[0]
                flag, why = bold.get((idx, c, m), (False, ""))
                row.append(_cell(r[f"{m}_mean"].iloc[0], r[f"{m}_std"].iloc[0], kind, flag, why))
        rows.append(row)
        if paper_ref is not None and any(paper_ref(name, c) for c in cols):
            prow = [(esc(f"↳ {paper.CAPTION}"), "paper"), ("", "paper")]
            for m, _, kind, _ in metrics:
                prow += [_paper_cell(paper_ref(name, c), m, kind) for c in cols]
            rows.append(prow)
    return table(header, rows, left=1, header_rows=[top])


def overview(study: Study, t: pd.DataFrame) -> str:
    parts = []
    if study.datasets:
        rows = []
        for (s, key), m in sorted(study.datasets.items()):
            splits = m.get("splits", {})
            shape = m.get("image_shape") or ["?", "?"]
            rows.append([esc(s), esc(key), esc(m.get("name", "")), esc(m.get("kind", "")),
                         esc(f"{shape[0]}×{shape[1]}"), fmt(m.get("pixel_size")),
                         fmt(m.get("snr")), fmt(m.get("snr_measured")),
                         esc(splits.get("train", {}).get("count", "")),
                         esc(splits.get("test", {}).get("count", "")),
                         esc(m.get("conformations") if m.get("conformations") is not None else "–")])
        parts.append("<h3>Datasets</h3>" + table(
            ["study", "dataset", "name", "kind", "image", "pixel (Å)", "SNR", "SNR measured",
             "train", "test", "conformations"], rows, left=4))
    else:
        parts.append(missing("No dataset manifests in the studies."))
    if not t.empty:
        counts = t.groupby(["study", "status"]).size().unstack(fill_value=0)
        wall = t.groupby("study")["wall_s"].sum() if "wall_s" in t else None
        header = ["study"] + [esc(c) for c in counts.columns] + ["trials", "compute (h)"]
        rows = [[esc(s)] + [str(int(v)) for v in r.values] + [str(int(r.sum())),
                fmt((wall.get(s, 0.0) or 0.0) / 3600.0, "f2") if wall is not None else "–"]
                for s, r in counts.iterrows()]
        parts.append("<h3>Trials</h3>" + table(header, rows))
        errors = t[t["status"] == "error"]
        if not errors.empty:
            items = "".join(f"<li><code>{esc(r['trial_id'])}</code> ({esc(r['label'])}): {esc(r.get('error', ''))}</li>"
                            for _, r in errors.head(50).iterrows())
            parts.append(f"<details><summary>{len(errors)} trial(s) failed</summary><ul>{items}</ul></details>")
    for name, spec in study.specs.items():
        text = yaml.safe_dump(spec, sort_keys=False, default_flow_style=None, allow_unicode=True)
        parts.append(f"<details><summary>Resolved sweep spec: {esc(name)}</summary><pre>{esc(text)}</pre></details>")
    return "\n".join(parts)


def _with_diverged(agg: pd.DataFrame, rows: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """``agg`` plus an empty row (count 0) for each group whose every trial diverged."""
    div = rows[rows["status"] == "diverged"]
    if div.empty:
        return agg
    have = set(map(tuple, agg[by].astype(str).to_numpy()))
    extra = div.drop_duplicates(by)
    extra = extra[[tuple(v) not in have for v in extra[by].astype(str).to_numpy()]]
    if extra.empty:
        return agg
    counts = {c: 0 for c in agg if c.endswith("_count")}
    return pd.concat([agg, extra[by].assign(**counts)], ignore_index=True)


def table1(t: pd.DataFrame) -> str:
    rows = ended(t)
    rows = table1_methods(rows[rows["eps"] == 0])
    clean = rows[rows["status"] != "diverged"]
    if rows.empty:
        return missing("No finished trials without contamination (eps = 0): run a sweep with eps 0, "
                       "e.g. search_spaces/paper-table1.yaml, and `cryotune baselines`.")
    agg = _with_diverged(aggregate(clean, ["label", "key", "snr"]), rows, ["label", "key", "snr"])
    order = agg.groupby("label")["test_mse_mean"].min().sort_values(
        ascending=False, na_position="first").index
    agg["label"] = pd.Categorical(agg["label"], categories=list(order), ordered=True)
    agg = agg.sort_values(["label", "snr"]).reset_index(drop=True)
    agg["label"] = agg["label"].astype(str)
    keys = dict(zip(agg["label"], agg["key"], strict=False))

    def ref(label, snr):
        return paper.TABLE1.get((keys.get(label), round(float(snr), 4))) if not pd.isna(snr) else None

    note = (f'<p class="note">Mean(std) over seeds, eps = 0. {esc(test_at_note(rows))} '
            f"{BOLD_NOTE} Grey rows: the paper's numbers for the same "
            "method and SNR (RNAP, 128 px, 25,000 pairs): a reference, not the same data. "
            "GAN rows at λ = 10 and the paper's two (α, β) pairs; other λ and pairs are in "
            "Tables 4 and 2.</p>")
    return note + metric_table(agg, "label", "snr", row_label="method / SNR", paper_ref=ref,
                               trials=rows)


BOLD_NOTE = ("Bold: the best mean, and every method whose paired difference to it (same "
             "dataset, ε, type and seed) has a 95% CI containing 0, from "
             f"{BOLD_MIN_PAIRS} pairs (hover a number for its CI and n). Diverged trials "
             "(NaN, or worse than the noisy input) are counted in n and left out of means "
             "and bolding.")


_BETA_RULE = [m.name for m in vocab.METHODS.values() if m.rule == "beta"]  # (alpha, beta)-GANs


def table2(t: pd.DataFrame) -> str:
    rows = ended(t)
    rows = at_reference_lambda(rows[(rows["eps"] == 0) & (rows["config.method"].isin(_BETA_RULE))])
    gans = rows[rows["status"] != "diverged"]
    if gans.empty or rows["key"].nunique() < 2:
        return missing("Needs finished (alpha, beta)-GAN trials with at least two (alpha, beta) pairs "
                       "at eps = 0 (search_spaces/paper-table2-alpha-beta.yaml).")
    agg = _with_diverged(aggregate(gans, ["label", "key", "snr"]), rows, ["label", "key", "snr"])
    agg = agg.sort_values(["label", "snr"]).reset_index(drop=True)
    keys = dict(zip(agg["label"], agg["key"], strict=False))

    def ref(label, snr):
        return paper.TABLE2.get((keys.get(label), round(float(snr), 4))) if not pd.isna(snr) else None

    note = f'<p class="note">{esc(test_at_note(rows))} {BOLD_NOTE}</p>'
    return note + metric_table(agg, "label", "snr", row_label="(α, β) / SNR", paper_ref=ref,
                               trials=rows)


def table4(t: pd.DataFrame) -> str:
    gans = usable(t)
    gans = gans[(gans["eps"] == 0) & gans["config.method"].isin(vocab.ADVERSARIAL)]
    groups = gans.groupby("label_nolam")["lam"].nunique() if not gans.empty else pd.Series(dtype=int)
    groups = groups[groups >= 2]
    if groups.empty:
        return missing("Needs finished GAN trials of one method at two or more lambdas, eps = 0 "
                       "(search_spaces/paper-table4-lambda.yaml).")
    l1 = ended(t)
    l1 = l1[(l1["eps"] == 0) & (l1["config.method"] == "l1_ae")]
    div = ended(t)
    div = div[(div["eps"] == 0) & div["config.method"].isin(vocab.ADVERSARIAL)
              & (div["status"] == "diverged")]
    out = []
    for label in groups.index:
        sub = gans[gans["label_nolam"] == label]
        agg = aggregate(sub, ["lam", "snr"]).sort_values(["lam", "snr"]).reset_index(drop=True)
        agg["lam_label"] = agg["lam"].map(lambda v: f"{v:g}")
        limit = l1[l1["snr"].isin(sub["snr"].dropna().unique()) | (l1["snr"].isna() & sub["snr"].isna().any())]
        behind = pd.concat([sub, div[div["label_nolam"] == label]])
        behind = behind.assign(lam_label=behind["lam"].map(lambda v: f"{v:g}"))
        if not limit.empty:  # the limit lambda -> infinity the paper compares to
            ae = aggregate(limit[limit["status"] != "diverged"], ["snr"]).assign(
                lam=np.inf, lam_label="∞ (ℓ1-AE)")
            agg = pd.concat([agg, ae], ignore_index=True)
            behind = pd.concat([behind, limit.assign(lam_label="∞ (ℓ1-AE)")])
        key = sub["key"].iloc[0]

        def ref(lam_label, snr, key=key):
            if key != "beta_gan(0.5,0.5)+l1" or pd.isna(snr) or round(float(snr), 4) != 0.1:
                return None
            if lam_label.startswith("∞"):  # the paper's Table 1 l1-AE row
                return paper.TABLE1.get(("l1_ae", 0.1))
            return paper.TABLE4.get(float(lam_label))

        out.append(f"<h3>{esc(label)}</h3>" + metric_table(agg, "lam_label", "snr", row_label="λ / SNR",
                                                           paper_ref=ref, trials=behind))
    return f'<p class="note">{esc(test_at_note(gans))} {BOLD_NOTE}</p>' + "\n".join(out)
