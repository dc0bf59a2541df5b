"""Algorithm 1: joint training of an (alpha, beta)-GAN (or WGAN) and an l_p autoencoder.

For each minibatch of (noisy y, clean x) pairs::

    k_d times: the discriminator ascends  mean S(D(x), 1) + mean S(D(G(y)), 0)
               (minus mu * gradient penalty for wgan_gp; weights clipped to [-c, c] for wgan)
    k_g times: the generator descends     mean S(D(G(y)), 0) + lambda * R(|G(y) - x|^p)

R is ``config.reduction``: ``sum`` (the paper's) sums over the pixels and averages over the
batch, ``mean`` averages over both (H*W times weaker). The autoencoders ``l1_ae``/``l2_ae``
have no discriminator and descend mean |G(y) - x|^p whatever the reduction. The
paper's line 5 writes the penalty with a plus sign inside the ascent step; like WGAN-GP
(Gulrajani et al. 2017) we penalise, i.e. the critic ascends score - penalty. G(y) for the k_d
discriminator steps is computed once per minibatch: theta does not change during them.

The trainer reads any iterable of ``(noisy, clean)`` float32 batches shaped N x 1 x H x W (the
Ray Data pipeline and a plain in-memory loader alike), keeps its running sums on the device and
reads them back once per epoch. There is no Ray here: :func:`train` is a plain loop that a Tune
trainable or the ``cryotune train`` command wraps.

Reported per epoch: ``d_loss`` (the critic's minimised objective: -(score) + penalty),
``g_adv`` (mean S(D(G(y)), 0)), ``g_rec`` (mean |G(y) - x|^p per pixel, without lambda, whatever
the reduction, so histories of both conventions compare on one scale), ``train_mse``,
``epoch_s``, ``images_per_s``; the autoencoders report 0 for ``d_loss`` and ``g_adv``.
:meth:`Trainer.evaluate` scores any split under a prefix: ``test_mse``, ``test_psnr``,
``test_ssim``, their ``_std`` over images, ``test_mse_median`` (the median of per-image MSE) and
``test_images`` (data range 1, SSIM as scikit-image defines it); ``val_*`` the same on the
validation pairs, contaminated like the training pairs, and ``oracle_val_*`` on the clean
validation pairs of a simulation.

Selection. :func:`train` keeps the epoch with the best validation score (:class:`BestEpoch`,
by default the lowest ``val_mse_median``) and its checkpoint ``best.pt`` beside
``checkpoint.pt``; every record then carries ``best_epoch``, ``select_score`` and the test
metrics of that epoch (``test_mse_at_best``, ...). The test split is never selected on.

Example::

    import torch
    from cryotune.config import TrainConfig
    from cryotune.nn.train import train

    x = torch.rand(40, 1, 16, 16)
    y = x + 0.3 * torch.randn_like(x)
    pairs = list(zip(y.split(20), x.split(20)))
    history = train(TrainConfig(method="l2_ae", width=8, epochs=2), lambda epoch: pairs,
                    lambda: pairs, val_batches=lambda: pairs[:1])
    print(history[-1]["test_mse"], history[-1]["best_epoch"], history[-1]["test_mse_at_best"])
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from cryotune.config import LEGACY_REDUCTION, RUNTIME_FIELDS, TrainConfig, from_dict, to_dict
from cryotune.errors import BadConfig, BadInput, Diverged
from cryotune.nn import metrics
from cryotune.nn.checkpoint import read_checkpoint, rng_state, set_rng_state, write_checkpoint
from cryotune.nn.models import build_models
from cryotune.nn.scoring import clip_weights, gradient_penalty, make_rule

__all__ = ["BEST_NAME", "CHECKPOINT_NAME", "RUNTIME_FIELDS", "SELECT_METRIC", "SELECT_MODE",
           "BestEpoch", "Trainer", "resolve_device", "train"]

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
BEST_NAME = "best.pt"  # the checkpoint of the best validation epoch, beside the last one
# The default selection score: the median over validation images of the per-image MSE.
# Validation pairs are contaminated like the training pairs, so a share eps of their references
# (type A, C) or inputs (type B, C) are noise images: their MSE is large whatever the model does,
# and varies from model to model with how it treats noise. A mean lets those eps images
# dominate the score; the median over images ignores them while eps < 1/2 and ranks models by
# the clean majority, as a robust statistic of the same contaminated data the trial trains on.
SELECT_METRIC = "val_mse_median"
SELECT_MODE = "min"
# the test metrics reported at the best validation epoch, as <key>_at_best
AT_BEST_KEYS = ("test_mse", "test_psnr", "test_ssim")
TRAIN_KEYS = ("d_loss", "g_adv", "g_rec", "train_mse")
TEST_KEYS = ("test_mse", "test_psnr", "test_ssim")


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU; ``cuda`` without CUDA -> BadConfig."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise BadConfig("CUDA is not available on this machine", "device", "use cpu or auto")
    return torch.device(name)


class Trainer:
    """The generator, the discriminator, their Adam optimisers and Algorithm 1's steps.

    Args:
        config: the validated training config.
        image_shape: (H, W) of the images (square, 16..256, divisible by 2**depth).

    Attributes:
        epoch: epochs completed.
        history: per-epoch records appended by :func:`train`; kept in checkpoints.
        generator, discriminator: the networks (discriminator None for the autoencoders).
    """

    def __init__(self, config: TrainConfig, image_shape: tuple[int, int]):
        self.config = config
        self.image_shape = (int(image_shape[0]), int(image_shape[1]))
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        if config.deterministic:  # process-wide, as torch offers it
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
        self.device = resolve_device(config.device)
        torch.manual_seed(config.seed)
        g, d = build_models(config, self.image_shape)
        nhwc = (config.channels_last if config.channels_last is not None
                else self.device.type == "cpu")
        self._format = torch.channels_last if nhwc else torch.contiguous_format
        self.generator = g.to(self.device, memory_format=self._format)
        self.discriminator = (d.to(self.device, memory_format=self._format)
                              if d is not None else None)
        self.rule = make_rule(config.method, config.alpha, config.beta)
        self.p = config.loss_p
        # the l_p term's factor over its per-pixel mean: H*W for the paper's sum (1 channel)
        self.rec_scale = (float(self.image_shape[0] * self.image_shape[1])
                          if config.adversarial and config.reduction == "sum" else 1.0)
        self.opt_g = torch.optim.Adam(self.generator.parameters(), lr=config.lr_g)
        self.opt_d = (torch.optim.Adam(self.discriminator.parameters(), lr=config.lr_d)
                      if self.discriminator is not None else None)
        self.epoch = 0
        self.history: list[dict[str, Any]] = []

    # -- steps ------------------------------------------------------------------------------
    def _autocast(self) -> contextlib.AbstractContextManager:
        if not self.config.bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def _to_device(self, batch: Tensor) -> Tensor:
        batch = batch.to(self.device, dtype=torch.float32, non_blocking=True)
        if batch.dim() == 3:
            batch = batch.unsqueeze(1)
        return batch.contiguous(memory_format=self._format)

    def _d_step(self, x: Tensor, fake: Tensor) -> Tensor:
        d = self.discriminator
        d.requires_grad_(True)
        with self._autocast():
            score = self.rule.real(d(x).float()).mean() + self.rule.fake(d(fake).float()).mean()
        loss = -score
        if self.config.method == "wgan_gp":
            loss = loss + gradient_penalty(d, x, fake, self.config.mu)
        self.opt_d.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_d.step()
        if self.config.method == "wgan":
            clip_weights(d, self.config.clip)
        return loss.detach()

    def _g_step(self, y: Tensor, x: Tensor) -> Tensor:
        """One generator step; returns the detached (g_adv, g_rec, mse) of its forward pass.

        ``g_rec`` is the per-pixel mean of |G(y) - x|^p under either reduction; the loss
        weighs it by ``lambda * rec_scale`` (sum over pixels, mean over the batch under ``sum``).
        """
        with self._autocast():
            out = self.generator(y)
            diff = out.float() - x
            rec = diff.abs().mean() if self.p == 1 else diff.square().mean()
            if self.discriminator is not None:
                self.discriminator.requires_grad_(False)  # input gradients only
                adv = self.rule.fake(self.discriminator(out).float()).mean()
                loss = adv + (self.config.lam * self.rec_scale) * rec
            else:
                adv = torch.zeros((), device=self.device)
                loss = rec
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_g.step()
        mse = rec if self.p == 2 else diff.square().mean()
        return torch.stack([adv, rec, mse]).detach()

    # -- epochs -----------------------------------------------------------------------------
    def train_epoch(self, batches: Iterable[tuple[Tensor, Tensor]]) -> dict[str, float]:
        """One pass of Algorithm 1 over ``batches`` of (noisy, clean) pairs.

        Returns:
            d_loss, g_adv, g_rec, train_mse (means over steps, weighted by batch size),
            epoch_s and images_per_s.

        Raises:
            Diverged: when a loss or output was NaN or inf; nothing is checkpointed.
            BadInput: when ``batches`` is empty or its images have another shape.
        """
        cfg = self.config
        self.generator.train()
        if self.discriminator is not None:
            self.discriminator.train()
        sum_d = torch.zeros((), device=self.device)
        sum_g = torch.zeros(3, device=self.device)
        images = 0
        start = time.perf_counter()
        for noisy, clean in batches:
            y, x = self._to_device(noisy), self._to_device(clean)
            if images == 0:
                self._check_shape(tuple(y.shape[-2:]))
            n = y.shape[0]
            if self.discriminator is not None:
                with torch.no_grad(), self._autocast():
                    fake = self.generator(y).float()
                for _ in range(cfg.k_d):
                    sum_d += self._d_step(x, fake) * n
            for _ in range(cfg.k_g):
                sum_g += self._g_step(y, x) * n
            images += n
        if self.discriminator is not None:
            self.discriminator.requires_grad_(True)  # leave it as built
        if images == 0:
            raise BadInput("no training batches in this epoch", f"epoch {self.epoch}",
                           "check the dataset's train split and the batch source")
        d_loss, g_adv, g_rec, train_mse = torch.cat(
            [sum_d.view(1) / cfg.k_d, sum_g / cfg.k_g]).div(images).tolist()  # the one sync
        seconds = time.perf_counter() - start
        out = {"d_loss": d_loss, "g_adv": g_adv, "g_rec": g_rec, "train_mse": train_mse,
               "epoch_s": seconds, "images_per_s": images / seconds}
        self._check_finite(out, TRAIN_KEYS, self.epoch, "training loss")
        self.epoch += 1
        return out

    @torch.inference_mode()
    def evaluate(self, batches: Iterable[tuple[Tensor, Tensor]], prefix: str = "test"
                 ) -> dict[str, float]:
        """Per-image MSE, PSNR and SSIM of G(noisy) against clean, over ``batches``.

        The same code scores every split; ``prefix`` names it (``test``, ``val``, ``oracle_val``).

        Args:
            batches: (noisy, clean) pairs in a fixed order.
            prefix: the key prefix.

        Returns:
            ``<prefix>_mse``, ``_psnr``, ``_ssim`` (means over images), their standard
            deviations over images (``_mse_std``, ..., population), ``<prefix>_mse_median``
            (the median of per-image MSE, numpy's convention: the mean of the two middle
            values for an even count) and ``<prefix>_images``.

        Raises:
            BadInput: when ``batches`` is empty.
            Diverged: when an output is NaN or inf.
        """
        self.generator.eval()
        per_image = []
        for noisy, clean in batches:
            y, x = self._to_device(noisy), self._to_device(clean)
            with self._autocast():
                out = self.generator(y)
            out = out.float()
            per_image.append(torch.stack(
                [metrics.mse(out, x), metrics.psnr(out, x), metrics.ssim(out, x)], dim=1))
        self.generator.train()
        if not per_image:
            raise BadInput(f"no {prefix} batches", f"{prefix} split",
                           f"check the dataset's {prefix} split")
        values = torch.cat(per_image).double().cpu().numpy()  # the one sync
        keys = [f"{prefix}_{k}" for k in ("mse", "psnr", "ssim")]
        out = dict(zip(keys, values.mean(0).tolist(), strict=True))
        out.update({f"{k}_std": v for k, v in zip(keys, values.std(0).tolist(), strict=True)})
        out[f"{prefix}_mse_median"] = float(np.median(values[:, 0]))
        out[f"{prefix}_images"] = int(values.shape[0])
        self._check_finite(out, (f"{prefix}_mse",), max(self.epoch - 1, 0), f"{prefix} output")
        return out

    def _check_shape(self, shape: tuple[int, int]) -> None:
        if shape != self.image_shape:
            raise BadInput(f"images are {shape[0]}x{shape[1]}, the model was built for "
                           f"{self.image_shape[0]}x{self.image_shape[1]}", "batch",
                           "use data of the model's image size")

    def _check_finite(self, values: dict[str, float], keys: Iterable[str], epoch: int,
                      what: str) -> None:
        bad = [k for k in keys if not np.isfinite(values[k])]
        if bad:
            last = self.history[-1] if self.history else {}
            raise Diverged(f"non-finite {what} ({', '.join(f'{k}={values[k]}' for k in bad)})",
                           f"epoch {epoch}", "lower the learning rates lr_g and lr_d",
                           epoch=epoch, last_metrics=last)

    # -- inference --------------------------------------------------------------------------
    @torch.inference_mode()
    def denoise(self, noisy: np.ndarray | Tensor, batch_size: int = 64) -> np.ndarray:
        """G applied to images (n, H, W) or (n, 1, H, W) in batches; returns (n, H, W) float32."""
        if isinstance(noisy, np.ndarray) and not noisy.flags.writeable:
            noisy = np.array(noisy, dtype=np.float32)  # a read-only view (a memory-mapped stack)
        images = torch.as_tensor(noisy, dtype=torch.float32)
        if images.dim() == 4:
            images = images[:, 0]
        self._check_shape(tuple(images.shape[-2:]))
        self.generator.eval()
        out = np.empty(tuple(images.shape), dtype=np.float32)
        for start in range(0, images.shape[0], batch_size):
            with self._autocast():
                chunk = self.generator(self._to_device(images[start:start + batch_size]))
            out[start:start + chunk.shape[0]] = chunk.float()[:, 0].cpu().numpy()
        self.generator.train()
        return out

    def gallery(self, noisy: np.ndarray) -> np.ndarray:
        """The denoised first ``config.gallery`` of the fixed test images ``noisy``."""
        return self.denoise(noisy[: self.config.gallery])

    # -- checkpoints ------------------------------------------------------------------------
    def save_checkpoint(self, path: str | Path) -> Path:
        """Write the whole training state atomically (see :mod:`cryotune.nn.checkpoint`)."""
        d, od = self.discriminator, self.opt_d
        return write_checkpoint({
            "config": to_dict(self.config),
            "image_shape": list(self.image_shape),
            "epoch": self.epoch,
            "history": [dict(r) for r in self.history],
            "generator": self.generator.state_dict(),
            "discriminator": d.state_dict() if d is not None else None,
            "opt_g": self.opt_g.state_dict(),
            "opt_d": od.state_dict() if od is not None else None,
            "rng": rng_state(),
        }, path)

    @classmethod
    def load_checkpoint(cls, path: str | Path, *, device: str | None = None,
                        config: TrainConfig | None = None) -> Trainer:
        """Rebuild a trainer from :meth:`save_checkpoint`'s file, RNG states included.

        Args:
            path: the checkpoint (``model.pt``, ``checkpoint.pt``).
            device: override the stored device (``auto``, ``cpu``, ``cuda``).
            config: run with this config instead of the stored one; it may differ only in
                :data:`RUNTIME_FIELDS` (epochs, device, threads, ...).

        Raises:
            BadInput: when the file is missing or not a cryotune checkpoint.
            BadConfig: when ``config`` differs from the stored one in another field.
        """
        ckpt = read_checkpoint(path)
        try:
            # checkpoints written before the reduction key trained with the per-pixel mean
            stored = from_dict(TrainConfig, {"reduction": LEGACY_REDUCTION, **ckpt["config"]},
                               "config")
        except BadConfig as err:
            raise BadInput(f"checkpoint config is not valid here ({err.what})", str(path),
                           "rewrite it with this cryotune version") from None
        if config is not None:
            _check_resumable(stored, config, Path(path))
            stored = config
        if device is not None:
            stored = dataclasses.replace(stored, device=device)
        trainer = cls(stored, tuple(ckpt["image_shape"]))
        trainer.generator.load_state_dict(ckpt["generator"])
        trainer.opt_g.load_state_dict(ckpt["opt_g"])
        if trainer.discriminator is not None:
            trainer.discriminator.load_state_dict(ckpt["discriminator"])
            trainer.opt_d.load_state_dict(ckpt["opt_d"])
        trainer.epoch = int(ckpt["epoch"])
        trainer.history = [dict(r) for r in ckpt["history"]]
        set_rng_state(ckpt["rng"])
        return trainer


class BestEpoch:
    """The best epoch so far by a selection metric of the epoch records.

    Selection reads validation only: a ``test_*`` metric is refused. Ties keep the earlier
    epoch; a non-finite score never wins.

    Args:
        metric: the record key to select on (default :data:`SELECT_METRIC`).
        mode: ``min`` or ``max``.

    Raises:
        BadConfig: an unknown mode or a test metric.

    Example::

        best = BestEpoch("val_mse_median", "min")
        best.update({"epoch": 1, "val_mse_median": 0.2, "test_mse": 0.3})   # True
        best.fields()["test_mse_at_best"]                                   # 0.3
    """

    def __init__(self, metric: str = SELECT_METRIC, mode: str = SELECT_MODE):
        if mode not in ("min", "max"):
            raise BadConfig(f"unknown selection mode {mode!r}", "select.mode", "use min or max")
        if not isinstance(metric, str) or not metric or metric.startswith("test_"):
            raise BadConfig(f"selection metric {metric!r} is not a validation metric",
                            "select.metric", "select on validation, e.g. val_mse_median; the "
                            "test split is only reported")
        self.metric, self.mode = metric, mode
        self.epoch: int | None = None
        self.score: float | None = None
        self.record: dict[str, Any] = {}

    @classmethod
    def from_history(cls, history: Iterable[dict[str, Any]], metric: str = SELECT_METRIC,
                     mode: str = SELECT_MODE) -> BestEpoch:
        """The best epoch of records already kept (a resumed run)."""
        best = cls(metric, mode)
        for record in history:
            best.update(record)
        return best

    def update(self, record: dict[str, Any]) -> bool:
        """Consider an epoch's record; True when it is the new best.

        Raises:
            BadConfig: the record lacks the metric.
        """
        if self.metric not in record:
            known = sorted(k for k in record if not k.startswith("test_") and k != "epoch")
            raise BadConfig(f"selection metric {self.metric!r} is not reported",
                            "select.metric", f"use one of {', '.join(known)}")
        value = float(record[self.metric])
        if not np.isfinite(value):
            return False
        if self.score is not None and not (value < self.score if self.mode == "min"
                                           else value > self.score):
            return False
        self.epoch, self.score, self.record = int(record["epoch"]), value, dict(record)
        return True

    def fields(self) -> dict[str, Any]:
        """``best_epoch``, ``select_score`` and ``<test metric>_at_best`` (NaN before any epoch)."""
        out: dict[str, Any] = {"best_epoch": self.epoch if self.epoch is not None else 0,
                               "select_score": self.score if self.score is not None else float("nan")}
        out.update({f"{k}_at_best": float(self.record.get(k, float("nan"))) for k in AT_BEST_KEYS})
        return out


def _check_resumable(stored: TrainConfig, config: TrainConfig, path: Path) -> None:
    for f in dataclasses.fields(TrainConfig):
        if f.name in RUNTIME_FIELDS:
            continue
        old, new = getattr(stored, f.name), getattr(config, f.name)
        if old != new:
            key = f.metadata.get("alias", f.name)
            raise BadConfig(f"{old!r} in the checkpoint, {new!r} now", key,
                            f"use the run's config to resume {path}, or start a new run")


def train(config: TrainConfig,
          train_batches: Callable[[int], Iterable[tuple[Tensor, Tensor]]],
          test_batches: Callable[[], Iterable[tuple[Tensor, Tensor]]], *,
          checkpoint_dir: str | Path | None = None,
          on_epoch: Callable[[dict[str, Any], Trainer], None] | None = None,
          resume: bool = False,
          val_batches: Callable[[], Iterable[tuple[Tensor, Tensor]]] | None = None,
          oracle_val_batches: Callable[[], Iterable[tuple[Tensor, Tensor]]] | None = None,
          select_metric: str = SELECT_METRIC, select_mode: str = SELECT_MODE
          ) -> list[dict[str, Any]]:
    """Train for ``config.epochs`` epochs, evaluating on validation and test after each.

    With ``val_batches`` the run keeps its best validation epoch (:class:`BestEpoch`): each
    record carries ``best_epoch``, ``select_score`` and ``test_*_at_best``, and ``best.pt``
    (that epoch's whole checkpoint) is written beside ``checkpoint.pt`` whenever an epoch
    improves on it. Without ``val_batches`` nothing is selected.

    Args:
        config: the training config.
        train_batches: ``epoch -> iterable of (noisy, clean)``; each epoch should see every
            training pair once, in an order reproducible from the epoch.
        test_batches: ``() -> iterable of (noisy, clean)`` in a fixed order.
        checkpoint_dir: where ``checkpoint.pt`` is written every ``config.checkpoint_every``
            epochs and after the last one.
        on_epoch: called with each epoch's record and the trainer, after its checkpoint.
        resume: continue from ``checkpoint_dir/checkpoint.pt`` when it exists (its config must
            match ``config`` except for the runtime fields, e.g. ``epochs``).
        val_batches: ``() -> iterable of (noisy, clean)``: the validation pairs, contaminated
            like the training pairs, in a fixed order (``val_*`` metrics).
        oracle_val_batches: the same pairs clean, for simulated data (``oracle_val_*``).
        select_metric, select_mode: the selection score and its better direction.

    Returns:
        One record per epoch: ``epoch`` (completed count), the train, validation and test
        metrics, and the selection fields.

    Raises:
        Diverged: with the epoch and the last finite record; the last checkpoint stays intact.
    """
    path = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
    best_path = Path(checkpoint_dir) / BEST_NAME if checkpoint_dir is not None else None
    best = BestEpoch(select_metric, select_mode) if val_batches is not None else None
    trainer = None
    if resume and path is not None and path.exists():
        trainer = Trainer.load_checkpoint(path, config=config)
        log.info("resumed %s at epoch %d", path, trainer.epoch)
        if best is not None:
            best = BestEpoch.from_history(trainer.history, select_metric, select_mode)
    for epoch in range(trainer.epoch if trainer else 0, config.epochs):
        batches = iter(train_batches(epoch))
        if trainer is None:  # the first batch tells the image size
            first = next(batches, None)
            if first is None:
                raise BadInput("no training batches", "epoch 0", "check the train split")
            trainer = Trainer(config, tuple(first[0].shape[-2:]))
            batches = itertools.chain([first], batches)
        record: dict[str, Any] = {"epoch": epoch + 1}
        record.update(trainer.train_epoch(batches))
        if val_batches is not None:
            record.update(trainer.evaluate(val_batches(), prefix="val"))
        if oracle_val_batches is not None:
            record.update(trainer.evaluate(oracle_val_batches(), prefix="oracle_val"))
        record.update(trainer.evaluate(test_batches()))
        improved = best is not None and best.update(record)
        if best is not None:
            record.update(best.fields())
        trainer.history.append(record)
        log.info("epoch %d/%d %s", epoch + 1, config.epochs,
                 " ".join(f"{k}={record[k]:.4g}" for k in (*TRAIN_KEYS, "test_mse")))
        every = config.checkpoint_every
        if path is not None and ((every and trainer.epoch % every == 0)
                                 or trainer.epoch == config.epochs):
            trainer.save_checkpoint(path)
        if improved and best_path is not None:
            trainer.save_checkpoint(best_path)
        if on_epoch is not None:
            on_epoch(record, trainer)
    return list(trainer.history) if trainer else []
