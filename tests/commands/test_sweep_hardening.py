"""`cryotune sweep` as real processes: one writer per study, Ctrl-C and SIGTERM with an honest
ending, resume after them, an unreadable trial table rebuilt, and what embedded Ray exposes."""

from __future__ import annotations

import io
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from proctree import alive, descendants, listening

from cryotune import cli
from cryotune.study.tables import load_study

pytestmark = pytest.mark.timeout(600)
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
LOOPBACK = ("127.0.0.1", "::1")


@pytest.fixture(scope="module")
def toy_store(tmp_path_factory):
    from cryotune.data.simulate import simulate

    return simulate(tmp_path_factory.mktemp("data") / "toy", size=16, n_train=32, n_test=8,
                    snr=0.5, seed=2, shard_rows=32)


def _space(path: Path, store: Path, **changes) -> Path:
    raw = {"name": "h", "dataset": str(store), "methods": ["l1_ae"], "epochs": 2,
           "train": {"width": 4, "depth": 1, "batch_size": 16, "gallery": 2},
           "storage": str(path.parent / "studies"), "max_concurrent": 1}
    raw.update(changes)
    path.write_text(yaml.safe_dump(raw))
    return path


def _sweep(*argv, log: Path) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-m", "cryotune.cli", "sweep", *map(str, argv)],
                                stdout=out, stderr=subprocess.STDOUT, env=ENV,
                                start_new_session=True)


def _table(study: Path) -> pd.DataFrame:
    try:
        # read whole, then parse: the file may be replaced between pyarrow's two opens
        return pd.read_parquet(io.BytesIO((study / "trials.parquet").read_bytes()))
    except (OSError, ValueError):  # not written yet, or being replaced
        return pd.DataFrame(columns=["trial_id", "status"])


def _wait(predicate, proc: subprocess.Popen, log: Path, timeout: float = 300, tree=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if tree is not None:
            tree.update(descendants(proc.pid))
        if predicate():
            return
        assert proc.poll() is None, log.read_text()[-3000:]
        time.sleep(0.2)
    raise AssertionError(f"timed out\n{log.read_text()[-3000:]}")


def _end(pids) -> None:
    """End processes a test caused that are still alive (a failing test), by pid."""
    for pid in pids:
        if alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _gone_within(pids, seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        left = [p for p in pids if alive(p)]
        if not left:
            return []
        time.sleep(0.2)
    return [p for p in pids if alive(p)]


def _http(address: str, port: int) -> bool:
    """True when the socket answers an HTTP request with an HTTP status line."""
    try:
        with socket.create_connection((address, port), timeout=2) as s:
            s.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
            return s.recv(16).startswith(b"HTTP/")
    except OSError:
        return False


def test_one_writer_per_study_and_sigterm(tmp_path, toy_store):
    space = _space(tmp_path / "s.yaml", toy_store,
                   methods=[{"method": "l1_ae", "lr_g": [1e-2, 5e-3, 2e-3]}])
    study = tmp_path / "studies" / "h"
    first = _sweep(space, log=tmp_path / "first.log")
    time.sleep(0.5)
    # the second asks for 3 epochs: had it written anything, spec.yaml or a row would say so
    second = _sweep(space, "--set", "epochs=3", log=tmp_path / "second.log")
    tree: set[int] = set()
    try:
        logs = {first.pid: tmp_path / "first.log", second.pid: tmp_path / "second.log"}
        deadline = time.monotonic() + 120
        while first.poll() is None and second.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        # whichever took the lock first runs; the other is refused with one line
        loser = first if first.poll() is not None else second
        winner = second if loser is first else first
        assert loser.returncode == 2, logs[loser.pid].read_text()
        assert winner.poll() is None, logs[winner.pid].read_text()
        text = logs[loser.pid].read_text()
        errors = [ln for ln in text.splitlines() if ln.startswith("error:")]
        assert len(errors) == 1, text
        assert f"being written by pid {winner.pid} on {socket.gethostname()} since " in errors[0]
        assert "Traceback" not in text and "--overwrite" not in text

        # a resume while the sweep runs is refused too, and leaves the study alone
        resume = subprocess.run([sys.executable, "-m", "cryotune.cli", "sweep", str(space),
                                 "--resume"], capture_output=True, text=True, env=ENV, timeout=120)
        assert resume.returncode == 2, resume.stderr
        assert f"pid {winner.pid}" in resume.stderr and "Traceback" not in resume.stderr
        assert winner.poll() is None

        # status names the running sweep
        status = subprocess.run([sys.executable, "-m", "cryotune.cli", "status", str(study)],
                                capture_output=True, text=True, env=ENV, timeout=120)
        assert f"running: pid {winner.pid} on {socket.gethostname()} since " in status.stdout

        # SIGTERM once a trial has finished: exit 143, the count and the resume command
        log = logs[winner.pid]
        _wait(lambda: (_table(study)["status"] == "finished").any(), winner, log, tree=tree)
        tree.update(descendants(winner.pid))
        os.kill(winner.pid, signal.SIGTERM)
        assert winner.wait(timeout=120) == 143, log.read_text()[-3000:]
    finally:
        _end(tree | {first.pid, second.pid})
    text = log.read_text()
    assert re.search(r"sweep interrupted: [1-3] of 3 trials finished .*; finish it with: "
                     rf"cryotune sweep {re.escape(str(study))} --resume", text), text
    assert "interrupted (SIGTERM)" in text and "Traceback" not in text
    epochs = 2 if winner is first else 3
    assert yaml.safe_load((study / "spec.yaml").read_text())["epochs"] == epochs
    trials = load_study(study).trials
    history = load_study(study).history
    done = trials[trials["status"] == "finished"]
    assert len(done) >= 1 and (done["epochs"] == epochs).all()
    for trial_id in done["trial_id"]:
        assert list(history.loc[history["trial_id"] == trial_id, "epoch"]) == \
            list(range(1, epochs + 1))
    assert set(trials["status"]) <= {"finished", "interrupted"}
    assert not (study / "lock.json").exists()
    assert not _gone_within(tree, 10), "Ray processes outlived the sweep"


def test_ctrl_c_marks_interrupted_trials_and_resume_finishes_them(tmp_path, toy_store, capsys):
    # trial 0 learns (lr 1e-2); the others barely move, so the best trial ends before Ctrl-C
    space = _space(tmp_path / "c.yaml", toy_store, epochs=25, checkpoint_every=1, methods=[
        {"method": "l1_ae"}, {"method": "l2_ae", "lr_g": [1e-7, 2e-7, 3e-7]}])
    study = tmp_path / "studies" / "h"
    log = tmp_path / "run.log"
    driver = _sweep(space, log=log)
    tree: set[int] = set()
    try:
        # wait for a finished trial and a second one with a checkpoint (it has run an epoch)
        def running_with_epoch():
            table = _table(study)
            ended = set(table["trial_id"])
            return (table["status"] == "finished").any() and any(
                p.name not in ended for p in study.glob("trial_*") if any(p.glob("checkpoint_*")))

        _wait(running_with_epoch, driver, log, tree=tree)
        tree.update(descendants(driver.pid))

        # what the sweep's process tree listens on: loopback only, HTTP endpoints included
        sockets = listening([driver.pid, *descendants(driver.pid)])
        assert sockets, "no listening socket found in the sweep's process tree"
        http = [(a, p) for a, p, _ in sockets if _http("127.0.0.1" if a in ("0.0.0.0", "::")
                                                          else a, p)]
        assert http, sockets  # the dashboard agent's HTTP port at least
        exposed = [(a, p, pid) for a, p, pid in sockets if a not in LOOPBACK]
        assert not exposed, f"listening outside loopback: {exposed} (HTTP: {http})"

        os.kill(driver.pid, signal.SIGINT)
        assert driver.wait(timeout=120) == 130, log.read_text()[-3000:]
    finally:
        _end(tree | {driver.pid})
    text = log.read_text()
    assert "Traceback" not in text, text
    finished_before = re.search(r"sweep interrupted: (\d) of 4 trials finished .* (\d) "
                                rf"interrupted; finish it with: cryotune sweep "
                                rf"{re.escape(str(study))} --resume", text)
    assert finished_before, text
    assert "interrupted (Ctrl-C)" in text
    assert not _gone_within(tree, 10), "Ray processes outlived the interrupted sweep"

    trials = load_study(study).trials.set_index("trial_id")
    cut = trials[trials["status"] == "interrupted"]
    assert len(cut) >= 1 and int(finished_before.group(2)) == len(cut)
    assert int(finished_before.group(1)) == (trials["status"] == "finished").sum()
    # no result: not in summaries, never the best, listed by status
    summary = load_study(study).summary(by=["config.method"], metrics=["test_mse"],
                                        agg=["count"])
    assert summary["test_mse_count"].sum() == (trials["status"] != "interrupted").sum()
    best = load_study(study).best()
    assert best["status"] == "finished" and best["trial_id"] not in cut.index
    status = subprocess.run([sys.executable, "-m", "cryotune.cli", "status", str(study)],
                            capture_output=True, text=True, env=ENV, timeout=120)
    assert f"{len(cut)} interrupted" in status.stdout and all(t in status.stdout for t in cut.index)
    before = trials[trials["status"] == "finished"]

    # resume: every trial finishes, the interrupted rows are replaced, finished ones kept
    log2 = tmp_path / "resume.log"
    resumed = _sweep(study, "--resume", log=log2)
    try:
        assert resumed.wait(timeout=400) == 0, log2.read_text()[-3000:]
    finally:
        _end([resumed.pid, *descendants(resumed.pid)])
    out = log2.read_text()
    after = load_study(study).trials.set_index("trial_id")
    assert len(after) == 4 and (after["status"] == "finished").all(), after["status"]
    assert (after["epochs"] == 25).all()
    for trial_id, row in before.iterrows():  # finished before Ctrl-C: not run again
        assert after.loc[trial_id, "ended_at"] == row["ended_at"]
    history = load_study(study).history
    assert not history.duplicated(["trial_id", "epoch"]).any()
    assert "FileNotFoundError" not in out, out
    # the live view: each ended trial is counted in the line that follows it, and the best
    # so far includes the trials that finished before the interrupt
    lines = out.splitlines()
    count = len(before)
    for i, line in enumerate(lines):
        if re.match(r"\S+ finished +trial_", line):
            count += 1
            following = next(ln for ln in lines[i + 1:] if ln.startswith("trials: "))
            assert following.startswith(f"trials: {count}/4 finished"), (line, following)
    assert count == 4, out
    from cryotune.commands.sweep import _label

    best = load_study(study).best()
    config = {k.removeprefix("config."): v for k, v in best.items()
              if k.startswith("config.") and pd.notna(v)}
    last = [ln for ln in lines if ln.startswith("trials: ")][-1]
    assert f"({_label(config)})" in last and best["trial_id"] in before.index, (last, best)

    # an unreadable trial table: the error says what works, and that works
    (study / "trials.parquet").write_bytes(b"not parquet")
    assert cli.main(["status", str(study)]) == 2
    error = capsys.readouterr().err
    assert f"run `cryotune sweep {study} --resume`: it sets the file aside and rebuilds" in error
    again = subprocess.run([sys.executable, "-m", "cryotune.cli", "sweep", str(study),
                            "--resume"], capture_output=True, text=True, env=ENV, timeout=400)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    rebuilt = load_study(study).trials.set_index("trial_id").sort_index()
    assert list(rebuilt.index) == sorted(after.index)
    assert (rebuilt["status"] == "finished").all()
    pd.testing.assert_series_equal(rebuilt["test_mse"], after["test_mse"].sort_index())
    assert list(study.glob("trials.parquet.unreadable-*"))
