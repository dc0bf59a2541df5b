"""Process trees from Linux /proc, for tests that must stop exactly what they started.

Ray's workers run in process groups and sessions of their own, so killing a process group is
not enough: tests walk the parent links instead, and never stop every Ray instance or kill
processes by name on a shared machine.
"""

from __future__ import annotations

import os
from pathlib import Path


def _stat(pid: int | str) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state, ppid, pgrp, session...)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def children() -> dict[int, list[int]]:
    """Parent pid -> its children's pids, for every process now alive."""
    out: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat(entry)) is not None:
            out.setdefault(int(fields[1]), []).append(int(entry))
    return out


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children, their children...), not ``pid`` itself."""
    tree, out, todo = children(), [], [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def session_members(sid: int) -> list[int]:
    """Live (non-zombie) processes of session ``sid``."""
    return [int(e) for e in os.listdir("/proc")
            if e.isdigit() and (f := _stat(e)) is not None and int(f[3]) == sid and f[0] != "Z"]


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z"
