"""The robustness report: one self-contained HTML file from one or more studies.

Sections appear when the studies hold the data for them and say what is missing otherwise:
overview, Table 1 (methods x SNR), Table 2 (the (alpha, beta) grid), Table 4 (lambda),
Fig. 5e-g (test MSE against eps per contamination type), Fig. 2 (training stability), the
gallery (Fig. 5a), the downstream validation (FSC, volumes, clustering: Fig. 5b-d, 5h-j, 7a)
and the robustness summary with findings computed from the data.

Example::

    import cryotune
    from cryotune.report import build_report
    build_report(cryotune.load_study("studies/smoke"), "report.html")
"""

from __future__ import annotations

import logging
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from cryotune.report import figures_sections as figs
from cryotune.report import tables
from cryotune.report import validation as val
from cryotune.report.html import page
from cryotune.results import Study

log = logging.getLogger(__name__)

__all__ = ["build_report", "render"]


def render(study: Study, *, title: str | None = None) -> str:
    """The report as an HTML string."""
    t = tables.prepare(study)
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
        ("summary", "Robustness summary", figs.robustness(t)),
    ]
    return page(title, subtitle, sections)


def build_report(study: Study, out: str | Path, *, title: str | None = None) -> Path:
    """Write the report to ``out`` atomically and return its path."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = render(study, title=title)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # a report is for sharing: not mkstemp's 0600
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    log.info("report written to %s (%.0f kB)", out, out.stat().st_size / 1024)
    return out
