"""Report sections that are figures and findings: Fig. 5e-g (MSE against eps per type),
Fig. 2 (training stability), the gallery (Fig. 5a) and the robustness summary.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cryotune import vocab
from cryotune.report.charts import Series, line_chart, png_data_uri
from cryotune.report.html import esc, fmt, missing, table
from cryotune.report.tables import aggregate, at_reference_lambda, usable
from cryotune.study.tables import Study


def _robust_frame(t: pd.DataFrame) -> pd.DataFrame:
    """Finished learned-method trials with the eps = 0 rows repeated under every type.

    Only methods run under contamination at that SNR take part: the eps = 0 rows of the
    (alpha, beta) grid or the lambda ablation have no contaminated counterpart.
    """
    u = usable(t)
    if u.empty:
        return u
    u = at_reference_lambda(u[u["config.method"].isin(vocab.METHOD_NAMES)])
    contaminated = set(zip(u.loc[u["eps"] > 0, "snr"].fillna(-1.0), u.loc[u["eps"] > 0, "label"], strict=True))
    keep = [(s, lab) in contaminated for s, lab in zip(u["snr"].fillna(-1.0), u["label"], strict=True)]
    u = u[np.array(keep, dtype=bool)]  # a list would select columns when it is empty
    clean = u[u["eps"] == 0]
    parts = [u[u["eps"] > 0]] + [clean.assign(ctype=c) for c in vocab.CONTAMINATION_TYPES]
    return pd.concat(parts, ignore_index=True)


def fig5(t: pd.DataFrame) -> str:
    r = _robust_frame(t)
    if r.empty or r[r["eps"] > 0].empty or r["eps"].nunique() < 2:
        return missing("Needs finished trials at eps = 0 and at least one eps > 0 "
                       "(search_spaces/paper-fig5-robustness.yaml).")
    charts = []
    for snr, by_snr in r.groupby("snr", dropna=False):
        for ctype, meaning in vocab.CONTAMINATION_TYPES.items():
            title = f"type {ctype}: {meaning}"
            sub = by_snr[by_snr["ctype"] == ctype]
            if sub["eps"].nunique() < 2:
                continue
            agg = aggregate(sub, ["label", "eps"]).sort_values(["label", "eps"])
            series = [Series(label, g["eps"].tolist(), g["test_mse_mean"].tolist(),
                             g["test_mse_std"].fillna(0).tolist())
                      for label, g in agg.groupby("label", sort=True)]
            snr_txt = "" if pd.isna(snr) else f", SNR {snr:g}"
            charts.append(line_chart(series, "contamination rate ε", "test MSE", title=f"{title}{snr_txt}"))
    if not charts:
        return missing("No contamination type has trials at two or more eps values.")
    note = '<p class="note">Mean test MSE over seeds against ε, error bars one std; ε = 0 points are shared by the three types.</p>'
    return note + '<div class="figs">' + "".join(charts) + "</div>"


def fig2(study: Study, t: pd.DataFrame) -> str:
    hist = study.history
    if hist.empty or "test_mse" not in hist:
        return missing("No per-epoch history in the studies.")
    trials = t[(t["eps"] == 0) & t["config.method"].isin(vocab.METHOD_NAMES)]
    if trials.empty:
        return missing("No learned-method trials at eps = 0 with history.")
    pure = trials[trials["lam"] == 0]
    note = ""
    if pure.empty:
        note = ('<p class="missing">No pure GAN (λ = 0) trials: the paper\'s Fig. 2 compares JS-GAN with '
                "JS-GAN + ℓ1; add lambda: [0, 10] to a sweep to see it. Curves of the methods present:</p>")
    keep = trials[["study", "trial_id", "label", "snr"]]
    h = hist.merge(keep, on=["study", "trial_id"])
    charts = []
    for metric, name in (("train_mse", "train MSE"), ("test_mse", "test MSE")):
        if metric not in h:
            continue
        for snr, sub in h.groupby("snr", dropna=False):
            g = sub.groupby(["label", "epoch"])[metric].agg(["mean", "std"]).reset_index()
            series = [Series(label, d["epoch"].tolist(), d["mean"].tolist(), d["std"].fillna(0).tolist(),
                             dashed="(pure)" in label)
                      for label, d in g.groupby("label", sort=True)]
            snr_txt = "" if pd.isna(snr) else f", SNR {snr:g}"
            charts.append(line_chart(series, "epoch", name, title=f"{name} per epoch{snr_txt}", log_y=True))
    return note + '<div class="figs">' + "".join(charts) + "</div>"


def gallery(study: Study, t: pd.DataFrame, per_dataset: int = 4) -> str:
    u = usable(t)
    if u.empty:
        return missing("No finished trials with a dataset to show.")
    out = []
    for (s, key), trials in u[u["eps"] == 0].groupby(["study", "config.dataset"]):
        clean = study.dataset_array(s, str(key), "gallery_clean")
        noisy = study.dataset_array(s, str(key), "gallery_noisy")
        if clean is None or noisy is None:
            continue
        # one trial per method: the lowest seed's
        picks = trials.sort_values(["label", "config.seed"])
        picks = picks.drop_duplicates("label")
        images = {}
        for _, row in picks.iterrows():
            arr = study.array(s, row["trial_id"], "gallery")
            if arr is not None and len(arr) == len(clean):
                images[row["label"]] = arr
        n = min(per_dataset, len(clean))
        snr = trials["snr"].iloc[0]
        title = f"{s} / dataset {key}" + ("" if pd.isna(snr) else f" (SNR {snr:g})")
        figs = []
        for i in range(n):
            cells = [("clean", clean[i], 0.0, 1.0), ("noisy", noisy[i], None, None)]
            cells += [(label, arr[i], 0.0, 1.0) for label, arr in images.items()]
            figs.append("".join(
                f'<figure><img alt="{esc(name)}" src="{png_data_uri(np.squeeze(img), lo=lo, hi=hi)}">'
                f"<figcaption>{esc(name)}</figcaption></figure>" for name, img, lo, hi in cells))
        out.append(f"<h3>{esc(title)}</h3>" + "".join(f'<div class="gallery">{f}</div><br>' for f in figs))
    if not out:
        return missing("No gallery images stored in the studies.")
    return '<p class="note">The same test images, eps = 0: clean reference, noisy input (1st-99th percentile), and each method\'s output (data range [0, 1]).</p>' + "".join(out)


def robustness(t: pd.DataFrame) -> str:
    r = _robust_frame(t)
    if r.empty or r[r["eps"] > 0].empty:
        return missing("Needs finished trials at eps = 0 and eps > 0.")
    findings, rows = [], []
    agg = aggregate(r, ["snr", "ctype", "label", "key", "eps"])
    for (snr, ctype), sub in agg.groupby(["snr", "ctype"], dropna=False):
        top = sub["eps"].max()
        if top == 0:
            continue
        snr_txt = "" if pd.isna(snr) else f" at SNR {snr:g}"
        ratios = []
        for label, g in sub.groupby("label"):
            base = g[g["eps"] == 0]
            worst = g[g["eps"] == top]
            if base.empty or worst.empty:
                continue
            b, w = base.iloc[0], worst.iloc[0]
            ratio = w["test_mse_mean"] / b["test_mse_mean"]
            within = abs(w["test_mse_mean"] - b["test_mse_mean"]) <= (b["test_mse_std"] if not pd.isna(b["test_mse_std"]) else 0.0)
            ratios.append((label, ratio, within, b["test_mse_mean"], w["test_mse_mean"], g["key"].iloc[0]))
            rows.append([esc(f"{ctype}"), fmt(snr) if not pd.isna(snr) else "–", esc(label), fmt(top),
                         fmt(b["test_mse_mean"], "e"), fmt(w["test_mse_mean"], "e"), fmt(ratio, "f2"),
                         "yes" if within else "no"])
        if not ratios:
            continue
        ratios.sort(key=lambda x: x[1])
        best, worst = ratios[0], ratios[-1]
        findings.append(f"Type {ctype}{snr_txt}, ε = {top:g}: most robust {best[0]} (MSE ×{best[1]:.2f}), "
                        f"most degraded {worst[0]} (MSE ×{worst[1]:.2f}).")
        stable = [x[0] for x in ratios if x[2]]
        if stable:
            findings.append(f"Type {ctype}{snr_txt}: within one std of their clean score at ε = {top:g}: "
                            + ", ".join(stable) + ".")
        by_key = {x[5]: x for x in ratios}
        if "l1_ae" in by_key and "l2_ae" in by_key:
            l1, l2 = by_key["l1_ae"], by_key["l2_ae"]
            verdict = "beats" if l1[4] < l2[4] else "does not beat"
            findings.append(f"Type {ctype}{snr_txt}, ε = {top:g}: the ℓ1 autoencoder {verdict} the ℓ2 one "
                            f"(test MSE {l1[4]:.2e} vs {l2[4]:.2e}).")
    if not rows:
        return missing("No method has both eps = 0 and eps > 0 results of the same type.")
    body = "".join(f'<p class="finding">• {esc(f)}</p>' for f in findings)
    header = ["type", "SNR", "method", "largest ε", "MSE at ε = 0", "MSE at largest ε",
              "ratio", "within 1 std"]
    return body + table(header, rows, left=3)

