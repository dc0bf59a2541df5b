"""Simulation throughput on one core: images per second at 64 and 128 px, built-in molecule.

Measures the exact projection alone (``project``) and the whole ``simulate()`` run (projection,
statistics pass, noise, normalisation, Parquet shards with checksums), each the best of a few
repeats, in wall-clock and in process CPU time (the fairer figure on a shared machine; the load
average is recorded too). Writes ``reports/benchmarks/simulate.json`` and the "simulate" section
of ``reports/benchmarks/BENCHMARKS.md`` (other sections are kept). Target: 1,000 images/s at
64 px.

Example::

    .venv/bin/python benchmarks/simulate_throughput.py           # full run, writes the reports
    .venv/bin/python benchmarks/simulate_throughput.py --smoke   # seconds; prints, writes nothing
"""

from __future__ import annotations

import os

os.environ["OMP_NUM_THREADS"] = "1"  # before numpy and torch start their thread pools

import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import finish, machine, machine_line, parser, record, section, timings  # noqa: E402

from cryotune.data.geometry import quaternion_to_matrix, random_quaternions  # noqa: E402
from cryotune.data.molecules import builtin_conformations  # noqa: E402
from cryotune.data.simulate import fit_pixel_size, project, simulate  # noqa: E402
from cryotune.data.store import DatasetWriter  # noqa: E402

TARGET = {"size": 64, "images_per_s": 1000}


def best(fn, repeats: int) -> tuple[float, float]:
    """Best wall and best CPU seconds of ``repeats`` calls."""
    walls, cpus = timings(fn, repeats)
    return min(walls), min(cpus)


def measure(size: int, n: int, repeats: int, workdir: Path) -> dict:
    confs = builtin_conformations(5)
    px = fit_pixel_size(confs, size)
    R = quaternion_to_matrix(random_quaternions(n, np.random.default_rng(0)))
    project(confs[0], R[:8], size, px)  # warm-up
    p_wall, p_cpu = best(lambda: project(confs[0], R, size, px), repeats)

    def run():
        simulate(workdir / f"sim-{size}", size=size, n_train=n, n_test=0, snr=0.1,
                 overwrite=True)

    s_wall, s_cpu = best(run, repeats)
    pairs = np.random.default_rng(1).random((2, n, size, size), dtype=np.float32)

    def store():  # the DatasetWriter's share of simulate: the same rows, already made
        with DatasetWriter(workdir / f"store-{size}", name="bench", kind="simulated",
                           image_shape=(size, size), pixel_size=px, overwrite=True) as w:
            for a in range(0, n, 512):
                w.add("train", id=np.arange(a, min(a + 512, n)), clean=pairs[0, a:a + 512],
                      noisy=pairs[1, a:a + 512])
            w.commit()

    w_wall, w_cpu = best(store, repeats)
    return {"size": size, "pixel_size": px, "images": n, "atoms": len(confs[0]),
            "project_images_per_s": round(n / p_wall), "project_images_per_s_cpu": round(n / p_cpu),
            "simulate_images_per_s": round(n / s_wall), "simulate_images_per_s_cpu": round(n / s_cpu),
            "store_images_per_s": round(n / w_wall), "store_images_per_s_cpu": round(n / w_cpu),
            "simulate_without_store_images_per_s_cpu": round(n / max(s_cpu - w_cpu, 1e-9))}


def markdown(report: dict) -> str:
    m, t = report["machine"], report["target"]
    lines = [
        "## simulate: images per second on one core",
        "",
        f"`benchmarks/simulate_throughput.py`, {report['created']}: built-in molecule "
        f"({report['results'][0]['atoms']} Gaussian pseudo-atoms), torch and OpenMP on 1 thread, "
        f"best of {report['repeats']} repeats, wall-clock / process CPU time. `project`: the "
        "exact projections alone. `simulate`: the whole `simulate()` (projection, statistics "
        "pass, noise, normalisation, Parquet shards with sha256). `store`: `DatasetWriter` "
        "alone on the same number of ready-made pairs; `sim - store`: simulate's CPU time "
        "without the store's.",
        "",
        "| size (px) | pixel (A) | images | project/s | simulate/s | store/s | sim - store/s (CPU) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r['size']} | {r['pixel_size']} | {r['images']} | "
            f"{r['project_images_per_s']} / {r['project_images_per_s_cpu']} | "
            f"{r['simulate_images_per_s']} / {r['simulate_images_per_s_cpu']} | "
            f"{r['store_images_per_s']} / {r['store_images_per_s_cpu']} | "
            f"{r['simulate_without_store_images_per_s_cpu']} |")
    lines += [
        "",
        f"Target: {t['images_per_s']} images/s at {t['size']} px on one core, whole simulate, "
        f"CPU time: {'met' if t['met'] else 'not met'}.",
        "",
        machine_line(m, note="a shared machine: wall-clock figures are below what one idle core "
                     "gives; CPU-time figures are the per-core throughput"),
    ]
    return section("simulate", lines)


def main(argv=None) -> int:
    args = parser(__doc__).parse_args(argv)
    torch.set_num_threads(1)
    plan = [(64, 64, 1), (128, 32, 1)] if args.smoke else [(64, 3000, 3), (128, 1000, 3)]
    host = machine()
    with tempfile.TemporaryDirectory() as tmp:
        results = [measure(size, n, repeats, Path(tmp)) for size, n, repeats in plan]
    at_target = next(r for r in results if r["size"] == TARGET["size"])
    report = record(
        "simulate_throughput", host, threads=1, repeats=plan[0][2], results=results,
        target={**TARGET, "basis": "simulate, CPU time",
                "met": at_target["simulate_images_per_s_cpu"] >= TARGET["images_per_s"]})
    return finish("simulate", report, markdown, smoke=args.smoke)


if __name__ == "__main__":
    sys.exit(main())
