"""The numbers behind each claim of reports/reproduction/REPRODUCTION.md, from the studies.

Prints markdown, one section a claim of the paper. Every figure is the test MSE at the epoch
chosen on the validation split (``test_mse_at_best``; the selection never sees the test split);
classical baselines have no epochs and give their test MSE. Tables give mean (sample std) over
seeds with n finished of n run; a diverged or errored trial is counted there and left out of
the means and pairs. Each comparison is paired on (dataset, contamination, eps, seed) by
:meth:`cryotune.Study.compare`: the geometric-mean ratio b / a with its 95% CI (Student t
below 10 pairs, a bootstrap from 10) and the Wilcoxon p (from 6 pairs). A degradation ratio
pairs a method's contaminated trial with its own clean trial of the same seed
(:func:`cryotune.study.compare.paired_stats`).

Example usage:
    .venv/bin/python scripts/reproduction_claims.py reports/reproduction/studies/*
"""

from __future__ import annotations

import argparse
import math
from types import SimpleNamespace

import numpy as np
import pandas as pd

import cryotune
from cryotune.errors import BadInput
from cryotune.expr import column_resolver, mask
from cryotune.study.compare import fold_label, paired_stats, prepare_cells

METRIC = "test_mse_at_best"
L2, L1 = "method == 'l2_ae'", "method == 'l1_ae'"
JS, WGAN = "method == 'js_gan'", "method == 'wgan_gp'"


def ab(alpha: float, beta: float, lam: float = 10) -> str:
    return f"method == 'beta_gan' and alpha == {alpha} and beta == {beta} and lambda == {lam}"


LEARNED = {"l2-AE": L2, "l1-AE": L1, "JS-GAN + l1": JS, "WGAN-GP + l1": WGAN,
           "(1,1)-GAN + l1": ab(1, 1), "(.5,.5)-GAN + l1": ab(0.5, 0.5)}
GANS = ["(.5,.5)-GAN + l1", "(1,1)-GAN + l1", "JS-GAN + l1", "WGAN-GP + l1"]
TABLE2 = [(1, 1), (0.5, 0.5), (-0.5, -0.5), (-1, -1), (1, -1), (0.5, -0.5), (0, 0), (0.1, -0.1)]
BASELINES = {"bm3d": "BM3D", "ksvd": "K-SVD", "nlm": "NLM", "cwf": "CWF (no CTF)"}


def fmt(v: float) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.3g}" if abs(v) >= 0.01 else f"{v:.2e}"


def ratio_text(s) -> str:
    if s.n == 0 or math.isnan(s.ratio):
        return "–"
    if math.isnan(s.ratio_low):
        return f"{s.ratio:.3f}"
    return f"{s.ratio:.3f} ({s.ratio_low:.3f}-{s.ratio_high:.3f})"


def p_text(p) -> str:
    return "–" if p is None or (isinstance(p, float) and math.isnan(p)) else f"{p:.2g}"


def md(rows: list[dict]) -> str:
    if not rows:
        return "(no trials yet)"
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


class Claims:
    def __init__(self, study: cryotune.Study):
        self.study = study
        self.t = prepare_cells(study.trials)
        self.t["value"] = pd.to_numeric(self.t.get(METRIC), errors="coerce")
        plain = pd.to_numeric(self.t.get("test_mse"), errors="coerce")
        baseline = self.t["config.method"].isin(list(BASELINES))
        self.t.loc[baseline, "value"] = plain[baseline]  # no epochs to choose from
        self.snr = (self.t.dropna(subset=["config.snr"]).groupby("dataset")["config.snr"].first()
                    .to_dict())
        self.ok = (self.t["status"] == "finished") & np.isfinite(self.t["value"])

    def pick(self, expr: str) -> pd.Series:
        return mask(self.t, fold_label(expr), resolve=column_resolver(self.t.columns)).astype(bool)

    def cell(self, expr: str, where: pd.Series) -> str:
        """mean (std) over finished seeds, n finished / n run."""
        rows = self.t[self.pick(expr) & where]
        if rows.empty:
            return "–"
        good = rows.loc[self.ok[rows.index], "value"]
        bad = rows.loc[~self.ok[rows.index], "status"].value_counts()
        tail = "" if bad.empty else ", " + ", ".join(f"{n} {s}" for s, n in bad.items())
        std = fmt(good.std()) if len(good) > 1 else "–"
        return f"{fmt(good.mean())} ({std}) n={len(good)}/{len(rows)}{tail}"

    def compare(self, a: str, b: str, where: str | None = None, by=None, pool=None):
        try:
            return self.study.compare(a=a, b=b, where=where, by=by, pool=pool, metric=METRIC)
        except BadInput:
            return None

    def pair_rows(self, label_b: str, label_a: str, c, group: str) -> list[dict]:
        if c is None:
            return [{"b vs a": f"{label_b} vs {label_a}", "where": "(not run)", "n": 0,
                     "ratio b/a (95% CI)": "–", "p": "–", "left out": ""}]
        out = []
        frame = c.cells if group != "pooled" else c.pooled
        for _, r in frame.iterrows():
            where = ("pooled" if group == "pooled" else
                     ", ".join(self.name(k, r[k]) for k in frame.columns
                               if k in ("dataset", "contamination", "eps")))
            s = _stats(r)
            out.append({"b vs a": f"{label_b} vs {label_a}", "where": where, "n": int(r["n"]),
                        "ratio b/a (95% CI)": ratio_text(s), "p": p_text(r["p"]),
                        "left out": "; ".join(c.exclusions()) or ""})
        return out

    def name(self, key: str, value) -> str:
        if key == "dataset":
            return f"SNR {self.snr.get(value, '?'):g}"
        if key == "eps":
            return f"eps {value:g}"
        return f"type {value}"

    def compute(self) -> str:
        """Per study: trials by status, trial-hours and the wall-clock span of its trials."""
        rows = []
        for name, g in self.t.groupby("study", sort=False):
            learned = g[g["trial_id"].astype(str).str.startswith("trial_")]
            if learned.empty:
                continue
            start = pd.to_datetime(pd.to_numeric(learned["started_at"]), unit="s", utc=True)
            end = pd.to_datetime(pd.to_numeric(learned["ended_at"]), unit="s", utc=True)
            statuses = learned["status"].value_counts()
            rows.append({"study": name, "trials": len(learned),
                         "by status": ", ".join(f"{n} {s}" for s, n in statuses.items()),
                         "trial-hours": f"{pd.to_numeric(learned['wall_s']).sum() / 3600:.2f}",
                         "median trial (s)": f"{pd.to_numeric(learned['wall_s']).median():.0f}",
                         "wall span": f"{start.min():%Y-%m-%d %H:%M}-{end.max():%H:%M} UTC"})
        return md(rows)

    # -- the claims ----------------------------------------------------------------------------
    def table1(self) -> str:
        clean = self.t["eps"] == 0
        snrs = sorted({v for v in self.snr.values()}, reverse=True)
        rows = []
        for label, expr in {**LEARNED, **{v: f"method == '{k}'" for k, v in BASELINES.items()}}.items():
            row = {"method": label}
            for snr in snrs:
                row[f"SNR {snr:g}"] = self.cell(expr, clean & (self.t["config.snr"] == snr))
            rows.append(row)
        pairs = []
        for gan in GANS:
            for ae in ("l1-AE", "l2-AE"):
                c = self.compare(LEARNED[ae], LEARNED[gan], where="eps == 0", by=["dataset"],
                                 pool=["dataset"])
                pairs += self.pair_rows(gan, ae, c, "cell")
                if c is not None:
                    pairs += self.pair_rows(gan, ae, c, "pooled")
        return md(rows) + "\n\nPaired, eps 0 (b / a < 1: b is better):\n\n" + md(pairs)

    def ratios(self, label: str, ctype: str) -> pd.Series:
        """A method's finished MSE at each eps > 0 of ``ctype`` over its own clean MSE of the
        same dataset and seed, indexed by (dataset, seed, eps)."""
        mine = self.pick(LEARNED[label]) & self.ok
        base = self.t[mine & (self.t["eps"] == 0)].set_index(["dataset", "seed"])["value"]
        dirty = self.t[mine & (self.t["contamination"] == ctype) & (self.t["eps"] > 0)]
        dirty = dirty.set_index(["dataset", "seed", "eps"])["value"]
        keys = dirty.index.droplevel("eps")
        held = keys.isin(base.index)
        return dirty[held] / base.loc[keys[held]].to_numpy()

    def degradation(self, types=("A", "B", "C")) -> str:
        """Each method's MSE at eps over its own eps-0 MSE, paired by seed."""
        rows = []
        levels = sorted(self.t.loc[self.t["eps"] > 0, "eps"].unique())
        for label, expr in LEARNED.items():
            for ctype in types:
                r = self.ratios(label, ctype)
                row = {"method": label, "type": ctype}
                for eps in levels:
                    at = r[r.index.get_level_values("eps") == eps].to_numpy()
                    run = self.pick(expr) & (self.t["contamination"] == ctype) & (self.t["eps"] == eps)
                    failed = int((run & ~self.ok).sum())
                    s = paired_stats(np.ones(len(at)), at)  # the CI of log(ratio), as paired
                    text = ratio_text(s) + f" n={s.n}" if len(at) else "–"
                    row[f"eps {eps:g}"] = text + (f", {failed} failed" if failed else "")
                rows.append(row)
        return md([r for r in rows if any(v != "–" for k, v in r.items() if k.startswith("eps"))])

    def robust_pairs(self, methods, against) -> str:
        rows = []
        for m in methods:
            for a in against:
                c = self.compare(LEARNED[a], LEARNED[m], where="eps > 0", by=["contamination"],
                                 pool=["eps", "contamination"])
                rows += self.pair_rows(m, a, c, "cell")
        return md(rows)

    def degradation_between(self, worse: str, others, ctype: str) -> str:
        """Ratio of two methods' degradation ratios under ``ctype``, paired by (eps, seed)
        over every eps > 0; each seed's clean trial is the base of its three eps values."""
        rows = []
        w = self.ratios(worse, ctype)
        for other in others:
            o = self.ratios(other, ctype)
            both = w.index.intersection(o.index)
            s = paired_stats(o[both].to_numpy(), w[both].to_numpy())
            rows.append({"b vs a": f"{worse} vs {other}", "where": f"type {ctype}, eps 0.1-0.3",
                         "n": s.n, "degradation ratio b/a (95% CI)": ratio_text(s),
                         "p": p_text(s.p)})
        return md(rows)

    def table2(self) -> str:
        clean = self.t["eps"] == 0
        snrs = sorted({v for v in self.snr.values()}, reverse=True)
        rows, pairs = [], []
        for a, b in TABLE2:
            expr = JS if (a, b) == (0, 0) else ab(a, b)
            row = {"(alpha, beta)": f"({a:g}, {b:g})"}
            for snr in snrs:
                row[f"SNR {snr:g}"] = self.cell(expr, clean & (self.t["config.snr"] == snr))
            rows.append(row)
            if (a, b) != (0.5, 0.5):
                c = self.compare(ab(0.5, 0.5), expr, where="eps == 0", pool=["dataset"])
                pairs += self.pair_rows(f"({a:g}, {b:g})", "(.5, .5)", c, "pooled")
        return (md(rows) + "\n\nEach pair against (.5, .5), paired over both SNRs:\n\n"
                + md(pairs))

    def table4(self) -> str:
        sel = (self.t["eps"] == 0) & (self.t["config.snr"] == 0.1)
        gan = self.t[self.pick("method == 'beta_gan' and alpha == 0.5 and beta == 0.5") & sel]
        lams = sorted(pd.to_numeric(gan["config.lambda"]).dropna().unique())
        rows, pairs = [], []
        snr01 = [k for k, v in self.snr.items() if v == 0.1]
        where = f"eps == 0 and dataset in {snr01!r}"
        for lam in lams:
            rows.append({"lambda": f"{lam:g}", "SNR 0.1": self.cell(ab(0.5, 0.5, lam), sel)})
            if lam != 10:
                c = self.compare(ab(0.5, 0.5, 10), ab(0.5, 0.5, lam), where=where)
                pairs += self.pair_rows(f"lambda {lam:g}", "lambda 10", c, "pooled")
        rows.append({"lambda": "l1-AE (lambda -> inf)", "SNR 0.1": self.cell(L1, sel)})
        for lam in (10, lams[-1] if lams else None):
            if lam is not None:
                c = self.compare(L1, ab(0.5, 0.5, lam), where=where)
                pairs += self.pair_rows(f"lambda {lam:g}", "l1-AE", c, "pooled")
        return md(rows) + "\n\nPaired (SNR 0.1, eps 0):\n\n" + md(pairs)

    def baselines(self) -> str:
        """Each baseline's MSE over each learned method's, per seed (a baseline has no seed)."""
        rows = []
        clean = self.ok & (self.t["eps"] == 0)
        for dataset, snr in sorted(self.snr.items(), key=lambda kv: -kv[1]):
            here = clean & (self.t["dataset"] == dataset)
            for key, name in BASELINES.items():
                base = self.t.loc[here & (self.t["config.method"] == key), "value"]
                if base.empty:
                    continue
                for label in ("l2-AE", "l1-AE", "(.5,.5)-GAN + l1"):
                    learned = self.t.loc[here & self.pick(LEARNED[label]), "value"].to_numpy()
                    s = paired_stats(learned, np.full(len(learned), float(base.iloc[0])))
                    rows.append({"SNR": f"{snr:g}", "baseline": name, "vs": label,
                                 "n seeds": s.n, "MSE ratio (95% CI)": ratio_text(s)})
        return md(rows)


def _stats(r: pd.Series) -> SimpleNamespace:
    return SimpleNamespace(**{k: float(r[k]) for k in ("n", "ratio", "ratio_low", "ratio_high")})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("studies", nargs="+")
    args = parser.parse_args()
    c = Claims(cryotune.load_study(*args.studies))
    sections = [
        ("Compute", c.compute()),
        ("Claim 1, Table 1 (eps = 0): mean (std) n=finished/run", c.table1()),
        ("Claims 2-4: MSE at eps over the same method's eps-0 MSE, paired by seed", c.degradation()),
        ("Claim 2: l1-AE against l2-AE under contamination", c.robust_pairs(["l1-AE"], ["l2-AE"])),
        *[(f"Claim 3: the {m}'s degradation against the others' (type {ctype})",
           c.degradation_between(m, [o for o in LEARNED if o != m], ctype))
          for m in ("l2-AE", "WGAN-GP + l1") for ctype in "ABC"],
        ("Claim 4: the two (alpha, beta)-GANs against the autoencoders under contamination",
         c.robust_pairs(["(.5,.5)-GAN + l1", "(1,1)-GAN + l1"], ["l1-AE", "l2-AE"])),
        ("Claim 5, Table 2 (eps = 0)", c.table2()),
        ("Claim 6, Table 4", c.table4()),
        ("Claim 7: classical baselines over learned methods", c.baselines()),
    ]
    for title, body in sections:
        print(f"\n### {title}\n\n{body}")


if __name__ == "__main__":
    main()
