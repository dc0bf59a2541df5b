"""One training run without Ray Tune, on the same path as a sweep's trial.

:func:`train` reads the dataset store through the :class:`~cryotune.data.pipeline.DataPipeline`
a sweep uses (on embedded Ray), with the trial's order, contamination and batching, and trains
with :func:`cryotune.nn.train.train`, which scores each epoch on the validation pairs (as dirty
as the training pairs), the clean validation pairs of a simulation, and the test split, in
the order a sweep's trial does. So a config and seed give the same history here as in the
sweep trial with that config (``num_threads`` as the trial had: a trial gets one torch thread
per CPU).

The run folder receives ``history.csv`` (one row an epoch), ``checkpoint.pt`` (every
``checkpoint_every`` epochs, for ``resume``), ``best.pt`` (the best validation epoch),
``model.pt`` (the final model, for ``cryotune denoise``) and ``gallery.npz`` (noisy, clean and
denoised first test images).

Example::

    import cryotune
    config = cryotune.TrainConfig(method="l1_ae", width=8, depth=1, epochs=2)
    history = cryotune.train(config, "data/rnap-32", eps=0.1, contamination="A", out="runs/a10")
    print(history[-1]["test_mse"], history[-1]["best_epoch"])
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from cryotune._io import atomic_write
from cryotune._ray import init_ray
from cryotune.config import TrainConfig
from cryotune.data.contamination import check, contaminated_mask
from cryotune.data.store import open_dataset
from cryotune.errors import BadInput
from cryotune.nn.train import CHECKPOINT_NAME, Trainer
from cryotune.nn.train import train as train_loop
from cryotune.runs.sweep import quiet_environment

__all__ = ["describe", "train"]

log = logging.getLogger(__name__)


def train(config: TrainConfig, dataset: str | Path, *, eps: float = 0.0,
          contamination: str | None = None, out: str | Path | None = None,
          resume: bool = False, on_epoch: Callable[[dict[str, Any]], None] | None = None,
          address: str | None = None, verbose: bool = False) -> list[dict[str, Any]]:
    """Train one denoiser on a dataset store, as a sweep trial with this config would.

    Args:
        config: the training config (its ``seed`` seeds the weights, the order and the
            contamination).
        dataset: a dataset store folder.
        eps: the contamination rate of the training (and validation) pairs.
        contamination: ``A``, ``B`` or ``C``; default ``A`` when ``eps`` > 0, else ``none``.
        out: the run folder; None keeps nothing on disk but the history returned.
        resume: continue the run in ``out`` from its ``checkpoint.pt``.
        on_epoch: called with each epoch's record.
        address: a Ray cluster to read the data on; None starts embedded Ray.
        verbose: Ray's own logs on the console.

    Returns:
        One record per epoch (train, ``val_*``, ``test_*`` metrics and the best epoch).

    Raises:
        BadInput: ``resume`` without a checkpoint in ``out``, or ``out`` already holds a run.
        BadConfig: eps or the contamination type is out of range.
    """
    kind = contamination or ("A" if eps > 0 else "none")
    kind = kind if eps > 0 else "none"
    check(eps, kind)
    folder = _run_folder(out, resume)
    quiet_environment(verbose=verbose, joining=address is not None)
    from cryotune.data.pipeline import DataPipeline  # Ray Data: after quiet_environment()

    init_ray(address, verbose=verbose)
    pipe = DataPipeline.from_store(dataset)
    oracle = pipe.simulated and eps > 0 and kind != "none"  # as a sweep trial decides
    trainer_box: dict[str, Trainer] = {}

    def each_epoch(record: dict[str, Any], trainer: Trainer) -> None:
        trainer_box["trainer"] = trainer
        if folder is not None:
            atomic_write(folder / "history.csv", _history_csv(trainer.history))
        if on_epoch is not None:
            on_epoch(record)

    size = config.batch_size
    with contextlib.ExitStack() as stack:
        history = train_loop(
            config, _epochs(stack, pipe, config, eps, kind), lambda: pipe.test_batches(batch_size=size),
            checkpoint_dir=folder, on_epoch=each_epoch, resume=resume,
            val_batches=lambda: pipe.val_batches(batch_size=size, eps=eps, kind=kind,
                                                 seed=config.seed),
            oracle_val_batches=(lambda: pipe.oracle_val_batches(batch_size=size)) if oracle else None)
    if folder is not None and (folder / CHECKPOINT_NAME).is_file():
        trainer = trainer_box.get("trainer") or Trainer.load_checkpoint(
            folder / CHECKPOINT_NAME, device=config.device)
        _write_outputs(folder, trainer, dataset, config.gallery)
    return history


def describe(dataset: str | Path, *, eps: float = 0.0, contamination: str = "none",
             seed: int = 0) -> dict[str, int]:
    """What a run would read: ``train`` and ``test`` pair counts, and how many training pairs
    (validation pairs held out of them included) ``eps`` and ``seed`` contaminate.

    Raises:
        BadConfig: eps or the contamination type is out of range.
        BadInput: the dataset store cannot be opened.
    """
    check(eps, contamination)
    ds = open_dataset(dataset)
    ids = ds.read("train", ["id"])["id"]
    hit = int(contaminated_mask(ids, eps, seed).sum()) if contamination != "none" else 0
    return {"train": len(ids), "test": ds.count("test"), "contaminated": hit}


def _run_folder(out: str | Path | None, resume: bool) -> Path | None:
    if out is None:
        if resume:
            raise BadInput("nothing to resume without a run folder", "out",
                           "pass the folder of the run to continue")
        return None
    folder = Path(out)
    checkpoint = folder / CHECKPOINT_NAME
    if resume and not checkpoint.is_file():
        raise BadInput("nothing to resume: no checkpoint.pt", str(folder),
                       "drop --resume to start a new run, or point --out at a run folder")
    if not resume and checkpoint.exists():
        raise BadInput("this folder already holds a run", str(folder),
                       "pass --resume to continue it, or choose another --out")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _epochs(stack: contextlib.ExitStack, pipe: Any, config: TrainConfig, eps: float,
            kind: str) -> Callable[[int], Iterable]:
    """``epoch -> batches`` from the pipeline's prefetching epochs, started at the first epoch
    asked for (a resumed run's next one), exactly as a sweep trial reads them."""
    state: dict[str, Any] = {}

    def batches(epoch: int) -> Iterable:
        if "epochs" not in state:
            state["epochs"] = iter(stack.enter_context(pipe.train_epochs(
                range(epoch, config.epochs), batch_size=config.batch_size, eps=eps, kind=kind,
                seed=config.seed)))
        got, epoch_batches = next(state["epochs"])
        if got != epoch:
            raise RuntimeError(f"the pipeline gave epoch {got} for epoch {epoch}")
        return epoch_batches

    return batches


def _history_csv(history: list[dict]) -> str:
    buf = io.StringIO()
    columns = list(dict.fromkeys(k for record in history for k in record))
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    return buf.getvalue()


def _write_outputs(folder: Path, trainer: Any, dataset: str | Path, gallery: int) -> None:
    """``model.pt`` (the last checkpoint is the final model) and ``gallery.npz``."""
    atomic_write(folder / "model.pt", (folder / CHECKPOINT_NAME).read_bytes())
    test = open_dataset(dataset, verify=False).read("test", ["noisy", "clean"], stop=gallery)
    buf = io.BytesIO()
    np.savez(buf, noisy=test["noisy"], clean=test["clean"], denoised=trainer.gallery(test["noisy"]))
    atomic_write(folder / "gallery.npz", buf.getvalue())
