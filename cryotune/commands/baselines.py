"""Evaluate classical denoisers on a dataset's test split and add them to a study.

Each baseline runs as a Ray task and becomes one row of the study (``config.method`` set, no
history, the same metrics and gallery images as the sweep's trials), so the report shows them
in the same tables. ``nlm`` is scikit-image's non-local means, ``ksvd`` a K-SVD dictionary
denoiser, ``cwf`` a covariance Wiener filter (no CTF), ``bm3d`` the ``bm3d`` package (an optional
extra with a non-commercial licence: ``pip install 'cryotune[bm3d]'``).

Example usage:
    cryotune baselines data/rnap-32 --study studies/table1
    cryotune baselines data/rnap-32 --study studies/table1 --methods nlm,cwf --limit 200
    cryotune baselines data/rnap-32 --study studies/table1 --validate fsc,clustering
"""

from __future__ import annotations

import argparse


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", help="a dataset store (from `cryotune simulate` or `ingest`)")
    parser.add_argument("--study", required=True, help="the study folder or URI to add rows to")
    parser.add_argument("--methods", default="nlm,ksvd,cwf",
                        help="comma-separated baselines: nlm, ksvd, cwf, bm3d (default: nlm,ksvd,cwf)")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N test images")
    parser.add_argument("--gallery", type=int, default=8, help="test images kept for the gallery")
    parser.add_argument("--address", default=None, help="a Ray cluster address (default: embedded Ray)")
    parser.add_argument("--validate", default="",
                        help="also validate the denoised test split: fsc, clustering (comma-separated)")


def main(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from cryotune.runs.baselines import run_baselines  # torch and Ray: only when it runs

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    rows = run_baselines(args.dataset, args.study, methods=methods, gallery=args.gallery,
                         limit=args.limit, address=args.address,
                         validate=[v for v in args.validate.split(",") if v.strip()])
    table = Table("baseline", "status", "test MSE", "PSNR", "SSIM", "seconds")
    for r in rows:
        m = r.get("metrics", {})
        table.add_row(r["config"]["method"], r["status"],
                      f"{m['test_mse']:.3e}" if m else "-", f"{m['test_psnr']:.2f}" if m else "-",
                      f"{m['test_ssim']:.3f}" if m else "-", f"{r.get('wall_s', 0):.1f}")
    Console().print(table)
    return 1 if any(r["status"] == "error" for r in rows) else 0
