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
import pytest
import ray
from proctree import descendants

from cryotune.cli import main as cli_main
from cryotune.data.store import open_dataset
from cryotune.nn.train import CHECKPOINT_NAME, Trainer
from cryotune.results import dataset_key, load_study
from cryotune.sweep.run import run_sweep
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
        assert row.best_test_mse == pytest.approx(epochs["test_mse"].min())
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

    # the winning model denoises a user's stack: `cryotune denoise --model STUDY`
    best = trials.loc[trials["test_mse"].idxmin()]
    stack = tmp_path / "particles.mrcs"
    with mrcfile.new(stack) as m:
        m.set_data(np.array(test["noisy"][:5]))
        m.set_image_stack()
    assert cli_main(["denoise", "--model", outcome.study, "--input", str(stack),
                     "--output", str(tmp_path / "denoised.mrcs")]) == 0
    with mrcfile.open(tmp_path / "denoised.mrcs") as m:
        expected = Trainer.load_checkpoint(best["checkpoint"]).denoise(np.array(test["noisy"][:5]))
        np.testing.assert_allclose(m.data, expected, atol=1e-6)

    # trials ran concurrently: two were running at once, and their time spans overlap
    assert max(running for running, _ in snapshots) == 2
    spans = sorted(zip(trials["started_at"], trials["ended_at"], strict=True))
    assert any(b0 < a1 for (_, a1), (b0, _) in zip(spans, spans[1:], strict=False))


def test_asha_stops_poor_trials_early(make_spec):
    # two trials that learn, then two that barely move (lr 1e-7): ASHA cuts those at rung 1
    spec = make_spec(methods=[{"method": "l2_ae", "lr_g": [1e-2, 1e-7]}], seeds=2, epochs=4,
                     scheduler={"type": "asha", "grace_period": 1, "reduction_factor": 2},
                     resources={"cpu": 0.5}, max_concurrent=2)
    outcome = run_sweep(spec)
    assert outcome.exit_code == 0
    study = load_study(outcome.study)
    trials = study.trials
    assert len(trials) == 4 and set(trials["status"]) <= {"finished", "stopped"}
    slow = trials[trials["config.lr_g"] == 1e-7]
    assert (slow["status"] == "stopped").all() and (slow["epochs"] < 4).all()
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
