"""Shared pieces of the benchmark scripts: machine facts, timing, the record and its reports.

Every benchmark records the same machine facts (CPU model, cores, library versions, load average)
next to its figures, writes its record as ``reports/benchmarks/<name>.json`` and owns one section
of ``reports/benchmarks/BENCHMARKS.md`` between its own begin/end markers; other sections are kept
as they are. With ``--smoke`` a script runs a tiny preset and only prints.

Example::

    from _common import finish, load_average, machine, machine_line, parser, record, section

    args = parser(__doc__).parse_args()
    report = record("x_throughput", machine(), figure=1.0, load_average_end=load_average())

    def markdown(r):
        return section("x", ["## x: a figure", "", f"figure {r['figure']}", "",
                             machine_line(r["machine"], r["load_average_end"])])

    finish("x", report, markdown, smoke=args.smoke)   # prints; unless smoke, x.json + the section
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import re
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

REPORTS = Path(__file__).resolve().parent.parent / "reports" / "benchmarks"


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages, rounded to 0.01."""
    return [round(x, 2) for x in os.getloadavg()]


def machine(extras: Iterable[str] = ()) -> dict:
    """Facts about this machine for a benchmark record.

    Args:
        extras: further distribution names whose installed versions are recorded (None when
            not installed) under ``"extras"``.

    Returns:
        cpu model, cores, os, python, numpy and torch versions (torch when importable), the load
        average now, and ``extras`` when asked for.
    """
    model = platform.processor() or platform.machine()
    try:
        found = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        model = found.group(1).strip() if found else model
    except OSError:
        pass
    facts = {"cpu": model, "cores": os.cpu_count(), "python": platform.python_version(),
             "numpy": np.__version__, "os": platform.platform(), "load_average": load_average()}
    try:
        facts["torch"] = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        pass
    wanted = list(extras)
    if wanted:
        facts["extras"] = {}
        for package in wanted:
            try:
                facts["extras"][package] = importlib.metadata.version(package)
            except importlib.metadata.PackageNotFoundError:
                facts["extras"][package] = None
    return facts


def machine_line(facts: dict, end: Sequence[float] | None = None,
                 note: str = "a shared machine") -> str:
    """The "Machine:" sentence of a section, from :func:`machine`'s facts.

    Args:
        facts: :func:`machine`'s record.
        end: the load average at the end of the run, when recorded.
        note: what the load means for the figures, in brackets after it.

    Example::

        >>> machine_line({"cpu": "Xeon", "cores": 2, "os": "Linux", "python": "3.11.7",
        ...               "load_average": [1.0, 0.5, 0.25]}, end=[2.0, 1.0, 0.5])
        'Machine: Xeon, 2 cores, Linux; Python 3.11.7. Load average at start 1.0, 0.5, 0.25, at end 2.0, 1.0, 0.5 (a shared machine).'
    """
    versions = [f"{label} {facts[key]}" for key, label in
                (("python", "Python"), ("numpy", "numpy"), ("torch", "torch")) if key in facts]
    versions += [f"{name} {v}" if v else f"{name} not installed"
                 for name, v in facts.get("extras", {}).items()]
    load = f"Load average at start {', '.join(map(str, facts['load_average']))}"
    if end is not None:
        load += f", at end {', '.join(map(str, end))}"
    return (f"Machine: {facts['cpu']}, {facts['cores']} cores, {facts['os']}; "
            f"{', '.join(versions)}. {load} ({note}).")


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call of ``fn``."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def timings(fn: Callable[[], object], repeats: int) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds of ``repeats`` calls: ``(walls, cpus)``; take min or median."""
    runs = [timed(fn) for _ in range(repeats)]
    return [w for w, _ in runs], [c for _, c in runs]


def parser(doc: str, smoke: str = "tiny run, print only") -> argparse.ArgumentParser:
    """A benchmark's argument parser: the docstring's first line and ``--smoke``."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help=smoke)
    return p


def record(benchmark: str, facts: dict, **fields) -> dict:
    """A benchmark record: its name, the UTC time now, the machine's facts, then ``fields``."""
    created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return {"benchmark": benchmark, "created": created, "machine": facts, **fields}


def markers(name: str) -> tuple[str, str]:
    """The begin and end markers of section ``name``: ``<!-- name:begin -->``, ``<!-- name:end -->``."""
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


def section(name: str, lines: Iterable[str], marks: tuple[str, str] | None = None) -> str:
    """Section ``name`` of BENCHMARKS.md: ``lines`` between its markers (``marks`` if given)."""
    begin, end = marks or markers(name)
    return "\n".join([begin, *lines, end])


def write_json(name: str, report: dict, folder: Path = REPORTS) -> Path:
    """Write ``report`` to ``<folder>/<name>.json`` (values JSON lacks as strings)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(json.dumps(report, indent=1, default=str) + "\n")
    return path


def write_section(path: Path, section: str, begin: str, end: str) -> None:
    """Replace the text between ``begin`` and ``end`` in ``path`` (or append it), keeping the rest.

    Args:
        path: the markdown file (created with a "# Benchmarks" title when missing).
        section: the new section, markers included.
        begin: this benchmark's opening marker.
        end: its closing marker.
    """
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if begin in text and end in text:
        text = text[:text.index(begin)] + section + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # atomic: scripts may run side by side
    tmp.write_text(text)
    tmp.replace(path)


def finish(name: str, report: dict, markdown: Callable[[dict], str], smoke: bool,
           folder: Path = REPORTS) -> int:
    """Print ``report``; unless ``smoke``, write ``<name>.json`` and its BENCHMARKS.md section.

    ``markdown(report)`` gives the section, its first and last lines the markers; both files go
    to ``folder`` (``reports/benchmarks/``). Returns 0, the script's exit status.
    """
    print(json.dumps(report, indent=1, default=str))
    if not smoke:
        text = markdown(report)  # first: a section that fails to render writes nothing
        write_json(name, report, folder)
        lines = text.splitlines()
        write_section(folder / "BENCHMARKS.md", text, lines[0], lines[-1])
    return 0
