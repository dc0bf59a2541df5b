"""Reconstruction throughput on one core: images per second into 64^3 and 128^3 volumes.

Times :func:`cryotune.validate.reconstruct.reconstruct` on random poses and images (the work
does not depend on the pixels): the default (trilinear gridding, padding 2, chunks of 32) and,
for comparison, nearest gridding and no padding; each the best of a few repeats, in wall-clock
and in process CPU time (the fairer figure on a shared machine; the load average is recorded).
On a machine with CUDA the default is timed on the GPU too. Writes
``reports/benchmarks/reconstruct.json`` and the "reconstruct" section of
``reports/benchmarks/BENCHMARKS.md`` (other sections are kept). Target: 5,000 images at 64 px in
under 30 s on one core.

Example::

    .venv/bin/python benchmarks/reconstruct_throughput.py           # about 3 minutes; writes the reports
    .venv/bin/python benchmarks/reconstruct_throughput.py --smoke   # seconds; prints, writes nothing
"""

from __future__ import annotations

import os

os.environ["OMP_NUM_THREADS"] = "1"  # before numpy and torch start their thread pools

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import machine, write_section  # noqa: E402  (same folder)

from cryotune.data.geometry import quaternion_to_matrix, random_quaternions  # noqa: E402
from cryotune.validate.reconstruct import reconstruct  # noqa: E402

REPORTS = Path(__file__).resolve().parent.parent / "reports" / "benchmarks"
TARGET = {"size": 64, "images": 5000, "seconds": 30.0}
BEGIN, END = "<!-- reconstruct:begin -->", "<!-- reconstruct:end -->"
# (size, images, interpolation, pad, device)
PLAN = [(64, 5000, "trilinear", 2, "cpu"), (64, 5000, "nearest", 2, "cpu"),
        (64, 5000, "trilinear", 1, "cpu"), (128, 1000, "trilinear", 2, "cpu"),
        (128, 1000, "nearest", 2, "cpu")]
SMOKE = [(32, 200, "trilinear", 2, "cpu"), (64, 50, "nearest", 2, "cpu")]


def measure(size: int, n: int, interpolation: str, pad: int, device: str, repeats: int) -> dict:
    rng = np.random.default_rng(0)
    rotations = quaternion_to_matrix(random_quaternions(n, rng))
    images = rng.standard_normal((n, size, size), dtype=np.float32)
    chunk = 32 if device == "cpu" else 512

    def run():
        reconstruct(images, rotations, interpolation=interpolation, pad=pad, device=device,
                    chunk=chunk)

    if device == "cuda":
        run()  # CUDA context and kernel loading: not part of the rate
    walls, cpus = [], []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        w, c = time.perf_counter(), time.process_time()
        run()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    grid_mb = (pad * size + 2) ** 3 * 12 / 2**20  # complex64 values + float32 weights
    return {"size": size, "images": n, "interpolation": interpolation, "pad": pad,
            "device": device, "chunk": chunk, "seconds": round(min(walls), 2),
            "cpu_seconds": round(min(cpus), 2), "images_per_s": round(n / min(walls)),
            "images_per_s_cpu": round(n / min(cpus)), "grid_mb": round(grid_mb)}


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        BEGIN,
        "## reconstruct: images per second into a volume, one core",
        "",
        f"`benchmarks/reconstruct_throughput.py`, {report['created']}: direct Fourier inversion "
        "(`cryotune.validate.reconstruct`) of random images at random poses, torch and OpenMP on "
        f"1 thread, best of {report['repeats']} repeats. The default is trilinear gridding with "
        "padding 2; nearest gridding and no padding are coarser (see the module docstring). "
        "CPU: the same work per second of process CPU time. Grid: the two accumulators.",
        "",
        "| volume | images | gridding | pad | device | seconds | images/s | images/s (CPU) "
        "| grid (MB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        lines.append(f"| {r['size']}^3 | {r['images']} | {r['interpolation']} | {r['pad']} | "
                     f"{r['device']} | {r['seconds']} | {r['images_per_s']} | "
                     f"{r['images_per_s_cpu']} | {r['grid_mb']} |")
    t = report["target"]
    lines += [
        "",
        f"Target: {t['images']} images at {t['size']} px in under {t['seconds']:g} s on one core "
        f"(default settings): {t['measured_cpu_s']} s of one core's CPU time "
        f"({'met' if t['met_cpu'] else 'not met'}), {t['measured_s']} s wall "
        f"({'met' if t['met_wall'] else 'not met'}) while sharing the machine's cores at the "
        "load below.",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['os']}; Python {m['python']}, "
        f"numpy {m['numpy']}, torch {m['torch']}. Load average at start "
        f"{', '.join(map(str, m['load_average']))} (a shared machine: wall figures vary, "
        f"CPU figures less). GPU: {report['gpu'] or 'none on this machine'}.",
        END,
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny run, print only")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    plan, repeats = (SMOKE, 1) if args.smoke else (PLAN, 2)
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    if gpu:
        plan = plan + [(size, n, "trilinear", 2, "cuda") for size, n in ((64, 5000), (128, 1000))]
    host = machine()
    results = [measure(*step, repeats) for step in plan]
    report = {
        "benchmark": "reconstruct_throughput",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "threads": 1, "repeats": repeats, "machine": host, "gpu": gpu, "results": results,
    }
    at = next((r for r in results if (r["size"], r["interpolation"], r["pad"], r["device"])
               == (TARGET["size"], "trilinear", 2, "cpu")), None)
    if at is not None:
        scale = TARGET["images"] / at["images"]
        report["target"] = {**TARGET, "measured_s": round(at["seconds"] * scale, 1),
                            "measured_cpu_s": round(at["cpu_seconds"] * scale, 1),
                            "met_cpu": at["cpu_seconds"] * scale < TARGET["seconds"],
                            "met_wall": at["seconds"] * scale < TARGET["seconds"]}
    print(json.dumps(report, indent=1))
    if not args.smoke:
        REPORTS.mkdir(parents=True, exist_ok=True)
        (REPORTS / "reconstruct.json").write_text(json.dumps(report, indent=1) + "\n")
        write_section(REPORTS / "BENCHMARKS.md", markdown(report), BEGIN, END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
