"""Ray Data pipeline on real Ray: epoch order, both formats, both modes, contamination in the stream."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from cryotune.data.contamination import contaminate, contaminated_mask
from cryotune.data.store import DatasetWriter, open_dataset
from cryotune.errors import BadConfig, BadInput, ChecksumMismatch

SHAPE = (16, 16)
N_TRAIN, N_TEST, N_VAL = 90, 10, 12


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    rng = np.random.default_rng(0)
    out = tmp_path_factory.mktemp("pipe") / "ds"
    clean = rng.random((N_TRAIN + N_TEST, *SHAPE), dtype=np.float32)
    noisy = clean + rng.standard_normal(clean.shape, dtype=np.float32)
    ids = rng.permutation(1000)[: N_TRAIN + N_TEST].astype(np.int64)  # ids need not be 0..n-1
    with DatasetWriter(out, name="toy", kind="simulated", image_shape=SHAPE, pixel_size=2.0,
                       formats=("parquet", "mrc"), shard_rows=16) as w:
        w.add("train", id=ids[:N_TRAIN], clean=clean[:N_TRAIN], noisy=noisy[:N_TRAIN])
        w.add("test", id=ids[N_TRAIN:], clean=clean[N_TRAIN:], noisy=noisy[N_TRAIN:],
              conformation=np.arange(N_TEST), rotation=rng.standard_normal((N_TEST, 4)))
        val_clean = rng.random((N_VAL, *SHAPE), dtype=np.float32)
        val_ids = np.setdiff1d(np.arange(1000), ids)[::7][:N_VAL]  # unique across the dataset
        w.add("val", id=val_ids, clean=val_clean,
              noisy=val_clean + rng.standard_normal(val_clean.shape, dtype=np.float32))
        w.commit()
    return out


@pytest.fixture(scope="module")
def pipelines(store, ray_session):
    from cryotune.data.pipeline import DataPipeline

    return {(fmt, mat): DataPipeline.from_store(store, fmt=fmt, materialize=mat)
            for fmt in ("parquet", "mrc") for mat in (True, False)}


def epoch_ids(pipe, epoch, seed=0, **kwargs):
    return np.concatenate([b["id"] for b in pipe.train_arrays(epoch, batch_size=20, seed=seed, **kwargs)])


def test_every_id_once_per_epoch_in_a_reproducible_order(store, pipelines):
    train_ids = open_dataset(store).read("train", ["id"])["id"]
    reference = {epoch: epoch_ids(pipelines["parquet", True], epoch) for epoch in (0, 1)}
    for epoch in (0, 1):
        assert sorted(reference[epoch]) == sorted(train_ids)
    assert not np.array_equal(reference[0], reference[1])
    assert not np.array_equal(reference[0], train_ids)
    assert not np.array_equal(epoch_ids(pipelines["parquet", True], 0, seed=1), reference[0])
    # the same (seed, epoch) gives the same order in every format and mode, and on every call
    for pipe in pipelines.values():
        assert np.array_equal(epoch_ids(pipe, 0), reference[0])
    assert np.array_equal(epoch_ids(pipelines["mrc", False], 1), reference[1])


def test_order_mixes_across_shards(pipelines):
    ids = epoch_ids(pipelines["parquet", True], 2)
    first = open_dataset(pipelines["parquet", True].path).read("train", ["id"])["id"]
    shard_of = {int(i): k // 16 for k, i in enumerate(first)}
    first_batch_shards = {shard_of[int(i)] for i in ids[:20]}
    assert len(first_batch_shards) > 1


@pytest.mark.parametrize("fmt", ["parquet", "mrc"])
def test_train_batches_are_torch_pairs_of_the_store(store, pipelines, fmt):
    rows = open_dataset(store).read("train", ["id", "clean", "noisy"])
    by_id = {int(i): k for k, i in enumerate(rows["id"])}
    pipe = pipelines[fmt, True]
    sizes = []
    for batch, (noisy, clean) in zip(pipe.train_arrays(0, batch_size=20),
                                     pipe.train_batches(0, batch_size=20), strict=True):
        assert noisy.dtype == clean.dtype == torch.float32
        assert noisy.shape == clean.shape == (len(batch["id"]), 1, *SHAPE)
        k = [by_id[int(i)] for i in batch["id"]]
        assert torch.equal(noisy[:, 0], torch.tensor(rows["noisy"][k]))
        assert torch.equal(clean[:, 0], torch.tensor(rows["clean"][k]))
        sizes.append(len(noisy))
    assert sizes == [20, 20, 20, 20, 10]


@pytest.mark.parametrize("kind", ["A", "C"])
def test_contamination_is_applied_in_the_stream(store, pipelines, kind):
    dataset = open_dataset(store)
    rows = dataset.read("train", ["id", "clean", "noisy"])
    expected_noisy, expected_clean, mask = contaminate(
        rows["noisy"], rows["clean"], rows["id"], eps=0.3, kind=kind, seed=4, stats=dataset.stats())
    assert mask.any() and np.array_equal(mask, contaminated_mask(rows["id"], 0.3, 4))
    by_id = {int(i): k for k, i in enumerate(rows["id"])}
    for pipe in (pipelines["parquet", True], pipelines["mrc", False]):
        for epoch in (0, 1):  # the same samples and pixels in every epoch
            for batch in pipe.train_arrays(epoch, batch_size=32, eps=0.3, kind=kind, seed=4):
                k = [by_id[int(i)] for i in batch["id"]]
                assert np.array_equal(batch["clean"], expected_clean[k])
                assert np.array_equal(batch["noisy"], expected_noisy[k])


def test_test_split_fixed_order_never_contaminated(store, pipelines):
    rows = open_dataset(store).read("test")
    for pipe in pipelines.values():
        arrays = pipe.test_arrays()
        assert set(arrays) == set(rows)
        for key, value in rows.items():
            assert arrays[key].dtype == value.dtype and np.array_equal(arrays[key], value, equal_nan=True), key
        batches = list(pipe.test_batches(batch_size=4))
        assert [len(n) for n, _ in batches] == [4, 4, 2]
        assert torch.equal(torch.cat([n for n, _ in batches])[:, 0], torch.tensor(rows["noisy"]))
        assert torch.equal(torch.cat([c for _, c in batches])[:, 0], torch.tensor(rows["clean"]))


def test_pipeline_ships_into_a_ray_task(pipelines, ray_session):
    pipe = pipelines["parquet", True]
    expected = epoch_ids(pipe, 3, seed=7)

    # a lambda travels by value: the worker needs only cryotune
    remote_epoch = ray_session.remote(num_cpus=0.5)(
        lambda p: [b["id"] for b in p.train_arrays(3, batch_size=20, seed=7)])
    assert np.array_equal(np.concatenate(ray_session.get(remote_epoch.remote(pipe))), expected)
    assert np.array_equal(epoch_ids(pickle.loads(pickle.dumps(pipelines["mrc", False])), 3, seed=7), expected)


def test_auto_materializes_a_small_store(store, ray_session):
    from cryotune.data.pipeline import DataPipeline

    assert DataPipeline.from_store(store).materialized


@pytest.mark.parametrize("eps,kind", [(1.5, "A"), (-0.1, "B"), (0.1, "Z")])
def test_bad_contamination_config(pipelines, eps, kind):
    with pytest.raises(BadConfig):
        next(pipelines["parquet", False].train_batches(0, batch_size=4, eps=eps, kind=kind))


def test_empty_test_split_and_bad_store(tmp_path, ray_session):
    from cryotune.data.pipeline import DataPipeline

    x = np.zeros((3, *SHAPE), np.float32)
    with DatasetWriter(tmp_path / "p", name="p", kind="simulated", image_shape=SHAPE, pixel_size=1.0) as w:
        w.add("train", id=np.arange(3), clean=x, noisy=x)
        w.commit()
    for materialize in (True, False):
        pipe = DataPipeline.from_store(tmp_path / "p", materialize=materialize, holdout=0.0)
        assert list(pipe.test_batches(batch_size=2)) == []
        assert pipe.test_noisy_mse is None
        with pytest.raises(BadInput, match="no validation pairs"):
            next(pipe.val_batches(batch_size=2))
        arrays = pipe.test_arrays()
        assert arrays["noisy"].shape == (0, *SHAPE) and arrays["rotation"].shape == (0, 4)
        assert sorted(epoch_ids(pipe, 0)) == [0, 1, 2]
    with pytest.raises(BadInput, match="format 'mrc' is not in this dataset"):
        DataPipeline.from_store(tmp_path / "p", fmt="mrc")
    shard = open_dataset(tmp_path / "p").shard_files("train", "parquet")[0]
    shard.write_bytes(shard.read_bytes()[:-20] + b"\0" * 20)
    with pytest.raises(ChecksumMismatch, match="part-00000.parquet"):
        DataPipeline.from_store(tmp_path / "p")


@pytest.mark.parametrize("key", [("parquet", True), ("mrc", False)])
def test_train_epochs_are_train_batches_started_ahead(pipelines, key):
    pipe = pipelines[key]
    kwargs = dict(batch_size=20, eps=0.3, kind="C", seed=4)
    with pipe.train_epochs(range(1, 4), ahead=2, **kwargs) as epochs:
        got = [(epoch, list(batches)) for epoch, batches in epochs]
    assert [epoch for epoch, _ in got] == [1, 2, 3]
    for epoch, batches in got:  # the same pairs, pixels and order as one epoch at a time
        expected = list(pipe.train_batches(epoch, **kwargs))
        assert len(batches) == len(expected) == 5
        for (noisy, clean), (noisy_0, clean_0) in zip(batches, expected, strict=True):
            assert torch.equal(noisy, noisy_0) and torch.equal(clean, clean_0)


def thread_names():
    import threading

    return {t.name for t in threading.enumerate()}


@pytest.mark.parametrize("key", [("parquet", True), ("parquet", False)])
def test_train_epochs_stopped_early_leave_no_thread(pipelines, key):
    import time

    pipe = pipelines[key]
    list(pipe.train_batches(0, batch_size=20))  # Ray Data's own long-lived threads start here
    before = thread_names()
    with pipe.train_epochs(range(5), batch_size=20, eps=0.1, kind="A") as epochs:
        for _, batches in epochs:
            next(batches)
            during = thread_names() - before
            break
    assert {"cryotune-prefetch-epoch-0", "cryotune-prefetch-epoch-1"} <= during
    deadline = time.monotonic() + 10  # Ray Data's iterator threads end with their executions
    while thread_names() - before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert thread_names() - before == set()


def test_train_epochs_check_their_contamination_at_once(pipelines):
    with pytest.raises(BadConfig):
        pipelines["parquet", True].train_epochs(range(2), batch_size=4, eps=0.5, kind="Z")


def test_test_batches_across_blocks_in_both_modes(tmp_path, ray_session):
    from cryotune.data.pipeline import DataPipeline

    rng = np.random.default_rng(1)
    x = rng.random((18, *SHAPE), dtype=np.float32)
    with DatasetWriter(tmp_path / "b", name="b", kind="simulated", image_shape=SHAPE,
                       pixel_size=1.0, shard_rows=4) as w:  # test blocks of 4, 4, 2 rows
        w.add("train", id=np.arange(8), clean=x[:8], noisy=x[:8] + 1)
        w.add("test", id=np.arange(8, 18), clean=x[8:], noisy=x[8:] + 1)
        w.commit()
    pipes = [DataPipeline.from_store(tmp_path / "b", materialize=m) for m in (True, False)]
    for size in (1, 3, 4, 5, 20):
        got = [list(pipe.test_batches(batch_size=size)) for pipe in pipes]
        sizes = [len(n) for n, _ in got[0]]
        assert sizes == [size] * (10 // size) + ([10 % size] if 10 % size else [])
        assert sizes == [len(n) for n, _ in got[1]]
        for pairs in got:
            assert torch.equal(torch.cat([n for n, _ in pairs])[:, 0], torch.from_numpy(x[8:] + 1))
            assert torch.equal(torch.cat([c for _, c in pairs])[:, 0], torch.from_numpy(x[8:]))


@pytest.mark.parametrize("kind", ["A", "B", "C"])
def test_val_split_is_contaminated_like_training_and_test_is_not(store, pipelines, kind):
    dataset = open_dataset(store)
    val = dataset.read("val", ["id", "clean", "noisy"])
    test = dataset.read("test", ["id", "clean", "noisy"])
    eps, seed = 0.4, 3
    flagged = contaminated_mask(val["id"], eps, seed)  # the rule training pairs follow
    assert 0 < flagged.sum() < N_VAL
    replaced = {"A": ("clean",), "B": ("noisy",), "C": ("clean", "noisy")}[kind]
    for pipe in pipelines.values():
        batches = list(pipe.val_arrays(batch_size=5, eps=eps, kind=kind, seed=seed))
        assert [len(b["id"]) for b in batches] == [5, 5, 2]
        got = {c: np.concatenate([b[c] for b in batches]) for c in ("id", "clean", "noisy")}
        assert np.array_equal(got["id"], val["id"])  # the stored order, every time
        for field in ("clean", "noisy"):
            same = (got[field] == val[field]).reshape(N_VAL, -1).all(axis=1)
            want = ~flagged if field in replaced else np.ones(N_VAL, bool)
            assert np.array_equal(same, want), field
        # a training pair with one of these ids would get exactly these pixels
        noisy, clean, _ = contaminate(val["noisy"], val["clean"], val["id"], eps=eps, kind=kind,
                                      seed=seed, stats=dataset.stats())
        assert np.array_equal(got["noisy"], noisy) and np.array_equal(got["clean"], clean)
        torch_pairs = list(pipe.val_batches(batch_size=5, eps=eps, kind=kind, seed=seed))
        assert torch.equal(torch.cat([n for n, _ in torch_pairs])[:, 0], torch.tensor(noisy))
        # the oracle view is the stored validation pairs; the test split is never contaminated
        oracle = list(pipe.oracle_val_batches(batch_size=5))
        assert torch.equal(torch.cat([c for _, c in oracle])[:, 0], torch.tensor(val["clean"]))
        test_pairs = list(pipe.test_batches(batch_size=5))
        assert torch.equal(torch.cat([n for n, _ in test_pairs])[:, 0], torch.tensor(test["noisy"]))
        assert torch.equal(torch.cat([c for _, c in test_pairs])[:, 0], torch.tensor(test["clean"]))
        assert pipe.holdout == 0.0
    per_image = np.square(test["noisy"].astype(np.float64) - test["clean"]).mean(axis=(1, 2))
    assert pipelines["parquet", True].test_noisy_mse == pytest.approx(per_image.mean(), rel=1e-12)


def test_a_store_without_val_holds_out_training_pairs(tmp_path, ray_session):
    from cryotune.data.contamination import holdout_mask
    from cryotune.data.pipeline import VAL_HOLDOUT, DataPipeline

    rng = np.random.default_rng(2)
    x = rng.random((150, *SHAPE), dtype=np.float32)
    ids = np.arange(1000, 1150)
    with DatasetWriter(tmp_path / "old", name="old", kind="ingested", image_shape=SHAPE,
                       pixel_size=1.0, shard_rows=32, formats=("parquet", "mrc")) as w:
        w.add("train", id=ids[:140], clean=x[:140], noisy=x[:140] + 1)
        w.add("test", id=ids[140:], clean=x[140:], noisy=x[140:] + 1)
        w.commit()
    held = holdout_mask(ids[:140], VAL_HOLDOUT)
    assert 0 < held.sum() < 140
    for fmt, materialize in (("parquet", True), ("mrc", False)):
        pipe = DataPipeline.from_store(tmp_path / "old", fmt=fmt, materialize=materialize)
        assert pipe.holdout == VAL_HOLDOUT
        got = np.concatenate([b["id"] for b in pipe.val_arrays(batch_size=8)])
        assert np.array_equal(got, ids[:140][held])  # held out, in stored order
        for epoch in (0, 1):  # and never trained on
            assert sorted(epoch_ids(pipe, epoch)) == sorted(ids[:140][~held])
        with pytest.raises(BadInput, match="oracle validation score needs a simulated dataset"):
            pipe.oracle_val_batches(batch_size=8)
    everything = DataPipeline.from_store(tmp_path / "old", holdout=0.0)
    assert sorted(epoch_ids(everything, 0)) == sorted(ids[:140])
    with pytest.raises(BadInput, match="outside"):
        DataPipeline.from_store(tmp_path / "old", holdout=1.0)
