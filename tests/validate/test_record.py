"""Validation in studies: a sweep with ``validate:`` writes the columns and arrays; ``cryotune
validate`` fills them in afterwards for a finished study. Both validate the trial's selected
model (its best validation epoch's ``best.pt``), not its last epoch."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from cryotune._io import study_location
from cryotune.study.store import StudyStore
from cryotune.study.tables import load_study
from cryotune.validate.record import from_bytes, to_bytes
from cryotune.validate.reference import Validation

SPACES = Path(__file__).resolve().parents[2] / "search_spaces"
COLUMNS = ("fsc_res_0143_A", "fsc_res_05_A", "fsc_truth_res_0143_A", "fsc_half_res_0143_A",
           "cluster_acc", "cluster_acc_all")


def test_npz_round_trip():
    v = Validation({"fsc_res_0143_A": 12.5, "cluster_n": 40}, {"fsc_freq": np.arange(3.0)},
                   "needs poses")
    back = from_bytes(to_bytes(v))
    assert back.scalars == {"fsc_res_0143_A": 12.5, "cluster_n": 40.0}
    np.testing.assert_array_equal(back.arrays["fsc_freq"], np.arange(3.0))
    assert back.needs == "needs poses"
    assert from_bytes(to_bytes(Validation({}, {}, None))).needs is None


def _spec(tmp_path, validate):
    from cryotune.sweep.spec import load_spec

    # mode max selects the worst validation epoch, the first of a learning model: the selected
    # model then differs from the last epoch's
    overrides = [f"storage={tmp_path}", "methods=[{method: l2_ae}]", "eps=[0]", "epochs=3",
                 "select={metric: val_mse_median, mode: max}",
                 "dataset.simulate.size=32", "dataset.simulate.n_train=40",
                 "dataset.simulate.n_test=120", "train.width=4", "train.gallery=2",
                 "max_concurrent=1", f"validate={validate}", "name=v"]
    return load_spec(SPACES / "smoke.yaml", overrides=overrides)


@pytest.fixture(scope="module")
def validated_study(tmp_path_factory, ray_session):
    from cryotune.runs.sweep import run_sweep

    tmp = tmp_path_factory.mktemp("sweep")
    outcome = run_sweep(_spec(tmp, "[fsc, clustering]"))
    assert outcome.counts == {"finished": 1}
    return outcome.study


def test_sweep_writes_validation_columns_and_arrays(validated_study):
    study = load_study(validated_study)
    row = study.trials.iloc[0]
    for name in COLUMNS:
        assert np.isfinite(row[name]), name
    assert row["fsc_vs_truth"] == 1 and row["fsc_res_0143_A"] == row["fsc_truth_res_0143_A"]
    assert row["validate_needs"] is None
    pixel = next(iter(study.datasets.values()))["pixel_size"]
    # resolutions lie between Nyquist and the box size
    assert 2 * pixel <= row["fsc_res_0143_A"] <= 32 * pixel
    curve = study.array("v", row["trial_id"], "fsc_truth_curve")
    freq = study.array("v", row["trial_id"], "fsc_freq")
    assert curve.shape == freq.shape == (17,)
    np.testing.assert_allclose(freq * pixel, np.arange(17) / 32)
    assert study.array("v", row["trial_id"], "volume_views").shape == (4, 32, 32)
    labels = study.array("v", row["trial_id"], "cluster_labels")
    assert len(labels) == row["cluster_n"] == len(study.array("v", row["trial_id"],
                                                               "cluster_embedding"))
    # clean and noisy references once per dataset: the clean images resolve at least as well
    (_, key), manifest = next(iter(study.datasets.items()))
    ref = manifest["validation"]
    assert ref["clean"]["fsc_truth_res_0143_A"] <= ref["noisy"]["fsc_truth_res_0143_A"]
    assert study.dataset_array("v", key, "validate_clean_fsc_truth_curve").shape == (17,)


def _denoised_curve(study, row, name):
    """The FSC-to-truth curve of the test split denoised by the trial's checkpoint ``name``."""
    from cryotune.nn.train import Trainer
    from cryotune.runs.sweep import prepare_datasets
    from cryotune.sweep.spec import spec_from_mapping
    from cryotune.validate.reference import load_reference, validate_images

    spec = spec_from_mapping({k: v for k, v in study.specs["v"].items() if k != "provenance"})
    ref = load_reference(prepare_datasets(spec, create=False)[0].path)
    model = Trainer.load_checkpoint(Path(row["checkpoint"]).with_name(name), device="cpu")
    return validate_images(ref, model.denoise(ref.noisy), ["fsc"]).arrays["fsc_truth_curve"]


def test_the_sweep_validates_the_best_validation_epoch(validated_study):
    study = load_study(validated_study)
    row = study.trials.iloc[0]
    assert row["epochs"] == 3 and row["best_epoch"] == 1  # mode max: the first epoch
    assert row["validated_epoch"] == row["best_epoch"]
    stored = study.array("v", row["trial_id"], "fsc_truth_curve")
    best, last = (_denoised_curve(study, row, n) for n in ("best.pt", "checkpoint.pt"))
    np.testing.assert_allclose(stored, best, rtol=1e-6, atol=1e-9)
    assert not np.allclose(stored, last, rtol=1e-3)


def test_cli_validate_updates_a_finished_study(validated_study, capsys):
    from cryotune.cli import main

    # the row as a sweep without validate: leaves it: no validation columns
    validated = load_study(validated_study).trials.iloc[0].to_dict()
    dropped = [k for k in validated if k.startswith(("fsc_", "cluster_", "validate"))]
    StudyStore(*study_location(validated_study)).update_trial("trial_00000", drop=dropped)
    before = load_study(validated_study).trials
    assert "fsc_res_0143_A" not in before
    assert main(["validate", validated_study, "--what", "fsc"]) == 0
    assert "trial_00000" in capsys.readouterr().out
    after = load_study(validated_study).trials
    assert len(after) == len(before) == 1
    # the same model, data and seed give the sweep's own numbers back
    for column in ("fsc_res_0143_A", "fsc_truth_res_05_A", "fsc_half_res_0143_A"):
        assert after[column].iloc[0] == pytest.approx(validated[column], rel=1e-6)
    assert after["validated_epoch"].iloc[0] == after["best_epoch"].iloc[0] == 1
    assert "cluster_acc" not in after
    for column in before.columns:  # every other column is kept
        a, b = after[column].iloc[0], before[column].iloc[0]
        assert (a == b) or (a != a and b != b), column
    # the clean and noisy references keep the clustering the sweep recorded beside the new FSC
    kept = [json.loads(p.read_text())["validation"]
            for p in Path(validated_study).glob("datasets/*/manifest.json")]
    assert kept and all({"fsc_res_0143_A", "cluster_acc"} <= set(v[name]) for v in kept
                        for name in ("clean", "noisy"))
    assert main(["validate", validated_study, "--what", "resolution"]) == 2
    assert "unknown validation 'resolution'" in capsys.readouterr().err


def test_validate_falls_back_to_the_last_checkpoint_without_best_pt(validated_study, caplog):
    from cryotune.runs.validate import validate_study

    row = load_study(validated_study).trials.iloc[0]
    best = Path(row["checkpoint"]).with_name("best.pt")
    kept = best.read_bytes()
    best.unlink()  # a study from before selection on validation
    try:
        with caplog.at_level(logging.WARNING, logger="cryotune.runs.validate"):
            validate_study(validated_study, what=["fsc"])
        curve = load_study(validated_study).array("v", row["trial_id"], "fsc_truth_curve")
        last = _denoised_curve(load_study(validated_study), row, "checkpoint.pt")
    finally:
        best.write_bytes(kept)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "best.pt" in warnings[0].getMessage()
    assert load_study(validated_study).trials.iloc[0]["validated_epoch"] == 3
    np.testing.assert_allclose(curve, last, rtol=1e-6, atol=1e-9)


def test_baselines_get_the_validation_columns(tmp_path, ray_session):
    from cryotune.data.simulate import simulate
    from cryotune.runs.baselines import run_baselines

    store = simulate(tmp_path / "sim", size=32, n_train=20, n_test=100, snr=0.1, seed=1)
    rows = run_baselines(store, tmp_path / "study", methods=["cwf"], validate=["fsc"])
    assert rows[0]["status"] == "finished"
    study = load_study(tmp_path / "study")
    row = study.trials.iloc[0]
    assert np.isfinite(row["fsc_res_0143_A"]) and row["fsc_vs_truth"] == 1
    assert "cluster_acc" not in study.trials
    assert study.array("study", row["trial_id"], "fsc_truth_curve").shape == (17,)
    ref = next(iter(study.datasets.values()))["validation"]
    assert ref["clean"]["fsc_res_0143_A"] < ref["noisy"]["fsc_res_0143_A"]
