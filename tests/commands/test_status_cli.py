"""`cryotune status` through the real dispatcher."""

from __future__ import annotations

import pytest

from cryotune import cli
from cryotune.study.store import StudyStore


@pytest.fixture
def run(monkeypatch):
    monkeypatch.setattr(cli, "COMMANDS", ("status",))
    return lambda *argv: cli.main(["status", *map(str, argv)])


def test_status_counts_best_and_errors(run, tmp_path, capsys):
    store = StudyStore(tmp_path, "s")
    # a spec of 2 methods x 2 seeds = 4 trials, of which 3 have ended
    store.write_spec({"name": "s", "dataset": "data/x", "methods": ["l1_ae", "l2_ae"],
                      "seeds": 2, "epochs": 3, "storage": str(tmp_path),
                      "provenance": {"command": "cryotune sweep s.yaml"}})
    common = {"epochs": 3, "config": {"method": "l1_ae", "seed": 0, "eps": 0.0}}
    # trial_00000 has the better test MSE, trial_00001 the better validation score
    store.record_trial({**common, "trial_id": "trial_00000", "status": "finished",
                        **_selected(val=0.006, test=0.001)})
    store.record_trial({**common, "trial_id": "trial_00001", "status": "finished",
                        **_selected(val=0.003, test=0.002),
                        "config": {"method": "l2_ae", "seed": 1, "eps": 0.0}})
    store.record_trial({**common, "trial_id": "trial_00002", "status": "diverged",
                        "error": "non-finite training loss, epoch 0: lower lr_g"})
    # a baseline row in the same study: not one of the spec's trials
    store.record_trial({"trial_id": "baseline-nlm", "status": "finished",
                        "config": {"method": "nlm"}, "metrics": {"test_mse": 0.01}})
    assert run(tmp_path / "s") == 0
    out = capsys.readouterr().out
    assert "trials: 2 finished, 1 diverged (of 4); 1 baseline rows" in out
    assert "1 trials have not ended: cryotune sweep" in out and "--resume" in out
    assert ("best on validation (val_mse_median min): 0.003 at epoch 2, trial trial_00001 "
            "(ℓ2-AE, seed 1)") in out
    assert "its test scores at that epoch: MSE 2.000e-03, PSNR 27.000, SSIM 0.800" in out
    assert "diverged trial_00002: non-finite training loss" in out


def _selected(*, val, test):
    return {"best_epoch": 2, "select_metric": "val_mse_median", "select_score": val,
            "test_mse_at_best": test, "test_psnr_at_best": 27.0, "test_ssim_at_best": 0.8,
            "noisy_test_mse": 0.05, "metrics": {"test_mse": test, "val_mse_median": val}}


def test_status_of_a_study_before_validation_selection_selects_nothing(run, tmp_path, capsys):
    store = StudyStore(tmp_path, "s")
    store.record_trial({"trial_id": "trial_00000", "status": "finished",
                        "metrics": {"test_mse": 0.004}})
    assert run(tmp_path / "s") == 0
    out = capsys.readouterr().out
    assert "best: this study predates validation selection; no trial is selected" in out


def test_status_of_no_study_exits_2(run, tmp_path, capsys):
    assert run(tmp_path) == 2
    assert "not a cryotune study" in capsys.readouterr().err
