"""The Ray Tune function trainable: one trial = one :class:`~cryotune.nn.train.Trainer` run.

It builds the Trainer from the trial config (``config["t"]``, see :mod:`cryotune.sweep.space`),
streams its epochs from the study's shared :class:`~cryotune.data.pipeline.DataPipeline` with
the trial's own contamination and seed (each epoch started while the one before trains,
:meth:`~cryotune.data.pipeline.DataPipeline.train_epochs`), and reports every epoch with
``tune.report``. Every ``checkpoint_every`` epochs, and after the last, the report carries a
checkpoint folder::

    checkpoint.pt   the Trainer's whole state (models, optimisers, epoch, RNG states, history)
    history.json    one record per epoch so far (the driver reads it without torch)
    gallery.npy     the denoised fixed gallery images (the first test images)
    validation.npz  after the last epoch of a study with ``validate:``, the FSC and clustering
                    of the denoised test split (:mod:`cryotune.validate.record`)

A trial restarted after its worker died resumes from ``tune.get_checkpoint()``; the epochs
after that checkpoint run again and their records replace the first ones. A
:class:`~cryotune.errors.Diverged` run ends the trial with one last report carrying
``diverged: True`` and the message, not with an error: a diverged trial is a result. Each
report also carries ``node_id``, ``started_at``/``ended_at`` (this run's start, the epoch's end)
and ``resumed_from`` (the checkpoint's epoch this run started from; 0 for a fresh start).

Example (what :func:`cryotune.sweep.run.run_sweep` wires)::

    from ray import tune
    fn = tune.with_parameters(run_trial, pipelines={key: pipe}, gallery={key: noisy[:8]},
                              threads=1, gpu_share=0.0)
    tune.Tuner(tune.with_resources(fn, {"cpu": 1}), param_space={"t": tune.grid_search(configs)})
"""

from __future__ import annotations

import dataclasses
import json
import math
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import ray
from ray import tune

from cryotune.errors import Diverged
from cryotune.sweep.space import train_config

__all__ = ["GALLERY_FILE", "HISTORY_FILE", "run_trial"]

HISTORY_FILE = "history.json"
GALLERY_FILE = "gallery.npy"
# the metrics a diverged trial reports as NaN, so Tune's metric checks and ASHA still see them
_NAN_METRICS = ("test_mse", "test_psnr", "test_ssim", "train_mse")


def run_trial(config: Mapping[str, Any], *, pipelines: Mapping[str, Any],
              gallery: Mapping[str, np.ndarray], threads: int, gpu_share: float,
              validation: Mapping[str, Any] | None = None, what: tuple[str, ...] = ()) -> None:
    """Train one trial to its last epoch, reporting each epoch to Tune.

    Args:
        config: ``{"t": trial config}`` from the param space or the search algorithm.
        pipelines: the study's DataPipeline per dataset key.
        gallery: the noisy gallery images per dataset key (n x H x W).
        threads: torch CPU threads (from the trial's CPUs).
        gpu_share: the trial's GPU fraction; caps its CUDA memory when below 1.
        validation: the :class:`~cryotune.validate.study.Reference` per dataset key, when the
            study validates.
        what: the validations to run after the last epoch (``fsc``, ``clustering``).
    """
    from cryotune.nn.train import CHECKPOINT_NAME, Trainer

    trial = config["t"]
    pipe = pipelines[trial["dataset"]]
    cfg = dataclasses.replace(train_config(trial), num_threads=threads)
    _limit_gpu_memory(gpu_share)
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:  # runtime fields (threads) from this run
            trainer = Trainer.load_checkpoint(Path(folder) / CHECKPOINT_NAME, config=cfg)
    else:
        trainer = Trainer(cfg, pipe.image_shape)
    node_id = ray.get_runtime_context().get_node_id()
    started, resumed_from = time.time(), trainer.epoch
    noisy_gallery = gallery[trial["dataset"]]
    # the next epoch's batches start while this one trains; leaving the block (after the last
    # epoch, on divergence, or on the SystemExit that tune.report raises when the scheduler
    # stops the trial) stops and joins the prefetch threads
    with pipe.train_epochs(range(trainer.epoch, cfg.epochs), batch_size=cfg.batch_size,
                           eps=trial["eps"], kind=trial["contamination"], seed=cfg.seed) as epochs:
        for epoch, batches in epochs:
            record: dict[str, Any] = {"epoch": epoch + 1}
            try:
                record.update(trainer.train_epoch(batches))
                record.update(trainer.evaluate(pipe.test_batches(batch_size=cfg.batch_size)))
            except Diverged as err:
                tune.report({**dict.fromkeys(_NAN_METRICS, math.nan), "epoch": epoch + 1,
                             "diverged": True, "error": str(err), "node_id": node_id,
                             "started_at": started, "resumed_from": resumed_from})
                return
            trainer.history.append(record)
            result = {**record, "diverged": False, "node_id": node_id, "started_at": started,
                      "ended_at": time.time(), "resumed_from": resumed_from}
            every = cfg.checkpoint_every
            if (every and trainer.epoch % every == 0) or trainer.epoch == cfg.epochs:
                with tempfile.TemporaryDirectory(prefix="cryotune-ckpt-") as folder:
                    _write_checkpoint(trainer, Path(folder), noisy_gallery, CHECKPOINT_NAME)
                    if trainer.epoch == cfg.epochs and what and validation:
                        _write_validation(trainer, Path(folder), validation[trial["dataset"]], what)
                    tune.report(result, checkpoint=tune.Checkpoint.from_directory(folder))
            else:
                tune.report(result)


def _write_checkpoint(trainer: Any, folder: Path, noisy_gallery: np.ndarray, name: str) -> None:
    trainer.save_checkpoint(folder / name)
    (folder / HISTORY_FILE).write_text(json.dumps(trainer.history))
    if trainer.config.gallery and len(noisy_gallery):
        np.save(folder / GALLERY_FILE, trainer.gallery(noisy_gallery), allow_pickle=False)


def _write_validation(trainer: Any, folder: Path, reference: Any, what: tuple[str, ...]) -> None:
    from cryotune.validate.record import VALIDATION_FILE, to_bytes
    from cryotune.validate.study import validate_images

    result = validate_images(reference, trainer.denoise(reference.noisy), what)
    (folder / VALIDATION_FILE).write_bytes(to_bytes(result))


def _limit_gpu_memory(share: float) -> None:
    """Trials packed on one GPU share its memory: cap each at its fraction (Ray does not)."""
    if 0 < share < 1:
        import torch

        if torch.cuda.is_available():
            torch.cuda.set_per_process_memory_fraction(share)
