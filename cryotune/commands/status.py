"""Show where a study stands: trials by status, the best so far, the errors (no Ray needed).

The best trial is chosen on validation (its ``select_score``, the study's ``select.metric``);
its test metrics at that epoch are reported beside it, never used to choose.

Reads ``trials.parquet`` and ``spec.yaml``; a study whose sweep was interrupted shows the trials
still to run and how to finish them.

Example usage:
    cryotune status studies/smoke
    cryotune status s3://lab/studies/paper-fig5-robustness
"""

from __future__ import annotations

import argparse

import pandas as pd

from cryotune import vocab
from cryotune._lock import read_lock
from cryotune.errors import BadInput
from cryotune.runs.sweep import planned_trials
from cryotune.study.labels import method_labels
from cryotune.study.store import STATUSES
from cryotune.study.tables import load_study


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("study", metavar="STUDY", help="a study folder or URI")


def main(args: argparse.Namespace) -> int:
    from rich.console import Console

    console = Console(highlight=False, soft_wrap=True)
    holder = read_lock(args.study)
    try:
        study = load_study(args.study)
    except BadInput:
        if not holder:
            raise
        console.print(f"study {args.study}: nothing recorded yet")
        console.print(_running(holder))
        return 0
    trials = study.trials
    spec = next(iter(study.specs.values()), {})
    name = spec.get("name") or (trials["study"].iloc[0] if len(trials) else args.study)
    method = trials["config.method"] if "config.method" in trials else pd.Series(
        None, index=trials.index, dtype=object)
    baselines = int(method.isin(list(vocab.BASELINE_LABELS)).sum())
    swept = trials[~method.isin(list(vocab.BASELINE_LABELS))]  # the spec plans these
    counts = swept["status"].value_counts()
    expected = planned_trials(spec) if spec else None
    console.print(f"study {name}: {study.uris[0]}")
    if holder:
        console.print(_running(holder))
    line = ", ".join(f"{int(counts[s])} {s}" for s in STATUSES if s in counts) or "no trials yet"
    console.print(f"trials: {line}" + (f" (of {expected})" if expected else "")
                  + (f"; {baselines} baseline rows" if baselines else ""))
    ended = int((swept["status"] != "interrupted").sum())  # interrupted: rerun on resume
    if expected and ended < expected:
        console.print(f"{expected - ended} trials have not ended: "
                      f"cryotune sweep {study.uris[0]} --resume")
    interrupted = trials.loc[trials["status"] == "interrupted", "trial_id"].astype(str)
    if len(interrupted):
        console.print(f"interrupted (no result, rerun by --resume): {', '.join(interrupted)}")
    try:
        best = study.best()
    except BadInput as err:
        best = None  # an old study, or no trial selected yet
        console.print(f"best: {err.what}")
    if best is not None:
        label = method_labels(pd.DataFrame([best])).iloc[0]
        eps = best.get("config.eps")
        data = f" eps {eps:g} {best.get('config.contamination')}" if pd.notna(eps) and eps else ""
        metric = best.get("select_metric") or "val_mse_median"
        console.print(f"best on validation ({metric} {vocab.goal(metric)}): "
                      f"{best['select_score']:.4g} at epoch {int(best['best_epoch'])}, trial "
                      f"{best['trial_id']} ({label}{data}, seed {_whole(best.get('config.seed'))})")
        console.print(f"  its test scores at that epoch: MSE {_num(best, 'test_mse_at_best', 'e')}"
                      f", PSNR {_num(best, 'test_psnr_at_best', 'f')}, SSIM "
                      f"{_num(best, 'test_ssim_at_best', 'f')}")
    for row in trials[trials["status"].isin(("error", "diverged"))].itertuples():
        console.print(f"{row.status} {row.trial_id}: {row.error}")
    return 0


def _running(holder: dict) -> str:
    """``running: pid N on HOST since T (command)`` from the study's lock record."""
    text = (f"running: pid {holder.get('pid', '?')} on {holder.get('host', '?')} since "
            f"{holder.get('since', '?')}")
    return text + (f" ({holder['command']})" if holder.get("command") else "")


def _num(row: pd.Series, name: str, kind: str) -> str:
    value = pd.to_numeric(pd.Series([row.get(name)]), errors="coerce").iloc[0]
    if pd.isna(value):
        return "-"
    return f"{value:.3e}" if kind == "e" else f"{value:.3f}"


def _whole(value) -> str:
    """A seed as written in the spec: 1, not the 1.0 a column with gaps (baseline rows) holds."""
    return str(int(value)) if pd.notna(value) and float(value).is_integer() else str(value)
