"""Temporary names that say who owns them, and removal of those a killed run left behind.

A writer that builds its output under a hidden sibling and renames it into place names the
sibling ``<prefix><host>-<pid>-<random><suffix>``, where ``host`` is a short hash of this
host's name. A later writer of the same output removes siblings whose owner on this host is
gone (a SIGKILL, a power cut) and says so in one log line; siblings of live processes and of
other hosts are left alone.

Example::

    from cryotune._temps import owned_name, remove_stale
    remove_stale(out.parent, f".{out.name}.tmp-")
    tmp = out.parent / owned_name(f".{out.name}.tmp-")
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import socket
import uuid
from pathlib import Path

__all__ = ["host_tag", "owned_name", "pid_alive", "remove_stale"]

log = logging.getLogger(__name__)
_OWNED = re.compile(r"(?P<host>[0-9a-f]{6})-(?P<pid>\d+)-[0-9a-f]{8}")


def pid_alive(pid: int) -> bool:
    """True when a process ``pid`` exists on this host (zombies count as gone)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie has exited; only its parent has not collected it yet
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def host_tag() -> str:
    """Six hex digits naming this host in temporary names."""
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:6]


def owned_name(prefix: str, suffix: str = "") -> str:
    """A fresh temporary name carrying this host and process: ``<prefix>ab12cd-4242-<hex><suffix>``."""
    return f"{prefix}{host_tag()}-{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}"


def _size(path: Path) -> int:
    if path.is_symlink() or not path.is_dir():
        return path.lstat().st_size
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def remove_stale(folder: str | Path, prefix: str, suffix: str = "") -> list[Path]:
    """Remove ``folder/<prefix>...<suffix>`` temporaries left by dead processes of this host.

    Returns:
        The paths removed (one log line names them and their size).
    """
    folder = Path(folder)
    try:
        entries = list(folder.iterdir())
    except OSError:
        return []
    here = host_tag()
    removed, freed = [], 0
    for path in entries:
        name = path.name
        if not (name.startswith(prefix) and name.endswith(suffix)) or len(name) <= len(prefix) + len(suffix):
            continue
        match = _OWNED.fullmatch(name[len(prefix):len(name) - len(suffix)])
        if not match or match["host"] != here or pid_alive(int(match["pid"])):
            continue
        try:
            size = _size(path)
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        except OSError:
            continue
        removed.append(path)
        freed += size
    if removed:
        log.info("removed %d temporary file(s) of %.1f MB left by a killed earlier run: %s",
                 len(removed), freed / 1e6, ", ".join(str(p) for p in removed))
    return removed
