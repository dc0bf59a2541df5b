"""Extending a finished study on a real local Ray: only the missing cells run, existing trials
stay byte for byte, a changed fixed setting is refused, the dry run lists the new trials, and
a killed extension resumes."""

from __future__ import annotations

import hashlib
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
from cryotune.runs.sweep import extend_study, run_sweep
from cryotune.study.tables import load_study
from cryotune.sweep.extend import cell_key, row_configs
from cryotune.sweep.space import trial_configs
from cryotune.sweep.spec import load_spec, spec_from_mapping

pytestmark = [pytest.mark.usefixtures("ray_session"), pytest.mark.timeout(420)]
# the dispatcher with only this command registered, in a fresh process
CLI = ("import sys; from cryotune import cli; cli.COMMANDS = ('sweep',); "
       "sys.exit(cli.main(sys.argv[1:]))")


def _raw(store: Path, storage: Path, **changes) -> dict:
    raw = {"name": "base", "dataset": str(store), "methods": ["l1_ae"], "eps": [0, 0.2],
           "contamination": ["A"], "seeds": 1, "epochs": 1,
           "train": {"width": 4, "depth": 1, "batch_size": 16, "gallery": 2},
           "resources": {"cpu": 0.5}, "max_concurrent": 2, "storage": str(storage)}
    raw.update(changes)
    return raw


def _space(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def base_study(tmp_path_factory, toy_store):
    """A finished 2-trial study (l1-AE at eps 0 and eps 0.2 type A), made once."""
    storage = tmp_path_factory.mktemp("base") / "studies"
    outcome = run_sweep(spec_from_mapping(_raw(toy_store, storage)))
    assert outcome.counts == {"finished": 2}
    return Path(outcome.study)


@pytest.fixture
def study(base_study, tmp_path):
    """A copy of the base study of this test's own."""
    out = tmp_path / "studies" / "base"
    shutil.copytree(base_study, out)
    return out


@pytest.fixture
def run(monkeypatch):
    monkeypatch.setattr(cli, "COMMANDS", ("sweep",))
    return lambda *argv: cli.main(["sweep", *map(str, argv)])


def _fingerprint(study: Path, trial_ids) -> dict[str, tuple[str, int]]:
    """sha256 and mtime of every file of the given trials: checkpoints and gallery arrays."""
    out = {}
    for trial_id in trial_ids:
        for folder in (study / trial_id, study / "trials" / trial_id):
            for f in sorted(p for p in folder.rglob("*") if p.is_file()):
                out[str(f)] = (hashlib.sha256(f.read_bytes()).hexdigest(), f.stat().st_mtime_ns)
    assert out
    return out


def _history(study: Path, trial_ids) -> pd.DataFrame:
    history = load_study(study).history
    history = history[history["trial_id"].isin(list(trial_ids))]
    return history.drop(columns=["write_seq"], errors="ignore").sort_values(["trial_id", "epoch"]).reset_index(
        drop=True).dropna(axis=1, how="all")


def _cells(trials: pd.DataFrame) -> list[str]:
    return sorted(cell_key(c) for c in row_configs(trials))


def _grid(spec, study: Path) -> list[str]:
    """The cells of a spec's grid, its dataset named as the study names it."""
    trials = load_study(study).trials
    keys = {spec.dataset[0].key: (trials["config.dataset"].iloc[0], trials["config.snr"].iloc[0])}
    return sorted(cell_key(c) for c in trial_configs(spec, keys))


def test_extension_runs_only_the_missing_cells(study, toy_store, tmp_path, run, capsys):
    before = load_study(study).trials.set_index("trial_id")
    old_ids = sorted(before.index)
    files = _fingerprint(study, old_ids)
    history = _history(study, old_ids)
    # a method and a contamination type more: 2 x (eps 0, 0.2 A, 0.2 B) = 6 cells, 2 held
    raw = _raw(toy_store, tmp_path / "elsewhere", methods=["l1_ae", "l2_ae"],
               contamination=["A", "B"])
    space = _space(tmp_path / "more.yaml", raw)

    assert run(space, "--extend", study, "--dry-run") == 0
    out = capsys.readouterr().out
    listed = [ln.split() for ln in out.splitlines() if ln.startswith("  trial_")]
    assert "new trials: 4 (in tune-ext-1)" in out
    assert [w[0] for w in listed] == ["trial_00002", "trial_00003", "trial_00004", "trial_00005"]
    assert sorted(" ".join(w[1:]) for w in listed) == sorted([
        "ℓ1-AE eps 0.2 B seed 0", "ℓ2-AE seed 0", "ℓ2-AE eps 0.2 A seed 0",
        "ℓ2-AE eps 0.2 B seed 0"])
    assert not (study / "tune-ext-1").exists()  # the dry run started nothing

    outcome = extend_study(study, load_spec(space))
    assert outcome.counts == {"finished": 6} and outcome.total == 6
    after = load_study(study).trials.set_index("trial_id")
    new_ids = sorted(set(after.index) - set(old_ids))
    assert new_ids == ["trial_00002", "trial_00003", "trial_00004", "trial_00005"]
    # exactly the missing cells ran, in their own experiment, each once
    assert sorted(p.name for p in (study / "tune-ext-1").glob("trial_*")) == new_ids
    stored = yaml.safe_load((study / "spec.yaml").read_text())
    extended = spec_from_mapping({k: v for k, v in stored.items() if k != "provenance"})
    assert _cells(after.reset_index()) == _grid(extended, study)
    assert len(set(_cells(after.reset_index()))) == 6
    # the existing trials were neither run again nor rewritten
    cols = list(before.columns)
    pd.testing.assert_frame_equal(after.loc[old_ids, cols], before.loc[old_ids, cols],
                                  check_dtype=False)
    assert _fingerprint(study, old_ids) == files
    pd.testing.assert_frame_equal(_history(study, old_ids), history, check_dtype=False)
    # spec.yaml is the union, and says what the extension added
    assert stored["methods"] == [{"method": "l1_ae"}, {"method": "l2_ae"}]
    assert stored["contamination"] == ["A", "B"] and stored["epochs"] == 1
    ext = stored["provenance"]["extensions"]
    assert len(ext) == 1 and ext[0]["experiment"] == "tune-ext-1"
    assert ext[0]["first_trial"] == 2 and ext[0]["trials"] == 4
    assert ext[0]["added"]["contamination"] == ["B"]

    # extending again by the same spec finds nothing to run
    table = (study / "trials.parquet").stat().st_mtime_ns
    assert extend_study(study, load_spec(space)).counts == {"finished": 6}
    assert (study / "trials.parquet").stat().st_mtime_ns == table
    assert not (study / "tune-ext-2").exists()
    # a seed more: every cell of the union again with seed 1, nothing else
    outcome = extend_study(study, spec_from_mapping({**raw, "seeds": [1]}))
    trials = load_study(study).trials
    assert outcome.counts == {"finished": 12} and len(trials) == 12
    assert sorted(trials["config.seed"].value_counts().tolist()) == [6, 6]
    assert _fingerprint(study, old_ids) == files
    ext = yaml.safe_load((study / "spec.yaml").read_text())["provenance"]["extensions"]
    assert [e["first_trial"] for e in ext] == [2, 6] and ext[1]["added"] == {"seeds": [1]}


@pytest.mark.parametrize(("change", "line"), [
    ({"epochs": 2}, "error: epochs is 1 in the study and 2 in the spec"),
    ({"train": {"width": 8, "depth": 1, "batch_size": 16, "gallery": 2}},
     "error: train.width is 4 in the study and 8 in the spec"),
    ({"select": {"metric": "val_mse"}}, "error: select.metric is \"val_mse_median\" in the "
                                        "study and \"val_mse\" in the spec"),
    ({"search": "random", "n_trials": 3}, "error: only a grid study can be extended"),
])
def test_a_changed_fixed_setting_is_refused(study, toy_store, tmp_path, run, capsys, change,
                                            line):
    spec_before = (study / "spec.yaml").read_bytes()
    table = (study / "trials.parquet").read_bytes()
    raw = _raw(toy_store, tmp_path, seeds=2, **change)
    assert run(_space(tmp_path / "changed.yaml", raw), "--extend", study) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(line), err
    assert len(err.splitlines()) == 1
    # nothing changed, nothing started
    assert (study / "spec.yaml").read_bytes() == spec_before
    assert (study / "trials.parquet").read_bytes() == table
    assert not (study / "tune-ext-1").exists()


def test_a_dataset_change_names_the_key(study, tmp_path, run, capsys):
    raw = _raw(Path("/elsewhere/toy"), tmp_path)
    assert run(_space(tmp_path / "data.yaml", raw), "--extend", study, "--dry-run") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: dataset is ") and "/elsewhere/toy" in err


@pytest.mark.slow
@pytest.mark.parametrize("how", ["resume", "extend"])
def test_a_killed_extension_resumes(study, toy_store, tmp_path, run, how):
    old = load_study(study).trials.set_index("trial_id")
    files = _fingerprint(study, old.index)
    # four seeds more, one trial at a time: the kill finds some new trials ended, some not
    space = _space(tmp_path / "seeds.yaml", _raw(toy_store, tmp_path, seeds=[1, 2],
                                                  max_concurrent=1))
    log = tmp_path / "driver.log"
    with open(log, "w") as out:
        driver = subprocess.Popen([sys.executable, "-c", CLI, "sweep", space, "--extend", study],
                                  stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                  env={**os.environ, "OMP_NUM_THREADS": "1"})
    caused: set[int] = set()
    try:
        deadline = time.monotonic() + 300
        seen = pd.DataFrame()
        while time.monotonic() < deadline and driver.poll() is None:
            caused.update(descendants(driver.pid))
            try:  # read whole, then parse: the driver may replace it between two opens
                table = pd.read_parquet(io.BytesIO((study / "trials.parquet").read_bytes()))
            except (OSError, ValueError):
                time.sleep(0.2)
                continue
            seen = table[~table["trial_id"].isin(old.index) & (table["status"] == "finished")]
            if len(seen):
                break
            time.sleep(0.2)
        assert driver.poll() is None, log.read_text()
        assert len(seen) >= 1
        caused.update(descendants(driver.pid))
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        # Ray's agents outlive a killed driver: end every process this test caused, by pid
        left = end_caused(caused, driver.pid)
    assert not left
    killed = load_study(study).trials
    assert len(killed) < 6, "the extension ended before it could be killed"
    before = seen.set_index("trial_id")

    # `sweep STUDY --resume`, or the same `--extend` again: the killed experiment continues
    assert (run(study, "--resume") if how == "resume" else run(space, "--extend", study)) == 0
    trials = load_study(study).trials.set_index("trial_id")
    assert sorted(trials.index) == [f"trial_{i:05d}" for i in range(6)]
    assert (trials["status"] == "finished").all()
    assert sorted(trials["config.seed"].value_counts().tolist()) == [2, 2, 2]
    assert len(set(_cells(trials.reset_index()))) == 6  # each cell once
    for trial_id, row in before.iterrows():  # ended before the kill: not run again
        assert trials.loc[trial_id, "ended_at"] == row["ended_at"]
    assert _fingerprint(study, old.index) == files
    history = load_study(study).history
    assert not history.duplicated(["trial_id", "epoch"]).any()
    stored = yaml.safe_load((study / "spec.yaml").read_text())
    ext = stored["provenance"]["extensions"]
    assert stored["seeds"] == [0, 1, 2] and len(ext) == 1
    assert ext[0]["trials"] == 4 and "restarted_at" not in ext[0]  # restored, not started over
    assert not (study / "tune-ext-2").exists()


def test_rows_from_before_reduction_mark_a_legacy_study():
    from cryotune.runs.sweep import _legacy_reduction

    rows = pd.DataFrame({"config.method": ["beta_gan", "l1_ae"]})
    assert _legacy_reduction({"methods": ["beta_gan", "l1_ae"]}, rows)
    assert _legacy_reduction({}, rows.assign(**{"config.reduction": [None, None]}))
    assert not _legacy_reduction({}, rows.assign(**{"config.reduction": ["sum", None]}))
    assert not _legacy_reduction({"train": {"reduction": "mean"}}, rows)
    assert not _legacy_reduction({}, pd.DataFrame({"config.method": ["l1_ae"]}))
