"""Ingest real particles with clean references, or with references projected from a 3D map.

PARTICLES (noisy) and REFERENCES (clean) pair up by position. STAR files (RELION 3.0 to 5) give
the images through rlnImageName (000123@stack.mrcs, counted from 1, relative to the STAR file's
folder or the RELION project folder two levels up), and the pixel size, poses, origin shifts
and CTF parameters when they have them; a cryoSPARC .cs particle file (blob/path, blob/idx,
alignments3D/pose and shift, ctf/*) gives the same, converted to RELION's conventions. Clean
references are normalised to [0, 1] over the
dataset and the particles by the same map. Stacks are read in chunks of --shard-rows images,
so memory does not grow with the stack size.

Pixel size: --pixel-size, else the STAR files, else the MRC headers (voxel size 0 or 1 is
unset). An MRC file is a stack unless it looks like a 3D map (a cubic .mrc with a volume space
group); --stack reads it as a stack anyway.

--map MAP.mrc replaces --references for users without clean images: each reference is the map
projected at its particle's pose (RELION's rlnAngleRot/Tilt/Psi and origins, or a cryoSPARC .cs
file's alignments3D), times its CTF (--ctf apply, the default when the particles have defocus,
voltage, Cs and amplitude contrast; --ctf none keeps plain projections). The map must be cubic,
in the particles' box and at their pixel size; --mask multiplies it by a mask.

Example usage:
    cryotune ingest data/mine --particles Refine3D/job012/run_data.star --map Refine3D/job012/run_class001.mrc
    cryotune ingest data/mine --particles J42_particles.cs --map J42_map.mrc --ctf none --mask mask.mrc
    cryotune ingest data/empiar-10028 --particles particles.star --references projections.mrcs --crop 256
    cryotune ingest data/toy --particles noisy.mrcs --references clean.mrcs --pixel-size 1.34
    cryotune ingest data/toy --particles noisy.mrc --references clean.mrc --stack --format both --overwrite
"""

from __future__ import annotations

import argparse

from cryotune.data.store import open_dataset

FORMATS = {"parquet": ("parquet",), "mrc": ("mrc",), "both": ("parquet", "mrc")}


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", metavar="OUT", help="the dataset folder to create")
    parser.add_argument("--particles", required=True, metavar="P",
                        help="noisy particle images: .mrcs/.mrc stack, RELION .star file, or "
                             "cryoSPARC .cs particle file")
    clean = parser.add_mutually_exclusive_group(required=True)
    clean.add_argument("--references", metavar="R",
                       help="clean references, one per particle in the same order")
    clean.add_argument("--map", metavar="MAP", dest="map_path",
                       help="a 3D map (.mrc) projected at each particle's pose as its reference "
                            "(particles: a STAR or cryoSPARC .cs file with poses)")
    parser.add_argument("--ctf", choices=("auto", "apply", "none"), default="auto",
                        help="with --map: multiply each projection by its particle's CTF "
                             "(apply), keep plain projections (none), or apply it when the "
                             "particles have every CTF parameter (auto, the default)")
    parser.add_argument("--mask", metavar="MASK", default=None,
                        help="with --map: a mask (.mrc) multiplied into the map")
    parser.add_argument("--crop", type=int, default=None, metavar="N",
                        help="keep the central N x N pixels (e.g. 360 -> 256)")
    parser.add_argument("--test-fraction", type=float, default=0.05,
                        help="fraction of images in the test split (default: 0.05)")
    parser.add_argument("--val-fraction", type=float, default=0.1,
                        help="fraction of the remaining (training) pairs in the validation split "
                             "that studies select on; 0 makes none, and studies then hold out "
                             "10%% of the train pairs (default: 0.1)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the train/validation/test split")
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

    clean = (["--references", args.references] if args.references is not None
             else ["--map", args.map_path, "--ctf", args.ctf])
    parts = ["cryotune", "ingest", args.out, "--particles", args.particles,
             *clean, "--test-fraction", str(args.test_fraction),
             "--val-fraction", str(args.val_fraction),
             "--seed", str(args.seed), "--format", args.format, "--shard-rows", str(args.shard_rows)]
    for flag, value in (("--mask", args.mask), ("--crop", args.crop),
                        ("--pixel-size", args.pixel_size), ("--name", args.name)):
        if value is not None:
            parts += [flag, str(value)]
    parts += [flag for flag, on in (("--stack", args.stack), ("--overwrite", args.overwrite)) if on]
    return shlex.join(parts)


def main(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from cryotune.data.ingest import ingest  # torch (the map projector): only when it runs

    labels = {"scan": "projecting the map" if args.map_path else "scanning references",
              "write": "writing pairs"}
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  console=Console(stderr=True), transient=True) as bar:
        tasks: dict[str, int] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(labels.get(stage, stage), total=total)
            bar.update(tasks[stage], completed=done)

        path = ingest(
            args.out, particles=args.particles, references=args.references,
            map_path=args.map_path, ctf=args.ctf, mask=args.mask, crop=args.crop,
            test_fraction=args.test_fraction, seed=args.seed, formats=FORMATS[args.format],
            pixel_size=args.pixel_size, shard_rows=args.shard_rows, overwrite=args.overwrite,
            force_stack=args.stack, name=args.name,
            command=_command_line(args), progress=progress, val_fraction=args.val_fraction)
    ds = open_dataset(path, verify=False)
    m = ds.manifest
    h, w = ds.image_shape
    snr = "n/a" if m["snr_measured"] is None else f"{m['snr_measured']:.4g}"
    print(f"dataset: {path}")
    print(f"  {ds.count('train')} train + {ds.count('val')} validation + {ds.count('test')} test pairs of {h}x{w} px at "
          f"{ds.pixel_size:g} A/px (from {m['source']['pixel_size_from']})")
    print(f"  poses: {'yes' if m['has_poses'] else 'no'}, CTF: {'yes' if m['ctf'] else 'no'}, "
          f"measured SNR: {snr}")
    refs = m.get("references") or {}
    if refs.get("source") == "map":
        print(f"  references: {refs['map']} projected at the particles' poses, CTF "
              f"{'applied' if refs['ctf'] == 'apply' else 'not applied'}"
              + (f", masked by {refs['mask']}" if refs["mask"] else ""))
    return 0
