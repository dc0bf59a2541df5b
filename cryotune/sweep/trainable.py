"""The Ray Tune function trainable: one trial = one :class:`~cryotune.nn.train.Trainer` run.

It builds the Trainer from the trial config (``config["t"]``, see :mod:`cryotune.sweep.space`),
streams its epochs from the study's shared :class:`~cryotune.data.pipeline.DataPipeline` with
the trial's own contamination and seed (each epoch started while the one before trains,
:meth:`~cryotune.data.pipeline.DataPipeline.train_epochs`), and reports every epoch with
``tune.report``. Every ``checkpoint_every`` epochs, and after the last, the report carries a
checkpoint folder::

    checkpoint.pt   the Trainer's whole state (models, optimisers, epoch, RNG states, history)
    best.pt         the same at the best validation epoch so far (the study's ``select:``
                    metric, default the lowest ``val_mse_median``)
    history.json    one record per epoch so far (the driver reads it without torch)
    gallery.npy     the denoised fixed gallery images (the first test images)
    validation.npz  after the last epoch of a study with ``validate:``, the FSC and clustering
                    of the test split denoised by the best validation epoch's generator
                    (``best.pt``; the last epoch's when no epoch was selected), and that
                    epoch as ``validated_epoch`` (:mod:`cryotune.validate.record`)

A trial restarted after its worker died resumes from ``tune.get_checkpoint()``; the epochs
after that checkpoint run again and their records replace the first ones. A
:class:`~cryotune.errors.Diverged` run ends the trial with one last report carrying
``diverged: True`` and the message, not with an error: a diverged trial is a result. Each
report also carries ``node_id``, ``started_at``/``ended_at`` (this run's start, the epoch's end)
and ``resumed_from`` (the checkpoint's epoch this run started from; 0 for a fresh start).

Every epoch is scored on the validation pairs, contaminated like the trial's training pairs
(``val_*``), on the clean validation pairs of a simulated store (``oracle_val_*``), and on the
test split (``test_*``); the history keeps them all. Each report carries the best validation
epoch so far: ``best_epoch``, ``select_score`` (its selection score) and the test metrics of
that epoch, ``test_mse_at_best``, ``test_psnr_at_best``, ``test_ssim_at_best``, so the last
report holds the trial's selected result; and ``noisy_test_mse``, the noisy input's test MSE.
When the last epoch's selected test MSE is worse than the noisy input's, that report says
``diverged: True`` with the reason, its metrics kept.

Example (what :func:`cryotune.runs.sweep.run_sweep` wires)::

    from ray import tune
    fn = tune.with_parameters(run_trial, pipelines={key: pipe}, gallery={key: noisy[:8]},
                              threads=1, gpu_share=0.0)
    tune.Tuner(tune.with_resources(fn, {"cpu": 1}), param_space={"t": tune.grid_search(configs)})
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import ray
from ray import tune

from cryotune import vocab
from cryotune.errors import Diverged
from cryotune.nn.checkpoint import read_checkpoint
from cryotune.nn.train import BEST_NAME, CHECKPOINT_NAME, BestEpoch, Trainer
from cryotune.sweep.space import train_config
from cryotune.validate.record import VALIDATION_FILE, to_bytes
from cryotune.validate.reference import validate_images

__all__ = ["GALLERY_FILE", "HISTORY_FILE", "run_trial"]

HISTORY_FILE = "history.json"
GALLERY_FILE = "gallery.npy"
# validation scores a diverged trial reports as NaN, besides vocab.GOALS
_NAN_SCORES = ("val_mse", "val_mse_median", "val_psnr", "val_ssim")


def run_trial(config: Mapping[str, Any], *, pipelines: Mapping[str, Any],
              gallery: Mapping[str, np.ndarray], threads: int, gpu_share: float,
              validation: Mapping[str, Any] | None = None, what: tuple[str, ...] = (),
              select_metric: str = "val_mse_median", select_mode: str = "min",
              oracle: bool | None = None) -> None:
    """Train one trial to its last epoch, reporting each epoch to Tune.

    Args:
        config: ``{"t": trial config}`` from the param space or the search algorithm.
        pipelines: the study's DataPipeline per dataset key.
        gallery: the noisy gallery images per dataset key (n x H x W).
        threads: torch CPU threads (from the trial's CPUs).
        gpu_share: the trial's GPU fraction; caps its CUDA memory when below 1.
        validation: the :class:`~cryotune.validate.reference.Reference` per dataset key, when the
            study validates.
        what: the validations to run after the last epoch (``fsc``, ``clustering``).
        select_metric, select_mode: the study's ``select:`` setting: the validation score that
            picks the trial's best epoch, and its better direction.
        oracle: also score the clean validation pairs (``oracle_val_*``); None: when the store
            is simulated and the trial contaminates.
    """
    trial = config["t"]
    pipe = pipelines[trial["dataset"]]
    cfg = dataclasses.replace(train_config(trial), num_threads=threads)
    eps, kind = trial["eps"], trial["contamination"]
    if oracle is None:
        oracle = pipe.simulated and eps > 0 and kind != "none"
    _limit_gpu_memory(gpu_share)
    with tempfile.TemporaryDirectory(prefix="cryotune-best-") as kept:
        best_file = Path(kept) / BEST_NAME  # the best epoch's checkpoint, until it is reported
        checkpoint = tune.get_checkpoint()
        if checkpoint is not None:
            with checkpoint.as_directory() as folder:  # runtime fields (threads) from this run
                trainer = Trainer.load_checkpoint(Path(folder) / CHECKPOINT_NAME, config=cfg)
                if (Path(folder) / BEST_NAME).is_file():
                    shutil.copyfile(Path(folder) / BEST_NAME, best_file)
        else:
            trainer = Trainer(cfg, pipe.image_shape)
        best = BestEpoch.from_history(trainer.history, select_metric, select_mode)
        node_id = ray.get_runtime_context().get_node_id()
        started, resumed_from = time.time(), trainer.epoch
        noisy_gallery = gallery[trial["dataset"]]
        state = {"node_id": node_id, "started_at": started, "resumed_from": resumed_from,
                 "noisy_test_mse": _or_nan(pipe.test_noisy_mse)}
        # the next epoch's batches start while this one trains; leaving the block (after the last
        # epoch, on divergence, or on the SystemExit that tune.report raises when the scheduler
        # stops the trial) stops and joins the prefetch threads
        with pipe.train_epochs(range(trainer.epoch, cfg.epochs), batch_size=cfg.batch_size,
                               eps=eps, kind=kind, seed=cfg.seed) as epochs:
            for epoch, batches in epochs:
                record: dict[str, Any] = {"epoch": epoch + 1}
                try:
                    record.update(trainer.train_epoch(batches))
                    record.update(trainer.evaluate(pipe.val_batches(
                        batch_size=cfg.batch_size, eps=eps, kind=kind, seed=cfg.seed), prefix="val"))
                    if oracle:
                        record.update(trainer.evaluate(
                            pipe.oracle_val_batches(batch_size=cfg.batch_size), prefix="oracle_val"))
                    record.update(trainer.evaluate(pipe.test_batches(batch_size=cfg.batch_size)))
                except Diverged as err:
                    # NaN goals and scores: Tune's metric checks and ASHA still see a diverged
                    # trial; the best epoch before it stays reported
                    nan = dict.fromkeys((*vocab.GOALS, *_NAN_SCORES, select_metric), math.nan)
                    tune.report({**nan, **best.fields(), "epoch": epoch + 1, "diverged": True,
                                 "error": str(err), **state})
                    return
                improved = best.update(record)
                record.update(best.fields())
                trainer.history.append(record)
                if improved:
                    trainer.save_checkpoint(best_file)
                result = {**record, "diverged": False, **state, "ended_at": time.time()}
                if trainer.epoch == cfg.epochs:
                    result.update(_worse_than_noisy(record, pipe.test_noisy_mse))
                every = cfg.checkpoint_every
                if (every and trainer.epoch % every == 0) or trainer.epoch == cfg.epochs:
                    with tempfile.TemporaryDirectory(prefix="cryotune-ckpt-") as folder:
                        _write_checkpoint(trainer, Path(folder), noisy_gallery, CHECKPOINT_NAME)
                        if best_file.is_file():
                            shutil.copyfile(best_file, Path(folder) / BEST_NAME)
                        if trainer.epoch == cfg.epochs and what and validation:
                            _write_validation(trainer, best_file, Path(folder),
                                              validation[trial["dataset"]], what)
                        tune.report(result, checkpoint=tune.Checkpoint.from_directory(folder))
                else:
                    tune.report(result)


def _or_nan(value: float | None) -> float:
    return math.nan if value is None else float(value)


def _worse_than_noisy(record: Mapping[str, Any], noisy_mse: float | None) -> dict[str, Any]:
    """The last report's divergence state: the selected epoch's test MSE above the noisy
    input's means the trial made the images worse (its metrics stay as they are)."""
    at_best = record.get("test_mse_at_best", math.nan)
    if noisy_mse is None or not at_best > noisy_mse:
        return {}
    return {"diverged": True,
            "error": f"the selected epoch {record['best_epoch']}'s test MSE {at_best:.4g} is "
                     f"worse than the noisy input's {noisy_mse:.4g}"}


def _write_checkpoint(trainer: Any, folder: Path, noisy_gallery: np.ndarray, name: str) -> None:
    trainer.save_checkpoint(folder / name)
    (folder / HISTORY_FILE).write_text(json.dumps(trainer.history))
    if trainer.config.gallery and len(noisy_gallery):
        np.save(folder / GALLERY_FILE, trainer.gallery(noisy_gallery), allow_pickle=False)


def _write_validation(trainer: Any, best_file: Path, folder: Path, reference: Any,
                      what: tuple[str, ...]) -> None:
    """Validate the selected model: the generator of ``best_file`` (the best validation
    epoch's checkpoint) in a copy of the trainer, so the last epoch's state stays as it is; the
    trainer itself when no epoch was selected. The record's ``validated_epoch`` says which."""
    model, epoch = trainer, trainer.epoch
    if best_file.is_file():
        stored = read_checkpoint(best_file)
        model = copy.copy(trainer)
        model.generator = copy.deepcopy(trainer.generator)
        model.generator.load_state_dict(stored["generator"])
        epoch = int(stored["epoch"])
    result = validate_images(reference, model.denoise(reference.noisy), what)
    result.scalars["validated_epoch"] = float(epoch)
    (folder / VALIDATION_FILE).write_bytes(to_bytes(result))


def _limit_gpu_memory(share: float) -> None:
    """Trials packed on one GPU share its memory: cap each at its fraction (Ray does not)."""
    if 0 < share < 1:
        import torch

        if torch.cuda.is_available():
            torch.cuda.set_per_process_memory_fraction(share)
