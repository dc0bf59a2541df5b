"""Sweep efficiency: ASHA against the full grid on the same small space.

``search_spaces/smoke.yaml`` with overrides (16 px simulated pairs, width 8, a handful of method
x eps configurations, a few epochs) is swept twice through ``run_sweep``: with the FIFO scheduler
(every configuration to the last epoch: the grid) and with ASHA at the defaults a user gets
from ``scheduler: asha`` (:class:`cryotune.sweep.spec.Scheduler`; ``max_t`` = epochs). The
grid's best configuration is the one with the lowest final test MSE; ASHA finds it when its own
best finished trial has the same configuration, or one whose grid test MSE is within one
standard deviation (``test_mse_std``, over test images) of the grid's best. The figure is
ASHA's trial-epochs (every epoch every trial ran, so an upper bound on the epochs spent until
the find) over the grid's; target <= 35%. Beside it: the fraction synchronous successive
halving would spend at the same rungs (the limit for many configurations: asynchronous ASHA
lets the first trials to reach a rung go on against few rivals), how many configurations are
within one std of the best (how strict the find is), and the rank correlation over the grid's
configurations of each rung's test MSE with the final one (whether the rung's cut is
informed). Wall-clock and driver CPU seconds of each sweep and the load average are recorded.
Writes
``reports/benchmarks/sweep_efficiency.json`` and the "sweep" section of
``reports/benchmarks/BENCHMARKS.md``.

Example::

    .venv/bin/python benchmarks/sweep_efficiency.py           # a few minutes; writes the reports
    .venv/bin/python benchmarks/sweep_efficiency.py --smoke   # 2 configs x 1 epoch; prints only
"""

from __future__ import annotations

import os

os.environ["OMP_NUM_THREADS"] = "1"  # before numpy and torch start their thread pools

import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from _common import finish, load_average, machine, machine_line, parser, record, section  # noqa: E402

from cryotune.results import load_study  # noqa: E402
from cryotune.sweep.run import run_sweep  # noqa: E402
from cryotune.sweep.spec import Scheduler, load_spec  # noqa: E402

SPACE = Path(__file__).resolve().parent.parent / "search_spaces" / "smoke.yaml"
TARGET = 0.35
CONFIG = ("config.method", "config.alpha", "config.beta", "config.eps")
FULL = {"methods": [{"method": "l1_ae"}, {"method": "l2_ae"},
                    {"method": "beta_gan", "pairs": [[0.5, 0.5]], "p": 1},
                    {"method": "wgan_gp", "p": 1}],
        "eps": [0, 0.1, 0.2], "epochs": 9}
SMOKE = {"methods": [{"method": "l1_ae"}, {"method": "l2_ae"}], "eps": [0], "epochs": 1}


def sweep(storage: Path, name: str, preset: dict, scheduler: str):
    """Run one sweep (``fifo`` or ``asha`` at its defaults); returns its timings and study."""
    overrides = [f"name={name}", f"storage={storage}", f"epochs={preset['epochs']}",
                 f"methods={json.dumps(preset['methods'])}", f"eps={json.dumps(preset['eps'])}",
                 "checkpoint_every=0", f"scheduler={scheduler}"]
    spec = load_spec(SPACE, overrides=overrides)
    w, c = time.perf_counter(), time.process_time()
    outcome = run_sweep(spec)
    timing = {"wall_s": round(time.perf_counter() - w, 1),
              "driver_cpu_s": round(time.process_time() - c, 1), "counts": outcome.counts}
    return timing, load_study(outcome.study)


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


def compare(grid, asha) -> dict:
    """ASHA's trial-epochs over the grid's, and whether ASHA's best is the grid's best."""
    grid = grid[grid["status"] == "finished"]
    best = grid.loc[grid["test_mse"].idxmin()]
    by_config = {key(row): row for _, row in grid.iterrows()}
    done = asha[asha["status"] == "finished"]
    pick = done.loc[done["test_mse"].idxmin()]
    pick_grid_mse = float(by_config[key(pick)]["test_mse"])
    found = key(pick) == key(best) or pick_grid_mse <= best["test_mse"] + best["test_mse_std"]
    grid_epochs, asha_epochs = int(grid["epochs"].sum()), int(asha["epochs"].sum())
    return {"configs": len(grid), "grid_trial_epochs": grid_epochs,
            "asha_trial_epochs": asha_epochs, "fraction": round(asha_epochs / grid_epochs, 3),
            "grid_best": dict(zip(CONFIG, key(best), strict=True)),
            "grid_best_test_mse": float(best["test_mse"]),
            "grid_best_test_mse_std": float(best["test_mse_std"]),
            "asha_best": dict(zip(CONFIG, key(pick), strict=True)),
            "asha_best_grid_test_mse": pick_grid_mse, "same_config": key(pick) == key(best),
            "found": bool(found), "asha_epochs_per_trial": sorted(int(e) for e in asha["epochs"]),
            "configs_within_std": int((grid["test_mse"] <= best["test_mse"] + best["test_mse_std"]).sum())}


def label(config: dict) -> str:
    """``beta_gan (0.5, 0.5), eps 0.2`` from the stringified config columns."""
    ab = f" ({config['config.alpha']}, {config['config.beta']})" if config["config.alpha"] != "nan" else ""
    return f"{config['config.method']}{ab}, eps {config['config.eps']}"


def markdown(report: dict) -> str:
    r, m, a = report["results"], report["machine"], report["scheduler"]
    met = r["found"] and r["fraction"] <= TARGET
    corr = ", ".join(f"epoch {e}: {c:+.2f}" for e, c in a["rank_correlation"].items())
    lines = [
        "## sweep: ASHA against the full grid",
        "",
        f"`benchmarks/sweep_efficiency.py`, {report['created']}: `search_spaces/smoke.yaml` "
        f"(16 px, width 8) with {r['configs']} method x eps configurations, "
        f"{report['epochs']} epochs; ASHA at the spec defaults: grace period {a['grace_period']}, "
        f"reduction factor {a['reduction_factor']:g}, so it judges at epochs "
        f"{', '.join(map(str, a['rungs']))}.",
        "",
        "| sweep | trial-epochs | wall s | driver CPU s |",
        "|---|---|---|---|",
        f"| grid (FIFO) | {r['grid_trial_epochs']} | {report['grid']['wall_s']} | "
        f"{report['grid']['driver_cpu_s']} |",
        f"| ASHA | {r['asha_trial_epochs']} | {report['asha']['wall_s']} | "
        f"{report['asha']['driver_cpu_s']} |",
        "",
        f"Grid best: {label(r['grid_best'])} (test MSE {r['grid_best_test_mse']:.5g} +- "
        f"{r['grid_best_test_mse_std']:.2g}); ASHA's best: {label(r['asha_best'])} (grid test MSE "
        f"{r['asha_best_grid_test_mse']:.5g}; {'same configuration' if r['same_config'] else 'another configuration'}"
        f", {'within' if r['found'] else 'not within'} one std). ASHA spent "
        f"{100 * r['fraction']:.1f}% of the grid's trial-epochs (target <= {100 * TARGET:g}%): "
        f"{'met' if met else 'not met'}.",
        "",
        f"Synchronous successive halving at the same rungs would spend "
        f"{100 * a['synchronous_fraction']:.1f}%, the limit with many configurations; with "
        f"{r['configs']} the first trials to reach a rung go on against few rivals. "
        f"{r['configs_within_std']} of {r['configs']} configurations are within one std of the "
        f"grid's best. Rank correlation over the grid's configurations of the test MSE at each "
        f"rung with the final one: {corr or 'no rungs'}.",
        "",
        machine_line(m, report["load_average_end"]),
    ]
    return section("sweep", lines)


def main(argv=None) -> int:
    args = parser(__doc__, smoke="2 configs x 1 epoch, print only").parse_args(argv)
    preset = SMOKE if args.smoke else FULL
    host = machine()
    with tempfile.TemporaryDirectory() as tmp:
        grid_t, grid = sweep(Path(tmp), "grid", preset, "fifo")
        asha_t, asha = sweep(Path(tmp), "asha", preset, "asha")
        defaults, epochs = Scheduler(), preset["epochs"]
        at = rungs(defaults.grace_period, defaults.reduction_factor, epochs)
        scheduler = {"grace_period": defaults.grace_period,
                     "reduction_factor": defaults.reduction_factor, "rungs": at,
                     "synchronous_fraction": synchronous_fraction(
                         defaults.grace_period, defaults.reduction_factor, epochs),
                     "rank_correlation": rank_correlations(grid, at)}
        results = compare(grid.trials, asha.trials)
    report = record("sweep_efficiency", host, epochs=epochs, load_average_end=load_average(),
                    scheduler=scheduler, grid=grid_t, asha=asha_t, results=results,
                    target=TARGET)
    return finish("sweep_efficiency", report, markdown, smoke=args.smoke)


if __name__ == "__main__":
    sys.exit(main())
