"""Show where a study stands: trials by status, the best so far, the errors (no Ray needed).

Reads ``trials.parquet`` and ``spec.yaml``; a study whose sweep was interrupted shows the trials
still to run and how to finish them.

Example usage:
    cryotune status studies/smoke
    cryotune status s3://lab/studies/paper-fig5-robustness
"""

from __future__ import annotations

import argparse


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("study", metavar="STUDY", help="a study folder or URI")


def expected_trials(spec: dict) -> int | None:
    """The trial count the study's spec asks for, or None when it cannot be read here."""
    from cryotune.errors import CryotuneError
    from cryotune.sweep.space import trial_configs
    from cryotune.sweep.spec import spec_from_mapping

    raw = {k: v for k, v in spec.items() if k != "provenance"}
    try:
        sweep = spec_from_mapping(raw)
    except CryotuneError:
        return None
    return sweep.n_trials if sweep.search != "grid" else len(trial_configs(sweep))


def main(args: argparse.Namespace) -> int:
    import pandas as pd
    from rich.console import Console

    from cryotune.results import STATUSES, load_study, method_labels

    console = Console(highlight=False)
    study = load_study(args.study)
    trials = study.trials
    spec = next(iter(study.specs.values()), {})
    metric = spec.get("metric", "test_mse")
    mode = spec.get("mode") or ("max" if metric in ("test_psnr", "test_ssim") else "min")
    name = spec.get("name") or (trials["study"].iloc[0] if len(trials) else args.study)
    counts = trials["status"].value_counts()
    expected = expected_trials(spec) if spec else None
    console.print(f"study {name}: {study.uris[0]}")
    line = ", ".join(f"{int(counts[s])} {s}" for s in STATUSES if s in counts) or "no trials yet"
    console.print(f"trials: {line}" + (f" (of {expected})" if expected else ""))
    if expected and len(trials) < expected:
        console.print(f"{expected - len(trials)} trials have not ended: "
                      f"cryotune sweep {study.uris[0]} --resume")
    if metric in trials and trials[metric].notna().any():
        ok = trials[trials[metric].notna()]
        best = ok.loc[ok[metric].idxmin() if mode == "min" else ok[metric].idxmax()]
        label = method_labels(pd.DataFrame([best])).iloc[0]
        eps = best.get("config.eps")
        data = f" eps {eps:g} {best.get('config.contamination')}" if pd.notna(eps) and eps else ""
        console.print(f"best {metric} ({mode}): {best[metric]:.4g}, trial {best['trial_id']} "
                      f"({label}{data}, seed {best.get('config.seed')})")
    for row in trials[trials["status"].isin(("error", "diverged"))].itertuples():
        console.print(f"{row.status} {row.trial_id}: {row.error}")
    return 0
