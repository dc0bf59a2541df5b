"""Sweep efficiency: ASHA against the full grid on the same small space.

``search_spaces/smoke.yaml`` with overrides (16 px simulated pairs, width 8, a handful of method
x eps configurations, a few epochs) is swept twice through ``run_sweep``: with the FIFO scheduler
(every configuration to the last epoch: the grid) and with ASHA at the defaults a user gets
from ``scheduler: asha`` (:class:`cryotune.sweep.spec.Scheduler`; ``max_t`` = epochs). The
grid's best configuration is the one with the lowest final test MSE; a configuration is as good
when its grid test MSE is within one standard deviation (``test_mse_std``, over test images) of
the best's.

The figure (target <= 35% of the grid's trial-epochs): the trial-epochs ASHA had completed, all
trials together, at the moment the first trial to run all epochs with an as-good configuration
ended. Every (trial, epoch) is placed in time by splitting its trial's ``started_at`` ..
``ended_at`` span in proportion to the epochs' ``epoch_s``; since each epoch's training lies
inside its span, the count is bounded below and above exactly (``until_found_range``). Second
figure: ASHA's total trial-epochs over the grid's. Both depend on the order in which trials
arrive, so Ray's own scheduler (``make_scheduler`` of the ASHA run's spec) is replayed on the
grid's recorded per-epoch test MSE and durations over random arrival orders, as many trials at
once as the ASHA run had (mean, p10, p90; an order that never finds counts as the whole grid),
and once in the run's own order. Beside them: the fraction synchronous successive halving would
spend at the same rungs, how many configurations are as good as the best, and the rank
correlation over the grid's configurations of each rung's test MSE with the final one (whether
the rung's cut is informed). Wall-clock and driver CPU seconds of each sweep and the load
average are recorded. Writes ``reports/benchmarks/sweep_efficiency.json`` and the "sweep"
section of ``reports/benchmarks/BENCHMARKS.md``.

Example::

    .venv/bin/python benchmarks/sweep_efficiency.py           # 10-20 minutes; writes the reports
    .venv/bin/python benchmarks/sweep_efficiency.py --smoke   # 2 configs x 1 epoch; prints only
"""

from __future__ import annotations

import os

os.environ["OMP_NUM_THREADS"] = "1"  # before numpy and torch start their thread pools

import heapq  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from _common import finish, load_average, machine, machine_line, parser, record, section  # noqa: E402

from cryotune.runs.sweep import run_sweep  # noqa: E402
from cryotune.study.tables import load_study  # noqa: E402
from cryotune.sweep.space import make_scheduler  # noqa: E402
from cryotune.sweep.spec import Scheduler, load_spec  # noqa: E402

SPACE = Path(__file__).resolve().parent.parent / "search_spaces" / "smoke.yaml"
TARGET = 0.35
ORDERS = 300  # random arrival orders replayed
CONFIG = ("config.method", "config.alpha", "config.beta", "config.eps")
FULL = {"methods": [{"method": "l1_ae"}, {"method": "l2_ae"},
                    {"method": "beta_gan", "pairs": [[0.5, 0.5]], "p": 1},
                    {"method": "wgan_gp", "p": 1}],
        "eps": [0, 0.1, 0.2], "epochs": 9}
SMOKE = {"methods": [{"method": "l1_ae"}, {"method": "l2_ae"}], "eps": [0], "epochs": 1}


def sweep(storage: Path, name: str, preset: dict, scheduler: str):
    """Run one sweep (``fifo`` or ``asha`` at its defaults); returns its timings, study, spec."""
    overrides = [f"name={name}", f"storage={storage}", f"epochs={preset['epochs']}",
                 f"methods={json.dumps(preset['methods'])}", f"eps={json.dumps(preset['eps'])}",
                 "checkpoint_every=0", f"scheduler={scheduler}"]
    spec = load_spec(SPACE, overrides=overrides)
    w, c = time.perf_counter(), time.process_time()
    outcome = run_sweep(spec)
    timing = {"wall_s": round(time.perf_counter() - w, 1),
              "driver_cpu_s": round(time.process_time() - c, 1), "counts": outcome.counts}
    return timing, load_study(outcome.study), spec


def rungs(grace: int, factor: float, epochs: int) -> list[int]:
    """The epochs at which ASHA judges: ``grace * factor**k`` below ``epochs``, rounded up."""
    out, at = [], float(grace)
    while at < epochs:
        out.append(math.ceil(at - 1e-9))
        at *= factor
    return out


def synchronous_fraction(grace: int, factor: float, epochs: int) -> float:
    """Epochs per trial of synchronous successive halving at these rungs, over ``epochs``.

    Example: grace 1, factor 4, 9 epochs: (1 + 3/4 + 5/16) / 9 = 0.229.
    """
    ends = rungs(grace, factor, epochs) + [epochs]
    spent = ends[0] + sum((ends[k + 1] - ends[k]) / factor ** (k + 1) for k in range(len(ends) - 1))
    return round(spent / epochs, 3)


def rank_correlations(study, at: list[int]) -> dict[int, float]:
    """Spearman correlation, over the grid's trials, of the test MSE at each epoch with the last."""
    table = study.history.pivot(index="trial_id", columns="epoch", values="test_mse")
    last = table.columns.max()
    return {e: round(float(table[e].corr(table[last], method="spearman")), 2) for e in at}


def key(row) -> tuple:
    return tuple(str(row[c]) if c in row else "" for c in CONFIG)


def epoch_ends(study) -> pd.DataFrame:
    """When each (trial, epoch) ended: ``trial_id, epoch, end, end_min, end_max`` (Unix s).

    A trial's ``started_at`` .. ``ended_at`` span is split in proportion to its epochs'
    ``epoch_s`` (``end``); each epoch's training lies inside the span, so epoch k ended no
    earlier than the start plus the training of epochs 1..k (``end_min``) and no later than the
    trial's end minus the training of the epochs after k (``end_max``).

    Example: a trial from 0 to 10 s with epoch_s 2 and 3 has ends 4 and 10, bounds (2, 7), (5, 10).
    """
    spans = study.trials.set_index("trial_id")[["started_at", "ended_at"]]
    h = study.history.sort_values(["trial_id", "epoch"])[["trial_id", "epoch", "epoch_s"]].copy()
    h = h.join(spans, on="trial_id")
    done = h.groupby("trial_id")["epoch_s"].cumsum()
    total = h.groupby("trial_id")["epoch_s"].transform("sum")
    h["end"] = h["started_at"] + (h["ended_at"] - h["started_at"]) * done / total
    h["end_min"] = h["started_at"] + done
    h["end_max"] = h["ended_at"] - (total - done)
    return h[["trial_id", "epoch", "end", "end_min", "end_max"]]


def concurrency(trials: pd.DataFrame) -> int:
    """The most trials whose ``started_at`` .. ``ended_at`` spans overlap."""
    return max(int(((trials["started_at"] <= t) & (trials["ended_at"] > t)).sum())
               for t in trials["started_at"])


def until_found(asha, good: set[tuple], epochs: int) -> dict:
    """ASHA's trial-epochs completed when its first full-length as-good trial ended.

    ``good``: the configurations within one std of the grid's best. Returns the count placed by
    :func:`epoch_ends` (``until_found``) and its exact bounds (``until_found_range``); None when
    no such trial ran all ``epochs``.
    """
    trials = asha.trials.set_index("trial_id")
    ends = epoch_ends(asha)
    full = ends[(ends["epoch"] >= epochs)
                & ends["trial_id"].map(lambda t: key(trials.loc[t]) in good)]
    if full.empty:
        return {"until_found": None, "until_found_range": None, "found_by": None}
    first = full.loc[full["end"].idxmin()]
    at = first["end"]
    return {"until_found": int((ends["end"] <= at).sum()),
            "until_found_range": [int((ends["end_max"] <= at).sum()),
                                  int((ends["end_min"] <= at).sum())],
            "found_by": dict(zip(CONFIG, key(trials.loc[first["trial_id"]]), strict=True))}


def replay(spec, curves: np.ndarray, durations: np.ndarray, good: np.ndarray,
           order, at_once: int) -> tuple[int, int | None]:
    """Ray's ASHA (``make_scheduler(spec)``) over recorded curves, trials arriving in ``order``.

    Args:
        spec: the ASHA sweep's spec (scheduler, metric, mode).
        curves: the metric of each configuration (rows) at each epoch (columns).
        durations: seconds of each (configuration, epoch).
        good: which configurations count as found when they run every epoch.
        order: configuration indices in arrival order; ``at_once`` run side by side.

    Returns:
        (trial-epochs spent, trial-epochs completed when the first good trial ran every epoch;
        None when none did).

    Example: with one trial at a time and grace 1, factor 4, the second trial to arrive stops
    at epoch 1 unless it beats the first one's epoch-1 value.
    """
    from ray.tune.schedulers import TrialScheduler

    scheduler = make_scheduler(spec)  # judges on spec.select.metric, as in a sweep
    queue, running, spent, found, seq = list(order), [], 0, None, 0

    def start(now: float) -> None:
        nonlocal seq
        c = queue.pop(0)
        trial = SimpleNamespace(trial_id=f"t{seq}", config=c)
        scheduler.on_trial_add(None, trial)
        heapq.heappush(running, (now + durations[c, 0], seq, trial, 1))
        seq += 1

    for _ in range(min(at_once, len(queue))):
        start(0.0)
    while running:
        now, s, trial, epoch = heapq.heappop(running)
        spent += 1
        c = trial.config
        result = {"epoch": epoch, spec.select.metric: float(curves[c, epoch - 1])}
        action = scheduler.on_trial_result(None, trial, result)
        if action == TrialScheduler.CONTINUE and epoch < curves.shape[1]:
            heapq.heappush(running, (now + durations[c, epoch], s, trial, epoch + 1))
            continue
        scheduler.on_trial_complete(None, trial, result)
        if found is None and epoch == curves.shape[1] and good[c]:
            found = spent
        if queue:
            start(now)
    return spent, found


def replays(spec, grid, good: set[tuple], at_once: int, run_order: list[tuple]) -> dict:
    """:func:`replay` over ``ORDERS`` random arrival orders (seeded) and the run's own order."""
    trials = grid.trials[grid.trials["status"] == "finished"]
    ids, keys = list(trials["trial_id"]), [key(r) for _, r in trials.iterrows()]
    curves = grid.history.pivot(index="trial_id", columns="epoch",
                                values=spec.select.metric).loc[ids]
    ends = epoch_ends(grid).pivot(index="trial_id", columns="epoch", values="end").loc[ids]
    starts = trials.set_index("trial_id").loc[ids, "started_at"].to_numpy()
    durations = np.diff(np.column_stack([starts, ends.to_numpy()]), axis=1)
    is_good = np.array([k in good for k in keys])
    total = curves.size
    args = (spec, curves.to_numpy(), durations, is_good)
    rng = np.random.default_rng(0)
    runs = [replay(*args, rng.permutation(len(ids)), at_once) for _ in range(ORDERS)]
    spent = np.array([s for s, _ in runs]) / total
    found = np.array([1.0 if f is None else f / total for _, f in runs])
    own = replay(*args, [keys.index(k) for k in run_order], at_once)

    def stats(x):
        return {"mean": round(float(x.mean()), 3), "p10": round(float(np.percentile(x, 10)), 3),
                "p90": round(float(np.percentile(x, 90)), 3)}

    return {"orders": ORDERS, "at_once": at_once, "until_found": stats(found),
            "total": stats(spent),
            "found_share": round(float(np.mean([f is not None for _, f in runs])), 3),
            "run_order": {"total": own[0], "until_found": own[1]}}


def compare(grid, asha, epochs: int) -> tuple[dict, set[tuple]]:
    """The figures of the ASHA run against the grid (see the module's docstring), and the
    configurations within one std of the grid's best."""
    gt = grid.trials[grid.trials["status"] == "finished"]
    best = gt.loc[gt["test_mse"].idxmin()]
    by_config = {key(row): row for _, row in gt.iterrows()}
    good = {k for k, row in by_config.items()
            if row["test_mse"] <= best["test_mse"] + best["test_mse_std"]}
    at = asha.trials
    done = at[at["status"] == "finished"]
    pick = done.loc[done["test_mse"].idxmin()]
    pick_grid_mse = float(by_config[key(pick)]["test_mse"])
    grid_epochs, asha_epochs = int(gt["epochs"].sum()), int(at["epochs"].sum())
    found = until_found(asha, good, epochs)
    spent = found["until_found"]
    return {"configs": len(gt), "grid_trial_epochs": grid_epochs,
            "until_found_trial_epochs": spent,
            "until_found_range": found["until_found_range"],
            "until_found_fraction": None if spent is None else round(spent / grid_epochs, 3),
            "found_by": found["found_by"],
            "asha_trial_epochs": asha_epochs, "fraction": round(asha_epochs / grid_epochs, 3),
            "grid_best": dict(zip(CONFIG, key(best), strict=True)),
            "grid_best_test_mse": float(best["test_mse"]),
            "grid_best_test_mse_std": float(best["test_mse_std"]),
            "asha_best": dict(zip(CONFIG, key(pick), strict=True)),
            "asha_best_grid_test_mse": pick_grid_mse, "same_config": key(pick) == key(best),
            "found": key(pick) in good,
            "asha_epochs_per_trial": sorted(int(e) for e in at["epochs"]),
            "configs_within_std": len(good), "at_once": concurrency(at)}, good


def label(config: dict) -> str:
    """``beta_gan (0.5, 0.5), eps 0.2`` from the stringified config columns."""
    ab = f" ({config['config.alpha']}, {config['config.beta']})" if config["config.alpha"] != "nan" else ""
    return f"{config['config.method']}{ab}, eps {config['config.eps']}"


def verdict(fraction: float | None) -> str:
    return "not found" if fraction is None else "met" if fraction <= TARGET else "not met"


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def markdown(report: dict) -> str:
    r, m, a, rp = report["results"], report["machine"], report["scheduler"], report["replay"]
    corr = ", ".join(f"epoch {e}: {c:+.2f}" for e, c in a["rank_correlation"].items())
    grid_n, spent = r["grid_trial_epochs"], r["until_found_trial_epochs"]
    lo_hi, own = r["until_found_range"], rp["run_order"]
    uf, tot = rp["until_found"], rp["total"]
    found_line = ("ASHA never ran an as-good configuration to the last epoch" if spent is None else
                  f"{spent} (bounds {lo_hi[0]}-{lo_hi[1]}) of {grid_n}, "
                  f"{pct(r['until_found_fraction'])}, when {label(r['found_by'])} ended")
    lines = [
        "## sweep: ASHA against the full grid",
        "",
        f"`benchmarks/sweep_efficiency.py`, {report['created']}: `search_spaces/smoke.yaml` "
        f"(16 px, width 8) with {r['configs']} method x eps configurations, "
        f"{report['epochs']} epochs, {r['at_once']} trial(s) at once; ASHA at the spec defaults: "
        f"grace period {a['grace_period']}, reduction factor {a['reduction_factor']:g}, so it "
        f"judges at epochs {', '.join(map(str, a['rungs']))}. Found: a trial ran every epoch "
        f"with a configuration whose grid test MSE is within one std of the grid's best "
        f"({r['configs_within_std']} of {r['configs']} configurations are).",
        "",
        f"| figure (share of the grid's {grid_n} trial-epochs) | this run | replay over "
        f"{rp['orders']} arrival orders: mean (p10-p90) | target <= {100 * TARGET:g}% |",
        "|---|---|---|---|",
        f"| **until found** (the issue's figure) | "
        f"{'-' if spent is None else pct(r['until_found_fraction'])} | {pct(uf['mean'])} "
        f"({pct(uf['p10'])}-{pct(uf['p90'])}) | run: {verdict(r['until_found_fraction'])}; "
        f"replay mean: {verdict(uf['mean'])} |",
        f"| total spent | {pct(r['fraction'])} | {pct(tot['mean'])} ({pct(tot['p10'])}-"
        f"{pct(tot['p90'])}) | run: {verdict(r['fraction'])}; replay mean: "
        f"{verdict(tot['mean'])} |",
        "",
        f"Trial-epochs until found: {found_line}; ASHA spent {r['asha_trial_epochs']} in all. "
        f"Epochs are placed in time within their trial's start and end in proportion to their "
        f"training seconds; the bounds are exact. The replay runs Ray's scheduler on the grid's "
        f"curves and epoch times; it found in {pct(rp['found_share'])} of orders (one that does "
        f"not counts as 100%); in this run's arrival order, with the grid's epoch times, it "
        f"spends {own['total']} (the run: {r['asha_trial_epochs']}) and finds at "
        f"{'-' if own['until_found'] is None else own['until_found']} (the run: "
        f"{'-' if spent is None else spent}): until found depends on which trials' epochs "
        f"end first.",
        "",
        "| sweep | trial-epochs | wall s | driver CPU s |",
        "|---|---|---|---|",
        f"| grid (FIFO) | {grid_n} | {report['grid']['wall_s']} | "
        f"{report['grid']['driver_cpu_s']} |",
        f"| ASHA | {r['asha_trial_epochs']} | {report['asha']['wall_s']} | "
        f"{report['asha']['driver_cpu_s']} |",
        "",
        f"Grid best: {label(r['grid_best'])} (test MSE {r['grid_best_test_mse']:.5g} +- "
        f"{r['grid_best_test_mse_std']:.2g}); ASHA's best finished trial: {label(r['asha_best'])} "
        f"(grid test MSE {r['asha_best_grid_test_mse']:.5g}; "
        f"{'same configuration' if r['same_config'] else 'another configuration'}, "
        f"{'within' if r['found'] else 'not within'} one std).",
        "",
        f"Synchronous successive halving at the same rungs would spend "
        f"{pct(a['synchronous_fraction'])} in all, the limit with many configurations; with "
        f"{r['configs']} the first trials to reach a rung go on against few rivals. Rank "
        f"correlation over the grid's configurations of the test MSE at each rung with the final "
        f"one: {corr or 'no rungs'}.",
        "",
        machine_line(m, report["load_average_end"]),
    ]
    return section("sweep", lines)


def main(argv=None) -> int:
    args = parser(__doc__, smoke="2 configs x 1 epoch, print only").parse_args(argv)
    preset = SMOKE if args.smoke else FULL
    host = machine()
    with tempfile.TemporaryDirectory() as tmp:
        grid_t, grid, _ = sweep(Path(tmp), "grid", preset, "fifo")
        asha_t, asha, spec = sweep(Path(tmp), "asha", preset, "asha")
        defaults, epochs = Scheduler(), preset["epochs"]
        at = rungs(defaults.grace_period, defaults.reduction_factor, epochs)
        scheduler = {"grace_period": defaults.grace_period,
                     "reduction_factor": defaults.reduction_factor, "rungs": at,
                     "synchronous_fraction": synchronous_fraction(
                         defaults.grace_period, defaults.reduction_factor, epochs),
                     "rank_correlation": rank_correlations(grid, at)}
        results, good = compare(grid, asha, epochs)
        order = [key(r) for _, r in asha.trials.sort_values("started_at").iterrows()]
        replayed = replays(spec, grid, good, results["at_once"], order)
    report = record("sweep_efficiency", host, epochs=epochs, load_average_end=load_average(),
                    scheduler=scheduler, grid=grid_t, asha=asha_t, results=results,
                    replay=replayed, target=TARGET)
    return finish("sweep_efficiency", report, markdown, smoke=args.smoke)


if __name__ == "__main__":
    sys.exit(main())
