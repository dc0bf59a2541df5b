"""End the processes of an embedded Ray with the program that started it, however it ends.

Ray starts its GCS and raylet with the parent-death signal set, so they die with the driver;
its dashboard and runtime-env agents (children of the raylet) then spend about a minute
reporting the raylet's death to the GCS that is already gone (a fixed 60 s timeout in Ray
2.60) before they exit. :func:`cryotune._ray.init_ray` therefore starts this module as a small
watcher process of its own, in its own session, with the pids of the processes Ray started
(``python -m cryotune._reaper ROOT_PID...``) and a pipe on its stdin:

- while the driver lives, it notes the roots and every process below them (agents and
  workers included) with their start times, once a second;
- when the pipe closes (the driver exited, was killed, or shut Ray down and closed it), it
  sends SIGKILL to each noted process still alive whose start time is unchanged (never a
  reused pid), then exits.

Only pids read from ``/proc`` below the roots it was given are ever signalled.

Example::

    python -m cryotune._reaper 4250 4261 < pipe
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time

POLL_S = 1.0


def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (None when gone or a zombie)."""
    fields = _stat(pid)
    if fields is None or fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def below(roots: list[int]) -> dict[int, int]:
    """``pid -> start time`` of the live ``roots`` and every process below them."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat(int(entry))) is not None:
            children.setdefault(int(fields[1]), []).append(int(entry))
    out, todo = {}, [p for p in roots]
    while todo:
        pid = todo.pop()
        if pid in out or (start := start_time(pid)) is None:
            continue
        out[pid] = start
        todo.extend(children.get(pid, []))
    return out


def reap(noted: dict[int, int]) -> list[int]:
    """SIGKILL each noted process that is still the same process; the pids signalled."""
    killed = []
    for pid, start in noted.items():
        if pid != os.getpid() and start_time(pid) == start:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except (ProcessLookupError, PermissionError):
                pass
    return killed


def main(argv: list[str]) -> int:
    roots = [int(a) for a in argv[1:]]
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is for the driver
    noted: dict[int, int] = {}
    while True:
        noted.update(below(roots))
        ready, _, _ = select.select([sys.stdin], [], [], POLL_S)
        if ready and not os.read(sys.stdin.fileno(), 4096):
            break  # EOF: the driver is gone, or it shut Ray down
    noted.update(below(roots))
    # processes that already exited on their own: their pids may be reused, skip them
    noted = {p: s for p, s in noted.items() if start_time(p) == s}
    reap(noted)
    time.sleep(0.1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
