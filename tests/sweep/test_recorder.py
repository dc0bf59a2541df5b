"""The recorder on a real local Ray: trial rows with their restarts, one history file at the end."""

import json
import tempfile
from pathlib import Path

import pytest
from ray import tune

from cryotune.runs.sweep import run_sweep
from cryotune.study.store import StudyStore
from cryotune.study.tables import load_study
from cryotune.sweep.recorder import Session, StudyRecorder
from cryotune.sweep.trainable import HISTORY_FILE

pytestmark = [pytest.mark.usefixtures("ray_session"), pytest.mark.timeout(300)]


def _history_files(study: Path) -> list[str]:
    return sorted(p.name for p in (study / "history.parquet").iterdir())


def test_a_session_records_restarts_and_leaves_one_history_file(tmp_path):
    marker = tmp_path / "failed-once"

    def trainable(config):
        # three epochs with a checkpoint each; trial x=0 fails once at epoch 2, and Tune
        # restarts it from its epoch-1 checkpoint
        history, x = [], config["t"]["x"]
        checkpoint = tune.get_checkpoint()
        if checkpoint is not None:
            with checkpoint.as_directory() as d:
                history = json.loads(Path(d, HISTORY_FILE).read_text())
        for epoch in range(len(history) + 1, 4):
            if x == 0 and epoch == 2 and not marker.exists():
                marker.touch()
                raise RuntimeError("a lost worker")
            history.append({"epoch": epoch, "test_mse": x + 1 / epoch})
            with tempfile.TemporaryDirectory() as d:
                Path(d, HISTORY_FILE).write_text(json.dumps(history))
                tune.report(history[-1], checkpoint=tune.Checkpoint.from_directory(d))

    store = StudyStore(tmp_path / "studies", "s")
    tuner = tune.Tuner(
        trainable, param_space={"t": {"x": tune.grid_search([0, 1, 2])}},
        tune_config=tune.TuneConfig(max_concurrent_trials=1),
        run_config=tune.RunConfig(name="s", storage_path=str(tmp_path / "tune"), verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=1),
                                  callbacks=[StudyRecorder()]))
    # compact_every=2: one compaction after the second trial, the last one at the close
    with Session(store, metric="test_mse", mode="min", epochs=3, total=3,
                 compact_every=2) as session:
        tuner.fit()
        assert len(_history_files(tmp_path / "studies" / "s")) == 2
    assert marker.exists() and len(session.recorded) == 3
    assert _history_files(tmp_path / "studies" / "s") == ["compacted-000000000005.parquet"]
    study = load_study(tmp_path / "studies" / "s")
    trials = study.trials.set_index("config.x")
    assert (trials["status"] == "finished").all()
    assert trials["restarts"].to_dict() == {0: 1, 1: 0, 2: 0}
    for trial_id, epochs in study.history.groupby("trial_id")["epoch"]:
        assert list(epochs) == [1, 2, 3], trial_id  # the restarted trial's epochs once each
    assert study.history["test_mse"].tolist() == pytest.approx(
        [x + 1 / e for x in (0, 1, 2) for e in (1, 2, 3)])


def test_a_finished_sweep_leaves_one_history_file(make_spec):
    spec = make_spec(methods=["l1_ae", "l2_ae"], epochs=1, resources={"cpu": 0.5},
                     max_concurrent=2)
    outcome = run_sweep(spec)
    assert outcome.counts == {"finished": 2}
    assert len(_history_files(Path(outcome.study))) == 1
    study = load_study(outcome.study)
    assert sorted(study.history["trial_id"]) == sorted(study.trials["trial_id"])
    assert (study.trials["restarts"] == 0).all()
