"""Dataset store: round trips in both formats, atomic writes, checksums, bad input."""

from __future__ import annotations

import io
import json

import mrcfile
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from cryotune.data.store import DatasetWriter, open_dataset
from cryotune.errors import BadInput, ChecksumMismatch

SHAPE = (16, 16)


def make_rows(n, seed=0, start_id=0, defocus=False):
    rng = np.random.default_rng(seed)
    rows = {
        "id": np.arange(start_id, start_id + n, dtype=np.int64),
        "clean": rng.random((n, *SHAPE), dtype=np.float32),
        "noisy": rng.standard_normal((n, *SHAPE), dtype=np.float32),
        "conformation": rng.integers(0, 5, n).astype(np.int32),
        "rotation": rng.standard_normal((n, 4)).astype(np.float32),
        "shift": rng.standard_normal((n, 2)).astype(np.float32),
    }
    if defocus:
        rows["defocus"] = rng.uniform(1e4, 2e4, (n, 3)).astype(np.float32)
    return rows


def write(out, train, test, *, formats=("parquet",), shard_rows=7, chunk=5, **kwargs):
    with DatasetWriter(out, name="toy", kind="simulated", image_shape=SHAPE, pixel_size=1.5,
                       formats=formats, shard_rows=shard_rows, **kwargs) as w:
        for split, rows in (("train", train), ("test", test)):
            for i in range(0, len(rows["id"]), chunk):
                w.add(split, **{k: v[i:i + chunk] for k, v in rows.items()})
        return w.commit(snr=0.1, snr_measured=0.098)


@pytest.mark.parametrize("fmt", ["parquet", "mrc"])
def test_round_trip_is_bit_exact(tmp_path, fmt):
    train, test = make_rows(23, seed=1, defocus=True), make_rows(9, seed=2, start_id=100, defocus=True)
    out = write(tmp_path / "ds", train, test, formats=("parquet", "mrc"))
    ds = open_dataset(out)
    assert ds.count("train") == 23 and ds.count("test") == 9
    assert ds.image_shape == SHAPE and ds.pixel_size == 1.5 and ds.formats == ("parquet", "mrc")
    assert [s["rows"] for s in ds.manifest["splits"]["train"]["shards"]] == [7, 7, 7, 2]
    for split, rows in (("train", train), ("test", test)):
        got = ds.read(split, fmt=fmt)
        assert set(got) == set(rows)
        for key, value in rows.items():
            assert got[key].dtype == value.dtype and got[key].tobytes() == value.tobytes(), key
    part = ds.read("train", ["id", "noisy"], start=5, stop=16, fmt=fmt)
    assert np.array_equal(part["id"], train["id"][5:16]) and np.array_equal(part["noisy"], train["noisy"][5:16])
    chunks = list(ds.iter_chunks("train", 10, ["id", "clean"], fmt=fmt))
    assert [len(c["id"]) for c in chunks] == [10, 10, 3]
    assert np.array_equal(np.concatenate([c["clean"] for c in chunks]), train["clean"])


def test_defaults_for_unknown_metadata(tmp_path):
    rows = make_rows(4)
    with DatasetWriter(tmp_path / "ds", name="toy", kind="ingested", image_shape=SHAPE, pixel_size=1.0) as w:
        w.add("train", id=rows["id"], clean=rows["clean"], noisy=rows["noisy"])
        w.commit()
    got = open_dataset(tmp_path / "ds").read("train")
    assert np.all(got["conformation"] == -1) and np.isnan(got["rotation"]).all()
    assert np.all(got["shift"] == 0) and "defocus" not in got


def test_train_stats_match_numpy(tmp_path):
    train = make_rows(23, seed=3)
    ds = open_dataset(write(tmp_path / "ds", train, make_rows(3, seed=4, start_id=50)))
    stats = ds.stats()
    for key in ("clean", "noisy"):
        x = train[key].astype(np.float64)
        assert stats[f"{key}_mean"] == pytest.approx(x.mean(), rel=1e-12, abs=1e-12)
        assert stats[f"{key}_var"] == pytest.approx(x.var(), rel=1e-12)


def test_mrc_stacks_have_header_and_sidecar(tmp_path):
    ds = open_dataset(write(tmp_path / "ds", make_rows(10), make_rows(2, start_id=20), formats=("mrc",)))
    shard = ds.shard_files("train", "mrc")[0]
    assert mrcfile.validate(str(shard.clean), print_file=io.StringIO())
    with mrcfile.open(shard.noisy) as mrc:
        assert mrc.is_image_stack() and mrc.data.dtype == np.float32 and int(mrc.header.mode) == 2
        assert mrc.data.shape == (7, *SHAPE) and float(mrc.voxel_size.x) == pytest.approx(1.5)
    assert pq.read_table(shard.meta).column_names == ["id", "conformation", "rotation", "shift"]


def test_plain_pyarrow_and_pandas_read_a_shard(tmp_path):
    train = make_rows(10)
    ds = open_dataset(write(tmp_path / "ds", train, make_rows(2, start_id=20)))
    path = ds.shard_files("train", "parquet")[0]
    table = pq.read_table(path)
    assert table.schema.metadata[b"cryotune.dataset"] == b"toy"
    assert b"cryotune.cryotune_version" in table.schema.metadata
    clean = table.column("clean").combine_chunks().to_numpy_ndarray()
    assert np.array_equal(clean, train["clean"][:7])
    df = pd.read_parquet(path)
    assert list(df["id"]) == list(range(7))
    assert np.array_equal(np.stack(df["noisy"].to_list()).reshape(7, *SHAPE), train["noisy"][:7])


def test_extra_files_are_checksummed(tmp_path):
    rows = make_rows(3)
    with DatasetWriter(tmp_path / "ds", name="toy", kind="simulated", image_shape=SHAPE, pixel_size=1.0) as w:
        w.add("train", **rows)
        w.add_file("truth/conformation-00.npz", b"atoms")
        w.commit()
    ds = open_dataset(tmp_path / "ds")
    assert ds.truth_volumes() == [tmp_path / "ds" / "truth" / "conformation-00.npz"]
    (tmp_path / "ds" / "truth" / "conformation-00.npz").write_bytes(b"other")
    with pytest.raises(ChecksumMismatch, match="conformation-00.npz"):
        open_dataset(tmp_path / "ds")


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_failed_write_leaves_nothing(tmp_path, exc):
    rows = make_rows(20)
    with pytest.raises(exc):
        with DatasetWriter(tmp_path / "ds", name="toy", kind="simulated", image_shape=SHAPE,
                           pixel_size=1.0, shard_rows=4) as w:
            w.add("train", **rows)  # shards already flushed into the temporary folder
            raise exc("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_existing_output_and_overwrite(tmp_path):
    out = write(tmp_path / "ds", make_rows(5), make_rows(2, start_id=10))
    with pytest.raises(BadInput, match="already exists.*--overwrite"):
        DatasetWriter(out, name="toy", kind="simulated", image_shape=SHAPE, pixel_size=1.0)
    with pytest.raises(RuntimeError):  # a failed overwrite keeps the old dataset
        with DatasetWriter(out, name="new", kind="simulated", image_shape=SHAPE, pixel_size=1.0,
                           overwrite=True) as w:
            w.add("train", **make_rows(3, seed=9))
            raise RuntimeError("boom")
    assert open_dataset(out).count("train") == 5
    write(out, make_rows(8, seed=5), make_rows(1, start_id=10), overwrite=True)
    assert open_dataset(out).count("train") == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


@pytest.mark.parametrize("fmt", ["parquet", "mrc"])
def test_tampered_shard_is_reported(tmp_path, fmt):
    out = write(tmp_path / "ds", make_rows(20), make_rows(2, start_id=30), formats=(fmt,))
    ds = open_dataset(out)
    shard = ds.shard_files("train", fmt)[1]
    victim = shard if fmt == "parquet" else shard.noisy
    data = bytearray(victim.read_bytes())
    data[-10] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(ChecksumMismatch, match=f"{victim.name}.*re-create the dataset or restore the file"):
        open_dataset(out)
    lazy = open_dataset(out, verify=False)
    assert lazy.read("train", ["id"], stop=7)["id"].size == 7  # shard 0 is intact
    with pytest.raises(ChecksumMismatch, match=victim.name):
        lazy.read("train", ["id"], start=7, stop=9)


def test_not_a_dataset(tmp_path):
    with pytest.raises(BadInput, match="not found"):
        open_dataset(tmp_path / "missing")
    with pytest.raises(BadInput, match=f"no manifest.json.*{tmp_path.name}"):
        open_dataset(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(BadInput, match="unreadable manifest.*manifest.json"):
        open_dataset(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"schema_version": 99}))
    with pytest.raises(BadInput, match="schema_version 99"):
        open_dataset(tmp_path)


def test_bad_rows_are_rejected(tmp_path):
    rows = make_rows(6)
    rows["noisy"][4, 3, 3] = np.nan
    with pytest.raises(BadInput, match="NaN or inf.*train row 4"):
        with DatasetWriter(tmp_path / "a", name="toy", kind="simulated", image_shape=SHAPE, pixel_size=1.0) as w:
            w.add("train", **rows)
    with pytest.raises(BadInput, match="appears more than once"):
        with DatasetWriter(tmp_path / "b", name="toy", kind="simulated", image_shape=SHAPE, pixel_size=1.0) as w:
            w.add("train", **make_rows(3))
            w.add("test", **make_rows(3))
            w.commit()
    with pytest.raises(BadInput, match=r"clean has shape \(3, 8, 8\)"):
        with DatasetWriter(tmp_path / "c", name="toy", kind="simulated", image_shape=SHAPE, pixel_size=1.0) as w:
            w.add("train", id=np.arange(3), clean=np.zeros((3, 8, 8)), noisy=np.zeros((3, 8, 8)))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fmt", ["parquet", "mrc"])
def test_val_split_round_trip_and_counts(tmp_path, fmt):
    train, val, test = make_rows(12, seed=1), make_rows(5, seed=3, start_id=50), make_rows(4, seed=2, start_id=100)
    with DatasetWriter(tmp_path / "ds", name="toy", kind="simulated", image_shape=SHAPE, pixel_size=1.5,
                       formats=("parquet", "mrc"), shard_rows=3) as w:
        for split, rows in (("train", train), ("val", val), ("test", test)):
            w.add(split, **rows)
        out = w.commit()
    ds = open_dataset(out)
    splits = json.loads((out / "manifest.json").read_text())["splits"]
    assert {s: splits[s]["count"] for s in splits} == {"train": 12, "val": 5, "test": 4}
    assert ds.has_val_split and ds.count("val") == 5
    assert [s["rows"] for s in splits["val"]["shards"]] == [3, 2]
    assert all(name.startswith("val/") for s in splits["val"]["shards"] for name in s["sha256"])
    got = ds.read("val", fmt=fmt)
    for key, value in val.items():
        assert got[key].tobytes() == value.tobytes(), key
    # pixel statistics (the contamination's noise images) are the train split's alone
    assert ds.stats()["clean_mean"] == pytest.approx(train["clean"].astype(np.float64).mean())
    with pytest.raises(BadInput, match="id 51 appears more than once"):
        with DatasetWriter(tmp_path / "dup", name="toy", kind="simulated", image_shape=SHAPE, pixel_size=1.0) as w:
            w.add("train", **make_rows(3, start_id=50))
            w.add("val", **make_rows(3, start_id=51))
            w.commit()


def test_a_store_written_before_the_val_split_still_opens(tmp_path, caplog):
    out = write(tmp_path / "ds", make_rows(10), make_rows(3, start_id=10))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["splits"]["val"] == {"count": 0, "shards": []}
    del manifest["splits"]["val"]  # as the stores of earlier versions were written
    (out / "manifest.json").write_text(json.dumps(manifest))
    with caplog.at_level("WARNING", logger="cryotune.data.store"):
        ds = open_dataset(out)
        open_dataset(out)
    said = [r.getMessage() for r in caplog.records if "no validation split" in r.getMessage()]
    assert len(said) == 1 and str(out) in said[0]  # said once per store
    assert not ds.has_val_split and ds.count("val") == 0 and ds.count("train") == 10
    empty = ds.read("val", ["id", "noisy"])
    assert empty["id"].shape == (0,) and empty["noisy"].shape == (0, *SHAPE)
    assert "val=0" in repr(ds)
