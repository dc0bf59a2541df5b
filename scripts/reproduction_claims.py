"""The numbers behind each claim of reports/reproduction/REPRODUCTION.md, from the studies.

Prints markdown: Table 1 (eps = 0, both SNRs, baselines included), the degradation under each
contamination type at the largest eps, the (alpha, beta) spread of Table 2 and the lambda
column of Table 4. Means and sample standard deviations over seeds of the final-epoch test MSE.

Example usage:
    .venv/bin/python scripts/reproduction_claims.py repro-out/studies/paper-*
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

import cryotune
from cryotune.report.tables import aggregate, at_reference_lambda, prepare, table1_methods, usable


def _md(frame: pd.DataFrame) -> str:
    cols = list(frame.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, row in frame.iterrows():
        cells = []
        for c in cols:
            v = row[c]
            if isinstance(v, float):
                cells.append("–" if np.isnan(v) else (f"{v:.3g}" if abs(v) >= 0.01 else f"{v:.2e}"))
            else:
                cells.append(str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table1(t: pd.DataFrame) -> str:
    clean = table1_methods(t[t["eps"] == 0])
    agg = aggregate(clean, ["label", "snr"])
    wide = agg.pivot_table(index="label", columns="snr",
                           values=["test_mse_mean", "test_mse_std", "test_mse_count", "test_ssim_mean"])
    rows = []
    for label, r in wide.iterrows():
        row = {"method": label}
        for snr in sorted(agg["snr"].dropna().unique(), reverse=True):
            row[f"MSE SNR {snr:g}"] = r.get(("test_mse_mean", snr), np.nan)
            row[f"std {snr:g}"] = r.get(("test_mse_std", snr), np.nan)
            n = r.get(("test_mse_count", snr), np.nan)
            row[f"n {snr:g}"] = 0 if pd.isna(n) else int(n)
            row[f"SSIM {snr:g}"] = r.get(("test_ssim_mean", snr), np.nan)
        rows.append(row)
    out = pd.DataFrame(rows)
    first = [c for c in out.columns if c.startswith("MSE")][0]
    return _md(out.sort_values(first))


def degradation(t: pd.DataFrame) -> str:
    learned = at_reference_lambda(t[t["config.method"].isin(
        ["l2_ae", "l1_ae", "js_gan", "wgan_gp", "beta_gan"])])
    dirty = learned[learned["eps"] > 0]
    if dirty.empty:
        return "(no contaminated trials)"
    rows = []
    for (snr, label), g in learned.groupby(["snr", "label"]):
        base = g[g["eps"] == 0]["test_mse"]
        for (ctype, eps), d in g[g["eps"] > 0].groupby(["ctype", "eps"]):
            m = d["test_mse"]
            rows.append({"SNR": snr, "type": ctype, "eps": eps, "method": label,
                         "MSE eps 0": base.mean(), "std eps 0": base.std(),
                         "MSE": m.mean(), "std": m.std(), "n": len(m),
                         "ratio": m.mean() / base.mean()})
    out = pd.DataFrame(rows).sort_values(["SNR", "type", "ratio"])
    return _md(out)


def table2(t: pd.DataFrame) -> str:
    gans = at_reference_lambda(t[(t["eps"] == 0) & t["config.method"].isin(["beta_gan", "js_gan"])])
    agg = aggregate(gans, ["label", "snr"]).sort_values(["snr", "test_mse_mean"])
    lines = [_md(agg[["label", "snr", "test_mse_mean", "test_mse_std", "test_mse_count"]])]
    for snr, g in agg.groupby("snr"):
        spread = g["test_mse_mean"].max() - g["test_mse_mean"].min()
        lines.append(f"\nSNR {snr:g}: {len(g)} pairs, mean MSE from {g['test_mse_mean'].min():.3e} to "
                     f"{g['test_mse_mean'].max():.3e} (spread {spread:.2e}, "
                     f"{100 * spread / g['test_mse_mean'].median():.0f}% of the median)")
    return "\n".join(lines)


def table4(t: pd.DataFrame) -> str:
    gans = t[(t["eps"] == 0) & (t["key"] == "beta_gan(0.5,0.5)+l1") & (t["snr"] == 0.1)]
    agg = aggregate(gans, ["lam"]).sort_values("lam")
    l1 = t[(t["eps"] == 0) & (t["config.method"] == "l1_ae") & (t["snr"] == 0.1)]["test_mse"]
    out = _md(agg[["lam", "test_mse_mean", "test_mse_std", "test_mse_count"]])
    return out + f"\n\nℓ1-AE (λ → ∞): {l1.mean():.3e} ({l1.std():.1e}), n = {len(l1)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("studies", nargs="+")
    args = parser.parse_args()
    t = usable(prepare(cryotune.load_study(*args.studies)))
    for title, body in (("Table 1 (eps = 0)", table1(t)), ("Contamination", degradation(t)),
                        ("Table 2 (alpha, beta)", table2(t)), ("Table 4 (lambda)", table4(t))):
        print(f"\n### {title}\n\n{body}")


if __name__ == "__main__":
    main()
