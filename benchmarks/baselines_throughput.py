"""Classical baseline throughput on one core: images per second at 32 and 64 px.

Each baseline (non-local means, K-SVD, the covariance Wiener filter, BM3D when its extra is
installed) denoises one stack of projections of the built-in molecule (five conformations,
uniform views) with white noise at SNR 0.1, clean images normalised to [0, 1], sigma known.
Timings are wall-clock and process CPU time (the fairer figure on a shared machine) of one
``denoise`` call over the whole stack, so they include what each method learns from the stack
(K-SVD's dictionary, the CWF's covariance). BM3D runs on a slice of the stack: it costs about
half a CPU second per image. The MSE of the noisy and the denoised stack against the clean one
is recorded as a sanity check. Writes ``reports/benchmarks/baselines.json`` and the
"baselines" section of ``reports/benchmarks/BENCHMARKS.md`` (other sections are kept).

Example::

    .venv/bin/python benchmarks/baselines_throughput.py           # full run, writes the reports
    .venv/bin/python benchmarks/baselines_throughput.py --smoke   # seconds; prints, writes nothing
"""

from __future__ import annotations

import os

os.environ["OMP_NUM_THREADS"] = "1"  # before numpy starts its thread pool

import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from _common import finish, machine, machine_line, parser, record, section  # noqa: E402

from cryotune.baselines import BASELINES, make_baseline  # noqa: E402
from cryotune.data.geometry import quaternion_to_matrix, random_quaternions  # noqa: E402
from cryotune.data.molecules import builtin_conformations  # noqa: E402
from cryotune.data.simulate import fit_pixel_size, project  # noqa: E402
from cryotune.errors import MissingExtra  # noqa: E402

MARKS = ("<!-- baselines -->", "<!-- /baselines -->")
SNR = 0.1
METHODS = ("nlm", "ksvd", "cwf", "bm3d")


def particles(n: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, float]:
    """(clean, noisy, sigma): projections of the built-in molecule at SNR 0.1, clean in [0, 1]."""
    rng = np.random.default_rng(seed)
    confs = builtin_conformations(5)
    px = fit_pixel_size(confs, size)
    rotations = quaternion_to_matrix(random_quaternions(n, rng))
    which = rng.integers(0, len(confs), n)
    clean = np.empty((n, size, size), np.float64)
    for k, atoms in enumerate(confs):
        if (which == k).any():
            clean[which == k] = project(atoms, rotations[which == k], size, px)
    clean = (clean - clean.min()) / (clean.max() - clean.min())
    sigma = float(np.sqrt(clean.var() / SNR))
    noisy = clean + rng.normal(0.0, sigma, clean.shape)
    return clean.astype(np.float32), noisy.astype(np.float32), sigma


def mse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))


def measure(method: str, clean: np.ndarray, noisy: np.ndarray, sigma: float) -> dict:
    row = {"method": method, "name": BASELINES[method].name, "size": clean.shape[1],
           "images": len(clean)}
    try:
        baseline = make_baseline(method)
    except MissingExtra as err:
        return {**row, "skipped": str(err)}
    wall, cpu = time.perf_counter(), time.process_time()
    out = baseline.denoise(noisy, sigma=sigma)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {**row, "params": baseline.params(), "seconds": round(wall, 2),
            "images_per_s": round(len(clean) / wall, 1),
            "images_per_s_cpu": round(len(clean) / cpu, 1),
            "mse_noisy": round(mse(noisy, clean), 5), "mse_denoised": round(mse(out, clean), 5),
            "mse_factor": round(mse(noisy, clean) / mse(out, clean), 1)}


def markdown(report: dict) -> str:
    lines = [
        "## baselines: images per second on one core",
        "",
        f"`benchmarks/baselines_throughput.py`, {report['created']}: one `denoise` call per "
        f"baseline on a stack of built-in-molecule projections at SNR {SNR} (clean in [0, 1], "
        "sigma known), OpenMP on 1 thread. The time includes what the method learns from the "
        "stack (K-SVD's dictionary, the CWF's covariance), so K-SVD and the CWF get faster per "
        "image on bigger stacks. BM3D runs on the first few images only (about half a CPU "
        "second each). CPU: images per second of process CPU time. MSE factor: noisy MSE over "
        "denoised MSE.",
        "",
        "| baseline | size (px) | images | images/s | images/s (CPU) | MSE noisy | MSE denoised "
        "| MSE factor |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        if "skipped" in r:
            lines.append(f"| {r['name']} | {r['size']} | - | skipped: {r['skipped']} | | | | |")
            continue
        lines.append(f"| {r['name']} | {r['size']} | {r['images']} | {r['images_per_s']} | "
                     f"{r['images_per_s_cpu']} | {r['mse_noisy']:.4f} | {r['mse_denoised']:.5f} | "
                     f"{r['mse_factor']} |")
    lines += [
        "",
        machine_line(report["machine"], note="a shared machine: wall figures vary, CPU figures less"),
    ]
    return section("baselines", lines, MARKS)


def main(argv=None) -> int:
    args = parser(__doc__).parse_args(argv)
    host = machine(extras=("bm3d", "aspire"))
    # (size, images for nlm/ksvd/cwf, images for bm3d)
    plan = [(32, 32, 2)] if args.smoke else [(32, 512, 16), (64, 512, 16)]
    results = []
    for size, n, n_bm3d in plan:
        clean, noisy, sigma = particles(n, size)
        for method in METHODS:
            count = n_bm3d if method == "bm3d" else n
            results.append(measure(method, clean[:count], noisy[:count], sigma))
            print(json.dumps(results[-1]), flush=True)
    report = record("baselines_throughput", host, threads=1, snr=SNR, results=results)
    return finish("baselines", report, markdown, smoke=args.smoke)


if __name__ == "__main__":
    sys.exit(main())
