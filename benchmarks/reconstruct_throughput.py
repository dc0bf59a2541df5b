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

import sys  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import finish, machine, machine_line, parser, record, section, timings  # noqa: E402

from cryotune.data.geometry import quaternion_to_matrix, random_quaternions  # noqa: E402
from cryotune.validate.reconstruct import reconstruct  # noqa: E402

TARGET = {"size": 64, "images": 5000, "seconds": 30.0}
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
                    chunk=chunk)  # returns host arrays: the GPU's work is done when it returns

    if device == "cuda":
        run()  # CUDA context and kernel loading: not part of the rate
        torch.cuda.synchronize()
    walls, cpus = timings(run, repeats)
    grid_mb = (pad * size + 2) ** 3 * 12 / 2**20  # complex64 values + float32 weights
    return {"size": size, "images": n, "interpolation": interpolation, "pad": pad,
            "device": device, "chunk": chunk, "seconds": round(min(walls), 2),
            "cpu_seconds": round(min(cpus), 2), "images_per_s": round(n / min(walls)),
            "images_per_s_cpu": round(n / min(cpus)), "grid_mb": round(grid_mb)}


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
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
        machine_line(m, note="a shared machine: wall figures vary, CPU figures less")
        + f" GPU: {report['gpu'] or 'none on this machine'}.",
    ]
    return section("reconstruct", lines)


def main(argv=None) -> int:
    args = parser(__doc__).parse_args(argv)
    torch.set_num_threads(1)
    plan, repeats = (SMOKE, 1) if args.smoke else (PLAN, 2)
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    if gpu:
        plan = plan + [(size, n, "trilinear", 2, "cuda") for size, n in ((64, 5000), (128, 1000))]
    host = machine()
    results = [measure(*step, repeats) for step in plan]
    report = record("reconstruct_throughput", host, threads=1, repeats=repeats, gpu=gpu,
                    results=results)
    at = next((r for r in results if (r["size"], r["interpolation"], r["pad"], r["device"])
               == (TARGET["size"], "trilinear", 2, "cpu")), None)
    if at is not None:
        scale = TARGET["images"] / at["images"]
        report["target"] = {**TARGET, "measured_s": round(at["seconds"] * scale, 1),
                            "measured_cpu_s": round(at["cpu_seconds"] * scale, 1),
                            "met_cpu": at["cpu_seconds"] * scale < TARGET["seconds"],
                            "met_wall": at["seconds"] * scale < TARGET["seconds"]}
    return finish("reconstruct", report, markdown, smoke=args.smoke)


if __name__ == "__main__":
    sys.exit(main())
