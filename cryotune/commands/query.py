"""Filter and summarise the trials of one or more studies (no Ray needed).

Without ``--by`` it lists the trials (id, status, the config values that differ, metrics);
with ``--by`` it aggregates the metrics per group. Config keys may be named without their
``config.`` prefix, in ``--where``, ``--by`` and ``--metrics`` alike; ``--by label`` groups by
the paper's method names (``(0.5,0.5)-GAN + ℓ1``, ``WGAN-GP + ℓ1``...). Several studies are
merged.

Example usage:
    cryotune query studies/smoke
    cryotune query studies/fig5 --where "method == 'l2_ae' and eps > 0" --by method,eps
    cryotune query studies/fig5 --by label,contamination,eps --metrics test_mse,test_psnr --agg mean,std,count
    cryotune query studies/fig5 --by method,eps --format csv --out fig5.csv
    cryotune query studies/table1 s3://lab/studies/table1-gpu --format parquet --out table1.parquet
"""

from __future__ import annotations

import argparse
import sys

from cryotune.errors import BadInput

FORMATS = ("table", "csv", "json", "parquet")
DEFAULT_METRICS = "test_mse,test_psnr,test_ssim"


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("studies", nargs="+", metavar="STUDY", help="study folders or URIs")
    parser.add_argument("--where", default=None,
                        help="a pandas query on the trials, e.g. \"method == 'l2_ae' and eps > 0\"")
    parser.add_argument("--by", default=None, help="comma-separated columns to group by")
    parser.add_argument("--metrics", default=None,
                        help=f"comma-separated metric columns (default: those of {DEFAULT_METRICS} "
                             "the study has)")
    parser.add_argument("--agg", default="mean,std,count",
                        help="comma-separated aggregations with --by (default: mean,std,count)")
    parser.add_argument("--all", action="store_true",
                        help="without --by: every column of the trials table")
    parser.add_argument("--format", default="table", choices=FORMATS, help="output format")
    parser.add_argument("--out", default=None, help="write to this file instead of the console")


def _names(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def select(args: argparse.Namespace):
    """The frame ``args`` asks for: a trial listing or a grouped summary."""
    import dataclasses

    from cryotune.results import load_study, method_labels

    study = load_study(*args.studies)
    if args.where:
        study = study.query(args.where)
    if "label" in _names(args.by) and "label" not in study.trials:  # the paper's method names
        study = dataclasses.replace(study, trials=study.trials.assign(
            label=method_labels(study.trials)))
    metrics = _names(args.metrics) or [m for m in _names(DEFAULT_METRICS) if m in study.trials]
    if args.by:
        return study.summary(by=_names(args.by), metrics=metrics, agg=_names(args.agg))
    trials = study.trials
    if args.all:
        return trials
    unknown = [m for m in metrics if m not in trials]
    if unknown:
        raise BadInput(f"unknown metric {unknown[0]!r}", "--metrics",
                       f"known columns: {', '.join(c for c in trials if not c.startswith('config.'))}")
    config = [c for c in trials if c.startswith("config.") and trials[c].astype(str).nunique() > 1]
    head = ["study"] if trials["study"].nunique() > 1 else []
    return trials[head + ["trial_id", "status"] + config + metrics]


def main(args: argparse.Namespace) -> int:
    if args.format == "parquet" and not args.out:
        raise BadInput("parquet output is binary", "--format parquet", "add --out FILE.parquet")
    frame = select(args).rename(columns=lambda c: c.removeprefix("config."))
    if args.format == "table":
        print_frame(frame, args.out)
        return 0
    if args.format == "parquet":
        frame.to_parquet(args.out, index=False)
        return 0
    text = (frame.to_csv(index=False) if args.format == "csv"
            else frame.to_json(orient="records", indent=1) + "\n")
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


def print_frame(frame, out: str | None = None) -> None:
    """A DataFrame as a console table (NaN and None as ``-``), or into the file ``out``."""
    from rich.console import Console
    from rich.table import Table

    table = Table(*map(str, frame.columns))
    for row in frame.itertuples(index=False):
        table.add_row(*[_cell(v) for v in row])
    if out:
        with open(out, "w") as f:
            Console(file=f, width=200).print(table)
    else:
        console = Console(highlight=False)
        if not console.is_terminal:  # piped: no 80-column wrap
            console = Console(highlight=False, width=200)
        console.print(table)


def _cell(value) -> str:
    import pandas as pd

    if isinstance(value, float):
        return "-" if pd.isna(value) else f"{value:.4g}"
    return "-" if value is None else str(value)
