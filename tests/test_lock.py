"""The study lock, with real processes: one writer at a time, stale locks taken over."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys

import pyarrow.fs as pafs
import pytest

from cryotune._lock import LOCK_FILE, StudyLock, pid_alive, read_lock
from cryotune.errors import CryotuneError, StudyLocked

HOLD = (
    "import sys, time\n"
    "from cryotune._lock import StudyLock\n"
    "lock = StudyLock(sys.argv[1], command='cryotune sweep held.yaml').acquire()\n"
    "print('held', flush=True)\n"
    "if sys.argv[2] == 'exit':\n"
    "    import os; os._exit(0)  # dies without releasing\n"
    "sys.stdin.read()\n"
    "lock.release()\n"
)


def _holder(study, mode="hold") -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(study), mode], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_writer_refused_naming_the_holder(tmp_path):
    study = tmp_path / "study"
    proc = _holder(study)
    try:
        with pytest.raises(StudyLocked) as info:
            StudyLock(study).acquire()
        message = str(info.value)
        assert isinstance(info.value, CryotuneError)
        assert f"pid {proc.pid} on {socket.gethostname()} since " in message
        assert "(cryotune sweep held.yaml)" in message
        assert f"delete {study / LOCK_FILE}" in message and "\n" not in message
        assert info.value.holder["pid"] == proc.pid
        assert read_lock(study)["pid"] == proc.pid
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
    assert not (study / LOCK_FILE).exists()  # released on exit
    with StudyLock(study) as lock:
        assert lock.held and read_lock(study)["pid"] == os.getpid()
    assert read_lock(study) is None


def test_killed_holder_is_taken_over(tmp_path, caplog):
    study = tmp_path / "study"
    proc = _holder(study)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert read_lock(study)["pid"] == proc.pid  # the record outlives the process
    with caplog.at_level(logging.INFO, logger="cryotune._lock"):
        with StudyLock(study):
            assert read_lock(study)["pid"] == os.getpid()
    assert f"taking over the study lock of pid {proc.pid}" in caplog.text


def test_dead_pid_record_is_taken_over(tmp_path, caplog):
    study = tmp_path / "study"
    proc = _holder(study, mode="exit")
    proc.wait(timeout=30)
    assert not pid_alive(proc.pid)
    with caplog.at_level(logging.INFO, logger="cryotune._lock"):
        lock = StudyLock(study).acquire()
    assert "that process is gone" in caplog.text
    lock.release()


def test_record_from_another_host_is_refused(tmp_path):
    study = tmp_path / "study"
    study.mkdir()
    (study / LOCK_FILE).write_text(json.dumps(
        {"host": "elsewhere.example", "pid": 4242, "since": "2026-01-01T00:00:00+00:00"}))
    with pytest.raises(StudyLocked, match="pid 4242 on elsewhere.example .*another host"):
        StudyLock(study).acquire()


def test_live_process_record_without_flock_is_refused(tmp_path):
    study = tmp_path / "study"
    study.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (study / LOCK_FILE).write_text(json.dumps(
            {"host": socket.gethostname(), "pid": sleeper.pid, "since": "x"}))
        with pytest.raises(StudyLocked, match=f"pid {sleeper.pid}"):
            StudyLock(study).acquire()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_object_store_path(tmp_path, caplog):
    """A filesystem other than the local one: write-if-absent with a token read back."""
    root = tmp_path / "bucket"
    root.mkdir()
    fs = pafs.SubTreeFileSystem(str(root), pafs.LocalFileSystem())
    with StudyLock("studies/s", fs=fs, command="first") as lock:
        assert not lock.local
        assert read_lock("studies/s", fs=fs)["command"] == "first"
        with pytest.raises(StudyLocked, match=f"pid {os.getpid()} .*\\(first\\)"):
            StudyLock("studies/s", fs=fs).acquire()
    assert read_lock("studies/s", fs=fs) is None
    proc = _holder(root / "studies" / "s", mode="exit")  # a dead process's record, this host
    proc.wait(timeout=30)
    with caplog.at_level(logging.INFO, logger="cryotune._lock"):
        with StudyLock("studies/s", fs=fs):
            assert read_lock("studies/s", fs=fs)["pid"] == os.getpid()
    assert "that process is gone" in caplog.text
