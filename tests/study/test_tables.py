import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from cryotune.errors import BadInput
from cryotune.study.store import StudyStore
from cryotune.study.tables import best_trial, load_study


def _fill(store, methods=("l2_ae", "l1_ae"), seeds=(0, 1, 2), eps=(0.0, 0.2)):
    rng = np.random.default_rng(0)
    expected = []
    for m in methods:
        for e in eps:
            for s in seeds:
                tid = f"{m}_{e}_{s}"
                mse = float(rng.uniform(1e-3, 1e-2))
                history = [{"epoch": i, "test_mse": mse * (3 - i), "train_mse": 0.1} for i in range(3)]
                store.record_trial(
                    {"trial_id": tid, "status": "finished", "epochs": 3, "wall_s": 1.5,
                     "config": {"method": m, "eps": e, "seed": s, "train": {"width": 16}},
                     "metrics": {"test_mse": mse, "test_psnr": -10 * np.log10(mse)}},
                    history,
                )
                expected.append((m, e, s, mse))
    return pd.DataFrame(expected, columns=["method", "eps", "seed", "mse"])


def test_record_and_load_round_trip(tmp_path):
    store = StudyStore(tmp_path, "s1")
    store.write_spec({"name": "s1", "epochs": 3})
    exp = _fill(store)
    study = load_study(tmp_path / "s1")
    assert len(study.trials) == len(exp)
    assert {"config.method", "config.eps", "config.train.width", "test_mse"} <= set(study.trials)
    assert study.specs["s1"]["epochs"] == 3
    assert len(study.history) == 3 * len(exp)
    # plain pandas reads both tables without cryotune
    assert len(pd.read_parquet(tmp_path / "s1" / "trials.parquet")) == len(exp)
    assert len(pd.read_parquet(tmp_path / "s1" / "history.parquet")) == 3 * len(exp)
    # no temporary files are left behind
    assert not [p for p in (tmp_path / "s1").rglob(".*") if p.is_file()]


def test_summary_matches_numpy(tmp_path):
    exp = _fill(StudyStore(tmp_path, "s"))
    summary = load_study(tmp_path / "s").summary(by=["method", "eps"], metrics=["test_mse"])
    for (m, e), grp in exp.groupby(["method", "eps"]):
        row = summary[(summary["config.method"] == m) & (summary["config.eps"] == e)].iloc[0]
        assert row["test_mse_mean"] == pytest.approx(grp["mse"].mean())
        assert row["test_mse_std"] == pytest.approx(grp["mse"].std(ddof=1))
        assert row["test_mse_count"] == len(grp)


def test_query_with_bare_and_dotted_names(tmp_path):
    _fill(StudyStore(tmp_path, "s"))
    study = load_study(tmp_path / "s")
    sub = study.query("method == 'l2_ae' and eps > 0")
    assert set(sub.trials["config.method"]) == {"l2_ae"}
    assert (sub.trials["config.eps"] > 0).all()
    assert len(sub.trials) == 3
    assert set(sub.history["trial_id"]) == set(sub.trials["trial_id"])
    assert len(study.query("`config.train.width` == 16").trials) == 12


def test_query_unknown_column_lists_known(tmp_path):
    _fill(StudyStore(tmp_path, "s"))
    with pytest.raises(BadInput) as err:
        load_study(tmp_path / "s").query("methd == 'l2_ae'")
    assert "methd" in str(err.value) and "method" in err.value.fix


def test_rerecord_replaces_row_and_dedupes_history(tmp_path):
    store = StudyStore(tmp_path, "s")
    store.record_trial({"trial_id": "t1", "status": "error", "error": "boom"},
                       [{"epoch": 0, "test_mse": 1.0}])
    # a restored trial reports epoch 1 twice: the last one wins
    store.record_trial({"trial_id": "t1", "status": "finished"},
                       [{"epoch": 0, "test_mse": 1.0}, {"epoch": 1, "test_mse": 0.9},
                        {"epoch": 1, "test_mse": 0.5}])
    # a new store on the same folder (a resumed driver) keeps earlier rows
    StudyStore(tmp_path, "s").record_trial({"trial_id": "t2", "status": "diverged"})
    study = load_study(tmp_path / "s")
    assert sorted(study.trials["trial_id"]) == ["t1", "t2"]
    assert study.trials.set_index("trial_id").loc["t1", "status"] == "finished"
    h = study.history
    assert list(h["epoch"]) == [0, 1] and list(h["test_mse"]) == [1.0, 0.5]


def test_merge_studies_and_file_uri(tmp_path):
    _fill(StudyStore(f"file://{tmp_path}", "a"), methods=("l2_ae",))
    _fill(StudyStore(tmp_path / "shared", "b"), methods=("l1_ae",))
    study = load_study(f"file://{tmp_path}/a", tmp_path / "shared" / "b")
    assert set(study.trials["study"]) == {"a", "b"}
    assert len(study.history) == 3 * len(study.trials)


def test_arrays_round_trip(tmp_path):
    store = StudyStore(tmp_path, "s")
    img = np.random.default_rng(1).random((4, 16, 16)).astype(np.float32)
    store.write_array("t1", "gallery", img)
    store.record_trial({"trial_id": "t1", "status": "finished"})
    study = load_study(tmp_path / "s")
    np.testing.assert_array_equal(study.array("s", "t1", "gallery"), img)
    assert study.array("s", "t9", "gallery") is None


def test_not_a_study(tmp_path):
    with pytest.raises(BadInput, match="not a cryotune study"):
        load_study(tmp_path)


def test_table_metadata_has_schema_version(tmp_path):
    StudyStore(tmp_path, "s").record_trial({"trial_id": "t", "status": "finished"})
    meta = pq.read_schema(tmp_path / "s" / "trials.parquet").metadata
    assert meta[b"cryotune.study_schema"] == b"2"


def test_dataset_manifest_and_gallery(tmp_path):
    store = StudyStore(tmp_path, "s")
    clean = np.zeros((3, 16, 16), np.float32)
    store.write_dataset("snr0.1", {"name": "rnap", "snr": 0.1}, {"gallery_clean": clean})
    store.record_trial({"trial_id": "t", "status": "finished", "config": {"dataset": "snr0.1"}})
    study = load_study(tmp_path / "s")
    assert study.datasets[("s", "snr0.1")]["snr"] == 0.1
    np.testing.assert_array_equal(study.dataset_array("s", "snr0.1", "gallery_clean"), clean)


def _selected(store, tid, score, *, status="finished", test_mse=1e-3, noisy=1e-1,
              checkpoint="/x/m.pt", metric="val_mse_median"):
    store.record_trial({"trial_id": tid, "status": status, "checkpoint": checkpoint,
                        "best_epoch": 2, "select_metric": metric, "select_score": score,
                        "test_mse_at_best": test_mse, "test_psnr_at_best": 30.0,
                        "test_ssim_at_best": 0.9, "noisy_test_mse": noisy,
                        "metrics": {"test_mse": test_mse, "val_mse_median": score}})


def test_best_reads_the_validation_score_only(tmp_path):
    store = StudyStore(tmp_path, "s")
    _selected(store, "a", 0.03, test_mse=1e-4)        # the best test, a poor validation score
    _selected(store, "b", 0.01, test_mse=5e-3)        # the best validation score
    _selected(store, "c", 0.001, checkpoint=None)     # better still, but no model
    _selected(store, "d", 0.0001, status="error")
    study = load_study(tmp_path / "s")
    assert study.best()["trial_id"] == "c"
    assert study.best(with_model=True)["trial_id"] == "b"
    assert best_trial(study.trials.iloc[:1])["trial_id"] == "a"  # the rule on a group
    with pytest.raises(BadInput, match="no finished or stopped trial"):
        study.query("trial_id == 'd'").best()


def test_best_follows_the_direction_of_the_select_metric(tmp_path):
    store = StudyStore(tmp_path, "s")
    _selected(store, "a", 28.0, metric="val_psnr")
    _selected(store, "b", 31.0, metric="val_psnr")
    assert load_study(tmp_path / "s").best()["trial_id"] == "b"
    _selected(store, "c", 0.01)
    with pytest.raises(BadInput, match="different scores"):
        load_study(tmp_path / "s").best()


def test_a_trial_worse_than_the_noisy_input_is_diverged_and_never_best(tmp_path):
    store = StudyStore(tmp_path, "s")
    _selected(store, "ok", 0.02, test_mse=0.01, noisy=0.05)
    # the lowest validation score, but its selected test MSE is above the noisy input's;
    # ASHA stopped it early, which does not spare it
    _selected(store, "bad", 0.001, status="stopped", test_mse=0.08, noisy=0.05)
    study = load_study(tmp_path / "s")
    rows = study.trials.set_index("trial_id")
    assert rows.loc["bad", "status"] == "diverged" and rows.loc["ok", "status"] == "finished"
    assert "worse than the noisy input's" in rows.loc["bad", "error"]
    assert study.best()["trial_id"] == "ok"
    assert (study.trials["status"] == "diverged").sum() == 1


def test_a_study_before_validation_selection_selects_nothing(tmp_path):
    store = StudyStore(tmp_path, "s")
    store.write_spec({"name": "s", "metric": "test_mse", "mode": "min"})
    store.record_trial({"trial_id": "a", "status": "finished", "checkpoint": "/x/a.pt",
                        "metrics": {"test_mse": 1e-3}})
    with pytest.raises(BadInput, match="predates validation selection; no trial is selected"):
        load_study(tmp_path / "s").best()
