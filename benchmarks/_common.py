"""Shared pieces of the benchmark scripts: the machine's facts and the BENCHMARKS.md section writer.

Every benchmark records the same machine facts (CPU model, cores, library versions, load average)
next to its figures, and owns one section of ``reports/benchmarks/BENCHMARKS.md`` between its own
begin/end markers; other sections are kept as they are.

Example::

    from _common import REPORTS, machine, write_section
    facts = machine(extras=("bm3d",))
    write_section(REPORTS / "BENCHMARKS.md", "<!-- x:begin -->\\n...\\n<!-- x:end -->",
                  "<!-- x:begin -->", "<!-- x:end -->")
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
from collections.abc import Iterable
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
