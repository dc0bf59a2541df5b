"""Trainer overhead inside a Tune trial: a sweep's own trial against a bare PyTorch loop.

For each image size a simulated store is trained on with one torch thread, batch 20, beta_gan +
l1 (k_d 1, k_g 2): by the bare PyTorch loop of ``benchmarks/train_throughput.py`` (``Bare``) on
the same train images in memory, in this process; and by the sweep's own trial,
:func:`cryotune.sweep.trainable.run_trial`, in a Ray Tune function trainable (1 CPU) fed by the
study's DataPipeline. Each trial epoch trains, evaluates the test split (1/20 of the train
split), writes a checkpoint (``checkpoint_every`` 1, the default and the costliest) and
reports; a trial's epoch is the time between two epochs' ends, so it counts everything the trial
adds. Its CPU time is the trial process's (every thread of it; Ray Data's workers are other
processes), read from /proc as each result reaches the driver. The trial's first epoch (worker
start, first compilations) is left out. Bare runs and trials alternate (bare, trial, bare, ...);
the figure is the ratio of the medians of their images per second, wall-clock and CPU. Target
>= 0.95. Beside it: the trial's images/s on ``Trainer.train_epoch``'s own clock, and the
seconds per epoch outside it (test evaluation, checkpoint, report). Writes
``reports/benchmarks/trainer_overhead.json`` and the "overhead" section of
``reports/benchmarks/BENCHMARKS.md``.

Sizes, widths and epoch lengths (``SIZES``) keep one epoch at about 5 s on one core of a
2-core machine, and the whole run under 10 minutes there: 32 and 64 px at width 16 (the CPU
preset), 128 px at width 8 (half the time of width 16 per image there, 70,106 parameters
against 278,450).

Example::

    .venv/bin/python benchmarks/trainer_overhead.py             # 32, 64, 128 px; writes the reports
    .venv/bin/python benchmarks/trainer_overhead.py --size 32   # one size
    .venv/bin/python benchmarks/trainer_overhead.py --smoke     # 16 px, seconds; prints only
"""

from __future__ import annotations

import os

os.environ["OMP_NUM_THREADS"] = "1"  # before numpy and torch start their thread pools

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from _common import REPORTS, load_average, machine, write_section  # noqa: E402  (same folder)
from train_throughput import Bare  # noqa: E402  (same folder: the bare loop of record)

from cryotune._ray import init_ray  # noqa: E402
from cryotune.config import TrainConfig, to_dict  # noqa: E402
from cryotune.data.pipeline import DataPipeline  # noqa: E402
from cryotune.data.simulate import simulate  # noqa: E402
from cryotune.data.store import open_dataset  # noqa: E402

BEGIN, END = "<!-- overhead:begin -->", "<!-- overhead:end -->"
TARGET, BATCH = 0.95, 20
# size (px) -> (model width, train images per epoch): a few seconds per epoch on one core
SIZES = {32: (16, 400), 64: (16, 100), 128: (8, 40)}
EPOCHS, REPEATS = 4, 3  # epochs per trial (the first left out), interleaved repeats


def config(width: int, epochs: int = 1) -> TrainConfig:
    return TrainConfig(method="beta_gan", width=width, batch_size=BATCH, epochs=epochs,
                       num_threads=1, device="cpu")


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sweep_trial(pipe: DataPipeline, width: int, epochs: int, storage: Path) -> list[dict]:
    """One sweep trial (``run_trial``) on ``pipe``; its results with the process CPU seconds."""
    from ray import tune

    from cryotune.sweep import trainable

    class CpuClock(tune.Callback):
        def __init__(self):
            self.results: list[dict] = []

        def on_trial_result(self, iteration, trials, trial, result, **info):
            self.results.append({**result, "cpu_s": process_cpu_s(result["pid"])})

    clock = CpuClock()
    trial = {"dataset": "bench", "snr": None, "eps": 0.0, "contamination": "none",
             **to_dict(config(width, epochs))}
    fn = tune.with_parameters(trainable.run_trial, pipelines={"bench": pipe},
                              gallery={"bench": pipe.test_arrays()["noisy"][:8]},
                              threads=1, gpu_share=0.0)
    tuner = tune.Tuner(
        tune.with_resources(fn, {"cpu": 1}), param_space={"t": trial},
        tune_config=tune.TuneConfig(num_samples=1),
        run_config=tune.RunConfig(storage_path=str(storage), verbose=0, callbacks=[clock],
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=1)))
    result = tuner.fit()[0]
    if result.error:
        raise result.error
    return sorted(clock.results, key=lambda r: r["epoch"])


def trial_epochs(results: list[dict], images: int) -> list[dict]:
    """Per epoch after the first: wall and CPU seconds since the epoch before ended."""
    return [{"wall_s": b["ended_at"] - a["ended_at"], "cpu_s": b["cpu_s"] - a["cpu_s"],
             "train_s": b["epoch_s"], "images": images}
            for a, b in zip(results, results[1:], strict=False)]


def measure(size: int, width: int, n_train: int, epochs: int, repeats: int, tmp: Path) -> dict:
    path = simulate(tmp / f"data-{size}", size=size, n_train=n_train,
                    n_test=max(n_train // 20, 1), snr=0.1, shard_rows=max(n_train // 4, 1),
                    overwrite=True)
    init_ray(num_cpus=2)
    pipe = DataPipeline.from_store(path)
    rows = open_dataset(path).read("train", ["noisy", "clean"])
    noisy = torch.from_numpy(rows["noisy"]).unsqueeze(1)
    clean = torch.from_numpy(rows["clean"]).unsqueeze(1)
    batches = list(zip(noisy.split(BATCH), clean.split(BATCH), strict=True))
    bare = Bare(config(width), size)
    bare.epoch(batches[:1])  # warm-up
    runs: dict[str, list[dict]] = {"bare": [], "trial": []}
    for _ in range(repeats):
        for _ in range(epochs - 1):
            w, c = time.perf_counter(), time.process_time()
            bare.epoch(batches)
            runs["bare"].append({"wall_s": time.perf_counter() - w, "cpu_s": time.process_time() - c,
                                 "train_s": 0.0, "images": n_train})
        runs["trial"] += trial_epochs(sweep_trial(pipe, width, epochs, tmp / "tune"), n_train)
    out = {"size": size, "width": width, "images": n_train, "test_images": max(n_train // 20, 1),
           "epochs_per_trial": epochs, "repeats": repeats}
    for clock in ("wall", "cpu"):
        for name in ("bare", "trial"):
            out[f"{name}_images_per_s_{clock}"] = round(statistics.median(
                r["images"] / r[f"{clock}_s"] for r in runs[name]), 2)
        out[f"ratio_{clock}"] = round(out[f"trial_images_per_s_{clock}"] / out[f"bare_images_per_s_{clock}"], 3)
    trial = runs["trial"]
    out["trial_train_images_per_s_wall"] = round(statistics.median(r["images"] / r["train_s"] for r in trial), 2)
    out["trial_outside_train_s"] = round(statistics.median(r["wall_s"] - r["train_s"] for r in trial), 3)
    out["trial_epoch_s"] = round(statistics.median(r["wall_s"] for r in trial), 3)
    return out


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        BEGIN,
        "## overhead: a sweep's trial (Trainer, pipeline, Tune) against a bare loop",
        "",
        f"`benchmarks/trainer_overhead.py`, {report['created']}: beta_gan + l1, batch {BATCH}, "
        "one torch thread; the bare loop of `train_throughput.py` on the same train images in "
        "memory against the sweep's `run_trial` in a Tune trial (1 CPU) fed by the "
        "DataPipeline, each epoch training, evaluating the test split, checkpointing "
        "(`checkpoint_every` 1) and reporting. Trial epoch = time between two epochs' ends; "
        "medians over interleaved repeats, the trial's first epoch left out. CPU: the trial's "
        "own process, all its threads (Ray Data's workers not counted). Last two columns: the "
        "trial's images/s on `Trainer.train_epoch`'s own clock, and its seconds per epoch "
        "outside it (evaluation, checkpoint, report).",
        "",
        "| size (px) | width | train / test images | bare images/s (wall / CPU) | trial images/s (wall / CPU) | ratio wall | ratio CPU | trial train_epoch images/s | s per epoch outside |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        lines.append(f"| {r['size']} | {r['width']} | {r['images']} / {r['test_images']} | "
                     f"{r['bare_images_per_s_wall']} / {r['bare_images_per_s_cpu']} | "
                     f"{r['trial_images_per_s_wall']} / {r['trial_images_per_s_cpu']} | "
                     f"{r['ratio_wall']} | {r['ratio_cpu']} | {r['trial_train_images_per_s_wall']} | "
                     f"{r['trial_outside_train_s']} of {r['trial_epoch_s']} |")
    met = {clock: all(r[f"ratio_{clock}"] >= TARGET for r in report["results"]) for clock in ("wall", "cpu")}
    lines += [
        "",
        f"Target ratio >= {TARGET} at every size: {'met' if met['wall'] else 'not met'} in wall-clock "
        f"time, {'met' if met['cpu'] else 'not met'} in CPU time.",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['os']}; torch {m.get('torch')}. Load "
        f"average at start {', '.join(map(str, m['load_average']))}, at end "
        f"{', '.join(map(str, report['load_average_end']))} (a shared machine).",
        END,
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="16 px, tiny, print only")
    parser.add_argument("--size", type=int, nargs="+", choices=sorted(SIZES), default=sorted(SIZES),
                        help="image sizes (default: all)")
    parser.add_argument("--width", type=int, help="model width at every size (default: SIZES)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    # Tune warns on every run that its result files are off (the quiet environment) and that a
    # checkpoint every epoch forces experiment snapshots (as in a sweep): noise here
    logging.getLogger("ray.tune").setLevel(logging.ERROR)
    if args.smoke:
        groups, epochs, repeats = [(16, args.width or 8, 40)], 2, 1
    else:
        groups = [(z, args.width or SIZES[z][0], SIZES[z][1]) for z in args.size]
        epochs, repeats = EPOCHS, REPEATS
    host = machine()
    with tempfile.TemporaryDirectory() as tmp:
        results = []
        for size, width, images in groups:
            results.append(measure(size, width, images, epochs, repeats, Path(tmp)))
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    report = {
        "benchmark": "trainer_overhead",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": host, "load_average_end": load_average(), "results": results, "target": TARGET,
    }
    print(json.dumps(report, indent=1))
    if not args.smoke:
        REPORTS.mkdir(parents=True, exist_ok=True)
        (REPORTS / "trainer_overhead.json").write_text(json.dumps(report, indent=1) + "\n")
        write_section(REPORTS / "BENCHMARKS.md", markdown(report), BEGIN, END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
