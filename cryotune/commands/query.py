"""Filter and summarise the trials of one or more studies (no Ray needed).

Without ``--by`` it lists the trials (id, status, the config values that differ, metrics);
with ``--by`` it aggregates the metrics per group. Config keys may be named without their
``config.`` prefix, in ``--where``, ``--by`` and ``--metrics`` alike; ``--by label`` groups by
the paper's method names (``(0.5,0.5)-GAN + ℓ1``, ``WGAN-GP + ℓ1``...). Several studies are
merged.

``--rank-by GOAL`` ranks configurations (method and hyperparameters, averaged over seeds) by a
robustness goal on the validation selection score (``select_score``), never on test: ``clean``
(eps 0), ``worst`` (the worst contaminated cell), ``worst_ratio`` (worst / clean), ``cvar``
(the mean of the worst ``--q`` of the contaminated cells). The test MSE at the best epoch of
the same cells is shown beside the score, and ``pareto`` marks the front of clean score against
worst case. Diverged trials are left out and counted; a configuration with one ranks last.

Example usage:
    cryotune query studies/smoke
    cryotune query studies/fig5 --where "method == 'l2_ae' and eps > 0" --by method,eps
    cryotune query studies/fig5 --by label,contamination,eps --metrics test_mse,test_psnr --agg mean,std,count
    cryotune query studies/fig5 --by method,eps --format csv --out fig5.csv
    cryotune query studies/fig5 --rank-by worst_ratio
    cryotune query studies/fig5 --rank-by cvar --q 0.5 --where "method != 'wgan'"
    cryotune query studies/table1 s3://lab/studies/table1-gpu --format parquet --out table1.parquet
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

import pandas as pd

from cryotune import vocab
from cryotune.errors import BadInput
from cryotune.study.labels import method_labels
from cryotune.study.tables import load_study

FORMATS = ("table", "csv", "json", "parquet")
DEFAULT_METRICS = "test_mse,test_psnr,test_ssim"


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("studies", nargs="+", metavar="STUDY", help="study folders or URIs")
    parser.add_argument("--where", default=None,
                        help="a filter on the trials: columns, literals, comparisons, in [...], "
                             "and/or/not, e.g. \"method == 'l2_ae' and eps > 0\"")
    parser.add_argument("--by", default=None, help="comma-separated columns to group by")
    parser.add_argument("--metrics", default=None,
                        help=f"comma-separated metric columns (default: those of {DEFAULT_METRICS} "
                             "the study has)")
    parser.add_argument("--agg", default="mean,std,count",
                        help="comma-separated aggregations with --by (default: mean,std,count)")
    parser.add_argument("--all", action="store_true",
                        help="without --by: every column of the trials table")
    parser.add_argument("--rank-by", default=None, metavar="GOAL",
                        help="rank configurations by a robustness goal on validation: "
                             "clean, worst, worst_ratio or cvar")
    parser.add_argument("--q", type=float, default=0.25,
                        help="with --rank-by cvar: the fraction of worst cells (default 0.25)")
    parser.add_argument("--format", default="table", choices=FORMATS, help="output format")
    parser.add_argument("--out", default=None, help="write to this file instead of the console")


def _names(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def select(args: argparse.Namespace):
    """The frame ``args`` asks for: a trial listing or a grouped summary."""
    study = load_study(*args.studies)
    condition = args.where  # cryotune.expr's grammar (Study.query), never pandas' query
    if condition:
        study = study.query(condition)
    if getattr(args, "rank_by", None):
        return ranked(study, args.rank_by, args.q)
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


def ranked(study, goal: str, q: float) -> pd.DataFrame:
    """The configurations ranked by ``goal`` on validation, the test metric beside."""
    if goal not in vocab.ROBUSTNESS_GOALS:
        raise BadInput(f"unknown robustness goal {goal!r}", "--rank-by",
                       f"use one of {', '.join(vocab.ROBUSTNESS_GOALS)}")
    pick = study.select(goal=goal, q=q)
    # the label already names the method and its (alpha, beta), lambda, p, reduction, lr_g
    named = {f"config.{k}" for k in ("method", "alpha", "beta", "lambda", "p", "reduction",
                                      "lr_g")}
    table = pick.table.drop(columns=["eligible", "cells", goal, *named], errors="ignore")
    if table["dataset"].nunique() == 1:
        table = table.drop(columns=["dataset"])
    left = ", ".join(f"{n} {why}" for why, n in pick.excluded.items())
    best = pick.best
    lines = [f"ranked by {goal} on {pick.score} (validation); {pick.test} reported beside it"
             + (f"; left out: {left}" if left else ""), *pick.notes,
             f"chosen on validation ({goal}): {best['label']}, {goal} {best['score']:.4g} on "
             f"validation, {best['test']:.4g} on test ({pick.test})"]
    print("\n".join(lines), file=sys.stderr)  # the table itself may be piped as csv/json
    names = {"score": f"{goal} (val)", "test": f"{goal} (test)"}
    return table.rename(columns=names)


def main(args: argparse.Namespace) -> int:
    if args.format == "parquet" and not args.out:
        raise BadInput("parquet output is binary", "--format parquet", "add --out FILE.parquet")
    frame = select(args).rename(columns=lambda c: c.removeprefix("config."))
    if args.out:  # like report -o: missing parent folders are created
        from pathlib import Path

        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
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
    if isinstance(value, float):
        return "-" if pd.isna(value) else f"{value:.4g}"
    return "-" if value is None else str(value)
