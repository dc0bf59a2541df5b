"""Report sections of the downstream validation (``validate: [fsc, clustering]``,
``cryotune validate``, ``cryotune baselines --validate``): FSC curves with the 0.143 line and
the resolutions (Fig. 5b-d), views of the reconstructed volumes (Fig. 5b-c), the same under
type A contamination for the best robust method against l2_ae (Fig. 5h-j), and the Isomap
embeddings coloured by true conformation (Fig. 7a).

Each builder takes the study and the prepared trial frame (:func:`cryotune.report.tables.prepare`)
and returns HTML, or a note saying what the studies lack. The clean and noisy references are
the dataset's own test images, validated once per dataset
(:func:`cryotune.validate.record.record_references`).

Example::

    from cryotune.report import tables, validation_sections
    t = tables.prepare(study)
    html = validation_sections.fsc_section(study, t) + validation_sections.clustering_section(study, t)
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from cryotune import vocab
from cryotune.report.charts import PALETTE, Series, line_chart, png_data_uri
from cryotune.report.html import esc, fmt, missing, table
from cryotune.study.tables import Study, best_trial

__all__ = ["clustering_section", "contamination_section", "fsc_section", "scatter_chart",
           "volumes_section"]

_ASK = ("Add validate: [fsc, clustering] to the sweep spec, or run `cryotune validate STUDY` "
        "(and `cryotune baselines --validate fsc,clustering`).")
_VIEWS = ("slice z", "slice y", "slice x", "projection")


def _validated(t: pd.DataFrame, column: str) -> pd.DataFrame:
    if t.empty or column not in t:
        return t.iloc[0:0]
    return t[(t["status"] == "finished") & pd.to_numeric(t[column], errors="coerce").notna()]


def _references(study: Study) -> list[tuple[str, str, dict]]:
    """(study, dataset key, {"clean": columns, "noisy": columns}) of validated datasets."""
    return [(s, k, m["validation"]) for (s, k), m in sorted(study.datasets.items())
            if isinstance(m.get("validation"), dict)]


def _curve(study: Study, s: str, trial: str | None, key: str | None, prefix: str = ""):
    get = (lambda n: study.array(s, trial, n)) if trial else (
        lambda n: study.dataset_array(s, key, f"validate_{prefix}_{n}"))
    freq = get("fsc_freq")
    for kind in ("truth", "half"):
        curve = get(f"fsc_{kind}_curve")
        if freq is not None and curve is not None:
            return freq, curve, kind
    return None


def _best(group: pd.DataFrame) -> pd.Series:
    """The group's best trial, chosen on validation (:func:`cryotune.study.tables.best_trial`),
    else its first (a study recorded before validation selection)."""
    best = best_trial(group)
    return group.iloc[0] if best is None else best


def fsc_section(study: Study, t: pd.DataFrame) -> str:
    v = _validated(t, "fsc_res_0143_A")
    refs = _references(study)
    if v.empty and not any("fsc_res_0143_A" in r.get("clean", {}) for _, _, r in refs):
        needs = sorted({str(x) for x in t.get("validate_needs", pd.Series(dtype=object)).dropna()})
        if needs:
            return missing("The validation could not reconstruct: " + "; ".join(needs) + ".")
        return missing("No FSC in the studies. " + _ASK)
    v = v[v["eps"] == 0] if not v.empty else v
    charts, rows = [], []
    for s, key, ref in refs:
        series = []
        for i, name in enumerate(("clean", "noisy")):
            got = _curve(study, s, None, key, name)
            if got is not None:
                series.append(Series(name, got[0].tolist(), got[1].tolist(), dashed=True,
                                     color=("#333333", "#999999")[i]))
                rows.append(_row(name, ref[name], got[2]))
        sub = v[v["config.dataset"].astype(str) == key] if "config.dataset" in v else v
        for label, group in sub.groupby("label", sort=True):
            best = _best(group)
            got = _curve(study, best["study"], best["trial_id"], None)
            if got is not None:
                series.append(Series(str(label), got[0].tolist(), got[1].tolist()))
            rows.append(_row(label, group, "truth" if group["fsc_vs_truth"].max() == 1 else "half"))
        charts.append(line_chart(series, "spatial frequency (1/Å)", "FSC",
                                 title=f"FSC, dataset {key}", hline=(0.143, "0.143")))
    if not refs:  # trials validated without references (e.g. older studies)
        for label, group in v.groupby("label", sort=True):
            rows.append(_row(label, group, "truth" if group["fsc_vs_truth"].max() == 1 else "half"))
    head = ["images", "FSC from", "res. at 0.143 (Å)", "res. at 0.5 (Å)", "trials"]
    note = ('<p class="note">Per-conformation reconstructions of the test split from its known '
            "poses; the FSC is against the ground truth when the dataset knows it, else between "
            "half maps (image-weighted mean over conformations). Curves of the trial chosen on "
            "validation per method at ε = 0; resolutions are means over trials. A resolution at Nyquist "
            "means the curve never fell below the threshold.</p>")
    return (note + '<div class="figs">' + "".join(c for c in charts if c) + "</div>"
            + table(head, rows) + half_map_table(refs, v))


def _mean(group: pd.DataFrame, column: str) -> float | None:
    if column not in group:
        return None
    value = pd.to_numeric(group[column], errors="coerce").mean()
    return None if pd.isna(value) else float(value)


def _moved(value: float | None, raw: float | None) -> str:
    """How far a half-map resolution moved from the raw particles' (smaller is finer)."""
    if value is None or raw is None:
        return "–"
    delta = value - raw
    if abs(delta) < 0.05:
        return "unchanged"
    return f"{abs(delta):.1f} Å {'finer' if delta < 0 else 'coarser'}"


def half_map_table(refs: list[tuple[str, str, dict]], v: pd.DataFrame) -> str:
    """Datasets without ground truth (real particles): each image set's half-map resolution
    beside the raw particles', with the number of particles, and the FSC against the input map.

    Args:
        refs: ``(study, dataset key, {"clean": columns, "noisy": columns})`` per dataset.
        v: the validated trials (one row a trial, with ``label`` and ``config.dataset``).

    Returns:
        HTML (empty when every dataset knows its truth).
    """
    rows = []
    for _, key, ref in refs:
        noisy = ref.get("noisy") or {}
        if noisy.get("fsc_vs_truth") != 0 or noisy.get("fsc_half_res_0143_A") is None:
            continue
        raw = noisy["fsc_half_res_0143_A"]
        sets = [("raw particles", noisy, "reference"),
                ("clean references (map projections)", ref.get("clean") or {}, "reference")]
        for label, values, n in sets:
            rows.append([esc(key), esc(label), esc(_count(values.get("fsc_n_images"))),
                         fmt(values.get("fsc_half_res_0143_A"), "f1"),
                         esc(_moved(values.get("fsc_half_res_0143_A"), raw)
                             if label != "raw particles" else "–"),
                         fmt(values.get("fsc_map_res_0143_A"), "f1"),
                         fmt(values.get("fsc_map_res_05_A"), "f1"), esc(n)])
        sub = v[v["config.dataset"].astype(str) == key] if "config.dataset" in v else v
        for label, group in sub.groupby("label", sort=True):
            half = _mean(group, "fsc_half_res_0143_A")
            rows.append([esc(key), esc(f"denoised: {label}"),
                         esc(_count(_mean(group, "fsc_n_images"))), fmt(half, "f1"),
                         esc(_moved(half, raw)), fmt(_mean(group, "fsc_map_res_0143_A"), "f1"),
                         fmt(_mean(group, "fsc_map_res_05_A"), "f1"), esc(len(group))])
    if not rows:
        return ""
    head = ["dataset", "images", "particles", "half-map res. at 0.143 (Å)", "vs raw particles",
            "vs input map at 0.143 (Å, biased)", "vs input map at 0.5 (Å, biased)", "trials"]
    note = ('<h3>Half-map FSC without ground truth</h3><p class="note">The test particles '
            "reconstructed at their refined poses (with their CTF), split into two random halves "
            "by a fixed seed; the resolution where the two half maps' FSC falls below 0.143, for "
            "the raw (noisy) particles and for each method's denoised particles (mean over "
            "trials at ε = 0). \"vs raw particles\" says whether denoising moved it. The FSC of "
            "the full reconstruction against the input map is biased toward that map: the "
            "poses were refined against it and the training references are its projections, "
            "so it is no resolution estimate.</p>")
    return note + table(head, rows, left=2)


def _count(value) -> str:
    return "–" if value is None or pd.isna(value) else f"{int(round(float(value))):,}"


def _row(label, values, source: str) -> list[str]:
    if isinstance(values, pd.DataFrame):
        r1 = pd.to_numeric(values["fsc_res_0143_A"], errors="coerce").mean()
        r5 = pd.to_numeric(values["fsc_res_05_A"], errors="coerce").mean()
        n = str(len(values))
    else:
        r1, r5, n = values.get("fsc_res_0143_A"), values.get("fsc_res_05_A"), "reference"
    return [esc(label), esc("truth" if source == "truth" else "half maps"), fmt(r1, "f1"),
            fmt(r5, "f1"), esc(n)]


def _views(study: Study, s: str, trial: str | None, key: str | None, prefix: str = ""):
    if trial:
        return study.array(s, trial, "volume_views")
    return study.dataset_array(s, key, f"validate_{prefix}_volume_views")


def _volume_grid(items: list[tuple[str, np.ndarray]]) -> str:
    figures = []
    for label, views in items:
        lo, hi = float(np.percentile(views[:3], 1)), float(np.percentile(views[:3], 99.5))
        for name, image in zip(_VIEWS, views, strict=False):
            uri = png_data_uri(image, lo=lo, hi=hi) if name != "projection" else png_data_uri(image)
            figures.append(f'<figure><img src="{uri}" alt="{esc(label)} {name}">'
                           f"<figcaption>{esc(label)}: {name}</figcaption></figure>")
    return '<div class="gallery">' + "".join(figures) + "</div>"


def volumes_section(study: Study, t: pd.DataFrame) -> str:
    v = _validated(t, "fsc_res_0143_A")
    v = v[v["eps"] == 0] if not v.empty else v
    items = []
    for s, key, _ in _references(study):
        for name in ("clean", "noisy"):
            views = _views(study, s, None, key, name)
            if views is not None:
                items.append((f"{name} ({key})", views))
    for label, group in v.groupby("label", sort=True):
        best = _best(group)
        views = _views(study, best["study"], best["trial_id"], None)
        if views is not None:
            items.append((str(label), views))
    if not items:
        return missing("No reconstructed volumes in the studies. " + _ASK)
    note = ('<p class="note">Central slices (z, y, x) and the projection along z of the volume '
            "reconstructed from each method's denoised test images (the most populated "
            "conformation); slices share one grey scale per row.</p>")
    return note + _volume_grid(items)


def contamination_section(study: Study, t: pd.DataFrame) -> str:
    v = _validated(t, "fsc_res_0143_A")
    if not v.empty:
        v = v[(v["ctype"] == "A") & (v["eps"] > 0)]
    if v.empty:
        return missing("No validated trials under type A contamination (eps > 0). " + _ASK)
    eps = float(v["eps"].max())
    v = v[v["eps"] == eps]
    robust = v[v["config.method"].isin(vocab.ADVERSARIAL)]
    picks = []
    if not robust.empty:
        picks.append(("best robust", _best(robust)))
    l2 = v[v["config.method"] == "l2_ae"]
    if not l2.empty:
        picks.append(("ℓ2-AE", _best(l2)))
    if not picks:
        return missing(f"No GAN or l2_ae trial validated at type A, eps = {eps:g}.")
    items, rows = [], []
    for role, row in picks:
        views = _views(study, row["study"], row["trial_id"], None)
        if views is not None:
            items.append((f"{row['label']} (ε = {eps:g})", views))
        rows.append([esc(role), esc(row["label"]), fmt(row.get("test_mse"), "e"),
                     fmt(row.get("fsc_res_0143_A"), "f1"), fmt(row.get("fsc_res_05_A"), "f1")])
    if len(picks) == 1:
        rows.append([esc("missing"), esc("no " + ("l2_ae" if picks[0][0] != "ℓ2-AE" else "GAN")
                                         + " trial at this ε"), "–", "–", "–"])
    head = ["role", "method", "test MSE", "res. at 0.143 (Å)", "res. at 0.5 (Å)"]
    return table(head, rows) + (_volume_grid(items) if items else "")


def scatter_chart(points: np.ndarray, labels: np.ndarray, *, title: str = "",
                  size: int = 220) -> str:
    """An SVG scatter of 2D ``points`` coloured by integer ``labels``; strings are escaped."""
    points = np.asarray(points, dtype=np.float64)
    ok = np.isfinite(points).all(axis=1)
    points, labels = points[ok], np.asarray(labels)[ok]
    if len(points) == 0:
        return ""
    lo, hi = points.min(axis=0), points.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    m, top = 10, 22 if title else 8
    legend = sorted(set(labels.tolist()))
    h = size + top + 16 * len(legend)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{size}" height="{h}" '
           f'viewBox="0 0 {size} {h}" role="img">']
    if title:
        out.append(f'<text x="{m}" y="15" font-weight="600">{esc(title)}</text>')
    out.append(f'<rect x="{m}" y="{top}" width="{size - 2 * m}" height="{size - 2 * m}" '
               'fill="none" stroke="#99a"/>')
    colors = {c: PALETTE[i % len(PALETTE)] for i, c in enumerate(legend)}
    inner = size - 4 * m
    for (x, y), c in zip(points, labels, strict=True):
        px = 2 * m + (x - lo[0]) / span[0] * inner
        py = top + m + (1 - (y - lo[1]) / span[1]) * inner
        out.append(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="2.8" fill="{colors[c]}" '
                   'fill-opacity="0.75"/>')
    for i, c in enumerate(legend):
        ly = size + top - 2 + 16 * i
        out.append(f'<circle cx="{m + 5}" cy="{ly}" r="4" fill="{colors[c]}"/>')
        out.append(f'<text x="{m + 14}" y="{ly + 4}">{esc(f"conformation {c}")}</text>')
    out.append("</svg>")
    return "".join(out)


def clustering_section(study: Study, t: pd.DataFrame) -> str:
    v = _validated(t, "cluster_acc")
    v = v[v["eps"] == 0] if not v.empty else v
    charts, rows = [], []
    for s, key, ref in _references(study):
        for name in ("clean", "noisy"):
            emb = study.dataset_array(s, key, f"validate_{name}_cluster_embedding")
            lab = study.dataset_array(s, key, f"validate_{name}_cluster_labels")
            acc = ref.get(name, {}).get("cluster_acc")
            if emb is not None and lab is not None and acc is not None:
                charts.append(scatter_chart(emb, lab, title=f"{name}: {_acc(acc, len(lab))}"))
                rows.append([esc(name), fmt(acc, "f3"),
                             fmt(ref[name].get("cluster_acc_all"), "f3"), "reference"])
    for label, group in v.groupby("label", sort=True):
        best = _best(group)
        emb = study.array(best["study"], best["trial_id"], "cluster_embedding")
        lab = study.array(best["study"], best["trial_id"], "cluster_labels")
        if emb is not None and lab is not None:
            charts.append(scatter_chart(emb, lab, title=f"{label}: "
                                        f"{_acc(best['cluster_acc'], len(lab))}"))
        every = group["cluster_acc_all"] if "cluster_acc_all" in group else pd.Series(dtype=float)
        rows.append([esc(label), fmt(group["cluster_acc"].mean(), "f3"),
                     fmt(pd.to_numeric(every, errors="coerce").mean(), "f3"), esc(len(group))])
    if not rows:
        return missing("No conformation clustering in the studies (it needs a dataset with "
                       "conformation labels). " + _ASK)
    note = ('<p class="note">Isomap embedding and k-means (k = 2) of the first and last '
            "conformation's test images; accuracy under the best label matching. With uniform "
            "random views the view dominates the pixels, so the clustering uses the images "
            "viewed within a cone around the densest direction, turned in-plane by their known "
            "poses; the last column is the accuracy over every view. Scatter of the trial "
            "chosen on validation per method at ε = 0.</p>")
    head = ["images", "accuracy (view cone)", "accuracy (all views)", "trials"]
    return note + '<div class="figs">' + "".join(charts) + "</div>" + table(head, rows)


def _acc(acc: float, n: int) -> str:
    if acc is None or not math.isfinite(float(acc)):
        return "–"
    return f"{round(float(acc) * n)}/{n} = {float(acc):.2f}"
