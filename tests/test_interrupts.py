"""SIGTERM cleans up like Ctrl-C, and temporaries a SIGKILL left are removed by the next run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ENV = {**os.environ, "PYTHONPATH": os.getcwd(), "OMP_NUM_THREADS": "1"}


def _start(args, cwd) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cryotune", *args], cwd=cwd, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_handler(proc: subprocess.Popen, timeout: float = 120) -> None:
    """Wait until the process catches SIGTERM (its command is running)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            pytest.fail(f"ended early ({proc.returncode}): {proc.stderr.read()}")
        with open(f"/proc/{proc.pid}/status") as f:
            caught = next(int(line.split()[1], 16) for line in f if line.startswith("SigCgt:"))
        if caught & (1 << (signal.SIGTERM - 1)):
            time.sleep(3)  # past the command's imports, into its work
            return
        time.sleep(0.05)
    proc.kill()
    pytest.fail("the command never caught SIGTERM")


@pytest.mark.parametrize("sig, code, word", [(signal.SIGTERM, 143, "SIGTERM"),
                                             (signal.SIGINT, 130, "Ctrl-C")])
def test_cli_exit_status_and_no_leftovers(tmp_path, sig, code, word):
    """SIGTERM exited 143 silently and left its temporary folder; now it is Ctrl-C's twin."""
    out = tmp_path / "ds"
    proc = _start(["simulate", str(out), "--size", "32", "--n-train", "200000", "--n-test", "10"],
                  tmp_path)
    _wait_for_handler(proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert err.strip().splitlines()[-1] == f"interrupted ({word})", err
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


WRITER = """
import sys, time
import numpy as np
from cryotune.cli import _on_sigterm
from cryotune.data.writer import DatasetWriter

_on_sigterm()
with DatasetWriter(sys.argv[1], name="ds", kind="simulated", image_shape=(8, 8), pixel_size=1.0,
                   shard_rows=4) as w:
    print(w.tmp.name, flush=True)
    for i in range(100000):
        w.add("train", id=[i], clean=np.zeros((1, 8, 8), np.float32),
              noisy=np.zeros((1, 8, 8), np.float32))
        time.sleep(0.005)
"""


def _writer(out: Path) -> tuple[subprocess.Popen, Path]:
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(out)], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    tmp = out.parent / proc.stdout.readline().strip()
    end = time.monotonic() + 60
    while not any(tmp.rglob("*.parquet")) and time.monotonic() < end:  # mid-write
        time.sleep(0.05)
    return proc, tmp


def test_dataset_writer_sigterm_removes_its_temporary(tmp_path):
    proc, tmp = _writer(tmp_path / "ds")
    assert tmp.is_dir() and str(os.getpid()) not in tmp.name and f"-{proc.pid}-" in tmp.name
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    assert list(tmp_path.iterdir()) == []


def test_stale_temporary_of_a_killed_run_is_removed(tmp_path):
    out = tmp_path / "ds"
    proc, left = _writer(out)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert left.is_dir()  # what the issue found: a hidden folder no later run removed
    from cryotune._temps import owned_name

    mine = tmp_path / owned_name(".ds.tmp-")  # a live process's temporary is kept
    mine.mkdir()
    run = subprocess.run([sys.executable, "-m", "cryotune", "simulate", str(out), "--size", "16",
                          "--n-train", "8", "--n-test", "4"], cwd=tmp_path, env=ENV,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert not left.exists() and mine.exists()
    lines = [ln for ln in run.stderr.splitlines() if "left by a killed earlier run" in ln]
    assert len(lines) == 1 and left.name in lines[0], run.stderr
    assert (out / "manifest.json").exists()


STACK = """
import sys, time
import numpy as np
from cryotune.cli import _on_sigterm
from cryotune.data.mrc import StackWriter

_on_sigterm()
with StackWriter(sys.argv[1], (100000, 32, 32), 1.0) as w:
    print("open", flush=True)
    for i in range(100000):
        w.write(np.zeros((1, 32, 32), np.float32))
        time.sleep(0.01)
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_stack_writer_temporary(tmp_path, sig):
    """denoise's output stack: SIGTERM removes its temporary; after SIGKILL the next writer does."""
    out = tmp_path / "den.mrcs"
    proc = subprocess.Popen([sys.executable, "-c", STACK, str(out)], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "open"
    assert list(tmp_path.glob(".den.mrcs.*.tmp"))
    proc.send_signal(sig)
    proc.wait(timeout=60)
    left = list(tmp_path.glob(".den.mrcs.*.tmp"))
    if sig == signal.SIGTERM:
        assert left == [] and not out.exists()
        return
    assert len(left) == 1
    import numpy as np

    from cryotune.data.mrc import write_stack

    write_stack(out, np.zeros((2, 8, 8), np.float32), pixel_size=1.0)
    assert not left[0].exists() and out.exists()
