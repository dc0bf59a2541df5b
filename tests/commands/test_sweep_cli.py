"""`cryotune sweep` through the real dispatcher: dry runs, bad spaces, exit codes, and a driver
killed mid-sweep and resumed."""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from proctree import descendants, end_caused

from cryotune import cli
from cryotune.study.tables import load_study
from cryotune.sweep.space import trial_configs
from cryotune.sweep.spec import load_spec

SPACES = Path(__file__).resolve().parents[2] / "search_spaces"
# the dispatcher with only this command registered, in a fresh process
CLI = ("import sys; from cryotune import cli; cli.COMMANDS = ('sweep',); "
       "rc = cli.main(sys.argv[1:]); print('ray imported:', 'ray' in sys.modules); sys.exit(rc)")


@pytest.fixture
def run(monkeypatch):
    monkeypatch.setattr(cli, "COMMANDS", ("sweep",))
    return lambda *argv: cli.main(["sweep", *map(str, argv)])


@pytest.fixture(scope="module")
def toy_store(tmp_path_factory):
    from cryotune.data.simulate import simulate

    return simulate(tmp_path_factory.mktemp("data") / "toy", size=16, n_train=64, n_test=16,
                    snr=0.5, seed=1, shard_rows=32)


def _write_space(path: Path, store: Path, **changes) -> Path:
    raw = {"name": "cli", "dataset": str(store), "methods": ["l1_ae"], "epochs": 2,
           "train": {"width": 4, "depth": 1, "batch_size": 16, "gallery": 2},
           "storage": str(path.parent / "studies")}
    raw.update(changes)
    path.write_text(yaml.safe_dump(raw))
    return path


def test_dry_run_prints_the_plan_and_starts_nothing(tmp_path):
    out = subprocess.run(
        [sys.executable, "-c", CLI, "sweep", SPACES / "paper-fig5-robustness.yaml", "--scale",
         "cpu", "--set", "seeds=1", "--storage", tmp_path / "studies", "--dry-run"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "trials: 60 (grid)" in text  # 6 methods x 10 contamination settings x 1 seed
    assert "10 x ℓ2-AE" in text and "10 x (0.5,0.5)-GAN + ℓ1" in text
    assert "resources: " in text and "Ray Data keeps a core" in text
    assert "simulate 32 px, 1000 train / 200 test pairs, SNR 0.1" in text
    assert "(not yet simulated)" in text
    assert "ray imported: False" in text
    assert not (tmp_path / "studies").exists()


def test_a_committed_study_extends_from_its_tables_alone(run, capsys, tmp_path):
    # the repository's lambda-convention study: tables, galleries and dataset records, no
    # checkpoints and no simulated data; a seed more is one new trial a cell, nothing rerun
    committed = SPACES.parent / "reports" / "reproduction" / "convention" / "lambda-convention"
    study = tmp_path / "lambda-convention"
    shutil.copytree(committed, study)
    assert not (study / "simulated").exists()
    assert run(SPACES / "lambda-convention.yaml", "--scale", "cpu", "--set", "epochs=6",
               "--set", "seeds=4", "--extend", study, "--dry-run") == 0
    out = capsys.readouterr().out
    assert "new trials: 12 (in tune-ext-1)" in out
    listed = [ln for ln in out.splitlines() if ln.startswith("  trial_")]
    assert len(listed) == 12 and all(ln.endswith("seed 3") for ln in listed)
    assert not (study / "simulated").exists()  # the dry run simulated nothing


def test_paper_scale_dry_run_names_the_missing_gpu(run, capsys, tmp_path):
    assert run(SPACES / "paper-table1.yaml", "--storage", tmp_path, "--dry-run") == 0
    text = capsys.readouterr().out
    assert "trials: 36 (grid)" in text and "simulate 128 px, 25000 train / 1500 test" in text
    if "0 GPUs" in text or "Ray sees none" in text:
        assert "--scale cpu" in text


def test_bad_spaces_exit_2_with_the_key_path(run, capsys, tmp_path, toy_store):
    space = _write_space(tmp_path / "bad.yaml", toy_store,
                         methods=["l1_ae", "l2_ae", {"method": "beta_gan", "alpha": 1.5}])
    assert run(space, "--dry-run") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: 1.5 is outside [-1, 1], methods[2].alpha:")
    assert run(_write_space(tmp_path / "ok.yaml", toy_store), "--set", "epochs=zero") == 2
    assert "epochs" in capsys.readouterr().err
    assert run(tmp_path / "missing.yaml") == 2
    assert "not found" in capsys.readouterr().err
    # the image size must divide by 2**depth: refused before Ray starts
    deep = _write_space(tmp_path / "deep.yaml", toy_store, train={"depth": 5})
    assert run(deep) == 2
    assert "not divisible by 2**depth = 32" in capsys.readouterr().err


@pytest.mark.usefixtures("ray_session")
@pytest.mark.timeout(300)
def test_errored_trials_exit_1_and_are_recorded_once(run, capsys, tmp_path, toy_store):
    import torch

    if torch.cuda.is_available():
        pytest.skip("the error this test provokes is a missing CUDA device")
    space = _write_space(tmp_path / "err.yaml", toy_store, max_failures=0,
                         methods=["l1_ae", {"method": "l2_ae", "device": "cuda"}])
    assert run(space) == 1
    out = capsys.readouterr().out
    assert "1 error, 1 finished of 2 trials" in out
    study = tmp_path / "studies" / "cli"
    trials = load_study(study).trials.set_index("config.method")
    assert trials.loc["l2_ae", "status"] == "error"
    assert trials.loc["l2_ae", "error"].startswith("CUDA is not available on this machine, device")
    assert run(space) == 2  # the study exists
    assert "--resume" in capsys.readouterr().err
    assert run(study, "--resume") == 1  # the errored trial runs again, and errs again
    again = load_study(study).trials
    assert len(again) == 2 and again["trial_id"].is_unique


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
@pytest.mark.timeout(420)
def test_a_killed_driver_resumes_without_duplicates(run, tmp_path, toy_store):
    # four trials one at a time, so that the kill finds some finished and some not
    space = _write_space(tmp_path / "resume.yaml", toy_store, epochs=3, max_concurrent=1,
                         methods=[{"method": "l1_ae", "lr_g": [1e-2, 5e-3, 2e-3, 1e-3]}])
    study = tmp_path / "studies" / "cli"
    log = tmp_path / "driver.log"
    with open(log, "w") as out:
        driver = subprocess.Popen([sys.executable, "-c", CLI, "sweep", space], stdout=out,
                                  stderr=subprocess.STDOUT, start_new_session=True,
                                  env={**os.environ, "OMP_NUM_THREADS": "1"})
    caused = set()
    try:
        deadline = time.monotonic() + 240
        finished = pd.DataFrame()
        while time.monotonic() < deadline and driver.poll() is None:
            caused.update(descendants(driver.pid))
            table = study / "trials.parquet"
            if table.exists():
                finished = pd.read_parquet(io.BytesIO(table.read_bytes()))  # read whole
                if (finished["status"] == "finished").any():
                    break
            time.sleep(0.2)
        assert driver.poll() is None, log.read_text()
        assert len(finished) >= 1
        caused.update(descendants(driver.pid))
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        # Ray's agents outlive a killed driver: end every process this test caused, by pid
        left = end_caused(caused, driver.pid)
    assert not left
    assert "INFO" not in log.read_text()  # Ray's own logs stay off without --verbose
    before = finished[finished["status"] == "finished"].set_index("trial_id")

    assert run(space, "--resume") == 0
    trials = load_study(study).trials.set_index("trial_id")
    grid = trial_configs(load_spec(space))
    assert len(trials) == len(grid) == 4 and (trials["status"] == "finished").all()
    assert sorted(trials["config.lr_g"]) == sorted(c["lr_g"] for c in grid)  # each config once
    for trial_id, row in before.iterrows():  # finished before the kill: not run again
        assert trials.loc[trial_id, "ended_at"] == row["ended_at"]
    history = load_study(study).history
    assert not history.duplicated(["trial_id", "epoch"]).any()
    assert (history.groupby("trial_id")["epoch"].apply(list) == pd.Series([[1, 2, 3]] * 4,
            index=sorted(trials.index))).all()


def test_the_live_line_names_the_selection_score(tmp_path):
    from cryotune.commands.sweep import LiveView
    from cryotune.study.store import StudyStore
    from cryotune.sweep.recorder import Session

    session = Session(StudyStore(tmp_path, "s"), metric="val_mse_median", mode="min", epochs=2,
                      total=2)
    session.progress.best = (0.001908, "trial_00000", {"method": "l1_ae", "seed": 0})
    line = LiveView()._status_line(session.progress)
    assert "| best val_mse_median 0.001908 (ℓ1-AE seed 0) |" in line, line


def test_an_extension_counts_the_trials_it_does_not_run(tmp_path):
    # an extension's experiment runs 3 of the study's 6 trials: the 3 before it count as
    # they ended (2 finished, 1 errored), none of them as pending
    from types import SimpleNamespace

    from cryotune.study.store import StudyStore
    from cryotune.sweep.recorder import FIRST_TRIAL, Session

    shown = []
    session = Session(StudyStore(tmp_path, "s"), metric="val_mse_median", mode="min", epochs=2,
                      total=6, on_progress=shown.append,
                      recorded={"trial_00000": "finished", "trial_00001": "finished",
                                "trial_00002": "error",
                                "baseline-nlm-sim16-0a1b2c3d": "finished"})  # not a trial
    trials = [SimpleNamespace(status=status, experiment_tag=f"{i}_t", config={FIRST_TRIAL: 3})
              for i, status in enumerate(["TERMINATED", "RUNNING", "PENDING"])]
    session.step(trials, force=True)
    p = shown[-1]
    assert (p.finished, p.running, p.pending, p.failed) == (3, 1, 1, 1)
    assert p.finished + p.running + p.pending + p.failed == p.total
