"""Sweeps on a real local Ray: the study tables, ASHA, Optuna, divergence, and fault tolerance."""

import json
import math
import os
import signal
import threading
import time
from pathlib import Path

import mrcfile
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
from proctree import descendants

from cryotune.cli import main as cli_main
from cryotune.data.store import open_dataset
from cryotune.nn.train import BEST_NAME, CHECKPOINT_NAME, Trainer
from cryotune.runs.sweep import run_sweep
from cryotune.study.store import dataset_key
from cryotune.study.tables import load_study
from cryotune.sweep.space import trial_configs
from cryotune.sweep.spec import load_spec

pytestmark = [pytest.mark.usefixtures("ray_session"), pytest.mark.timeout(300)]
SPACES = Path(__file__).resolve().parents[2] / "search_spaces"


def _grid_keys(configs):
    return sorted(json.dumps(c, sort_keys=True) for c in configs)


def _row_keys(trials):
    cols = [c for c in trials if c.startswith("config.")]
    out = []
    for _, row in trials[cols].iterrows():
        out.append(json.dumps({c.removeprefix("config."): (None if _missing(v) else v)
                               for c, v in row.items()}, sort_keys=True, default=float))
    return sorted(out)


def _missing(v):
    return v is None or (isinstance(v, float) and math.isnan(v))


def _checkpoint(study_dir, trial_id):
    found = sorted(Path(study_dir, trial_id).glob(f"checkpoint_*/{CHECKPOINT_NAME}"))
    return found[-1]


def test_smoke_sweep_end_to_end(tmp_path, caplog):
    # the shipped smoke space; its max_concurrent 2 equals the test Ray's 2 CPUs, so each
    # trial gets half a core and Ray Data keeps one
    spec = load_spec(SPACES / "smoke.yaml", overrides=[f"storage={tmp_path}"])
    snapshots = []
    outcome = run_sweep(spec, on_progress=lambda p: snapshots.append((p.running, p.finished)))
    assert outcome.exit_code == 0 and outcome.counts == {"finished": 6} and outcome.total == 6
    assert "trials get 0.5 CPU each" in caplog.text

    study = load_study(outcome.study)
    trials, history = study.trials, study.history
    store = Path(outcome.study, "simulated", spec.dataset[0].key)  # simulated once, in the study
    key = dataset_key(open_dataset(store).manifest)
    assert len(trials) == len(trial_configs(spec)) == 6 and trials["trial_id"].is_unique
    assert _row_keys(trials) == _grid_keys(trial_configs(spec, {spec.dataset[0].key: (key, 0.1)}))
    assert set(trials["config.dataset"]) == {key} and (trials["config.snr"] == 0.1).all()
    for metric in ("test_mse", "test_psnr", "test_ssim", "train_mse", "wall_s"):
        assert np.isfinite(trials[metric]).all()
    assert study.specs["smoke"]["methods"] == spec.raw["methods"]
    assert (trials["node_id"] == ray.get_runtime_context().get_node_id()).all()  # one node here

    test = open_dataset(store).read("test", ["noisy", "clean"])
    n = spec.train.get("gallery", 8)
    for row in trials.itertuples():
        epochs = history[history["trial_id"] == row.trial_id]
        assert list(epochs["epoch"]) == [1, 2] and row.epochs == 2
        assert epochs["test_mse"].iloc[-1] == pytest.approx(row.test_mse)
        # the trial's best validation epoch, and the test scores of that epoch
        chosen = epochs.iloc[int(np.argmin(epochs["val_mse_median"].to_numpy()))]
        assert row.best_epoch == chosen["epoch"] and row.select_metric == "val_mse_median"
        assert row.select_score == pytest.approx(chosen["val_mse_median"])
        assert row.test_mse_at_best == pytest.approx(chosen["test_mse"])
        # the table's metric and gallery, recomputed from the trial's own checkpoint with numpy
        assert row.checkpoint == str(_checkpoint(outcome.study, row.trial_id))  # the last one
        trainer = Trainer.load_checkpoint(row.checkpoint)
        denoised = trainer.denoise(np.array(test["noisy"]))
        mse = ((denoised - test["clean"]) ** 2).mean(axis=(1, 2))
        assert row.test_mse == pytest.approx(mse.mean(), rel=1e-4)
        np.testing.assert_allclose(study.array("smoke", row.trial_id, "gallery"), denoised[:n],
                                   atol=1e-6)
    np.testing.assert_array_equal(study.dataset_array("smoke", key, "gallery_noisy"),
                                  test["noisy"][:n])

    # the winning model, chosen on validation, denoises a user's stack at its best epoch:
    # `cryotune denoise --model STUDY`
    best = study.best(with_model=True)
    stack = tmp_path / "particles.mrcs"
    with mrcfile.new(stack) as m:
        m.set_data(np.array(test["noisy"][:5]))
        m.set_image_stack()
    assert cli_main(["denoise", "--model", outcome.study, "--input", str(stack),
                     "--output", str(tmp_path / "denoised.mrcs")]) == 0
    with mrcfile.open(tmp_path / "denoised.mrcs") as m:
        expected = Trainer.load_checkpoint(Path(best["checkpoint"]).with_name(BEST_NAME)).denoise(
            np.array(test["noisy"][:5]))
        np.testing.assert_allclose(m.data, expected, atol=1e-6)

    # trials ran concurrently: two were running at once, and their time spans overlap
    assert max(running for running, _ in snapshots) == 2
    spans = sorted(zip(trials["started_at"], trials["ended_at"], strict=True))
    assert any(b0 < a1 for (_, a1), (b0, _) in zip(spans, spans[1:], strict=False))


def _poison(study_dir: Path, chosen: str) -> None:
    """Rewrite the study's test columns adversarially: the chosen trial's test scores become
    the worst, every other trial's the best; the tables' Parquet metadata stays."""
    for path in [study_dir / "trials.parquet", *sorted((study_dir / "history.parquet").glob("*"))]:
        table = pq.read_table(path)
        frame = table.to_pandas()
        mine = frame["trial_id"] == chosen
        for name in [c for c in frame if c.startswith("test_")]:
            good, bad = (0.0, 1.0) if "mse" in name else (100.0, 0.0)
            frame[name] = np.where(mine, bad, good)
        out = pa.Table.from_pandas(frame, preserve_index=False)
        pq.write_table(out.replace_schema_metadata(table.schema.metadata), path)


def test_selection_never_reads_the_test_split(make_spec, tmp_path, capsys):
    # three real trials; then their test metrics are poisoned in the study's own tables
    spec = make_spec(methods=["l1_ae", "l2_ae", {"method": "l2_ae", "lr_g": [1e-3]}],
                     resources={"cpu": 0.5}, max_concurrent=2)
    outcome = run_sweep(spec)
    assert outcome.exit_code == 0
    study_dir = Path(outcome.study)
    stack = tmp_path / "particles.mrcs"
    noisy = open_dataset(spec.dataset[0].path).read("test", ["noisy"])["noisy"][:4]
    with mrcfile.new(stack) as m:
        m.set_data(np.array(noisy))
        m.set_image_stack()

    def choices(tag):
        study = load_study(study_dir)
        out = tmp_path / f"denoised-{tag}.mrcs"
        capsys.readouterr()
        assert cli_main(["status", str(study_dir)]) == 0
        status = [ln for ln in capsys.readouterr().out.splitlines()
                  if ln.startswith("best on validation")]
        assert cli_main(["denoise", "--model", str(study_dir), "--input", str(stack),
                         "--output", str(out)]) == 0
        with mrcfile.open(out) as m:
            return study.best()["trial_id"], study.best(with_model=True)["trial_id"], status, \
                np.array(m.data)

    before = choices("before")
    assert before[2], "status printed no best trial"
    _poison(study_dir, before[0])
    trials = load_study(study_dir).trials
    # the poison is adversarial: a rule reading test would now pick another trial
    assert trials.loc[trials["test_mse_at_best"].idxmin(), "trial_id"] != before[0]
    assert trials.loc[trials["test_mse"].idxmin(), "trial_id"] != before[0]
    after = choices("after")
    assert after[:3] == before[:3]
    np.testing.assert_array_equal(after[3], before[3])
    # denoise applied the chosen trial's best validation epoch (best.pt), not its last
    row = trials.set_index("trial_id").loc[before[0]]
    expected = Trainer.load_checkpoint(Path(row["checkpoint"]).with_name(BEST_NAME))
    np.testing.assert_allclose(before[3], expected.denoise(np.array(noisy)), atol=1e-6)


def test_asha_stops_poor_trials_early(make_spec):
    # two trials that learn, then two that barely move (lr 1e-7): ASHA cuts those at rung 1
    spec = make_spec(methods=[{"method": "l2_ae", "lr_g": [1e-2, 1e-7]}], seeds=2, epochs=4,
                     scheduler={"type": "asha", "grace_period": 1, "reduction_factor": 2},
                     resources={"cpu": 0.5}, max_concurrent=2)
    outcome = run_sweep(spec)
    assert outcome.exit_code == 0
    study = load_study(outcome.study)
    trials = study.trials
    assert len(trials) == 4 and set(trials["status"]) <= {"finished", "stopped", "diverged"}
    slow = trials[trials["config.lr_g"] == 1e-7]
    assert slow["status"].isin(["stopped", "diverged"]).all() and (slow["epochs"] < 4).all()
    # a trial cut early is judged on its row like any other: diverged when its selected
    # epoch's test MSE is above the noisy input's (an untrained network's often is)
    worse = trials["test_mse_at_best"] > trials["noisy_test_mse"]
    assert ((trials["status"] == "diverged") == worse).all()
    assert (trials[trials["status"] == "finished"]["epochs"] == 4).all()
    assert (trials["status"] == "finished").any()
    for row in trials.itertuples():
        epochs = study.history[study.history["trial_id"] == row.trial_id]["epoch"]
        assert list(epochs) == list(range(1, row.epochs + 1))


def test_optuna_runs_n_trials(make_spec):
    spec = make_spec(methods=[{"method": "beta_gan", "alpha": {"uniform": [-1, 1]},
                               "lr_g": {"loguniform": [1e-3, 1e-1]}}],
                     epochs=1, search="optuna", n_trials=3, resources={"cpu": 0.5},
                     max_concurrent=2)
    outcome = run_sweep(spec)
    trials = load_study(outcome.study).trials
    assert outcome.exit_code == 0 and outcome.total == 3
    assert len(trials) == 3 and (trials["status"] == "finished").all()
    assert trials["config.alpha"].between(-1, 1).all() and trials["config.alpha"].is_unique
    assert trials["config.lr_g"].between(1e-3, 1e-1).all()
    assert np.isfinite(trials["test_mse"]).all()


def test_a_diverged_trial_does_not_stop_the_sweep(make_spec):
    spec = make_spec(methods=["l1_ae", {"method": "l2_ae", "lr_g": 1e30}],
                     resources={"cpu": 0.5}, max_concurrent=2)
    outcome = run_sweep(spec)
    assert outcome.exit_code == 0 and outcome.counts == {"finished": 1, "diverged": 1}
    trials = load_study(outcome.study).trials.set_index("config.method")
    assert "non-finite" in trials.loc["l2_ae", "error"]
    assert np.isnan(trials.loc["l2_ae", "test_mse"])  # never a NaN or inf value, a missing one
    assert trials.loc["l1_ae", "epochs"] == 2 and np.isfinite(trials.loc["l1_ae", "test_mse"])
    # counted, never chosen: the best trial is the one that did not diverge
    assert load_study(outcome.study).best()["config.method"] == "l1_ae"


def cmdline(pid):
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


@pytest.mark.slow
def test_a_killed_worker_resumes_from_its_checkpoint(make_spec, tmp_path):
    spec = make_spec(epochs=5, resources={"cpu": 1}, max_failures=2,
                     train={"width": 8, "depth": 1, "batch_size": 8, "gallery": 2})
    killed = []

    def kill_after_first_checkpoint():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            # the second checkpoint: the worker only trains past a report once the driver has
            # taken it, so the first checkpoint is registered and a restore must use one
            if list(Path(tmp_path, "studies", "t").glob("*/checkpoint_000001")):
                # this test's Ray runs below this process: its trial actor is ours alone
                for pid in descendants(os.getpid()):
                    if cmdline(pid).startswith("ray::ImplicitFunc"):
                        os.kill(pid, signal.SIGKILL)
                        killed.append(pid)
                        return
            time.sleep(0.05)

    thread = threading.Thread(target=kill_after_first_checkpoint, daemon=True)
    thread.start()
    outcome = run_sweep(spec)
    thread.join()
    assert killed, "the trial ended before its worker could be killed"
    study = load_study(outcome.study)
    row = study.trials.iloc[0]
    assert row["status"] == "finished" and row["epochs"] == 5
    assert row["resumed_from_epoch"] >= 1  # restarted from a checkpoint, not from scratch
    epochs = list(study.history["epoch"])
    assert epochs == [1, 2, 3, 4, 5]  # no epoch twice
