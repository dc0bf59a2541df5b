"""Report sections that are tables: the overview and the paper's Tables 1, 2 and 4.

Each builder takes the prepared trial frame (see :func:`prepare`) and returns HTML, or a
``missing`` note saying what the studies lack. Means and standard deviations are over seeds
(sample std, ddof 1). Bold marks the best mean and every mean within one of its own standard
deviations of the best, the paper's convention.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import yaml

from cryotune.report import paper
from cryotune.report.html import esc, fmt, missing, table
from cryotune.results import Study, method_labels

METRICS = (("test_mse", "MSE", "e", "min"), ("test_psnr", "PSNR", "f2", "max"),
           ("test_ssim", "SSIM", "f2", "max"))
GAN_METHODS = ("beta_gan", "js_gan", "wgan", "wgan_gp")


def method_key(row: pd.Series) -> str:
    """A canonical method name used to match the paper: ``beta_gan(0.5,0.5)+l1`` ..."""
    m = row.get("config.method")
    a, b = row.get("config.alpha"), row.get("config.beta")
    if m == "js_gan":
        m, a, b = "beta_gan", 0.0, 0.0
    if m == "beta_gan" and pd.notna(a) and pd.notna(b):
        m = f"beta_gan({a:g},{b:g})"
    lam, p = row.get("config.lambda"), row.get("config.p")
    if row.get("config.method") in GAN_METHODS and pd.notna(lam) and lam > 0:
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
    return t


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
    gan = t["config.method"].isin(GAN_METHODS)
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
    metrics = [m for m, *_ in METRICS if m in t]
    g = t.groupby(by, dropna=False)[metrics].agg(["mean", "std", "count"])
    g.columns = [f"{m}_{a}" for m, a in g.columns]
    return g.reset_index()


def _bold(values: pd.Series, stds: pd.Series, mode: str) -> pd.Series:
    best = values.min() if mode == "min" else values.max()
    tol = stds.fillna(0.0)
    return (values - best).abs() <= tol + 1e-15


def _cell(mean, std, kind, bold) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    text = fmt(mean, kind) + (f"({fmt(std, kind)})" if std is not None and not pd.isna(std) else "")
    return f"<b>{text}</b>" if bold else text


def _paper_cell(ref, metric, kind) -> tuple[str, str]:
    if ref is None or metric not in ref:
        return ("", "paper")
    mean, std = ref[metric]
    return (f"{fmt(mean, kind)}({fmt(std, kind)})", "paper")


def metric_table(agg: pd.DataFrame, row_col: str, col_col: str, *, row_label: str,
                 paper_ref=None) -> str:
    """Rows x (metric, column value) with mean(std); optional paper rows under ours.

    ``paper_ref(row_value, col_value)`` returns the paper's metrics or None.
    """
    cols = sorted(agg[col_col].dropna().unique().tolist()) or [np.nan]
    metrics = [m for m in METRICS if f"{m[0]}_mean" in agg]
    bold = {}
    for col in cols:
        sub = agg[agg[col_col] == col] if not pd.isna(col) else agg
        for m, _, _, mode in metrics:
            flags = _bold(sub[f"{m}_mean"], sub[f"{m}_std"], mode)
            for idx, flag in flags.items():
                bold[(idx, col, m)] = flag
    header = [esc(row_label), "n"] + [esc(f"{c:g}") if not pd.isna(c) else "–"
                                      for _ in metrics for c in cols]
    top = [("", 2)] + [(esc(name), len(cols)) for _, name, _, _ in metrics]
    rows = []
    for name, grp in agg.groupby(row_col, sort=False):
        counts = "/".join(str(int(grp[grp[col_col] == c][f"{metrics[0][0]}_count"].sum()))
                          if not pd.isna(c) else str(int(grp[f"{metrics[0][0]}_count"].sum()))
                          for c in cols)
        row = [esc(name), counts]
        for m, _, kind, _ in metrics:
            for c in cols:
                r = grp[grp[col_col] == c] if not pd.isna(c) else grp
                if r.empty:
                    row.append("–")
                    continue
                idx = r.index[0]
                row.append(_cell(r[f"{m}_mean"].iloc[0], r[f"{m}_std"].iloc[0], kind, bold.get((idx, c, m))))
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
        text = yaml.safe_dump(spec, sort_keys=False, default_flow_style=None)
        parts.append(f"<details><summary>Resolved sweep spec: {esc(name)}</summary><pre>{esc(text)}</pre></details>")
    return "\n".join(parts)


def table1(t: pd.DataFrame) -> str:
    clean = usable(t)
    clean = table1_methods(clean[clean["eps"] == 0])
    if clean.empty:
        return missing("No finished trials without contamination (eps = 0): run a sweep with eps 0, "
                       "e.g. search_spaces/paper-table1.yaml, and `cryotune baselines`.")
    agg = aggregate(clean, ["label", "key", "snr"])
    order = agg.groupby("label")["test_mse_mean"].min().sort_values(ascending=False).index
    agg["label"] = pd.Categorical(agg["label"], categories=list(order), ordered=True)
    agg = agg.sort_values(["label", "snr"]).reset_index(drop=True)
    agg["label"] = agg["label"].astype(str)
    keys = dict(zip(agg["label"], agg["key"], strict=False))

    def ref(label, snr):
        return paper.TABLE1.get((keys.get(label), round(float(snr), 4))) if not pd.isna(snr) else None

    note = ('<p class="note">Mean(std) over seeds, eps = 0. Bold: the best mean and every mean within '
            "one of its own standard deviations of it. Grey rows: the paper's numbers for the same "
            "method and SNR (RNAP, 128 px, 25,000 pairs): a reference, not the same data. "
            "GAN rows at λ = 10 and the paper's two (α, β) pairs; other λ and pairs are in "
            "Tables 4 and 2.</p>")
    return note + metric_table(agg, "label", "snr", row_label="method / SNR", paper_ref=ref)


def table2(t: pd.DataFrame) -> str:
    gans = usable(t)
    gans = at_reference_lambda(gans[(gans["eps"] == 0) & (gans["config.method"].isin(["beta_gan", "js_gan"]))])
    if gans.empty or gans["key"].nunique() < 2:
        return missing("Needs finished (alpha, beta)-GAN trials with at least two (alpha, beta) pairs "
                       "at eps = 0 (search_spaces/paper-table2-alpha-beta.yaml).")
    agg = aggregate(gans, ["label", "key", "snr"]).sort_values(["label", "snr"]).reset_index(drop=True)
    keys = dict(zip(agg["label"], agg["key"], strict=False))

    def ref(label, snr):
        return paper.TABLE2.get((keys.get(label), round(float(snr), 4))) if not pd.isna(snr) else None

    return metric_table(agg, "label", "snr", row_label="(α, β) / SNR", paper_ref=ref)


def table4(t: pd.DataFrame) -> str:
    gans = usable(t)
    gans = gans[(gans["eps"] == 0) & gans["config.method"].isin(GAN_METHODS)]
    groups = gans.groupby("label_nolam")["lam"].nunique() if not gans.empty else pd.Series(dtype=int)
    groups = groups[groups >= 2]
    if groups.empty:
        return missing("Needs finished GAN trials of one method at two or more lambdas, eps = 0 "
                       "(search_spaces/paper-table4-lambda.yaml).")
    l1 = usable(t)
    l1 = l1[(l1["eps"] == 0) & (l1["config.method"] == "l1_ae")]
    out = []
    for label in groups.index:
        sub = gans[gans["label_nolam"] == label]
        agg = aggregate(sub, ["lam", "snr"]).sort_values(["lam", "snr"]).reset_index(drop=True)
        agg["lam_label"] = agg["lam"].map(lambda v: f"{v:g}")
        limit = l1[l1["snr"].isin(sub["snr"].dropna().unique()) | (l1["snr"].isna() & sub["snr"].isna().any())]
        if not limit.empty:  # the limit lambda -> infinity the paper compares to
            ae = aggregate(limit, ["snr"]).assign(lam=np.inf, lam_label="∞ (ℓ1-AE)")
            agg = pd.concat([agg, ae], ignore_index=True)
        key = sub["key"].iloc[0]

        def ref(lam_label, snr, key=key):
            if key != "beta_gan(0.5,0.5)+l1" or pd.isna(snr) or round(float(snr), 4) != 0.1:
                return None
            if lam_label.startswith("∞"):  # the paper's Table 1 l1-AE row
                return paper.TABLE1.get(("l1_ae", 0.1))
            return paper.TABLE4.get(float(lam_label))

        out.append(f"<h3>{esc(label)}</h3>" + metric_table(agg, "lam_label", "snr", row_label="λ / SNR", paper_ref=ref))
    return "\n".join(out)
