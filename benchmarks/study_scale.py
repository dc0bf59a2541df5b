"""Study store and report at scale: a synthetic study of 10,000 trials x 100 epochs.

The study looks like a large Fig. 5 sweep (six methods, (alpha, beta) pairs, lambda, three
contamination types x eps, seeds, two SNRs) with plausible metrics and a 100-epoch history per
trial. Rows and histories are built by ``cryotune.study.store.StudyStore``'s own flattening and
written by its own table writer (one history part file a trial, as a sweep writes them), but the
trials table once at the end: ``record_trial`` rewrites the whole trials table on every call,
so its cost at the study's size is measured separately (a few calls into a fresh study, and one
call into the full one). Then, wall-clock beside process CPU time, medians of a few repeats:
the history read from the 10,000 part files (a study no sweep session closed), one
``StudyStore.compact_history`` (what a sweep does when it ends), and on the compacted study
``load_study`` (trials table), the history (read on first use), ``Study.query`` (target < 1 s),
``Study.summary`` and ``cryotune.report.render`` alone and from a fresh ``load_study`` with its
history, as ``cryotune report`` runs it (target < 10 s). Last, a live sweep between two
compactions: 1,000 trials re-recorded as parts beside the compacted file, history and report.
Writes ``reports/benchmarks/study_scale.json`` and the "study" section of
``reports/benchmarks/BENCHMARKS.md``.

Example::

    .venv/bin/python benchmarks/study_scale.py           # a few minutes; writes the reports
    .venv/bin/python benchmarks/study_scale.py --smoke   # 200 trials x 10 epochs; prints only
    .venv/bin/python benchmarks/study_scale.py --profile # cProfile of render, top 25 by cumtime
"""

from __future__ import annotations

import argparse
import cProfile
import datetime
import itertools
import json
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import REPORTS, load_average, machine, write_section  # same folder

from cryotune.report import render
from cryotune.study.store import StudyStore
from cryotune.study.tables import load_study

BEGIN, END = "<!-- study:begin -->", "<!-- study:end -->"
TARGETS = {"query_s": 1.0, "report_s": 10.0}
QUERY = "method == 'beta_gan' and eps > 0.1 and contamination == 'C'"
METHODS = (("l2_ae", None, None, 2), ("l1_ae", None, None, 1), ("js_gan", 0.0, 0.0, 1),
           ("wgan", None, None, 1), ("wgan_gp", None, None, 1), ("beta_gan", 0.5, 0.5, 1),
           ("beta_gan", 1.0, 1.0, 1), ("beta_gan", -0.5, 0.5, 1))
EPS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4)


def configs(n: int):
    """``n`` trial configs cycling through a Fig. 5-like grid."""
    grid = itertools.product(range(n), METHODS, ("A", "B", "C"), EPS, (0.1, 0.05), (1.0, 10.0))
    for i, (seed, (method, alpha, beta, p), kind, eps, snr, lam) in zip(range(n), grid, strict=False):
        yield i, {"method": method, "alpha": alpha, "beta": beta, "lambda": lam, "p": p,
                  "eps": eps, "contamination": kind, "seed": seed, "snr": snr,
                  "dataset": f"sim-32-snr{snr:g}", "width": 16, "epochs": 100}


def trial(i: int, config: dict, epochs: int, rng: np.random.Generator) -> tuple[dict, list[dict]]:
    """A finished trial's row and history with decaying, noisy metrics."""
    base = 0.01 * (1 + config["eps"] * (2 if config["method"].endswith("_ae") else 0.5))
    e = np.arange(1, epochs + 1)
    mse = base * (1 + 2 / e) * (1 + 0.05 * rng.standard_normal(epochs))
    history = [{"epoch": int(k), "test_mse": float(m), "test_mse_std": float(0.3 * m),
                "test_psnr": float(-10 * np.log10(m)), "test_psnr_std": 1.0,
                "test_ssim": float(1 - 20 * m), "test_ssim_std": 0.05, "train_mse": float(1.1 * m),
                "d_loss": float(rng.random()), "g_adv": float(rng.random()),
                "g_rec": float(m), "epoch_s": 2.0}
               for k, m in zip(e, mse, strict=True)]
    final = {k: v for k, v in history[-1].items() if k not in ("epoch", "epoch_s")}
    best = int(np.argmin(mse))
    row = {"trial_id": f"t{i:05d}", "status": "finished", "config": config, "metrics": final,
           "best_epoch": best + 1, "select_metric": "val_mse_median",
           "select_score": float(mse[best]), "test_mse_at_best": float(mse[best]),
           "epochs": epochs, "wall_s": 2.0 * epochs, "error": None, "node_id": "node-0"}
    return row, history


def build(root: Path, trials: int, epochs: int) -> dict:
    """Write the synthetic study; returns the write timings."""
    rng = np.random.default_rng(0)
    store = StudyStore(root, "scale")
    store.write_spec({"name": "scale", "select": {"metric": "val_mse_median", "mode": "min"}, "epochs": epochs})
    w, c = time.perf_counter(), time.process_time()
    for i, config in configs(trials):
        row, history = trial(i, config, epochs, rng)
        store._write_history(row["trial_id"], history)
        store._rows[row["trial_id"]] = store._flatten_row(row)
    store._write_trials()
    out = {"write_s": round(time.perf_counter() - w, 2), "write_cpu_s": round(time.process_time() - c, 2)}
    calls = 5  # record_trial as the sweep calls it, into a fresh study and into the full one
    fresh = StudyStore(root, "fresh")
    w = time.perf_counter()
    for i, config in configs(calls):
        fresh.record_trial(*trial(i, config, epochs, rng))
    out["record_trial_fresh_s"] = round((time.perf_counter() - w) / calls, 4)
    row, history = trial(trials, next(configs(1))[1], epochs, rng)
    w, c = time.perf_counter(), time.process_time()
    StudyStore(root, "scale").record_trial(row, history)
    out["record_trial_full_s"] = round(time.perf_counter() - w, 3)
    out["record_trial_full_cpu_s"] = round(time.process_time() - c, 3)
    return out


def median_time(fn, repeats: int) -> tuple[float, float]:
    walls, cpus = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return round(statistics.median(walls), 3), round(statistics.median(cpus), 3)


def measure(root: Path, trials: int, epochs: int, repeats: int) -> dict:
    path = root / "scale"
    out = {}
    # the 10,000 part files as the sweep wrote them
    out["load_history_parts_s"], out["load_history_parts_cpu_s"] = median_time(
        lambda: load_study(path).history, repeats)
    parts = load_study(path).history
    w, c = time.perf_counter(), time.process_time()
    out["compacted_files"] = StudyStore(root, "scale").compact_history()
    out["compact_s"] = round(time.perf_counter() - w, 3)
    out["compact_cpu_s"] = round(time.process_time() - c, 3)
    study = load_study(path)
    out |= {"trials": len(study.trials), "history_rows": len(study.history),
            "history_files": len(list((path / "history.parquet").iterdir()))}
    if not study.history.equals(parts):
        raise RuntimeError("the compacted history differs from the parts' history")
    steps = {
        "load_study": lambda: load_study(path),
        "load_history": lambda: load_study(path).history,
        "query": lambda: study.query(QUERY),
        "summary": lambda: study.summary(by=("method", "contamination", "eps")),
        "render": lambda: render(study),
        "report": lambda: render(load_study(path)),  # as `cryotune report` does: history included
    }
    for name, fn in steps.items():
        out[f"{name}_s"], out[f"{name}_cpu_s"] = median_time(fn, repeats)
    out["render_chars"] = len(render(study))
    # a live sweep between two compactions: parts (here retried trials) beside the merged file
    rng = np.random.default_rng(1)
    store = StudyStore(root, "scale")
    live = min(1000, trials // 10)
    for i, config in configs(live):
        store._write_history(*_history_of(trial(i, config, epochs, rng)))
    out["live_parts"] = live
    for name, fn in (("load_history_live", steps["load_history"]), ("report_live", steps["report"])):
        out[f"{name}_s"], out[f"{name}_cpu_s"] = median_time(fn, repeats)
    return out


def _history_of(row_history: tuple[dict, list[dict]]) -> tuple[str, list[dict]]:
    row, history = row_history
    return row["trial_id"], history


def markdown(report: dict) -> str:
    r, m, w = report["results"], report["machine"], report["write"]
    lines = [
        BEGIN,
        f"## study: store and report at {r['trials']:,} trials x {report['epochs']} epochs",
        "",
        f"`benchmarks/study_scale.py`, {report['created']}: a synthetic Fig. 5-like study "
        f"({r['history_rows']:,} history rows), medians of {report['repeats']} repeats, "
        "seconds wall-clock / process CPU. The history is written one part file a trial, as a "
        f"sweep writes it, then merged by `StudyStore.compact_history` ({r['compacted_files']:,} "
        f"files into {r['history_files']}), as a sweep does when it ends.",
        "",
        "| step | seconds (wall / CPU) | target |",
        "|---|---|---|",
        f"| write (histories one file a trial, trials table once) | {w['write_s']} / {w['write_cpu_s']} | |",
        f"| `record_trial`, one call into a fresh study | {w['record_trial_fresh_s']} | |",
        f"| `record_trial`, one call into the full study | {w['record_trial_full_s']} / "
        f"{w['record_trial_full_cpu_s']} | |",
        f"| `load_study(...).history` from {r['compacted_files']:,} part files | "
        f"{r['load_history_parts_s']} / {r['load_history_parts_cpu_s']} | |",
        f"| `StudyStore.compact_history()`: {r['compacted_files']:,} files into one | "
        f"{r['compact_s']} / {r['compact_cpu_s']} | |",
    ]
    rows = (("load_study", "`load_study` (trials table)"),
            ("load_history", "`load_study(...).history` (all epochs), compacted"),
            ("query", f"`Study.query(\"{QUERY}\")`"),
            ("summary", "`Study.summary(by=(method, contamination, eps))`"),
            ("render", "`cryotune.report.render` (history already loaded)"),
            ("report", "`render(load_study(...))`: the whole report, compacted"),
            ("load_history_live", f"`load_study(...).history`, live: {r['live_parts']:,} parts "
                                  "(retried trials) beside the compacted file"),
            ("report_live", "`render(load_study(...))`, live"))
    for key, label in rows:
        target = {"query": "< 1 s", "report": "< 10 s", "report_live": "< 10 s"}.get(key, "")
        if target:
            limit = TARGETS["query_s" if key == "query" else "report_s"]
            wall, cpu = (r[f"{key}{s}"] < limit for s in ("_s", "_cpu_s"))
            target += f": {'met' if wall else 'not met'} in wall time, {'met' if cpu else 'not met'} in CPU time"
        lines.append(f"| {label} | {r[f'{key}_s']} / {r[f'{key}_cpu_s']} | {target} |")
    lines += [
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['os']}; Python {m['python']}. Load average "
        f"at start {', '.join(map(str, m['load_average']))}, at end "
        f"{', '.join(map(str, report['load_average_end']))} (a shared machine).",
        END,
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="200 trials x 10 epochs, print only")
    parser.add_argument("--profile", action="store_true", help="cProfile render, print only")
    args = parser.parse_args(argv)
    trials, epochs, repeats = (200, 10, 1) if args.smoke else (10_000, 100, 3)
    host = machine()
    with tempfile.TemporaryDirectory() as tmp:
        write = build(Path(tmp), trials, epochs)
        if args.profile:
            study = load_study(Path(tmp) / "scale")
            cProfile.runctx("render(study)", globals(), {"study": study}, str(Path(tmp) / "prof"))
            pstats.Stats(str(Path(tmp) / "prof")).sort_stats("cumulative").print_stats(25)
            return 0
        results = measure(Path(tmp), trials, epochs, repeats)
    report = {
        "benchmark": "study_scale",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "epochs": epochs, "repeats": repeats, "query": QUERY, "machine": host,
        "load_average_end": load_average(), "write": write, "results": results, "targets": TARGETS,
    }
    print(json.dumps(report, indent=1))
    if not (args.smoke or args.profile):
        REPORTS.mkdir(parents=True, exist_ok=True)
        (REPORTS / "study_scale.json").write_text(json.dumps(report, indent=1) + "\n")
        write_section(REPORTS / "BENCHMARKS.md", markdown(report), BEGIN, END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
