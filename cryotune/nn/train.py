"""Algorithm 1: joint training of an (alpha, beta)-GAN (or WGAN) and an l_p autoencoder.

For each minibatch of (noisy y, clean x) pairs::

    k_d times: the discriminator ascends  mean S(D(x), 1) + mean S(D(G(y)), 0)
               (minus mu * gradient penalty for wgan_gp; weights clipped to [-c, c] for wgan)
    k_g times: the generator descends     mean S(D(G(y)), 0) + lambda * mean |G(y) - x|^p

The autoencoders ``l1_ae``/``l2_ae`` have no discriminator and descend mean |G(y) - x|^p. The
paper's line 5 writes the penalty with a plus sign inside the ascent step; like WGAN-GP
(Gulrajani et al. 2017) we penalise, i.e. the critic ascends score - penalty. G(y) for the k_d
discriminator steps is computed once per minibatch: theta does not change during them.

The trainer reads any iterable of ``(noisy, clean)`` float32 batches shaped N x 1 x H x W (the
Ray Data pipeline and a plain in-memory loader alike), keeps its running sums on the device and
reads them back once per epoch. There is no Ray here: :func:`train` is a plain loop that a Tune
trainable or the ``cryotune train`` command wraps.

Reported per epoch: ``d_loss`` (the critic's minimised objective: -(score) + penalty),
``g_adv`` (mean S(D(G(y)), 0)), ``g_rec`` (mean |G(y) - x|^p, without lambda), ``train_mse``,
``epoch_s``, ``images_per_s``; the autoencoders report 0 for ``d_loss`` and ``g_adv``.
:meth:`Trainer.evaluate` adds ``test_mse``, ``test_psnr``, ``test_ssim`` and their ``_std``
over test images (data range 1, SSIM as scikit-image defines it).

Example::

    import torch
    from cryotune.config import TrainConfig
    from cryotune.nn.train import train

    x = torch.rand(40, 1, 16, 16)
    y = x + 0.3 * torch.randn_like(x)
    pairs = list(zip(y.split(20), x.split(20)))
    history = train(TrainConfig(method="l2_ae", width=8, epochs=2), lambda epoch: pairs,
                    lambda: pairs)
    print(history[-1]["test_mse"])
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

from cryotune.config import TrainConfig, from_dict, to_dict
from cryotune.errors import BadConfig, BadInput, Diverged
from cryotune.nn import metrics
from cryotune.nn.checkpoint import read_checkpoint, rng_state, set_rng_state, write_checkpoint
from cryotune.nn.models import build_models
from cryotune.nn.scoring import clip_weights, gradient_penalty, make_rule

__all__ = ["CHECKPOINT_NAME", "RUNTIME_FIELDS", "Trainer", "resolve_device", "train"]

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
# Fields that say where and how fast a run goes, not what it computes: they may change on resume.
RUNTIME_FIELDS = ("epochs", "checkpoint_every", "device", "bf16", "channels_last",
                  "num_threads", "gallery")
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
        self._format = torch.channels_last if config.channels_last else torch.contiguous_format
        self.generator = g.to(self.device, memory_format=self._format)
        self.discriminator = (d.to(self.device, memory_format=self._format)
                              if d is not None else None)
        self.rule = make_rule(config.method, config.alpha, config.beta)
        self.p = config.loss_p
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
        """One generator step; returns the detached (g_adv, g_rec, mse) of its forward pass."""
        with self._autocast():
            out = self.generator(y)
            diff = out.float() - x
            rec = diff.abs().mean() if self.p == 1 else diff.square().mean()
            if self.discriminator is not None:
                self.discriminator.requires_grad_(False)  # input gradients only
                adv = self.rule.fake(self.discriminator(out).float()).mean()
                loss = adv + self.config.lam * rec
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
    def evaluate(self, batches: Iterable[tuple[Tensor, Tensor]]) -> dict[str, float]:
        """Per-image MSE, PSNR and SSIM of G(noisy) against clean, averaged over ``batches``.

        Returns:
            test_mse, test_psnr, test_ssim and their standard deviations over images
            (``*_std``, population), plus test_images.

        Raises:
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
            raise BadInput("no test batches", "test split", "check the dataset's test split")
        values = torch.cat(per_image)
        mean, std = values.mean(0), values.std(0, correction=0)
        stats = torch.cat([mean, std]).tolist()
        out = dict(zip(TEST_KEYS, stats[:3], strict=True))
        out.update({f"{k}_std": v for k, v in zip(TEST_KEYS, stats[3:], strict=True)})
        out["test_images"] = int(values.shape[0])
        self._check_finite(out, ("test_mse",), max(self.epoch - 1, 0), "test output")
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
            stored = from_dict(TrainConfig, ckpt["config"], "config")
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
          resume: bool = False) -> list[dict[str, Any]]:
    """Train for ``config.epochs`` epochs, evaluating on the test batches after each.

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

    Returns:
        One record per epoch: ``epoch`` (completed count), the train and test metrics.

    Raises:
        Diverged: with the epoch and the last finite record; the last checkpoint stays intact.
    """
    path = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
    trainer = None
    if resume and path is not None and path.exists():
        trainer = Trainer.load_checkpoint(path, config=config)
        log.info("resumed %s at epoch %d", path, trainer.epoch)
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
        record.update(trainer.evaluate(test_batches()))
        trainer.history.append(record)
        log.info("epoch %d/%d %s", epoch + 1, config.epochs,
                 " ".join(f"{k}={record[k]:.4g}" for k in (*TRAIN_KEYS, "test_mse")))
        every = config.checkpoint_every
        if path is not None and ((every and trainer.epoch % every == 0)
                                 or trainer.epoch == config.epochs):
            trainer.save_checkpoint(path)
        if on_epoch is not None:
            on_epoch(record, trainer)
    return list(trainer.history) if trainer else []
