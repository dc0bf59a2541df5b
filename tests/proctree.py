"""Process trees from Linux /proc, for tests that must stop exactly what they started.

Ray's workers run in process groups and sessions of their own, so killing a process group is
not enough: tests walk the parent links instead, and never stop every Ray instance or kill
processes by name on a shared machine.
"""

from __future__ import annotations

import os
import signal
import time
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


def end_caused(caused: set[int], session: int) -> list[int]:
    """SIGKILL every process in ``caused`` and in ``session`` (a killed driver's session) until
    none is left or 10 s pass; returns the pids still alive (Ray's agents outlive a killed
    driver, so a test that kills one ends what it caused, by pid)."""
    for _ in range(50):
        caused.update(session_members(session))
        left = [p for p in caused if alive(p)]
        if not left:
            break
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)
    return [p for p in caused if alive(p)]


def _socket_inodes(pid: int) -> set[int]:
    out = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                out.add(int(target[8:-1]))
    except OSError:
        pass
    return out


def _address(hex_addr: str) -> tuple[str, int]:
    import ipaddress

    host, port = hex_addr.split(":")
    raw = bytes.fromhex(host)
    # /proc/net/tcp* prints each 32-bit word of the address in host (little-endian) order
    raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    ip = ipaddress.ip_address(raw)
    ip = getattr(ip, "ipv4_mapped", None) or ip  # ::ffff:127.0.0.1 is 127.0.0.1
    return str(ip), int(port, 16)


def listening(pids) -> list[tuple[str, int, int]]:
    """``(address, port, pid)`` of every TCP socket in LISTEN state held by one of ``pids``,
    read from /proc/net/tcp and /proc/net/tcp6 (no psutil, no ss)."""
    owner = {inode: pid for pid in pids for inode in _socket_inodes(pid)}
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[9]) in owner:  # 0A: TCP_LISTEN
                address, port = _address(fields[1])
                out.append((address, port, owner[int(fields[9])]))
    return sorted(set(out))
