"""Projected references streamed in chunks: 100,000 particles at 256 px in flat memory.

`cryotune ingest --map` makes each particle's clean reference by projecting the map at its pose
with its CTF and origin shift, a chunk of particles at a time. This benchmark runs exactly that
work (:class:`cryotune.data.project.Projector` with per-particle poses, shifts and CTFs drawn
like a refinement's) for 100,000 particles at 256 px on one thread, and samples the process's
own peak resident memory (``VmHWM`` of ``/proc/self/status``) and anonymous memory after every
10,000: a peak that stops growing after the first chunk means no reference is kept once made.
(The stack side of ingest, read through a memory map, is measured in ``project_throughput``.)
Writes ``reports/benchmarks/project_stream.json`` and the "project_stream" section of
``reports/benchmarks/BENCHMARKS.md``.

Example::

    .venv/bin/python benchmarks/project_stream.py           # full run (~10 CPU-minutes)
    .venv/bin/python benchmarks/project_stream.py --smoke   # seconds; prints, writes nothing
"""

from __future__ import annotations

import os

os.environ["OMP_NUM_THREADS"] = "1"  # before numpy and torch start their thread pools

import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import finish, load_average, machine, machine_line, parser, record, section  # noqa: E402
from project_throughput import PIXEL, _ctf, _volume  # noqa: E402

from cryotune.data.geometry import quaternion_to_matrix, random_quaternions  # noqa: E402
from cryotune.data.project import Projector  # noqa: E402


def _memory_mb() -> dict[str, float]:
    with open("/proc/self/status") as f:
        fields = dict(line.split(":", 1) for line in f)
    return {k: int(fields[k].split()[0]) / 1024 for k in ("VmHWM", "RssAnon")}


def stream(size: int, n: int, chunk: int, every: int) -> dict:
    """Project ``n`` references at ``size`` px in chunks; memory sampled every ``every``."""
    rng = np.random.default_rng(0)
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    projector = Projector(_volume(size))
    setup = {"cpu_s": round(time.process_time() - start_cpu, 1),
             **{k: round(v, 1) for k, v in _memory_mb().items()}}
    samples, done, checksum = [], 0, 0.0
    while done < n:
        m = min(chunk, n - done)
        R = quaternion_to_matrix(random_quaternions(m, rng))
        images = projector.project(R, shifts_px=rng.uniform(-5, 5, (m, 2)), ctf=_ctf(m, rng),
                                   pixel_size=PIXEL)
        checksum += float(np.asarray(images, dtype=np.float64).sum())  # used, then dropped
        crossed = (done + m) // every > done // every or done + m == n
        done += m
        if crossed:
            samples.append({"particles": done, **{k: round(v, 1) for k, v in _memory_mb().items()},
                            "cpu_s": round(time.process_time() - start_cpu, 1)})
    wall, cpu = time.perf_counter() - start_wall, time.process_time() - start_cpu
    return {"size": size, "particles": n, "chunk": chunk, "setup": setup, "samples": samples,
            "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
            "projections_per_s_cpu": round(n / cpu), "finite": bool(np.isfinite(checksum))}


def markdown(report: dict) -> str:
    r = report["result"]
    first, last = r["samples"][0], r["samples"][-1]
    rows = "\n".join(f"| {s['particles']:,} | {s['VmHWM']:,.0f} | {s['RssAnon']:,.0f} | "
                     f"{s['cpu_s']:,.0f} |" for s in r["samples"])
    return section("project_stream", [
        "## Projected references streamed in chunks (`benchmarks/project_stream.py`)",
        "",
        f"{r['particles']:,} references at {r['size']} px (with CTF and shifts), chunks of "
        f"{r['chunk']}: {r['cpu_s']:,.0f} CPU-s ({r['projections_per_s_cpu']}/s), "
        f"{r['wall_s']:,.0f} s wall. The map's padded transform takes "
        f"{r['setup']['VmHWM']:,.0f} MB before the first projection; the peak after the first "
        f"{first['particles']:,} is {first['VmHWM']:,.0f} MB and after {last['particles']:,} "
        f"{last['VmHWM']:,.0f} MB.",
        "",
        "| particles | peak RSS (MB) | anonymous RSS (MB) | CPU s |",
        "|---|---|---|---|",
        rows,
        "",
        f"{machine_line(report['machine'], report['load_average_end'])} One thread.",
    ])


def main(argv=None) -> int:
    args = parser(__doc__).parse_args(argv)
    torch.set_num_threads(1)
    size, n, chunk, every = (32, 2000, 256, 500) if args.smoke else (256, 100_000, 256, 10_000)
    host = machine()  # its load average is the start's
    result = stream(size, n, chunk, every)
    report = record("project_stream", host, threads=1, result=result,
                    load_average_end=load_average())
    return finish("project_stream", report, markdown, smoke=args.smoke)


if __name__ == "__main__":
    sys.exit(main())
