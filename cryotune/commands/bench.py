"""Run the benchmarks in the repository's benchmarks/ folder (one, or all in turn).

Each benchmark is a script ``benchmarks/<NAME>.py`` that writes its JSON under
``reports/benchmarks/`` and its own section of ``reports/benchmarks/BENCHMARKS.md``; with
``--smoke`` it runs a tiny preset and only prints. The benchmarks live in the source
repository, not in the installed package: run this command from a checkout.

Example usage:
    cryotune bench --list
    cryotune bench pipeline_headroom --smoke
    cryotune bench study_scale
    cryotune bench --smoke              # every benchmark's smoke preset, in turn
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cryotune
from cryotune.errors import BadInput


def benchmarks_dir() -> Path:
    """The repository's benchmarks/ folder (next to the ``cryotune`` package in a checkout).

    Raises:
        BadInput: the package is installed without the repository around it.
    """
    folder = Path(cryotune.__file__).resolve().parent.parent / "benchmarks"
    if not folder.is_dir():
        raise BadInput("no benchmarks/ folder next to the cryotune package", str(folder.parent),
                       "the benchmarks ship with the source repository: clone it and run "
                       "`pip install -e .` there, then `cryotune bench` from the checkout")
    return folder


def available(folder: Path) -> list[str]:
    """Benchmark names: the scripts in ``folder`` whose names do not start with '_'."""
    return sorted(p.stem for p in folder.glob("*.py") if not p.name.startswith("_"))


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME", nargs="?",
                        help="a benchmark (file name without .py); all when left out")
    parser.add_argument("--smoke", action="store_true",
                        help="the tiny preset of each benchmark: seconds, prints, writes nothing")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")


def main(args: argparse.Namespace) -> int:
    import subprocess
    import sys

    folder = benchmarks_dir()
    names = available(folder)
    if args.list:
        print("\n".join(names))
        return 0
    if args.name is not None:
        name = args.name.removesuffix(".py")
        if name not in names:
            raise BadInput(f"no benchmark {args.name!r}", str(folder),
                           f"use one of {', '.join(names)}")
        names = [name]
    failed = []
    for name in names:
        print(f"== {name}{' (smoke)' if args.smoke else ''}", flush=True)
        command = [sys.executable, str(folder / f"{name}.py")] + (["--smoke"] if args.smoke else [])
        if subprocess.run(command, cwd=folder.parent, check=False).returncode != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0
