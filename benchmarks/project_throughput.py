"""Map projection throughput on one core, and the memory of a streamed `ingest --map`.

Measures :class:`cryotune.data.project.Projector` making references with each particle's CTF and
origin shift (the work `cryotune ingest --map` does per particle, twice: a scan pass and a write
pass), at 128 and 256 px, torch and OpenMP on one thread, best of a few repeats, in wall-clock and
in process CPU time (the steadier figure on a shared machine; the load average is recorded).
Then runs whole `ingest(..., map_path=...)` streams from a RELION 3.1 STAR file and an MRC stack
on disk at two stack sizes in fresh processes and records each one's peak resident memory: flat in
the stack size means the stack and the references are never held whole. Writes
``reports/benchmarks/project.json`` and the "project" section of
``reports/benchmarks/BENCHMARKS.md``. Target: 200 projections/s at 128 px (CPU time).

Example::

    .venv/bin/python benchmarks/project_throughput.py           # full run, writes the reports
    .venv/bin/python benchmarks/project_throughput.py --smoke   # seconds; prints, writes nothing
"""

from __future__ import annotations

import os

os.environ["OMP_NUM_THREADS"] = "1"  # before numpy and torch start their thread pools

import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import mrcfile  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import finish, load_average, machine, machine_line, parser, record, section, timings  # noqa: E402

from cryotune.data.ctf import CTF  # noqa: E402
from cryotune.data.geometry import quaternion_to_matrix, random_quaternions  # noqa: E402
from cryotune.data.mrc import StackWriter  # noqa: E402
from cryotune.data.project import Projector  # noqa: E402

TARGET = {"size": 128, "projections_per_s": 200}
PIXEL = 1.1  # not 1.0, which MRC headers use for 'unset': the map's voxel size is checked

# The child samples /proc/self/status: VmHWM is the peak resident set of its own address space
# (ru_maxrss would carry the parent's peak over fork and exec); RssAnon is the process's own
# memory and RssFile the pages of files it maps (the particle stack is read through a memory
# map: those pages are clean page cache that the kernel drops under pressure).
_CHILD = """
import os, sys, threading, time
os.environ["OMP_NUM_THREADS"] = "1"
import torch
torch.set_num_threads(1)
from cryotune.data.ingest import ingest
peak = {"RssAnon": 0, "RssFile": 0}
done = threading.Event()
def status():
    with open("/proc/self/status") as f:
        return {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in f)
                if k in ("VmHWM", "RssAnon", "RssFile")}
def sample():
    while not done.wait(0.02):
        now = status()
        for k in peak:
            peak[k] = max(peak[k], now[k])
watcher = threading.Thread(target=sample, daemon=True)
watcher.start()
wall, cpu = time.perf_counter(), time.process_time()
ingest(sys.argv[1], particles=sys.argv[2], map_path=sys.argv[3], ctf="apply",
       shard_rows=int(sys.argv[4]), test_fraction=0.05, overwrite=True)
wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
done.set()
watcher.join()
print(status()["VmHWM"], peak["RssAnon"], peak["RssFile"], wall, cpu)
"""


def _volume(size: int) -> np.ndarray:
    """A smooth random map: a few hundred Gaussian blobs (any content costs the same)."""
    rng = np.random.default_rng(0)
    zz, yy, xx = np.ogrid[:size, :size, :size]
    volume = np.zeros((size, size, size), np.float32)
    for x, y, z in rng.uniform(0.3 * size, 0.7 * size, (40, 3)):
        volume += np.exp(-((xx - x) ** 2 + (yy - y) ** 2 + (zz - z) ** 2) / 8.0).astype(np.float32)
    return volume


def _ctf(n: int, rng) -> CTF:
    du = rng.uniform(10000, 25000, n)
    return CTF.from_arrays(defocus_u=du, defocus_v=du - rng.uniform(0, 1500, n),
                           angle=rng.uniform(-90, 90, n), voltage_kv=300.0, cs_mm=2.7,
                           amplitude_contrast=0.1)


def rate(size: int, n: int, repeats: int) -> dict:
    rng = np.random.default_rng(1)
    start = time.process_time()
    projector = Projector(_volume(size))
    setup = time.process_time() - start
    R = quaternion_to_matrix(random_quaternions(n, rng))
    shifts, ctf = rng.uniform(-5, 5, (n, 2)), _ctf(n, rng)
    projector.project(R[:8], shifts_px=shifts[:8], ctf=ctf[:8], pixel_size=PIXEL)  # warm-up
    walls, cpus = timings(
        lambda: projector.project(R, shifts_px=shifts, ctf=ctf, pixel_size=PIXEL), repeats)
    return {"size": size, "projections": n, "setup_cpu_s": round(setup, 2),
            "projections_per_s": round(n / min(walls)),
            "projections_per_s_cpu": round(n / min(cpus))}


def _dataset(folder: Path, size: int, n: int) -> tuple[Path, Path]:
    """A RELION 3.1 STAR file with poses, origins and CTF, its noise stack, and the map."""
    rng = np.random.default_rng(2)
    with StackWriter(folder / "parts.mrcs", (n, size, size), PIXEL) as w:
        for a in range(0, n, 512):
            w.write(rng.standard_normal((min(512, n - a), size, size), dtype=np.float32))
    angles = np.column_stack([rng.uniform(-180, 180, n), rng.uniform(0, 180, n),
                              rng.uniform(-180, 180, n)])
    lines = [
        "data_optics\n\nloop_\n_rlnOpticsGroup #1\n_rlnImagePixelSize #2\n_rlnVoltage #3\n"
        f"_rlnSphericalAberration #4\n_rlnAmplitudeContrast #5\n1 {PIXEL} 300 2.7 0.1\n\n"
        "data_particles\n\nloop_\n_rlnImageName #1\n_rlnOpticsGroup #2\n_rlnAngleRot #3\n"
        "_rlnAngleTilt #4\n_rlnAnglePsi #5\n_rlnOriginXAngst #6\n_rlnOriginYAngst #7\n"
        "_rlnDefocusU #8\n_rlnDefocusV #9\n_rlnDefocusAngle #10\n"]
    ox, oy = rng.uniform(-4, 4, (2, n))
    du = rng.uniform(10000, 25000, n)
    lines += [f"{i + 1}@parts.mrcs 1 {a:.3f} {t:.3f} {p:.3f} {x:.2f} {y:.2f} {u:.1f} "
              f"{u - 300:.1f} 20\n" for i, ((a, t, p), x, y, u) in
              enumerate(zip(angles, ox, oy, du, strict=True))]
    (folder / "particles.star").write_text("".join(lines))
    with mrcfile.new(folder / "map.mrc", overwrite=True) as m:
        m.set_data(_volume(size))
        m.voxel_size = PIXEL
    return folder / "particles.star", folder / "map.mrc"


def streamed(size: int, n: int, shard_rows: int, workdir: Path) -> dict:
    folder = workdir / f"in-{size}-{n}"
    folder.mkdir()
    star, volume = _dataset(folder, size, n)
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    out = subprocess.run([sys.executable, "-c", _CHILD, str(workdir / f"ds-{size}-{n}"), str(star),
                          str(volume), str(shard_rows)], capture_output=True, text=True,
                         env=env, check=True)
    peak_kb, anon_kb, file_kb, wall, cpu = out.stdout.split()[-5:]
    stack_mb = n * size * size * 4 / 2**20
    shutil.rmtree(folder)  # the inputs; the store goes with the temporary folder
    return {"size": size, "particles": n, "shard_rows": shard_rows,
            "stack_mb": round(stack_mb, 1), "peak_rss_mb": round(int(peak_kb) / 1024),
            "peak_anon_mb": round(int(anon_kb) / 1024),
            "peak_file_mb": round(int(file_kb) / 1024),
            "wall_s": round(float(wall), 2), "cpu_s": round(float(cpu), 2),
            "particles_per_s_cpu": round(n / float(cpu), 1)}


def markdown(report: dict) -> str:
    t = report["target"]
    lines = [
        "## project: map projections per second on one core, and streamed ingest memory",
        "",
        f"`benchmarks/project_throughput.py`, {report['created']}: `Projector.project` (central "
        "slice of a padding-2 transform, trilinear, with each particle's origin shift and CTF), "
        f"torch and OpenMP on 1 thread, best of {report['repeats']} repeats, wall-clock / process "
        "CPU time. Setup: the map's padded transform, once per ingest.",
        "",
        "| size (px) | projections | projections/s (wall / CPU) | setup (CPU s) |",
        "|---|---|---|---|",
    ]
    for r in report["results"]:
        lines.append(f"| {r['size']} | {r['projections']} | {r['projections_per_s']} / "
                     f"{r['projections_per_s_cpu']} | {r['setup_cpu_s']} |")
    lines += [
        "",
        f"Target: {t['projections_per_s']} projections/s at {t['size']} px on one core, CPU "
        f"time: {'met' if t['met'] else 'not met'}.",
        "",
        "Streamed `ingest --map --ctf apply` (RELION 3.1 STAR file and MRC stack on disk, two "
        "passes: scan and write, Parquet store), each in a fresh process, against the stack "
        "size. Peak RSS is `VmHWM`; it counts the pages of the memory-mapped particle stack "
        "(`RssFile`, clean page cache the kernel reclaims), so the process's own memory is the "
        "sampled peak `RssAnon` (every 20 ms). It is bounded by the shard size: one read chunk "
        "of particles and references, their normalised copies, and the train, validation and "
        "test shard buffers (each up to `shard rows` pairs); every size here fills all three:",
        "",
        "| size (px) | particles | stack (MB) | shard rows | peak RSS (MB) | peak anon (MB) | "
        "peak file-mapped (MB) | wall (s) | CPU (s) | particles/s (CPU) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["streamed"]:
        lines.append(f"| {r['size']} | {r['particles']} | {r['stack_mb']} | {r['shard_rows']} | "
                     f"{r['peak_rss_mb']} | {r['peak_anon_mb']} | {r['peak_file_mb']} | "
                     f"{r['wall_s']} | {r['cpu_s']} | {r['particles_per_s_cpu']} |")
    lines += ["", machine_line(report["machine"], report["load_average_end"],
                               note="2 cores shared with other jobs: CPU-time figures are the "
                                    "per-core throughput")]
    return section("project", lines)


def main(argv=None) -> int:
    args = parser(__doc__).parse_args(argv)
    torch.set_num_threads(1)
    if args.smoke:
        plan, repeats, streams = [(32, 32), (48, 16)], 1, [(32, 40, 16), (32, 160, 16)]
    else:
        plan, repeats = [(128, 600), (256, 150)], 3
        # from 2,000 particles on, every split's shard buffer fills (64 rows: the test split's at
        # 1,280 particles), so the peak no longer depends on how many particles there are
        streams = [(128, 2000, 64), (128, 16000, 64), (256, 2000, 64), (256, 8000, 64)]
    host = machine()
    results = [rate(size, n, repeats) for size, n in plan]
    with tempfile.TemporaryDirectory() as tmp:
        stream = [streamed(size, n, rows, Path(tmp)) for size, n, rows in streams]
    at = next((r for r in results if r["size"] == TARGET["size"]), None)
    report = record(
        "project_throughput", host, threads=1, repeats=repeats, results=results,
        streamed=stream, load_average_end=load_average(),
        target={**TARGET, "basis": "Projector.project with CTF and shifts, CPU time",
                "met": at is not None
                and at["projections_per_s_cpu"] >= TARGET["projections_per_s"]})
    return finish("project", report, markdown, smoke=args.smoke)


if __name__ == "__main__":
    sys.exit(main())
