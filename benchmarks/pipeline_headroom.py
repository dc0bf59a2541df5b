"""Pipeline headroom: images per second the Ray Data pipeline delivers against plain reads.

A simulated 32 px store with Parquet and MRC shards is read epoch by epoch with type C
contamination at eps 0.2, batch 20: through ``DataPipeline.train_batches`` (streaming the shards
each epoch in both formats, and from the object store when materialized, as trials run on small
stores) and through a plain loop over the same shards (pyarrow ``read_table`` / numpy memory
maps of the MRC stacks, the same ``contaminate`` call, torch views of each batch): the limit on
this machine. One trial's consumption is ``Trainer.train_epoch`` of a narrow model (width 4) on
in-memory batches; headroom = pipeline images/s / consumption (target >= 10). Data wait: the
same Trainer fed by the pipeline, the time blocked in the batch iterator over the epoch's wall
time (target <= 2%), twice: one ``train_batches`` iterator per epoch (each epoch waits for Ray
Data to start it), and ``train_epochs`` as trials use it (each epoch started while the one
before trains; two epochs per run, the second measured, as every epoch of a trial after its
first). Every figure is the median of interleaved repeats, wall-clock beside the driver's
process CPU time (Ray's workers are other processes); the load average is recorded.
Writes ``reports/benchmarks/pipeline_headroom.json`` and the "pipeline" section of
``reports/benchmarks/BENCHMARKS.md``.

Example::

    .venv/bin/python benchmarks/pipeline_headroom.py           # ~5 minutes on 2 busy cores; writes the reports
    .venv/bin/python benchmarks/pipeline_headroom.py --smoke   # seconds; prints, writes nothing
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
from collections.abc import Callable, Iterable, Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402
from _common import REPORTS, load_average, machine, write_section  # noqa: E402  (same folder)

from cryotune._ray import init_ray  # noqa: E402
from cryotune.config import TrainConfig  # noqa: E402
from cryotune.data.contamination import contaminate  # noqa: E402
from cryotune.data.mrc import open_stack  # noqa: E402
from cryotune.data.pipeline import DataPipeline  # noqa: E402
from cryotune.data.shards import table_to_numpy  # noqa: E402
from cryotune.data.simulate import simulate  # noqa: E402
from cryotune.data.store import open_dataset  # noqa: E402
from cryotune.nn.train import Trainer  # noqa: E402

BEGIN, END = "<!-- pipeline:begin -->", "<!-- pipeline:end -->"
EPS, KIND, BATCH, SEED = 0.2, "C", 20, 0
TARGETS = {"headroom": 10.0, "data_wait": 0.02}


def timed(fn: Callable[[], int]) -> tuple[float, float, int]:
    """(wall s, process CPU s, images) of one call of ``fn`` returning its image count."""
    w, c = time.perf_counter(), time.process_time()
    n = fn()
    return time.perf_counter() - w, time.process_time() - c, n


def plain_epoch(store, fmt: str) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The train shards read without Ray: contaminated like the pipeline, batched as tensors."""
    for shard in store.shard_files("train", fmt):
        if fmt == "parquet":
            cols = table_to_numpy(pq.read_table(shard, columns=["id", "noisy", "clean"]))
            ids, noisy, clean = cols["id"], cols["noisy"], cols["clean"]
        else:
            ids = table_to_numpy(pq.read_table(shard.meta, columns=["id"]))["id"]
            with open_stack(shard.noisy) as a, open_stack(shard.clean) as b:
                noisy, clean = a.read(), b.read()
        noisy, clean, _ = contaminate(noisy, clean, ids, eps=EPS, kind=KIND, seed=SEED,
                                      stats=store.stats())
        for i in range(0, len(ids), BATCH):
            yield (torch.from_numpy(noisy[i:i + BATCH]).unsqueeze(1),
                   torch.from_numpy(clean[i:i + BATCH]).unsqueeze(1))


def count(batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> int:
    return sum(noisy.shape[0] for noisy, _ in batches)


class WaitClock:
    """Wraps a batch iterator and adds up the time spent blocked in ``next``."""

    def __init__(self, batches: Iterable):
        self.batches, self.wait, self.first = batches, 0.0, None

    def __iter__(self):
        it = iter(self.batches)
        while True:
            start = time.perf_counter()
            try:
                item = next(it)
            except StopIteration:
                self.wait += time.perf_counter() - start
                return
            self.wait += time.perf_counter() - start
            if self.first is None:  # the epoch's start-up: Ray Data plans and launches the reads
                self.first = self.wait
            yield item


def measure(n_train: int, shard_rows: int, repeats: int, width: int, workdir: Path) -> dict:
    path = simulate(workdir / "data", size=32, n_train=n_train, n_test=BATCH, snr=0.1,
                    formats=("parquet", "mrc"), shard_rows=shard_rows, overwrite=True)
    store = open_dataset(path)
    init_ray(num_cpus=2)
    pipes = {"parquet": DataPipeline.from_store(path, fmt="parquet", materialize=False),
             "mrc": DataPipeline.from_store(path, fmt="mrc", materialize=False),
             "materialized": DataPipeline.from_store(path, fmt="parquet", materialize=True)}
    cfg = TrainConfig(method="beta_gan", width=width, batch_size=BATCH, num_threads=1, device="cpu")
    trainer = Trainer(cfg, (32, 32))
    memory = list(plain_epoch(store, "parquet"))
    epoch = iter(range(10**6))

    def pipeline(name):
        return lambda: count(pipes[name].train_batches(next(epoch), batch_size=BATCH, eps=EPS,
                                                      kind=KIND, seed=SEED))

    def trained_with_wait():
        clock = WaitClock(pipes["materialized"].train_batches(next(epoch), batch_size=BATCH,
                                                              eps=EPS, kind=KIND, seed=SEED))
        start = time.perf_counter()
        trainer.train_epoch(clock)
        seconds = time.perf_counter() - start
        waits["plain"].append(clock.wait / seconds)
        firsts["plain"].append(clock.first / seconds)
        return n_train

    def trained_ahead_with_wait():
        numbers = [next(epoch), next(epoch)]
        with pipes["materialized"].train_epochs(numbers, batch_size=BATCH, eps=EPS, kind=KIND,
                                                seed=SEED) as epochs:
            for i, (_, batches) in enumerate(epochs):
                clock = WaitClock(batches)
                start = time.perf_counter()
                trainer.train_epoch(clock)
                seconds = time.perf_counter() - start
                if i:  # the first started with nothing to overlap, as a trial's first epoch
                    waits["ahead"].append(clock.wait / seconds)
                    firsts["ahead"].append(clock.first / seconds)
        return 2 * n_train

    cases = {f"pipeline_{name}": pipeline(name) for name in pipes}
    cases |= {f"plain_{fmt}": (lambda fmt=fmt: count(plain_epoch(store, fmt)))
              for fmt in ("parquet", "mrc")}
    cases["trainer_in_memory"] = lambda: trainer.train_epoch(memory) and n_train
    cases["trainer_on_pipeline"] = trained_with_wait
    cases["trainer_on_pipeline_ahead"] = trained_ahead_with_wait
    waits: dict[str, list[float]] = {"plain": [], "ahead": []}
    firsts: dict[str, list[float]] = {"plain": [], "ahead": []}
    for fn in cases.values():  # warm-up: Ray workers, first compilations
        fn()
    for runs_of in (*waits.values(), *firsts.values()):
        runs_of.clear()
    runs: dict[str, list] = {name: [] for name in cases}
    for _ in range(repeats):  # interleaved
        for name, fn in cases.items():
            runs[name].append(timed(fn))
    out = {}
    for name, rs in runs.items():
        out[name] = {"images_per_s": round(statistics.median(n / w for w, _, n in rs), 1),
                     "images_per_s_cpu": round(statistics.median(n / c for _, c, n in rs), 1)}
    consumed = out["trainer_in_memory"]["images_per_s"]
    for name in pipes:
        out[f"pipeline_{name}"]["headroom"] = round(out[f"pipeline_{name}"]["images_per_s"] / consumed, 1)
    for key, name in (("plain", "trainer_on_pipeline"), ("ahead", "trainer_on_pipeline_ahead")):
        out[name]["data_wait"] = round(statistics.median(waits[key]), 4)
        out[name]["data_wait_runs"] = [round(x, 4) for x in waits[key]]
        out[name]["first_batch_wait"] = round(statistics.median(firsts[key]), 4)
    return out


def markdown(report: dict) -> str:
    r, m = report["results"], report["machine"]
    worst = min(r[f"pipeline_{k}"]["headroom"] for k in ("parquet", "mrc", "materialized"))
    lines = [
        BEGIN,
        "## pipeline: Ray Data headroom and data wait (32 px, type C at eps 0.2, batch 20)",
        "",
        f"`benchmarks/pipeline_headroom.py`, {report['created']}: {report['images']} train "
        f"images in {report['shard_rows']}-row shards, medians of {report['repeats']} interleaved repeats, "
        "images/s wall-clock / driver process CPU (Ray's workers run in other processes, so "
        "the CPU figure of a pipeline row is the driver's share only). One trial's consumption: "
        f"`Trainer.train_epoch`, beta_gan, width {report['width']}, in-memory batches.",
        "",
        "| source | images/s (wall / driver CPU) | headroom over one trial |",
        "|---|---|---|",
    ]
    for key, label in (("pipeline_parquet", "pipeline, Parquet, streamed"),
                       ("pipeline_mrc", "pipeline, MRC, streamed"),
                       ("pipeline_materialized", "pipeline, object store (materialized)"),
                       ("plain_parquet", "plain pyarrow read_table"),
                       ("plain_mrc", "plain MRC memory maps"),
                       ("trainer_in_memory", "one trial consumes (in memory)"),
                       ("trainer_on_pipeline", "one trial fed by the pipeline, epoch by epoch"),
                       ("trainer_on_pipeline_ahead", "one trial fed by the pipeline, epochs started ahead")):
        row = r[key]
        lines.append(f"| {label} | {row['images_per_s']} / {row['images_per_s_cpu']} | "
                     f"{row.get('headroom', '')} |")
    plain, ahead = r["trainer_on_pipeline"], r["trainer_on_pipeline_ahead"]
    wait = ahead["data_wait"]
    lines += [
        "",
        f"Headroom target >= {TARGETS['headroom']:g}x: {'met' if worst >= TARGETS['headroom'] else 'not met'} "
        f"(lowest {worst}x). Data wait (time blocked in the batch iterator / epoch wall time, "
        f"object-store pipeline), with each epoch started while the one before trains "
        f"(`train_epochs`, as trials run): {100 * wait:.2f}% against <= "
        f"{100 * TARGETS['data_wait']:g}%: {'met' if wait <= TARGETS['data_wait'] else 'not met'}; "
        f"of which the wait for the epoch's first batch: {100 * ahead['first_batch_wait']:.2f}%. "
        f"One `train_batches` iterator per epoch, which waits for Ray Data to start each epoch: "
        f"{100 * plain['data_wait']:.2f}%, of which the first batch {100 * plain['first_batch_wait']:.2f}%.",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['os']}; Python {m['python']}, torch "
        f"{m.get('torch')}. Load average at start {', '.join(map(str, m['load_average']))}, at "
        f"end {', '.join(map(str, report['load_average_end']))} (a shared machine).",
        END,
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny run, print only")
    parser.add_argument("--width", type=int, default=4, help="the trial's model width")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    n_train, shard_rows, repeats = (256, 128, 1) if args.smoke else (2048, 512, 3)
    host = machine()
    with tempfile.TemporaryDirectory() as tmp:
        results = measure(n_train, shard_rows, repeats, args.width, Path(tmp))
    report = {
        "benchmark": "pipeline_headroom",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "images": n_train, "shard_rows": shard_rows, "repeats": repeats, "width": args.width, "eps": EPS, "kind": KIND,
        "batch": BATCH, "machine": host, "load_average_end": load_average(), "results": results,
        "targets": TARGETS,
    }
    print(json.dumps(report, indent=1))
    if not args.smoke:
        REPORTS.mkdir(parents=True, exist_ok=True)
        (REPORTS / "pipeline_headroom.json").write_text(json.dumps(report, indent=1) + "\n")
        write_section(REPORTS / "BENCHMARKS.md", markdown(report), BEGIN, END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
