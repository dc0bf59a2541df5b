"""One writer per study: a lock file naming its holder.

A process that writes a study (sweep, resume, extend, baselines, validate) holds
``<study>/lock.json``, a JSON record of ``host``, ``pid``, ``since`` (UTC) and ``command``;
readers (status, query, report, denoise) never need it. A second writer is refused with a
:class:`~cryotune.errors.StudyLocked` line naming the holder and the fix.

- Local folders (and ``file://``): the file is created with ``O_CREAT`` and held with an
  exclusive ``flock``, which the kernel drops when the holder dies however it dies. A record
  left by a dead process on this host is taken over (one log line says so); one left by
  another host is refused, since its process cannot be checked from here.
- Other pyarrow filesystems (``s3://``, ``gs://``): best effort. The record is written only
  when absent, with a random token, and read back after a short settle; the writer whose
  token survives holds it. A record of a dead process on this host is taken over.

Example::

    from cryotune._lock import StudyLock
    with StudyLock("studies/smoke", command="cryotune sweep smoke.yaml"):
        ...  # write the study
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import json
import logging
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from cryotune._io import join, resolve
from cryotune._temps import pid_alive
from cryotune.errors import StudyLocked

__all__ = ["LOCK_FILE", "StudyLock", "holding_lock", "pid_alive", "read_lock"]

LOCK_FILE = "lock.json"
SETTLE_S = 0.5  # object stores: how long a written record must survive before it holds

log = logging.getLogger(__name__)


def _parse(raw: bytes) -> dict[str, Any]:
    try:
        record = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _describe(record: dict[str, Any]) -> str:
    if not record:
        return "another process (its record is not written yet)"
    text = f"pid {record.get('pid', '?')} on {record.get('host', '?')} since {record.get('since', '?')}"
    if record.get("command"):
        text += f" ({record['command']})"
    return text


def read_lock(study: str | Path, fs: pafs.FileSystem | None = None) -> dict[str, Any] | None:
    """The lock record of ``study`` (host, pid, since, command), or None when unlocked."""
    fs, path = (fs, str(study)) if fs is not None else resolve(study)
    try:
        with fs.open_input_stream(join(path, LOCK_FILE)) as f:
            raw = f.read()
    except (FileNotFoundError, OSError):
        return None
    return _parse(raw) if raw else None


class StudyLock:
    """The lock of one study; a context manager (``with StudyLock(study): ...``).

    Args:
        study: the study folder or URI (or a path in ``fs``).
        command: what holds it, shown to a refused writer (e.g. ``cryotune sweep x.yaml``).
        fs: the pyarrow filesystem ``study`` is a path in; None resolves ``study``.
    """

    def __init__(self, study: str | Path, *, command: str | None = None,
                 fs: pafs.FileSystem | None = None):
        self.study = str(study)
        self.fs, self.path = (fs, str(study)) if fs is not None else resolve(study)
        self.file = join(self.path, LOCK_FILE)
        self.local = isinstance(self.fs, pafs.LocalFileSystem)
        self.record = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "since": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "command": command or "",
            "token": uuid.uuid4().hex,
        }
        self._fd: int | None = None
        self._created = False  # the lock made the study folder: a writer that wrote nothing
        self.held = False      # leaves no empty study behind

    def __enter__(self) -> StudyLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _refuse(self, holder: dict[str, Any], extra: str = "") -> StudyLocked:
        return StudyLocked(
            f"the study is being written by {_describe(holder)}{extra}", self.file,
            f"wait for it to end; if it no longer runs, delete {self.file}", holder=holder)

    # -- acquire ---------------------------------------------------------------------------
    def acquire(self) -> StudyLock:
        """Take the lock or raise :class:`StudyLocked` naming the holder."""
        if self.held:
            return self
        if self.local:
            self._acquire_local()
        else:
            self._acquire_remote()
        self.held = True
        return self

    def _taken_over(self, old: dict[str, Any]) -> None:
        log.info("taking over the study lock of %s: that process is gone (%s)",
                 _describe(old), self.file)

    def _acquire_local(self) -> None:
        self._created = not Path(self.path).exists()
        Path(self.path).mkdir(parents=True, exist_ok=True)
        for _ in range(20):
            fd = os.open(self.file, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                import fcntl

                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                os.close(fd)
                if err.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise
                raise self._refuse(self._read_holder()) from None
            try:  # the file we locked may have been released and deleted meanwhile
                same = os.fstat(fd).st_ino == os.stat(self.file).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            old = _parse(os.pread(fd, 1 << 16, 0))
            if old and old.get("host") != self.record["host"]:
                os.close(fd)
                raise self._refuse(old, " (a process on another host cannot be checked)")
            if old and pid_alive(int(old.get("pid", -1))) and old.get("pid") != os.getpid():
                # a live process on this host without the flock: a lock it took through a
                # filesystem URI, or a pid reused since; refuse rather than guess
                os.close(fd)
                raise self._refuse(old)
            if old:
                self._taken_over(old)
            data = json.dumps(self.record).encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
            os.fsync(fd)
            self._fd = fd
            return
        raise self._refuse(self._read_holder())

    def _read_holder(self) -> dict[str, Any]:
        for _ in range(10):  # the holder writes its record right after taking the flock
            record = read_lock(self.path, self.fs)
            if record:
                return record
            time.sleep(0.05)
        return {}

    def _read_remote(self) -> dict[str, Any] | None:
        try:
            with self.fs.open_input_stream(self.file) as f:
                return _parse(f.read())
        except FileNotFoundError:
            return None
        except OSError as err:
            if self.fs.get_file_info(self.file).type == pafs.FileType.NotFound:
                return None
            raise StudyLocked(f"cannot read the study lock ({err})", self.file,
                              "check the storage credentials") from None

    def _acquire_remote(self) -> None:
        old = self._read_remote()
        if old is not None:
            dead_here = (old.get("host") == self.record["host"]
                         and not pid_alive(int(old.get("pid", -1))))
            if not dead_here:
                raise self._refuse(old)
            self._taken_over(old)
            with contextlib.suppress(FileNotFoundError, OSError):
                self.fs.delete_file(self.file)
        self.fs.create_dir(self.path, recursive=True)
        with self.fs.open_output_stream(self.file) as out:
            out.write(json.dumps(self.record).encode())
        time.sleep(SETTLE_S)
        now = self._read_remote()
        if not now or now.get("token") != self.record["token"]:
            raise self._refuse(now or {})

    # -- release ---------------------------------------------------------------------------
    def release(self) -> None:
        """Remove the lock file and drop the lock (only this holder's)."""
        if not self.held:
            return
        self.held = False
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                with contextlib.suppress(FileNotFoundError):
                    if os.fstat(fd).st_ino == os.stat(self.file).st_ino:
                        os.unlink(self.file)  # while still holding the flock
            finally:
                os.close(fd)
            if self._created:
                with contextlib.suppress(OSError):  # not empty: the writer wrote something
                    os.rmdir(self.path)
            return
        now = self._read_remote()
        if now and now.get("token") == self.record["token"]:
            with contextlib.suppress(FileNotFoundError, OSError):
                self.fs.delete_file(self.file)


def holding_lock(study_param: str, command: str):
    """Decorate a function that writes the study named by its argument ``study_param`` so
    that it runs holding that study's :class:`StudyLock` (``command`` names the holder).

    Example::

        @holding_lock("study", "cryotune validate")
        def validate_study(study, *, what=("fsc",)): ...
    """
    import functools
    import inspect

    def wrap(fn):
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def run(*args, **kwargs):
            study = signature.bind(*args, **kwargs).arguments[study_param]
            with StudyLock(study, command=command):
                return fn(*args, **kwargs)

        return run

    return wrap
