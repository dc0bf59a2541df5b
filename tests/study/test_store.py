"""The study store owns the trial table's columns: every writer goes through its declaration."""


import numpy as np
import pytest

from cryotune.errors import BadInput
from cryotune.study.store import COLUMNS, GROUPS, StudyStore, dataset_key, read_spec
from cryotune.study.tables import load_study


def test_a_column_the_schema_lacks_is_refused(tmp_path):
    store = StudyStore(tmp_path, "s")
    with pytest.raises(ValueError, match="'gpu_hours' is not a column of the study table"):
        store.record_trial({"trial_id": "t", "status": "finished", "gpu_hours": 1.0})
    with pytest.raises(ValueError, match="'wall_s' is not a metrics column"):
        store.record_trial({"trial_id": "t", "status": "finished", "metrics": {"wall_s": 1.0}})
    with pytest.raises(ValueError, match="'best_epoch' is not a metrics column"):
        store.record_trial({"trial_id": "t", "status": "finished", "metrics": {"best_epoch": 3}})
    with pytest.raises(ValueError, match="unknown trial status"):
        store.record_trial({"trial_id": "t", "status": "done"})
    assert not (tmp_path / "s" / "trials.parquet").exists()  # nothing half-recorded


def test_declared_columns_and_groups_land_in_table_order(tmp_path):
    store = StudyStore(tmp_path, "s")
    store.record_trial({"trial_id": "t", "status": "finished", "wall_s": np.float32(2.5),
                        "config": {"method": "l1_ae", "train": {"width": 8}, "pairs": (1, 2)},
                        "metrics": {"test_mse": np.float64(0.1)},
                        "best_epoch": 2, "select_metric": "val_mse_median",
                        "select_score": 0.04, "test_mse_at_best": 0.05,
                        "validation": {"fsc_res_0143_A": 9.0, "validate_needs": None}})
    trials = load_study(tmp_path / "s").trials
    assert list(trials.columns[:len(COLUMNS)]) == list(COLUMNS)
    row = trials.iloc[0]
    assert row["config.train.width"] == 8 and row["config.pairs"] == "[1, 2]"
    assert row["wall_s"] == 2.5 and row["best_epoch"] == 2 and row["fsc_res_0143_A"] == 9.0
    assert set(GROUPS) == {"config", "metrics", "validation"}
    assert row["select_score"] == 0.04 and row["test_mse_at_best"] == 0.05


def test_the_recorders_rows_fit_the_schema(tmp_path):
    from cryotune.sweep.recorder import trial_row

    row, history = trial_row("trial_00000", {"method": "l1_ae", "eps": 0.0},
                             {"time_total_s": 3.0, "node_id": "n", "started_at": 1.0,
                              "ended_at": 4.0, "resumed_from": 0},
                             [_epoch(1, val=0.1, test=0.3, best=1), _epoch(2, val=0.2, test=0.1, best=1)],
                             None, None, metric="val_mse_median", epochs=2)
    row.update(restarts=0, checkpoint=None, validation={"cluster_acc": 0.9})
    store = StudyStore(tmp_path, "s")
    store.record_trial(row, history)
    study = load_study(tmp_path / "s")
    got = study.trials.iloc[0]
    # the trial's own best validation epoch, not the epoch with the lowest test MSE (2)
    assert got["best_epoch"] == 1 and got["select_score"] == 0.1 and got["cluster_acc"] == 0.9
    assert got["select_metric"] == "val_mse_median" and got["test_mse_at_best"] == 0.3
    assert got["noisy_test_mse"] == 0.5 and got["status"] == "finished"
    assert got["test_mse"] == 0.1 and got["val_mse_median"] == 0.2  # the last epoch's
    assert list(study.history["test_mse"]) == [0.3, 0.1]  # validation and test per epoch
    assert list(study.history["val_mse_median"]) == [0.1, 0.2]


def _epoch(epoch, *, val, test, best):
    """A trainable's report: its epoch's scores and its best validation epoch so far."""
    return {"epoch": epoch, "val_mse_median": val, "test_mse": test, "select_score": 0.1,
            "best_epoch": best, "test_mse_at_best": 0.3, "test_psnr_at_best": 5.0,
            "test_ssim_at_best": 0.2, "noisy_test_mse": 0.5}


def test_a_non_finite_loss_or_a_result_worse_than_noisy_is_diverged(tmp_path):
    from cryotune.sweep.recorder import trial_row

    store = StudyStore(tmp_path, "s")
    nan = {"epoch": 2, "diverged": True, "error": "non-finite loss", "train_mse": float("nan"),
           "test_mse": float("nan"), "best_epoch": 1, "select_score": 0.1,
           "test_mse_at_best": 0.3, "noisy_test_mse": 0.5}
    row, history = trial_row("trial_00000", {"method": "l1_ae"}, nan,
                             [_epoch(1, val=0.1, test=0.3, best=1), nan], None, None,
                             metric="val_mse_median", epochs=3)
    store.record_trial({**row, "restarts": 0}, history)
    # stopped early by ASHA with a selected test MSE above the noisy input's
    worse = {**_epoch(1, val=0.1, test=0.9, best=1), "test_mse_at_best": 0.9}
    row, history = trial_row("trial_00001", {"method": "l2_ae"}, worse, [worse], None, None,
                             metric="val_mse_median", epochs=3)
    assert row["status"] == "stopped"  # the trainable judges its last epoch only
    store.record_trial({**row, "restarts": 0}, history)
    study = load_study(tmp_path / "s")
    rows = study.trials.set_index("trial_id")
    assert list(rows["status"]) == ["diverged", "diverged"]
    assert rows.loc["trial_00000", "error"] == "non-finite loss"
    assert rows.loc["trial_00000", "best_epoch"] == 1  # the epoch before, still reported
    assert "worse than the noisy input's 0.5" in rows.loc["trial_00001", "error"]
    assert list(study.history[study.history["trial_id"] == "trial_00000"]["epoch"]) == [1]


def test_update_trial_sets_validation_and_drops_columns(tmp_path):
    store = StudyStore(tmp_path, "s")
    store.record_trial({"trial_id": "t", "status": "finished", "metrics": {"test_mse": 0.1},
                        "validation": {"cluster_acc": 0.6}}, [{"epoch": 1, "test_mse": 0.1}])
    row = StudyStore(tmp_path, "s").update_trial("t", validation={"fsc_res_0143_A": 8.0},
                                                 drop=["cluster_acc"])
    assert row["fsc_res_0143_A"] == 8.0 and "cluster_acc" not in row
    study = load_study(tmp_path / "s")
    assert "cluster_acc" not in study.trials and study.trials.iloc[0]["test_mse"] == 0.1
    assert len(study.history) == 1  # the history stays
    with pytest.raises(BadInput, match="no trial 'x'"):
        store.update_trial("x", validation={"cluster_acc": 1.0})
    with pytest.raises(ValueError, match="not a validation column"):
        store.update_trial("t", validation={"status": "error"})


def test_spec_and_dataset_key(tmp_path):
    store = StudyStore(tmp_path, "s")
    assert read_spec(store.fs, store.path) is None
    store.write_spec({"name": "s", "metric": "test_ssim"})
    assert read_spec(store.fs, store.path) == {"name": "s", "metric": "test_ssim"}
    manifest = {"name": "rnap 32", "splits": {"train": {"shards": [{"sha256": "ab"}]}}}
    key = dataset_key(manifest)
    assert key.startswith("rnap_32-") and len(key) == len("rnap_32-") + 8
    assert dataset_key({**manifest, "snr": 0.1}) == key  # only the shards name the data
