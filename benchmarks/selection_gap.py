"""Selection gap: the robust validation score against an oracle, on a contaminated study.

Selection reads validation only, and a user's validation pairs are contaminated like the
training pairs, so the study selects by default on ``val_mse_median`` (the median over the
validation images of the per-image MSE, :class:`cryotune.sweep.spec.Select`). This measures
what that costs against an oracle that scores the same validation pairs clean
(``oracle_val_mse``, which only a simulation has), and against the plain mean on the
contaminated pairs (``val_mse``), the score a median is meant to beat.

One study through ``run_sweep``: type A contamination at eps 0.3 on 32 px simulated pairs
(600 train, 60 validation, 150 test), the l1 and l2 autoencoders and the (0.5, 0.5)-GAN + l1 at
lambda 1 and 10, three seeds, six epochs. Every trial scores every epoch on the contaminated
validation pairs, on the same pairs clean and on the clean test split, so the history holds
each rule's score per epoch and one study serves every rule. Per rule:

- epochs: in each trial, the epoch the rule picks against the epoch with the lowest clean test
  MSE (how often it is that epoch; the test MSE it gives up, relative to that epoch's);
- configurations: each configuration's score is the mean over seeds of the rule's score at the
  rule's epoch; the rule picks the lowest. The truth is the configuration with the lowest mean
  over seeds of the best clean test MSE. Also per seed (one pick per seed), and over every pair
  of configurations within a seed (does the rule order the pair as the clean test does?).

Writes ``reports/benchmarks/selection_gap.json`` and the "selection" section of
``reports/benchmarks/BENCHMARKS.md``.

Example::

    .venv/bin/python benchmarks/selection_gap.py           # about 5 minutes on 2 cores
    .venv/bin/python benchmarks/selection_gap.py --smoke   # 16 px, 2 configs x 2 epochs; prints
"""

from __future__ import annotations

import os

os.environ["OMP_NUM_THREADS"] = "1"  # before numpy and torch start their thread pools

import itertools  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import pandas as pd  # noqa: E402
from _common import finish, load_average, machine, machine_line, parser, record, section  # noqa: E402

from cryotune.runs.sweep import run_sweep  # noqa: E402
from cryotune.study.labels import method_labels  # noqa: E402
from cryotune.study.tables import load_study  # noqa: E402
from cryotune.sweep.spec import spec_from_mapping  # noqa: E402

# rule -> the history column it minimises
RULES = {"robust": "val_mse_median", "oracle": "oracle_val_mse", "mean": "val_mse"}
TRUTH = "test_mse"


def plan(smoke: bool) -> dict:
    """The study's spec mapping (storage filled in by :func:`main`)."""
    if smoke:
        return {"name": "selection-gap-smoke",
                "dataset": {"simulate": {"size": 16, "n_train": 64, "n_test": 16, "snr": 0.1,
                                         "seed": 0}},
                "methods": ["l1_ae", "l2_ae"], "eps": [0.3], "contamination": ["A"],
                "seeds": 1, "epochs": 2,
                "train": {"width": 4, "depth": 1, "batch_size": 16, "gallery": 2},
                "checkpoint_every": 0}
    return {"name": "selection-gap",
            "dataset": {"simulate": {"size": 32, "n_train": 600, "n_test": 150, "snr": 0.1,
                                     "seed": 0}},
            "methods": ["l1_ae", "l2_ae",
                        {"method": "beta_gan", "pairs": [[0.5, 0.5]], "p": 1,
                         "lambda": [1, 10]}],
            "eps": [0.3], "contamination": ["A"], "seeds": 3, "epochs": 6,
            "train": {"width": 8, "batch_size": 20, "reduction": "sum", "gallery": 4},
            "checkpoint_every": 0}


def epoch_picks(history: pd.DataFrame) -> pd.DataFrame:
    """One row a trial: the epoch each rule picks and the truth's, with their test MSEs."""
    rows = []
    for trial_id, h in history.groupby("trial_id"):
        h = h.sort_values("epoch").reset_index(drop=True)
        out = {"trial_id": trial_id, "epochs": len(h)}
        for name, column in {**RULES, "truth": TRUTH}.items():
            values = pd.to_numeric(h[column], errors="coerce") if column in h else None
            if values is None or values.isna().all():
                out.update({f"{name}_epoch": None, f"{name}_score": None,
                            f"{name}_test_mse": None})
                continue
            i = int(values.idxmin())  # the first of equal scores, as BestEpoch keeps
            out.update({f"{name}_epoch": int(h.loc[i, "epoch"]),
                        f"{name}_score": float(values[i]),
                        f"{name}_test_mse": float(h.loc[i, TRUTH])})
        rows.append(out)
    return pd.DataFrame(rows)


def analyse(study) -> dict:
    """The figures of the module docstring from a loaded study."""
    trials = study.trials.assign(config=method_labels(study.trials))
    picks = epoch_picks(study.history).merge(
        trials[["trial_id", "config", "config.seed", "status", "best_epoch"]], on="trial_id")
    out: dict = {"trials": len(trials),
                 "statuses": trials["status"].value_counts().to_dict(),
                 # the platform's own pick must be the robust rule's
                 "recorded_best_epoch_agrees": bool(
                     (picks["best_epoch"] == picks["robust_epoch"]).all())}
    configs = picks.groupby("config")
    table = configs.agg(**{f"{n}_score": (f"{n}_score", "mean") for n in (*RULES, "truth")},
                        **{f"{n}_test_mse": (f"{n}_test_mse", "mean") for n in (*RULES, "truth")})
    truth = str(table["truth_score"].idxmin())
    out["truth_config"] = truth
    out["configs"] = {c: {k: round(float(v), 6) for k, v in row.items()}
                      for c, row in table.iterrows()}
    rules = {}
    for name in RULES:
        have = picks[f"{name}_epoch"].notna()
        hit = picks.loc[have, f"{name}_epoch"] == picks.loc[have, "truth_epoch"]
        loss = picks.loc[have, f"{name}_test_mse"] / picks.loc[have, "truth_test_mse"] - 1
        chosen = str(table[f"{name}_score"].idxmin()) if table[f"{name}_score"].notna().any() \
            else None
        per_seed, pairs = [], []
        for _, seed in picks[have].groupby("config.seed"):
            seed = seed.set_index("config")
            per_seed.append(seed[f"{name}_score"].idxmin() == seed["truth_score"].idxmin())
            for a, b in itertools.combinations(seed.index, 2):
                rule = seed.loc[a, f"{name}_score"] < seed.loc[b, f"{name}_score"]
                pairs.append(rule == (seed.loc[a, "truth_score"] < seed.loc[b, "truth_score"]))
        rules[name] = {
            "column": RULES[name],
            "trials": int(have.sum()),
            "best_test_epoch_share": round(float(hit.mean()), 3) if len(hit) else None,
            "test_mse_given_up_mean": round(float(loss.mean()), 4) if len(loss) else None,
            "config": chosen,
            "config_is_truth": chosen == truth,
            "config_test_mse": (round(float(table.loc[chosen, f"{name}_test_mse"]), 6)
                                if chosen else None),
            "per_seed_hits": int(sum(per_seed)), "seeds": len(per_seed),
            "pairs_agree": int(sum(pairs)), "pairs": len(pairs),
        }
    out["rules"] = rules
    out["truth_config_test_mse"] = round(float(table.loc[truth, "truth_test_mse"]), 6)
    out["per_trial"] = picks.drop(columns=["best_epoch"]).round(6).to_dict("records")
    return out


def markdown(report: dict) -> str:
    r, p = report["results"], report["plan"]
    sim = p["dataset"]["simulate"]
    lines = [
        "## selection: the robust validation score against an oracle",
        "",
        f"`benchmarks/selection_gap.py`, {report['created']}: one study, type A contamination "
        f"at eps 0.3 on {sim['size']} px simulated pairs ({sim['n_train']} train, "
        f"{sim['n_test']} test, SNR {sim['snr']:g}), {len(r['configs'])} configurations x "
        f"{p['seeds']} seeds, {p['epochs']} epochs ({report['wall_s']} s). Each rule picks every "
        f"trial's epoch by the lowest score on validation, and a configuration by the lowest "
        f"mean over seeds of that score; the truth is the lowest clean test MSE (best epoch, "
        f"mean over seeds): {r['truth_config']} (test MSE {r['truth_config_test_mse']:.4g}).",
        "",
        "| rule (validation score) | trials on the best-test epoch | test MSE given up by the "
        "epoch (mean) | configuration picked | its test MSE | the best? | seeds picking the "
        "best | configuration pairs ordered as by test |",
        "|---|---|---|---|---|---|---|---|",
    ]
    names = {"robust": "robust: val_mse_median (default)", "oracle": "oracle: oracle_val_mse "
             "(clean, simulation only)", "mean": "plain mean: val_mse (contaminated)"}
    for name, x in r["rules"].items():
        share = "-" if x["best_test_epoch_share"] is None else \
            f"{100 * x['best_test_epoch_share']:.0f}% of {x['trials']}"
        given = "-" if x["test_mse_given_up_mean"] is None else \
            f"{100 * x['test_mse_given_up_mean']:.1f}%"
        lines.append(f"| {names[name]} | {share} | {given} | {x['config']} | "
                     f"{x['config_test_mse']} | {'yes' if x['config_is_truth'] else 'no'} | "
                     f"{x['per_seed_hits']} of {x['seeds']} | {x['pairs_agree']} of "
                     f"{x['pairs']} |")
    lines += ["", "| configuration | val_mse_median | oracle_val_mse | val_mse | best test MSE "
              "| test MSE at the robust epoch | at the oracle epoch |",
              "|---|---|---|---|---|---|---|"]
    for c, v in r["configs"].items():
        lines.append(f"| {c} | {v['robust_score']:.4g} | {v['oracle_score']:.4g} | "
                     f"{v['mean_score']:.4g} | {v['truth_score']:.4g} | "
                     f"{v['robust_test_mse']:.4g} | {v['oracle_test_mse']:.4g} |")
    lines += ["", f"Trial statuses: {', '.join(f'{n} {s}' for s, n in r['statuses'].items())}; "
              f"the study's recorded best epochs are the robust rule's: "
              f"{'yes' if r['recorded_best_epoch_agrees'] else 'no'}. Small numbers: "
              f"{len(r['configs'])} configurations, {p['seeds']} seed(s): a configuration pick "
              "is one draw, not a rate.", "",
              machine_line(report["machine"], report["load_average_end"])]
    return section("selection", lines)


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__).parse_args(argv)
    raw = plan(args.smoke)
    facts = machine()
    with tempfile.TemporaryDirectory(prefix="cryotune-selection-") as folder:
        spec = spec_from_mapping({**raw, "storage": folder})
        start = time.perf_counter()
        outcome = run_sweep(spec)
        wall = round(time.perf_counter() - start, 1)
        results = analyse(load_study(outcome.study))
    report = record("selection_gap", facts, plan=raw, wall_s=wall, results=results,
                    load_average_end=load_average())
    return finish("selection_gap", report, markdown, smoke=args.smoke)


if __name__ == "__main__":
    sys.exit(main())
