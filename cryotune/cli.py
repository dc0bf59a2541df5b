"""The ``cryotune`` command line: one entry point that dispatches to ``cryotune/commands/``.

Each command is a module with a docstring (its help text), ``add_args(parser)`` and
``main(args)``. Command modules import their heavy dependencies inside ``main`` so that
``cryotune --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from cryotune import __version__
from cryotune.errors import CryotuneError

# The explicit list of subcommands, in the order ``--help`` shows them.
COMMANDS = (
    "simulate",
    "ingest",
    "inspect",
    "train",
    "denoise",
    "sweep",
    "status",
    "query",
    "baselines",
    "validate",
    "report",
    "bench",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cryotune",
        description="Hyperparameter studies of robust cryo-EM image denoisers on Ray.",
    )
    parser.add_argument("--version", action="version", version=f"cryotune {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"cryotune.commands.{name}")
        doc = (module.__doc__ or "").strip()
        summary = doc.splitlines()[0] if doc else name
        p = sub.add_parser(
            name,
            help=summary,
            description=doc,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_args(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(message)s",
    )
    try:
        status = args._module.main(args)
    except CryotuneError as err:
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(status or 0)


if __name__ == "__main__":
    sys.exit(main())
