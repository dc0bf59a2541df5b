"""The Ray Data pipeline: dataset store shards -> per-epoch shuffle -> contamination -> torch batches.

One :class:`DataPipeline` serves a whole study. :meth:`DataPipeline.from_store` reads the store
once in the driver and keeps the splits in Ray's object store when they fit (``materialize``);
otherwise every epoch streams the shards again. Each trial then applies only its own order,
contamination and batching on top, and nothing is copied to disk per trial.

Ray Data starts a new execution for every epoch, and its first batch waits for it (planning,
the first blocks' tasks, the shuffle buffer filling). :meth:`DataPipeline.train_epochs` hides
that wait: a :class:`~cryotune.data.prefetch.EpochPrefetcher` starts each epoch in a background thread while the
epoch before it trains, holding at most ``ahead`` batches of it. The batches, their order and
their contamination are those of :meth:`DataPipeline.train_batches`.

Epoch order. The store's shards are the unit Ray reads (one read task per shard, in a fixed
block layout that depends only on the store). Epoch ``e`` of a trial with seed ``s`` visits the
shards in a permutation drawn from ``(s, e)``, permutes the rows of each block with a generator
seeded by ``(s, e, first id of the block)``, and mixes neighbouring blocks in a seeded local
shuffle buffer. Execution keeps block order (``preserve_order``), so the order is a function of
(store, s, e) alone: the same in the materialized and the streaming mode, in every rerun, and
different from epoch to epoch; every train id appears exactly once per epoch (but those
held out as validation, below, which never appear).

Validation. :meth:`DataPipeline.val_batches` gives the validation pairs in a fixed order,
contaminated exactly like the trial's training pairs (same eps, type, seed and per-id rule of
:mod:`cryotune.data.contamination`): a user with real data cannot clean a validation set
either. :meth:`DataPipeline.test_batches` is never contaminated. A store written before the
validation split existed (or with ``--val-fraction 0``) still serves studies: the pipeline holds
out the training pairs whose id hash falls below ``holdout`` (:data:`VAL_HOLDOUT`, 10%;
:func:`~cryotune.data.contamination.holdout_mask`) as its validation split and leaves them out of
every training epoch. That keeps old stores useful without re-simulating or re-ingesting them,
and is chosen over refusing them because the held-out set is as reproducible as a stored one
(a function of the ids alone, the same for every trial and seed); it never falls back to the
test split, which selection must not read.

Example::

    from cryotune._ray import init_ray
    from cryotune.data.pipeline import DataPipeline
    init_ray(num_cpus=2)
    pipe = DataPipeline.from_store("data/rnap-32")
    for noisy, clean in pipe.train_batches(0, batch_size=20, eps=0.1, kind="A", seed=0):
        print(noisy.shape, clean.dtype)     # torch.Size([20, 1, 32, 32]) torch.float32
        break
    with pipe.train_epochs(range(3), batch_size=20, eps=0.1, kind="A", seed=0) as epochs:
        for epoch, batches in epochs:       # epoch 1 starts while epoch 0 is consumed
            print(epoch, sum(len(noisy) for noisy, _ in batches))
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import mrcfile
import numpy as np
import pyarrow.parquet as pq
import ray
import ray.data
from ray.data.block import BlockAccessor, BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from cryotune._ray import init_ray
from cryotune.data.contamination import check, contaminate, holdout_mask
from cryotune.data.prefetch import PREFETCH_BATCHES, EpochPrefetcher
from cryotune.data.shards import MrcShard, empty_columns, numpy_to_table, table_to_numpy
from cryotune.data.store import open_dataset
from cryotune.errors import BadInput

if TYPE_CHECKING:  # torch loads only where batches become tensors, not in Ray Data's workers
    import torch

log = logging.getLogger(__name__)

__all__ = ["DataPipeline", "MrcPairDatasource"]

TRAIN_COLUMNS = ("id", "noisy", "clean")
# Rows of the seeded shuffle buffer that mixes neighbouring blocks (Ray's local shuffle).
SHUFFLE_BUFFER_ROWS = 1024
# Materialize when the splits take at most this share of the object store.
OBJECT_STORE_SHARE = 0.5
# Share of the training pairs held out as validation from a store without a validation split.
VAL_HOLDOUT = 0.1


class MrcPairDatasource(Datasource):
    """Ray Data source over MRC stack pairs: one read task per shard, read through memory maps.

    Args:
        shards: the shards, in the order to read them.
        columns: columns to produce (clean/noisy from the stacks, the rest from the sidecars).
        image_shape: (H, W), for size estimates.
    """

    def __init__(self, shards: list[MrcShard], columns: tuple[str, ...], image_shape: tuple[int, int]):
        super().__init__()
        self._shards = list(shards)
        self._columns = tuple(columns)
        self._row_bytes = 4 * image_shape[0] * image_shape[1] * sum(c in ("clean", "noisy") for c in columns) + 64

    def estimate_inmemory_data_size(self) -> int:
        return sum(s.rows for s in self._shards) * self._row_bytes

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context=None) -> list[ReadTask]:
        tasks = []
        for shard in self._shards:
            meta = BlockMetadata(num_rows=shard.rows, size_bytes=shard.rows * self._row_bytes,
                                 exec_stats=None, input_files=(str(shard.clean), str(shard.noisy), str(shard.meta)))
            tasks.append(ReadTask(_MrcShardReader(shard, self._columns), meta,
                                  per_task_row_limit=per_task_row_limit))
        return tasks

    def get_name(self) -> str:
        return "MrcPairs"


class _MrcShardReader:
    """A picklable read function for one MRC shard."""

    def __init__(self, shard: MrcShard, columns: tuple[str, ...]):
        self.shard, self.columns = shard, columns

    def __call__(self):
        meta_columns = [c for c in self.columns if c not in ("clean", "noisy")]
        out = table_to_numpy(pq.read_table(self.shard.meta, columns=meta_columns)) if meta_columns else {}
        for key in ("clean", "noisy"):
            if key in self.columns:
                with mrcfile.mmap(getattr(self.shard, key), mode="r") as mrc:
                    out[key] = np.array(mrc.data, dtype=np.float32)  # copy before the map closes
        yield numpy_to_table({c: out[c] for c in self.columns})


def _epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed % 2**64, epoch % 2**64, 0xE90C]).generate_state(1)[0])


def _shuffle_and_contaminate(batch: dict, *, epoch_seed: int, eps: float, kind: str, seed: int,
                             stats: dict, holdout: float = 0.0) -> dict:
    """One block: permute its rows (seeded by the epoch and its first id), leave out the rows
    held out as validation, then contaminate."""
    ids = batch["id"]
    if len(ids) == 0:
        return batch
    order = np.random.default_rng([epoch_seed, int(ids[0]) % 2**64]).permutation(len(ids))
    if holdout > 0:
        order = order[~holdout_mask(ids[order], holdout)]
    noisy, clean, _ = contaminate(batch["noisy"][order], batch["clean"][order], ids[order],
                                  eps=eps, kind=kind, seed=seed, stats=stats)
    return {"id": ids[order], "noisy": noisy, "clean": clean}


def _torch(x: np.ndarray) -> torch.Tensor:
    """N x H x W numpy -> N x 1 x H x W float32 tensor (copying only read-only Arrow views)."""
    import torch

    x = np.asarray(x, dtype=np.float32)
    return torch.from_numpy(x if x.flags.writeable else x.copy()).unsqueeze(1)


def _stack(x: np.ndarray) -> np.ndarray:
    """Ray gives fixed-size list columns as object arrays of rows: stack them to (N, k)."""
    return np.stack(list(x)) if x.dtype == object else x


def _stored_blocks(ds: ray.data.Dataset, columns: tuple[str, ...]) -> Iterator[dict[str, np.ndarray]]:
    """The blocks of a materialized dataset in order, as numpy columns, straight from the object
    store (no execution: starting one costs tens of ms)."""
    for bundle in ds.iter_internal_ref_bundles():
        for entry in bundle.blocks:
            yield BlockAccessor.for_block(ray.get(entry.ref)).to_numpy(list(columns))


def _rebatch(blocks: Iterable[dict[str, np.ndarray]], size: int) -> Iterator[dict[str, np.ndarray]]:
    """Batches of ``size`` rows across block boundaries (the last may be smaller), as
    ``iter_batches`` cuts them; each block is copied at most once."""
    carry: dict[str, np.ndarray] | None = None  # fewer than ``size`` rows from earlier blocks
    for block in blocks:
        if carry is not None:
            block = {c: np.concatenate([carry[c], v]) for c, v in block.items()}
        n = len(next(iter(block.values())))
        full = n - n % size
        for start in range(0, full, size):
            yield {c: v[start:start + size] for c, v in block.items()}
        carry = {c: v[full:] for c, v in block.items()} if full < n else None
    if carry is not None:
        yield carry


class DataPipeline:
    """The train, validation and test streams of one dataset store; picklable, for Ray Tune trials.

    Build it with :meth:`from_store`. It holds the store's manifest, the shard lists and, when
    materialized, the ``ray.data`` datasets whose blocks live in the object store.

    Attributes:
        holdout: the share of training pairs held out as validation (0 when the store has a
            validation split of its own).
        test_noisy_mse: mean over test images of the noisy input's per-image MSE against the
            clean one (None without test images): a denoiser worse than this made things worse.
    """

    def __init__(self, path: Path, manifest: dict, fmt: str, shards: dict[str, list],
                 materialized: dict[str, ray.data.Dataset] | None, *, holdout: float = 0.0,
                 test_noisy_mse: float | None = None):
        self.path = path
        self.manifest = manifest
        self.fmt = fmt
        self.image_shape: tuple[int, int] = tuple(manifest["image_shape"])  # type: ignore[assignment]
        self.stats: dict = dict(manifest["stats"])
        self._shards = shards
        self._materialized = materialized
        self.holdout = float(holdout)
        self.test_noisy_mse = test_noisy_mse

    @property
    def simulated(self) -> bool:
        """Whether the store was simulated: its clean references are the truth (oracle scores)."""
        return self.manifest.get("kind") == "simulated"

    @property
    def materialized(self) -> bool:
        """Whether the splits live in Ray's object store (else every epoch streams the shards)."""
        return self._materialized is not None

    @classmethod
    def from_store(cls, path: str | Path, *, fmt: str = "auto", materialize: bool | None = None,
                   holdout: float = VAL_HOLDOUT) -> DataPipeline:
        """Open a store, verify its checksums and (when it fits) load it into the object store.

        Args:
            path: the dataset folder.
            fmt: "parquet", "mrc" or "auto" (Parquet when the store has it).
            materialize: keep the splits in the object store; None decides by size (at most
                half of the object store).
            holdout: when the store has no validation pairs, the share of training pairs held
                out as validation (by id hash, left out of training); 0 holds out none, and
                :meth:`val_batches` then refuses.

        Returns:
            The pipeline.
        """
        dataset = open_dataset(path, verify=True)
        if fmt == "auto":
            fmt = "parquet" if "parquet" in dataset.formats else "mrc"
        if fmt not in dataset.formats:
            raise BadInput(f"format {fmt!r} is not in this dataset ({', '.join(dataset.formats)})",
                           str(dataset.path), f"use --format {' or '.join(dataset.formats)} or auto")
        if not 0.0 <= holdout < 1.0:
            raise BadInput(f"validation hold-out {holdout} is outside [0, 1)", str(dataset.path),
                           "pass a share of the training pairs such as 0.1")
        if dataset.count("val"):
            holdout = 0.0
        elif holdout > 0:
            n_train = dataset.count("train")
            held = int(holdout_mask(dataset.read("train", ["id"])["id"], holdout).sum())
            if 0 < held < n_train:
                log.warning("dataset %s has no validation pairs: holding out %d of its %d "
                            "training pairs (%.0f%%, by id) as validation", dataset.path, held,
                            n_train, 100 * holdout)
            else:  # too few pairs to split: train on all, and val_batches says there is none
                log.warning("dataset %s has no validation pairs and too few training pairs (%d) "
                            "to hold some out", dataset.path, n_train)
                holdout = 0.0
        init_ray()
        shards = {split: dataset.shard_files(split, fmt) for split in ("train", "val", "test")}
        pipe = cls(dataset.path.absolute(), dataset.manifest, fmt, shards, None, holdout=holdout,
                   test_noisy_mse=_noisy_mse(dataset, "test"))
        if materialize is None:
            h, w = pipe.image_shape
            need = (dataset.count("train") + dataset.count("val") + dataset.count("test")) * (8 * h * w + 64)
            store = ray.cluster_resources().get("object_store_memory", 0)
            materialize = need <= OBJECT_STORE_SHARE * store
            log.info("dataset needs %.1f MB, object store %.1f MB: %s", need / 1e6, store / 1e6,
                     "materialize" if materialize else "stream")
        if materialize:
            pipe._materialized = {
                "train": pipe._read("train", TRAIN_COLUMNS, range(len(shards["train"]))).materialize(),
            }
            if shards["test"]:
                pipe._materialized["test"] = pipe._read("test", pipe._test_columns(),
                                                        range(len(shards["test"]))).materialize()
            if shards["val"]:
                pipe._materialized["val"] = pipe._read("val", TRAIN_COLUMNS,
                                                       range(len(shards["val"]))).materialize()
        return pipe

    def _test_columns(self) -> tuple[str, ...]:
        base = ("id", "noisy", "clean", "conformation", "rotation", "shift")
        return base + (("defocus",) if self.manifest.get("has_defocus") else ())

    def _read(self, split: str, columns: tuple[str, ...], order) -> ray.data.Dataset:
        """The shards of ``split`` in ``order`` (shard indices), one read task per shard."""
        shards = [self._shards[split][i] for i in order]
        if not shards:
            raise BadInput(f"the {split} split is empty", str(self.path), "re-create the dataset with a non-empty split")
        if self.fmt == "parquet":
            # Honour RAY_DATA_USE_DATASOURCE_V2 (0 from QUIET_ENV) even when Ray Data was
            # imported before init_ray() set it.
            ray.data.DataContext.get_current().use_datasource_v2 = (
                os.environ.get("RAY_DATA_USE_DATASOURCE_V2", "0") != "0")
            ds = ray.data.read_parquet([str(p) for p in shards], columns=list(columns),
                                       override_num_blocks=len(shards))
        else:
            ds = ray.data.read_datasource(MrcPairDatasource(shards, columns, self.image_shape),
                                          override_num_blocks=len(shards))
        ds.context.execution_options.preserve_order = True
        return ds

    def _train_epoch(self, epoch_seed: int) -> ray.data.Dataset:
        """The train split with its shards in the epoch's order."""
        order = np.random.default_rng(epoch_seed).permutation(len(self._shards["train"]))
        if self._materialized is None:
            return self._read("train", TRAIN_COLUMNS, order)
        # Read tasks are one per shard and keep their order, so the materialized blocks fall
        # into shards by their row counts.
        rows = [s["rows"] for s in self.manifest["splits"]["train"]["shards"]]
        by_shard: list[list] = [[] for _ in rows]
        shard, filled = 0, 0
        for bundle in self._materialized["train"].iter_internal_ref_bundles():
            for entry in bundle.blocks:
                by_shard[shard].append(entry.ref)
                filled += entry.metadata.num_rows
                if filled >= rows[shard]:
                    if filled > rows[shard]:  # one read task per shard makes this impossible
                        raise RuntimeError(f"a materialized block spans train shards {shard} and {shard + 1}")
                    shard, filled = shard + 1, 0
        ds = ray.data.from_arrow_refs([ref for i in order for ref in by_shard[i]])
        ds.context.execution_options.preserve_order = True
        return ds

    def train_batches(self, epoch: int, *, batch_size: int, eps: float = 0.0, kind: str = "none",
                      seed: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch of shuffled, contaminated training pairs.

        Args:
            epoch: the epoch number (0-based); with ``seed`` it fixes the order.
            batch_size: images per batch (the last batch may be smaller).
            eps: contamination rate in [0, 1].
            kind: contamination type "none", "A", "B" or "C".
            seed: the trial's seed (order and contamination).

        Yields:
            (noisy, clean) float32 tensors N x 1 x H x W.
        """
        for batch in self.train_arrays(epoch, batch_size=batch_size, eps=eps, kind=kind, seed=seed):
            yield _torch(batch["noisy"]), _torch(batch["clean"])

    def train_arrays(self, epoch: int, *, batch_size: int, eps: float = 0.0, kind: str = "none",
                     seed: int = 0) -> Iterator[dict[str, np.ndarray]]:
        """As :meth:`train_batches`, as numpy dicts with the ids (id, noisy, clean)."""
        check(eps, kind)
        epoch_seed = _epoch_seed(seed, epoch)
        ds = self._train_epoch(epoch_seed).map_batches(
            _shuffle_and_contaminate, batch_format="numpy", batch_size=None,
            fn_kwargs=dict(epoch_seed=epoch_seed, eps=float(eps), kind=kind, seed=seed, stats=self.stats,
                           holdout=self.holdout))
        yield from ds.iter_batches(batch_size=batch_size, batch_format="numpy",
                                   local_shuffle_buffer_size=SHUFFLE_BUFFER_ROWS,
                                   local_shuffle_seed=epoch_seed)

    def train_epochs(self, epochs: Iterable[int], *, batch_size: int, eps: float = 0.0,
                     kind: str = "none", seed: int = 0, ahead: int = PREFETCH_BATCHES
                     ) -> EpochPrefetcher:
        """:meth:`train_batches` for each of ``epochs``, each started while the one before trains.

        Args:
            epochs: the epoch numbers, in the order they are trained.
            batch_size, eps, kind, seed: as for :meth:`train_batches`.
            ahead: batches of an epoch held before the trainer takes them.

        Returns:
            A :class:`~cryotune.data.prefetch.EpochPrefetcher` (a context manager) yielding ``(epoch, batches)``.
        """
        check(eps, kind)
        return EpochPrefetcher(lambda epoch: self.train_batches(
            epoch, batch_size=batch_size, eps=eps, kind=kind, seed=seed), epochs, ahead=ahead)

    def _test(self) -> ray.data.Dataset | None:
        """The test split in stored order; None when it is empty."""
        if not self._shards["test"]:
            return None
        if self._materialized is not None:
            return self._materialized["test"]
        return self._read("test", self._test_columns(), range(len(self._shards["test"])))

    def test_batches(self, *, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The test split in its stored order, never contaminated: (noisy, clean) N x 1 x H x W.

        Trials evaluate every epoch: when materialized, the blocks are read from the object
        store directly, without starting a Ray Data execution each time.
        """
        test = self._test()
        if test is None:
            return
        if self._materialized is not None:
            batches = _rebatch(_stored_blocks(test, ("noisy", "clean")), batch_size)
        else:
            batches = test.iter_batches(batch_size=batch_size, batch_format="numpy")
        for batch in batches:
            yield _torch(batch["noisy"]), _torch(batch["clean"])

    def test_arrays(self) -> dict[str, np.ndarray]:
        """The whole test split in stored order: id, noisy, clean, conformation, rotation, shift
        (and defocus when the store has it)."""
        test = self._test()
        if test is None:
            return empty_columns(self._test_columns(), self.image_shape)
        parts = list(test.iter_batches(batch_size=None, batch_format="numpy"))
        return {c: np.concatenate([_stack(p[c]) for p in parts]) for c in self._test_columns()}

    def _val_blocks(self) -> Iterator[dict[str, np.ndarray]]:
        """The validation pairs (id, noisy, clean) in their fixed order, block by block: the
        store's val split, or the held-out training pairs in stored order."""
        if self._shards["val"]:
            split = "val"
        elif self.holdout > 0:
            split = "train"
        else:
            raise BadInput("the dataset has no validation pairs", str(self.path),
                           "re-create it with --val-fraction 0.1, or open it with a hold-out share")
        if self._materialized is not None:
            blocks = _stored_blocks(self._materialized[split], TRAIN_COLUMNS)
        else:
            blocks = self._read(split, TRAIN_COLUMNS, range(len(self._shards[split]))).iter_batches(
                batch_size=None, batch_format="numpy")
        for block in blocks:
            if split == "train":
                keep = holdout_mask(block["id"], self.holdout)
                block = {c: v[keep] for c, v in block.items()}
            yield block

    def val_arrays(self, *, batch_size: int, eps: float = 0.0, kind: str = "none",
                   seed: int = 0) -> Iterator[dict[str, np.ndarray]]:
        """As :meth:`val_batches`, as numpy dicts with the ids (id, noisy, clean)."""
        check(eps, kind)
        for batch in _rebatch(self._val_blocks(), batch_size):
            noisy, clean, _ = contaminate(batch["noisy"], batch["clean"], batch["id"], eps=float(eps),
                                          kind=kind, seed=seed, stats=self.stats)
            yield {"id": batch["id"], "noisy": noisy, "clean": clean}

    def val_batches(self, *, batch_size: int, eps: float = 0.0, kind: str = "none",
                    seed: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The validation pairs in a fixed order, contaminated exactly like the trial's
        training pairs.

        A validation id is contaminated iff a training pair with that id would be (the same
        eps, type, seed and train-split statistics, :func:`~cryotune.data.contamination.contaminate`),
        so the validation split of a trial is as dirty as its training data, the same in every
        epoch. Materialized splits are read from the object store without a Ray Data execution.

        Args:
            batch_size: images per batch (the last may be smaller).
            eps, kind, seed: the trial's contamination rate, type and seed.

        Yields:
            (noisy, clean) float32 tensors N x 1 x H x W.

        Raises:
            BadInput: the store has no validation pairs and none are held out (``holdout=0``).
        """
        for batch in self.val_arrays(batch_size=batch_size, eps=eps, kind=kind, seed=seed):
            yield _torch(batch["noisy"]), _torch(batch["clean"])

    def oracle_val_batches(self, *, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The validation pairs never contaminated, for the oracle score of simulated stores.

        Only a simulation knows its clean references; the oracle exists to measure how much the
        robust selection score (on contaminated validation pairs) loses against it.

        Raises:
            BadInput: the store is not simulated.
        """
        if not self.simulated:
            raise BadInput("the oracle validation score needs a simulated dataset", str(self.path),
                           "select on the contaminated validation pairs (val_mse_median)")
        return self.val_batches(batch_size=batch_size)


def _noisy_mse(dataset, split: str) -> float | None:
    """Mean over ``split``'s images of the per-image MSE of the noisy image against the clean one."""
    total, n = 0.0, 0
    for chunk in dataset.iter_chunks(split, 1024, ["noisy", "clean"]):
        diff = chunk["noisy"].astype(np.float64) - chunk["clean"]
        total += float(np.square(diff).reshape(len(diff), -1).mean(axis=1).sum())
        n += len(diff)
    return total / n if n else None
