"""Trainer overhead inside a Tune trial: our Trainer fed by the DataPipeline against a bare loop.

A simulated 32 px store is trained on, one torch thread, batch 20, beta_gan + l1 (k_d 1, k_g 2):
by the bare PyTorch loop of ``benchmarks/train_throughput.py`` (``Bare``) on the same shards
read into memory, in this process; and by ``Trainer.train_epoch`` fed by
``DataPipeline.train_batches`` inside a Ray Tune function trainable (1 CPU), which reports each
epoch's images/s and its process CPU seconds. The two alternate (bare, trial, bare, trial, ...);
the trial's first epoch (worker start, first compilations) is left out; the figure is the ratio
of the medians of their images per second, wall-clock and CPU (the trial's own process: Ray
Data's workers are not in it). Target >= 0.95. 64 and 128 px are too slow on 2 shared cores:
``--size`` runs them where there is time. Writes ``reports/benchmarks/trainer_overhead.json``
and the "overhead" section of ``reports/benchmarks/BENCHMARKS.md``.

Example::

    .venv/bin/python benchmarks/trainer_overhead.py           # a few minutes; writes the reports
    .venv/bin/python benchmarks/trainer_overhead.py --smoke   # 16 px, seconds; prints only
"""

from __future__ import annotations

import os

os.environ["OMP_NUM_THREADS"] = "1"  # before numpy and torch start their thread pools

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from _common import REPORTS, load_average, machine, write_section  # noqa: E402  (same folder)
from train_throughput import Bare  # noqa: E402  (same folder: the bare loop of record)

from cryotune._ray import init_ray  # noqa: E402
from cryotune.config import TrainConfig  # noqa: E402
from cryotune.data.pipeline import DataPipeline  # noqa: E402
from cryotune.data.simulate import simulate  # noqa: E402
from cryotune.data.store import open_dataset  # noqa: E402
from cryotune.nn.train import Trainer  # noqa: E402

BEGIN, END = "<!-- overhead:begin -->", "<!-- overhead:end -->"
TARGET, BATCH = 0.95, 20


def config(width: int) -> TrainConfig:
    return TrainConfig(method="beta_gan", width=width, batch_size=BATCH, num_threads=1, device="cpu")


def trial(tune_config: dict, pipe: DataPipeline) -> None:
    """The Tune trial: Trainer fed by the pipeline, one report per epoch."""
    from ray import tune

    torch.set_num_threads(1)
    trainer = Trainer(config(tune_config["width"]), pipe.image_shape)
    for epoch in range(tune_config["epochs"]):
        cpu = time.process_time()
        metrics = trainer.train_epoch(pipe.train_batches(epoch, batch_size=BATCH, seed=0))
        record = {"epoch": epoch + 1, "images_per_s": metrics["images_per_s"],
                  "images": metrics["images_per_s"] * metrics["epoch_s"],
                  "cpu_s": time.process_time() - cpu}
        with open(tune_config["log"], "a") as f:  # this machine's folder: Tune's own result
            f.write(json.dumps(record) + "\n")  # files are switched off by the quiet env
        tune.report(record)


def run_trial(pipe: DataPipeline, width: int, epochs: int, storage: Path) -> list[dict]:
    import ray.cloudpickle
    from ray import tune

    if __name__ != "__main__":  # imported (tests, bench): Ray's workers cannot import this folder
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    storage.mkdir(parents=True, exist_ok=True)
    log = Path(tempfile.mkstemp(suffix=".jsonl", dir=storage)[1])
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(trial, pipe=pipe), {"cpu": 1}),
        param_space={"width": width, "epochs": epochs, "log": str(log)},
        tune_config=tune.TuneConfig(num_samples=1),
        run_config=tune.RunConfig(storage_path=str(storage), verbose=0))
    result = tuner.fit()[0]
    if result.error:
        raise result.error
    return [json.loads(line) for line in log.read_text().splitlines()]


def measure(size: int, width: int, n_train: int, epochs: int, repeats: int, tmp: Path) -> dict:
    path = simulate(tmp / f"data-{size}", size=size, n_train=n_train, n_test=BATCH, snr=0.1,
                    shard_rows=max(n_train // 4, 1), overwrite=True)
    init_ray(num_cpus=2)
    pipe = DataPipeline.from_store(path)
    rows = open_dataset(path).read("train", ["noisy", "clean"])
    noisy = torch.from_numpy(rows["noisy"]).unsqueeze(1)
    clean = torch.from_numpy(rows["clean"]).unsqueeze(1)
    batches = list(zip(noisy.split(BATCH), clean.split(BATCH), strict=True))
    bare = Bare(config(width), size)
    bare.epoch(batches[:1])  # warm-up
    runs: dict[str, list[tuple[float, float]]] = {"bare": [], "trial": []}
    for _ in range(repeats):
        for _ in range(epochs - 1):
            w, c = time.perf_counter(), time.process_time()
            bare.epoch(batches)
            runs["bare"].append((n_train / (time.perf_counter() - w), n_train / (time.process_time() - c)))
        for r in run_trial(pipe, width, epochs, tmp / "tune")[1:]:  # epoch 1: start-up
            runs["trial"].append((r["images_per_s"], r["images"] / r["cpu_s"]))
    out = {"size": size, "width": width, "images": n_train, "epochs_per_trial": epochs,
           "repeats": repeats}
    for clock, i in (("wall", 0), ("cpu", 1)):
        for name in ("bare", "trial"):
            out[f"{name}_images_per_s_{clock}"] = round(statistics.median(r[i] for r in runs[name]), 2)
        out[f"ratio_{clock}"] = round(out[f"trial_images_per_s_{clock}"] / out[f"bare_images_per_s_{clock}"], 3)
    return out


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        BEGIN,
        "## overhead: our Trainer fed by the pipeline in a Tune trial against a bare loop",
        "",
        f"`benchmarks/trainer_overhead.py`, {report['created']}: beta_gan + l1, batch {BATCH}, "
        "one torch thread; the bare loop of `train_throughput.py` on the same images in memory "
        "against `Trainer.train_epoch` on `DataPipeline.train_batches` inside a Tune trial "
        "(1 CPU); medians over interleaved repeats, the trial's first epoch left out. CPU: the "
        "trial's own process (Ray Data's workers not counted).",
        "",
        "| size (px) | width | images | bare images/s (wall / CPU) | trial images/s (wall / CPU) | ratio wall | ratio CPU |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        lines.append(f"| {r['size']} | {r['width']} | {r['images']} | {r['bare_images_per_s_wall']} / "
                     f"{r['bare_images_per_s_cpu']} | {r['trial_images_per_s_wall']} / "
                     f"{r['trial_images_per_s_cpu']} | {r['ratio_wall']} | {r['ratio_cpu']} |")
    met = all(r["ratio_wall"] >= TARGET for r in report["results"])
    lines += [
        "",
        f"Target ratio >= {TARGET} (wall): {'met' if met else 'not met'}. 64 and 128 px: not "
        "measured here (too slow on 2 shared cores; `--size 64 128`).",
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
    parser.add_argument("--size", type=int, nargs="+", default=[32], help="image sizes")
    parser.add_argument("--width", type=int, default=16, help="model width (16: the CPU preset)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    sizes, n_train, epochs, repeats = ([16], 40, 2, 1) if args.smoke else (args.size, 400, 4, 3)
    host = machine()
    with tempfile.TemporaryDirectory() as tmp:
        results = [measure(size, args.width, n_train, epochs, repeats, Path(tmp)) for size in sizes]
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
