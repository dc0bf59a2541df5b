"""Simulate clean/noisy cryo-EM image pairs of a molecule in several conformations.

The molecule is the built-in RNA-polymerase-like claw (Gaussian pseudo-atoms; the clamp opens
over K evenly spaced hinge angles, no download) or your PDB files, one per conformation. Views
are uniform random rotations, images centred; projections are exact. With --ctf each image gets
a weak-phase CTF (RELION conventions) at a random defocus. Gaussian noise is added at the given
SNR = var(clean) / var(noise), real space, whole box. Clean images are normalised to [0, 1] over
the dataset and the noisy ones by the same map. Poses, conformations (and defocus) are stored
with every image, the atoms of each conformation under truth/.

The pixel size defaults to one that fits the molecule in every view with a 15% margin.
--val-fraction (default 0.1) adds validation pairs, as a fraction of the train pairs: studies
contaminate them like the training pairs and select on them; the test split is only reported.

--as-relion writes what a RELION 3D refinement gives instead of a store: the map
(run_class001.mrc, the closed conformation, voxel size set), a RELION 3.1 particles.star with
poses, origins and CTF, and the noisy particles (--n-train + --n-test of them) in
Particles/*.mrcs, each the map projected at its pose, times its CTF (always applied), plus
noise at --snr. `cryotune ingest --map` then makes a store of it, as of a user's own data.

Example usage:
    cryotune simulate data/rnap-32
    cryotune simulate data/rnap-128 --size 128 --n-train 20000 --n-test 5000 --snr 0.05
    cryotune simulate data/rnap-64 --size 64 --n-train 2000 --val-fraction 0.2
    cryotune simulate data/rnap-ctf --size 64 --ctf --defocus-min 8000 --defocus-max 20000 --format both
    cryotune simulate data/taq --pdb closed.pdb mid.pdb open.pdb --ca-only --pixel-size 2.5 --size 96
    cryotune simulate example/relion --as-relion --size 32 --n-train 800 --n-test 400
"""

from __future__ import annotations

import argparse

from cryotune.data.ctf import CTFParams
from cryotune.data.store import open_dataset
from cryotune.errors import BadInput

FORMATS = {"parquet": ("parquet",), "mrc": ("mrc",), "both": ("parquet", "mrc")}


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", metavar="OUT", help="the dataset folder to create")
    parser.add_argument("--size", type=int, default=32, metavar="PX",
                        help="image side in pixels, at least 16 (default: 32)")
    parser.add_argument("--pixel-size", type=float, default=None, metavar="A",
                        help="Angstrom per pixel (default: fit the molecule in the box)")
    parser.add_argument("--n-train", type=int, default=400, metavar="N",
                        help="train images (default: 400)")
    parser.add_argument("--n-test", type=int, default=100, metavar="N",
                        help="test images (default: 100)")
    parser.add_argument("--val-fraction", type=float, default=0.1, metavar="F",
                        help="validation pairs, as a fraction of the train pairs and made in "
                             "addition to them; studies select on them; 0 makes none, and studies "
                             "then hold out 10%% of the train pairs "
                             "(default: 0.1)")
    parser.add_argument("--snr", type=float, default=0.1,
                        help="var(clean) / var(noise), e.g. 0.1 or 0.05 (default: 0.1)")
    parser.add_argument("--conformations", type=int, default=None, metavar="K",
                        help="conformations of the built-in model (default: 5)")
    parser.add_argument("--pdb", nargs="+", default=None, metavar="FILE",
                        help="PDB files, one per conformation, instead of the built-in model")
    parser.add_argument("--ca-only", action="store_true",
                        help="with --pdb: C-alpha atoms only (faster, lower resolution)")
    ctf = parser.add_argument_group("CTF (off unless --ctf)")
    ctf.add_argument("--ctf", action="store_true", help="apply a CTF to every image")
    ctf.add_argument("--defocus-min", type=float, default=10_000.0, metavar="A",
                     help="lowest defocus, underfocus positive (default: 10000)")
    ctf.add_argument("--defocus-max", type=float, default=25_000.0, metavar="A",
                     help="highest defocus (default: 25000)")
    ctf.add_argument("--voltage", type=float, default=300.0, metavar="KV",
                     help="acceleration voltage (default: 300)")
    ctf.add_argument("--cs", type=float, default=2.7, metavar="MM",
                     help="spherical aberration (default: 2.7)")
    ctf.add_argument("--amplitude-contrast", type=float, default=0.1, metavar="Q0",
                     help="amplitude contrast fraction (default: 0.1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random draw")
    parser.add_argument("--format", choices=sorted(FORMATS), default="parquet",
                        help="store format (default: parquet)")
    parser.add_argument("--shard-rows", type=int, default=1024,
                        help="images per shard file (default: 1024)")
    parser.add_argument("--name", default=None, help="dataset name (default: OUT's folder name)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    parser.add_argument("--as-relion", action="store_true",
                        help="write a map, a RELION 3.1 STAR file with poses and CTF, and noisy "
                             "particle stacks instead of a store (built-in molecule, closed)")


def _command_line(args: argparse.Namespace) -> str:
    """The resolved command line (every option, defaults included), for the manifest."""
    import shlex

    parts = ["cryotune", "simulate", args.out, "--size", str(args.size), "--n-train",
             str(args.n_train), "--n-test", str(args.n_test), "--val-fraction",
             str(args.val_fraction), "--snr", str(args.snr),
             "--seed", str(args.seed), "--format", args.format, "--shard-rows", str(args.shard_rows)]
    for flag, value in (("--pixel-size", args.pixel_size), ("--conformations", args.conformations),
                        ("--name", args.name)):
        if value is not None:
            parts += [flag, str(value)]
    if args.pdb:
        parts += ["--pdb", *args.pdb]
    if args.ctf:
        parts += ["--ctf", "--defocus-min", str(args.defocus_min), "--defocus-max",
                  str(args.defocus_max), "--voltage", str(args.voltage), "--cs", str(args.cs),
                  "--amplitude-contrast", str(args.amplitude_contrast)]
    parts += [flag for flag, on in (("--ca-only", args.ca_only), ("--overwrite", args.overwrite)) if on]
    return shlex.join(parts)


def main(args: argparse.Namespace) -> int:
    import time

    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from cryotune.data.simulate import simulate  # torch: only when it runs

    if args.as_relion:
        return _as_relion(args)
    ctf = None
    if args.ctf:
        ctf = CTFParams(defocus_min=args.defocus_min, defocus_max=args.defocus_max,
                        voltage_kv=args.voltage, cs_mm=args.cs,
                        amplitude_contrast=args.amplitude_contrast)
    labels = {"project": "projecting (statistics)", "write": "adding noise, writing"}
    start = time.perf_counter()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), console=Console(stderr=True), transient=True) as bar:
        tasks: dict[str, int] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(labels.get(stage, stage), total=total)
            bar.update(tasks[stage], completed=done)

        path = simulate(
            args.out, size=args.size, pixel_size=args.pixel_size, n_train=args.n_train,
            n_test=args.n_test, snr=args.snr, conformations=args.conformations, pdb=args.pdb,
            ca_only=args.ca_only, ctf=ctf, seed=args.seed, formats=FORMATS[args.format],
            shard_rows=args.shard_rows, overwrite=args.overwrite, name=args.name,
            command=_command_line(args), progress=progress, val_fraction=args.val_fraction)
    seconds = time.perf_counter() - start
    ds = open_dataset(path, verify=False)
    m, g = ds.manifest, ds.manifest["generator"]
    n = ds.count("train") + ds.count("val") + ds.count("test")
    model = "built-in hinged clamp" if g["model"] != "pdb" else f"{len(g['pdb'])} PDB files"
    print(f"dataset: {path}")
    print(f"  {ds.count('train')} train + {ds.count('val')} validation + {ds.count('test')} test pairs of {args.size}x{args.size} px "
          f"at {ds.pixel_size:g} A/px ({', '.join(ds.formats)})")
    print(f"  molecule: {model}, {m['conformations']} conformations, {max(g['atoms'])} atoms")
    print(f"  SNR: target {m['snr']:g}, measured {m['snr_measured']:.4g}; CTF: "
          + ("no" if ctf is None else f"defocus {ctf.defocus_min:g}-{ctf.defocus_max:g} A, "
             f"{ctf.voltage_kv:g} kV, Cs {ctf.cs_mm:g} mm, Q0 {ctf.amplitude_contrast:g}"))
    print(f"  {n} pairs in {seconds:.1f} s ({n / seconds:.0f} pairs/s)")
    return 0


def _as_relion(args: argparse.Namespace) -> int:
    from cryotune.data.example import write_relion_example

    if args.pdb or args.conformations is not None or args.format != "parquet":
        raise BadInput("--as-relion writes the built-in molecule's closed conformation as files",
                       "--as-relion", "leave out --pdb, --conformations and --format")
    n = args.n_train + args.n_test
    paths = write_relion_example(
        args.out, size=args.size, n=n, snr=args.snr, pixel_size=args.pixel_size,
        defocus_min=args.defocus_min, defocus_max=args.defocus_max, voltage_kv=args.voltage,
        cs_mm=args.cs, amplitude_contrast=args.amplitude_contrast, seed=args.seed,
        overwrite=args.overwrite)
    print(f"map: {paths['map']} ({args.size}^3 voxels at {paths['pixel_size']:g} A)")
    print(f"particles: {paths['star']} ({n} particles with poses and CTF, SNR {args.snr:g})")
    return 0
