"""Render a self-contained HTML robustness report from one or more studies.

The file opens from disk with no network: inline CSS, inline SVG figures and PNG data URIs.
It reproduces the paper's comparisons where the studies hold the data (Tables 1, 2 and 4,
Fig. 5e-g, Fig. 2, the gallery) and says what is missing otherwise.

Example usage:
    cryotune report studies/smoke -o smoke.html
    cryotune report studies/table1 studies/fig5 s3://bucket/studies/baselines -o report.html
"""

from __future__ import annotations

import argparse

from cryotune.report import build_report
from cryotune.study.tables import load_study


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("studies", nargs="+", metavar="STUDY", help="study folders or URIs")
    parser.add_argument("-o", "--output", default="report.html", help="the HTML file to write")
    parser.add_argument("--title", default=None, help="the report's title")


def main(args: argparse.Namespace) -> int:
    study = load_study(*args.studies)
    path = build_report(study, args.output, title=args.title)
    print(f"report: {path.resolve()}")
    return 0
