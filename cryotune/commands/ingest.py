"""Ingest real particle images and clean references (MRC/MRCS stacks or RELION STAR files).

PARTICLES (noisy) and REFERENCES (clean) pair up by position. STAR files (RELION 3.0 to 5) give
the images through rlnImageName (000123@stack.mrcs, counted from 1, relative to the STAR file's
folder or the RELION project folder two levels up), and the pixel size, poses, origin shifts
and CTF parameters when they have them. Clean references are normalised to [0, 1] over the
dataset and the particles by the same map. Stacks are read in chunks of --shard-rows images,
so memory does not grow with the stack size.

Pixel size: --pixel-size, else the STAR files, else the MRC headers (voxel size 0 or 1 is
unset). An MRC file is a stack unless it looks like a 3D map (a cubic .mrc with a volume space
group); --stack reads it as a stack anyway.

Example usage:
    cryotune ingest data/empiar-10028 --particles particles.star --references projections.mrcs --crop 256
    cryotune ingest data/toy --particles noisy.mrcs --references clean.mrcs --pixel-size 1.34
    cryotune ingest data/toy --particles noisy.mrc --references clean.mrc --stack --format both --overwrite
"""

from __future__ import annotations

import argparse

FORMATS = {"parquet": ("parquet",), "mrc": ("mrc",), "both": ("parquet", "mrc")}


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", metavar="OUT", help="the dataset folder to create")
    parser.add_argument("--particles", required=True, metavar="P",
                        help="noisy particle images: .mrcs/.mrc stack or RELION .star file")
    parser.add_argument("--references", required=True, metavar="R",
                        help="clean references, one per particle in the same order")
    parser.add_argument("--crop", type=int, default=None, metavar="N",
                        help="keep the central N x N pixels (e.g. 360 -> 256)")
    parser.add_argument("--test-fraction", type=float, default=0.05,
                        help="fraction of images in the test split (default: 0.05)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the train/test split")
    parser.add_argument("--format", choices=sorted(FORMATS), default="parquet",
                        help="store format (default: parquet)")
    parser.add_argument("--shard-rows", type=int, default=1024,
                        help="images per shard and per read chunk (default: 1024)")
    parser.add_argument("--pixel-size", type=float, default=None, metavar="A",
                        help="Angstrom per pixel; overrides the STAR files and MRC headers")
    parser.add_argument("--stack", action="store_true",
                        help="read MRC files that look like 3D volumes as image stacks")
    parser.add_argument("--name", default=None, help="dataset name (default: OUT's folder name)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")


def _command_line(args: argparse.Namespace) -> str:
    """The resolved command line (every option, defaults included), for the manifest."""
    import shlex

    parts = ["cryotune", "ingest", args.out, "--particles", args.particles,
             "--references", args.references, "--test-fraction", str(args.test_fraction),
             "--seed", str(args.seed), "--format", args.format, "--shard-rows", str(args.shard_rows)]
    for flag, value in (("--crop", args.crop), ("--pixel-size", args.pixel_size),
                        ("--name", args.name)):
        if value is not None:
            parts += [flag, str(value)]
    parts += [flag for flag, on in (("--stack", args.stack), ("--overwrite", args.overwrite)) if on]
    return shlex.join(parts)


def main(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from cryotune.data.ingest import ingest
    from cryotune.data.store import open_dataset

    labels = {"scan": "scanning references", "write": "writing pairs"}
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  console=Console(stderr=True), transient=True) as bar:
        tasks: dict[str, int] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(labels.get(stage, stage), total=total)
            bar.update(tasks[stage], completed=done)

        path = ingest(
            args.out, particles=args.particles, references=args.references, crop=args.crop,
            test_fraction=args.test_fraction, seed=args.seed, formats=FORMATS[args.format],
            pixel_size=args.pixel_size, shard_rows=args.shard_rows, overwrite=args.overwrite,
            force_stack=args.stack, name=args.name,
            command=_command_line(args), progress=progress)
    ds = open_dataset(path, verify=False)
    m = ds.manifest
    h, w = ds.image_shape
    snr = "n/a" if m["snr_measured"] is None else f"{m['snr_measured']:.4g}"
    print(f"dataset: {path}")
    print(f"  {ds.count('train')} train + {ds.count('test')} test pairs of {h}x{w} px at "
          f"{ds.pixel_size:g} A/px (from {m['source']['pixel_size_from']})")
    print(f"  poses: {'yes' if m['has_poses'] else 'no'}, CTF: {'yes' if m['ctf'] else 'no'}, "
          f"measured SNR: {snr}")
    return 0
