"""The ``cryotune`` command line: one entry point that dispatches to ``cryotune/commands/``.

Each command is a module with a docstring (its help text), ``add_args(parser)`` and
``main(args)``. Command modules import their heavy dependencies inside ``main`` so that
``cryotune --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
from collections.abc import Sequence

from cryotune._version import __version__
from cryotune.errors import CryotuneError, Terminated

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
    "compare",
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
    if not args.debug:  # torch logs its cache statistics at INFO when the process exits
        logging.getLogger("torch").setLevel(logging.WARNING)
    previous = _on_sigterm()
    _SIGTERM_SEEN.clear()
    try:
        status = args._module.main(args)
    except CryotuneError as err:
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        # the cleanup ran while the exception unwound: temporary files are gone
        # Ray's blocking calls turn whatever a signal handler raised into a plain
        # KeyboardInterrupt: the handler's note tells SIGTERM apart
        term = isinstance(err, Terminated) or bool(_SIGTERM_SEEN)
        print(f"interrupted ({'SIGTERM' if term else 'Ctrl-C'})", file=sys.stderr)
        return 143 if term else 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return int(status or 0)


_SIGTERM_SEEN: list[int] = []  # set by the SIGTERM handler while a command runs


def _on_sigterm():
    """Make SIGTERM raise :class:`Terminated` in the main thread, so it unwinds through the
    cleanup Ctrl-C gets; a second SIGTERM during that cleanup is ignored. Returns the previous
    handler (None off the main thread, where handlers cannot be set)."""

    def handler(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        _SIGTERM_SEEN.append(signum)
        raise Terminated()

    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:
        return None


if __name__ == "__main__":
    sys.exit(main())
