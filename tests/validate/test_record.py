"""Validation in studies: a sweep with ``validate:`` writes the columns and arrays; ``cryotune
validate`` fills them in afterwards for a finished study."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cryotune.results import load_study
from cryotune.validate.record import from_bytes, to_bytes
from cryotune.validate.study import Validation

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

    overrides = [f"storage={tmp_path}", "methods=[{method: l2_ae}]", "eps=[0]", "epochs=1",
                 "dataset.simulate.size=32", "dataset.simulate.n_train=40",
                 "dataset.simulate.n_test=120", "train.width=4", "train.gallery=2",
                 "max_concurrent=1", f"validate={validate}", "name=v"]
    return load_spec(SPACES / "smoke.yaml", overrides=overrides)


@pytest.fixture(scope="module")
def validated_study(tmp_path_factory, ray_session):
    from cryotune.sweep.run import run_sweep

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


def test_cli_validate_updates_a_finished_study(validated_study, capsys):
    from cryotune.cli import main
    from cryotune.results import StudyStore

    # the row as a sweep without validate: leaves it: no validation columns
    validated = load_study(validated_study).trials.iloc[0].to_dict()
    plain = {k: v for k, v in validated.items()
             if k != "study" and not k.startswith(("fsc_", "cluster_", "validate_"))}
    root, name = validated_study.rsplit("/", 1)
    StudyStore(root, name).record_trial(plain)
    before = load_study(validated_study).trials
    assert "fsc_res_0143_A" not in before
    assert main(["validate", validated_study, "--what", "fsc"]) == 0
    assert "trial_00000" in capsys.readouterr().out
    after = load_study(validated_study).trials
    assert len(after) == len(before) == 1
    # the same model, data and seed give the sweep's own numbers back
    for column in ("fsc_res_0143_A", "fsc_truth_res_05_A", "fsc_half_res_0143_A"):
        assert after[column].iloc[0] == pytest.approx(validated[column], rel=1e-6)
    assert "cluster_acc" not in after
    for column in before.columns:  # every other column is kept
        a, b = after[column].iloc[0], before[column].iloc[0]
        assert (a == b) or (a != a and b != b), column
    assert main(["validate", validated_study, "--what", "resolution"]) == 2
    assert "unknown validation 'resolution'" in capsys.readouterr().err


def test_baselines_get_the_validation_columns(tmp_path, ray_session):
    from cryotune.baselines.runner import run_baselines
    from cryotune.data.simulate import simulate

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
