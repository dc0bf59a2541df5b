"""Trial rows and labels carry the l_p term's reduction; rows written before the key existed
read as the per-pixel mean they ran with."""

from __future__ import annotations

import pandas as pd

from cryotune.study.labels import method_labels, trial_reductions
from cryotune.study.store import StudyStore
from cryotune.study.tables import load_study


def _rows(*configs):
    return pd.DataFrame([{f"config.{k}": v for k, v in c.items()} for c in configs])


GAN = {"method": "beta_gan", "alpha": 0.5, "beta": 0.5, "p": 1}


def test_labels_name_the_mean_and_its_lambda_and_leave_the_papers_sum_bare():
    rows = _rows({**GAN, "lambda": 10.0, "reduction": "sum"},
                 {**GAN, "lambda": 10.0, "reduction": "mean"},
                 {**GAN, "lambda": 0.1, "reduction": "mean"},
                 {**GAN, "lambda": 0.1, "reduction": "sum"},
                 {"method": "wgan_gp", "lambda": 10.0, "p": 1, "reduction": "mean"},
                 {"method": "l1_ae", "lambda": None, "p": 1, "reduction": None})
    assert method_labels(rows).tolist() == [
        "(0.5,0.5)-GAN + ℓ1", "(0.5,0.5)-GAN + ℓ1 (λ=10, mean)", "(0.5,0.5)-GAN + ℓ1 (λ=0.1, mean)",
        "(0.5,0.5)-GAN + ℓ1 (λ=0.1)", "WGAN-GP + ℓ1 (λ=10, mean)", "ℓ1-AE"]
    assert method_labels(rows, with_lambda=False).tolist() == [
        "(0.5,0.5)-GAN + ℓ1", "(0.5,0.5)-GAN + ℓ1 (mean)", "(0.5,0.5)-GAN + ℓ1 (mean)",
        "(0.5,0.5)-GAN + ℓ1", "WGAN-GP + ℓ1 (mean)", "ℓ1-AE"]


def test_a_non_default_generator_step_keeps_its_arm_apart():
    rows = _rows({**GAN, "lambda": 10.0, "reduction": "mean", "lr_g": 1e-2},
                 {**GAN, "lambda": 10.0, "reduction": "mean", "lr_g": 1e-3},
                 {**GAN, "lambda": 0.0, "reduction": "sum", "lr_g": 1e-3},
                 {"method": "l1_ae", "p": 1, "lr_g": 1e-3})
    assert method_labels(rows).tolist() == [
        "(0.5,0.5)-GAN + ℓ1 (λ=10, mean)", "(0.5,0.5)-GAN + ℓ1 (λ=10, mean, lr_g=0.001)",
        "(0.5,0.5)-GAN (pure, lr_g=0.001)", "ℓ1-AE (lr_g=0.001)"]


def test_rows_without_the_column_read_as_the_mean_for_gans_only():
    old = _rows({**GAN, "lambda": 10.0}, {"method": "l2_ae", "p": 2}, {"method": "bm3d"})
    assert trial_reductions(old).tolist() == ["mean", None, None]
    assert method_labels(old).tolist()[0] == "(0.5,0.5)-GAN + ℓ1 (λ=10, mean)"


def test_load_study_fills_the_reduction_of_earlier_trials(tmp_path):
    store = StudyStore(tmp_path, "old")
    for tid, config in [("gan", {**GAN, "lambda": 10.0}), ("ae", {"method": "l1_ae", "p": 1})]:
        store.record_trial({"trial_id": tid, "status": "finished", "epochs": 1, "wall_s": 1.0,
                            "config": config, "metrics": {"test_mse": 0.01}},
                           [{"epoch": 1, "test_mse": 0.01}])
    new = StudyStore(tmp_path, "new")
    new.record_trial({"trial_id": "gan", "status": "finished", "epochs": 1, "wall_s": 1.0,
                      "config": {**GAN, "lambda": 10.0, "reduction": "sum"},
                      "metrics": {"test_mse": 0.01}}, [{"epoch": 1, "test_mse": 0.01}])
    old = load_study(tmp_path / "old").trials.set_index("trial_id")
    assert old["config.reduction"].to_dict() == {"gan": "mean", "ae": None}
    both = load_study(tmp_path / "old", tmp_path / "new").trials
    got = dict(zip(both["study"] + "/" + both["trial_id"], both["config.reduction"], strict=True))
    assert got == {"old/gan": "mean", "old/ae": None, "new/gan": "sum"}
