"""The robustness report: one self-contained HTML file from one or more studies.

The sections live in :mod:`~cryotune.report.tables` (the overview and Tables 1, 2, 4),
:mod:`~cryotune.report.figure_sections` (Fig. 5e-g, Fig. 2, the gallery, the findings) and
:mod:`~cryotune.report.validation_sections` (FSC, volumes, clustering), drawn with
:mod:`~cryotune.report.charts` (SVG charts, PNG images) and :mod:`~cryotune.report.html`.
Sections appear when the studies hold the data for them and say what is missing otherwise:
overview, Table 1 (methods x SNR), Table 2 (the (alpha, beta) grid), Table 4 (lambda),
Fig. 5e-g (test MSE against eps per contamination type), Fig. 2 (training stability), the
gallery (Fig. 5a), the downstream validation (FSC, volumes, clustering: Fig. 5b-d, 5h-j, 7a),
the paired comparisons and robust picks (:mod:`~cryotune.report.robust_sections`: each GAN
method against ℓ1-AE with CIs and n, the ranking by robustness goal on validation and its
Pareto front) and the robustness summary with findings computed from the data.

Example::

    import cryotune
    from cryotune.report import build_report
    build_report(cryotune.load_study("studies/smoke"), "report.html")
"""

from __future__ import annotations

import logging
import os
from datetime import datetime, timezone
from pathlib import Path

from cryotune import vocab
from cryotune._io import atomic_write
from cryotune.report import figure_sections as figs
from cryotune.report import robust_sections as robust
from cryotune.report import tables
from cryotune.report import validation_sections as val
from cryotune.report.html import page
from cryotune.study.tables import Study

log = logging.getLogger(__name__)

__all__ = ["build_report", "render"]


def render(study: Study, *, title: str | None = None) -> str:
    """The report as an HTML string."""
    t = tables.prepare(study)
    _warn_unknown_methods(t)
    names = sorted(set(t["study"])) if not t.empty else [os.path.basename(u.rstrip("/")) for u in study.uris]
    title = title or f"cryotune robustness report: {', '.join(names)}"
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    subtitle = f"{len(t)} trials from {len(study.uris)} stud{'y' if len(study.uris) == 1 else 'ies'}, built {stamp}"
    sections = [
        ("overview", "Overview", tables.overview(study, t)),
        ("table1", "Table 1: denoising without contamination", tables.table1(t)),
        ("table2", "Table 2: the (α, β) grid", tables.table2(t)),
        ("table4", "Table 4: the λ ablation", tables.table4(t)),
        ("fig5", "Fig. 5e-g: robustness to contamination", figs.fig5(t)),
        ("fig2", "Fig. 2: training stability", figs.fig2(study, t)),
        ("gallery", "Gallery (Fig. 5a)", figs.gallery(study, t)),
        ("fsc", "Fig. 5b-d: reconstruction and FSC", val.fsc_section(study, t)),
        ("volumes", "Fig. 5b-c: reconstructed volumes", val.volumes_section(study, t)),
        ("volumes-a", "Fig. 5h-j: volumes under type A contamination",
         val.contamination_section(study, t)),
        ("clustering", "Fig. 7a: conformation clustering", val.clustering_section(study, t)),
        ("compare", "Paired comparisons: GAN methods against ℓ1-AE", robust.comparisons(t)),
        ("selection", "Robust picks on validation and the Pareto front", robust.selection(t)),
        ("summary", "Robustness summary", figs.robustness(t)),
    ]
    return page(title, subtitle, sections)


def _warn_unknown_methods(t) -> None:
    """Trials of a method this version does not know (a newer cryotune's, or a hand-edited
    table) stay in the overview and are left out of every comparison: say so once."""
    if t.empty:
        return
    known = set(vocab.METHOD_NAMES) | set(vocab.BASELINE_LABELS)
    methods = t["config.method"].astype(object)
    unknown = sorted({str(m) for m in methods[methods.notna() & ~methods.isin(known)]})
    if unknown:
        n = int((methods.notna() & ~methods.isin(known)).sum())
        log.warning("report: %d trial%s of unknown method %s left out of the comparisons",
                    n, "" if n == 1 else "s", ", ".join(repr(m) for m in unknown))


def build_report(study: Study, out: str | Path, *, title: str | None = None) -> Path:
    """Write the report to ``out`` atomically and return its path."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, render(study, title=title))
    log.info("report written to %s (%.0f kB)", out, out.stat().st_size / 1024)
    return out
