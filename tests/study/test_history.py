"""The history folder: part files, compaction, the newest record of a trial, crashes, readers."""

import shutil
import threading

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from cryotune.errors import BadInput
from cryotune.study.history import SEQ, compact, history_files, read_history
from cryotune.study.store import StudyStore
from cryotune.study.tables import load_study


def _history(trial: int, epochs: int, gan: bool, scale: float = 1.0) -> list[dict]:
    rows = []
    for e in range(1, epochs + 1):
        row = {"epoch": e, "test_mse": scale * (trial + 1) / e, "train_mse": 0.1 * e}
        if gan:  # GAN trials report more metrics than autoencoders
            row |= {"d_loss": 0.5 + e, "g_adv": float(trial)}
        rows.append(row)
    return rows


def _fill(store: StudyStore, n: int = 6, epochs: int = 3) -> None:
    for i in range(n):  # an autoencoder first: the first file lacks the GAN columns
        store.record_trial({"trial_id": f"t{i}", "status": "finished", "epochs": epochs,
                            "config": {"method": "l2_ae" if i % 2 == 0 else "js_gan"}},
                           _history(i, epochs, gan=i % 2 == 1))


def _files(study) -> list[str]:
    return sorted(p.name for p in (study / "history.parquet").iterdir())


def test_compaction_merges_parts_into_one_file_and_keeps_the_history(tmp_path):
    store = StudyStore(tmp_path, "s")
    _fill(store, n=6)
    assert len(_files(tmp_path / "s")) == 6
    before = load_study(tmp_path / "s").history
    assert len(before) == 18 and SEQ not in before
    # every trial's metrics, the GAN-only columns included, whichever file is read first
    gan = before[before["trial_id"] == "t1"]
    assert list(gan["d_loss"]) == [1.5, 2.5, 3.5] and before["d_loss"].isna().sum() == 9

    assert store.compact_history() == 6
    assert _files(tmp_path / "s") == ["compacted-000000000007.parquet"]
    pd.testing.assert_frame_equal(load_study(tmp_path / "s").history, before)
    # sorted by trial and epoch, in row groups; plain pandas reads the folder
    merged = pq.read_table(tmp_path / "s" / "history.parquet" / _files(tmp_path / "s")[0])
    assert merged.schema.metadata[b"cryotune.study_schema"] == b"2"
    assert len(pd.read_parquet(tmp_path / "s" / "history.parquet")) == 18
    assert store.compact_history() == 0  # one file: nothing to do


def test_a_trial_recorded_after_compaction_wins(tmp_path):
    store = StudyStore(tmp_path, "s")
    _fill(store, n=4)
    store.compact_history()
    others = load_study(tmp_path / "s").history.query("trial_id != 't2'")
    # a retried trial re-records its whole history, here shorter: epoch 3 must not survive;
    # from a new store on the folder (a resumed driver), whose counter continues the folder's
    StudyStore(tmp_path, "s").record_trial({"trial_id": "t2", "status": "finished"},
                                           _history(2, 2, gan=False, scale=10.0))
    assert len(_files(tmp_path / "s")) == 2
    history = load_study(tmp_path / "s").history
    t2 = history[history["trial_id"] == "t2"]
    assert list(t2["epoch"]) == [1, 2] and list(t2["test_mse"]) == [30.0, 15.0]
    pd.testing.assert_frame_equal(history.query("trial_id != 't2'").reset_index(drop=True),
                                  others.reset_index(drop=True))
    assert StudyStore(tmp_path, "s").compact_history() == 2
    pd.testing.assert_frame_equal(load_study(tmp_path / "s").history, history)


def test_a_version_1_part_loses_to_a_newer_record(tmp_path):
    store = StudyStore(tmp_path, "s")
    folder = tmp_path / "s" / "history.parquet"
    pd.DataFrame({"study": "s", "trial_id": "t1", "epoch": [1, 2], "test_mse": [9.0, 8.0]}) \
        .to_parquet(folder / "t1.parquet")  # a version-1 store: one file a trial, no write_seq
    store.record_trial({"trial_id": "t1", "status": "finished"}, [{"epoch": 1, "test_mse": 1.0}])
    store.record_trial({"trial_id": "t0", "status": "finished"}, [{"epoch": 1, "test_mse": 2.0}])
    history = load_study(tmp_path / "s").history
    assert list(zip(history["trial_id"], history["test_mse"], strict=True)) == \
        [("t0", 2.0), ("t1", 1.0)]
    store.compact_history()
    pd.testing.assert_frame_equal(load_study(tmp_path / "s").history, history)


def test_a_crash_mid_compaction_leaves_a_readable_study(tmp_path):
    store = StudyStore(tmp_path, "s")
    _fill(store, n=5)
    folder = tmp_path / "s" / "history.parquet"
    before = load_study(tmp_path / "s").history
    # killed while writing: a half-written temporary file
    (folder / ".0123abcd.compacting.tmp").write_bytes(b"PAR1 half a file")
    pd.testing.assert_frame_equal(load_study(tmp_path / "s").history, before)
    # killed after the rename, before the deletes: the merged file beside every part it merged
    shutil.copytree(folder, tmp_path / "copy")
    assert compact(pafs.LocalFileSystem(), str(tmp_path / "copy"), seq=99) == (5, 15)
    shutil.copy(tmp_path / "copy" / "compacted-000000000099.parquet", folder)
    assert len(_files(tmp_path / "s")) == 7
    pd.testing.assert_frame_equal(load_study(tmp_path / "s").history, before)
    # the next compaction finishes the job and removes the leftover
    assert StudyStore(tmp_path, "s").compact_history() == 6
    assert _files(tmp_path / "s") == ["compacted-000000000100.parquet"]
    pd.testing.assert_frame_equal(load_study(tmp_path / "s").history, before)


def test_readers_during_compactions_see_every_epoch_once(tmp_path):
    store = StudyStore(tmp_path, "s")
    store.record_trial({"trial_id": "t0", "status": "finished"}, _history(0, 3, gan=False))
    done, seen, errors = threading.Event(), [], []

    def read():
        while not done.is_set():
            try:
                study = load_study(tmp_path / "s")
                history = study.history
                counts = history.groupby("trial_id")["epoch"].agg(list)
                assert set(counts.index) == set(study.trials["trial_id"])
                assert all(epochs == [1, 2, 3] for epochs in counts)
                seen.append(len(study.trials))
            except Exception as err:  # reported below, in the test's thread
                errors.append(err)
                return

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(1, 40):  # a trial, and its retry, then a compaction every few trials
            for scale in (1.0, 2.0):
                store.record_trial({"trial_id": f"t{i}", "status": "finished"},
                                   _history(i, 3, gan=i % 2 == 1, scale=scale))
            if i % 4 == 0:
                store.compact_history()
    finally:
        done.set()
        reader.join(timeout=60)
    assert not errors, errors[0]
    assert len(seen) > 3  # the reader overlapped the writes
    history = load_study(tmp_path / "s").history
    assert len(history) == 120 and (history.query("trial_id != 't0'")["train_mse"] > 0).all()
    assert (history.groupby("trial_id")["test_mse"].first().drop("t0") ==
            [2.0 * (i + 1) for i in sorted(range(1, 40), key=lambda i: f"t{i}")]).all()


def test_compaction_on_an_object_store(tmp_path):
    # pyarrow's in-memory filesystem: no rename, the merged file is written in one go
    fs, _ = pafs.FileSystem.from_uri("mock:///")
    fs.create_dir("h")
    for i, seq in enumerate((1, 2, 3)):
        table = pa.table({"study": ["s"] * 2, "trial_id": [f"t{i % 2}"] * 2, "epoch": [1, 2],
                          "test_mse": [float(seq)] * 2, SEQ: [seq] * 2})
        pq.write_table(table, f"h/part-{seq:012d}-t{i % 2}.parquet", filesystem=fs)
        if seq == 3:  # a copy of t0's newest rows in a file read first, before an older part
            pq.write_table(table, "h/compacted-000000000000.parquet", filesystem=fs)
    before = read_history(fs, "h").to_pandas()
    assert list(zip(before["trial_id"], before["epoch"], before["test_mse"], strict=True)) == \
        [("t0", 1, 3.0), ("t0", 2, 3.0), ("t1", 1, 2.0), ("t1", 2, 2.0)]
    assert compact(fs, "h", seq=4) == (4, 4)
    assert [f.base_name for f in history_files(fs, "h")] == ["compacted-000000000004.parquet"]
    pd.testing.assert_frame_equal(read_history(fs, "h").to_pandas(), before)


def test_an_unreadable_part_is_reported_and_compaction_changes_nothing(tmp_path):
    store = StudyStore(tmp_path, "s")
    _fill(store, n=2)
    folder = tmp_path / "s" / "history.parquet"
    (folder / "part-000000000003-t9.parquet").write_bytes(b"not parquet")
    files = _files(tmp_path / "s")
    with pytest.raises(BadInput, match="unreadable study history"):
        _ = load_study(tmp_path / "s").history
    with pytest.raises(BadInput, match="unreadable study history"):
        store.compact_history()
    assert _files(tmp_path / "s") == files


def test_new_parts_count_toward_the_next_compaction(tmp_path):
    store = StudyStore(tmp_path, "s")
    _fill(store, n=3)
    assert store.history_parts == 3 and StudyStore(tmp_path, "s").history_parts == 3
    store.compact_history()
    assert store.history_parts == 0 and StudyStore(tmp_path, "s").history_parts == 0
    store.record_trial({"trial_id": "t7", "status": "finished"}, _history(7, 1, gan=False))
    assert store.history_parts == 1
    assert np.array_equal(load_study(tmp_path / "s").history["trial_id"].unique(),
                          ["t0", "t1", "t2", "t7"])
