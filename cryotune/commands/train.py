"""Train one denoiser on a dataset store, without Ray Tune.

CONFIG is a YAML mapping of training settings (method, alpha, beta, lambda, p, arch, width,
depth, lr_d, lr_g, batch_size, k_d, k_g, mu, clip, epochs, seed, device, ...; the paper's
defaults fill the rest). It may also name the run's data with the keys dataset, eps and
contamination; the options below override them. The training pairs are read into memory,
contaminated (Huber, types A/B/C at rate eps, seeded by the config's seed) and shuffled per
epoch from (seed, epoch); the test split is never contaminated.

OUT receives history.csv (one row per epoch: losses, test MSE/PSNR/SSIM and their standard
deviations, seconds, images per second), checkpoint.pt (every checkpoint_every epochs, for
--resume), model.pt (the final model, for 'cryotune denoise') and gallery.npz (noisy, clean and
denoised first test images).

Example usage:

    cryotune train l1-gan.yaml --dataset data/rnap-32 --epochs 5 --out runs/l1-gan
    cryotune train l1-gan.yaml --dataset data/rnap-32 --eps 0.1 --contamination A --out runs/a10
    cryotune train l1-gan.yaml --dataset data/rnap-32 --epochs 10 --out runs/l1-gan --resume
"""

from __future__ import annotations

import argparse
import csv
import io
import os
from pathlib import Path

RUN_KEYS = ("dataset", "eps", "contamination")


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="training config YAML")
    parser.add_argument("--dataset", help="dataset store folder (overrides the config's)")
    parser.add_argument("--eps", type=float, help="contamination rate in [0, 1] (default 0)")
    parser.add_argument("--contamination", choices=("none", "A", "B", "C"),
                        help="contamination type: A clean, B noisy, C both replaced by noise")
    parser.add_argument("--epochs", type=int, help="train to this many epochs in all")
    parser.add_argument("--out", help="output folder (default runs/<config name>)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in OUT from its checkpoint.pt")


def _write_bytes(path: Path, data: bytes) -> None:
    """Write through a temporary sibling and a rename: readers never see half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _history_csv(history: list[dict]) -> str:
    buf = io.StringIO()
    columns = list(dict.fromkeys(k for record in history for k in record))
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    return buf.getvalue()


def _run_settings(args: argparse.Namespace, mapping: dict) -> tuple[Path, float, str]:
    from cryotune.data.contamination import check
    from cryotune.errors import BadConfig

    run = {k: mapping.pop(k) for k in RUN_KEYS if k in mapping}
    dataset = args.dataset or run.get("dataset")
    if not dataset:
        raise BadConfig("no dataset given", args.config,
                        "pass --dataset DIR or add 'dataset: DIR' to the config")
    eps = args.eps if args.eps is not None else float(run.get("eps", 0.0))
    kind = args.contamination or str(run.get("contamination", "A" if eps else "none"))
    check(eps, kind)
    return Path(dataset), eps, kind


def main(args: argparse.Namespace) -> int:
    from cryotune.config import TrainConfig, from_dict, load_yaml
    from cryotune.errors import BadConfig, BadInput

    mapping = load_yaml(args.config)
    dataset, eps, kind = _run_settings(args, mapping)
    if args.epochs is not None:
        mapping["epochs"] = args.epochs
    try:
        config = from_dict(TrainConfig, mapping)
    except BadConfig as err:
        raise BadConfig(err.what, f"{args.config} key {err.where}", err.fix) from None

    import numpy as np
    import torch
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from cryotune.data.contamination import contaminate
    from cryotune.data.store import open_dataset
    from cryotune.nn.train import CHECKPOINT_NAME, Trainer, train

    out = Path(args.out) if args.out else Path("runs") / Path(args.config).stem
    checkpoint = out / CHECKPOINT_NAME
    if args.resume and not checkpoint.is_file():
        raise BadInput("nothing to resume: no checkpoint.pt", str(out),
                       "drop --resume to start a new run, or point --out at a run folder")
    if not args.resume and checkpoint.exists():
        raise BadInput("this folder already holds a run", str(out),
                       "pass --resume to continue it, or choose another --out")
    out.mkdir(parents=True, exist_ok=True)

    ds = open_dataset(dataset)
    tr = ds.read("train", ["id", "noisy", "clean"])
    noisy, clean, mask = contaminate(tr["noisy"], tr["clean"], tr["id"], eps=eps, kind=kind,
                                     seed=config.seed, stats=ds.stats())
    y = torch.from_numpy(np.array(noisy, dtype=np.float32)).unsqueeze(1)
    x = torch.from_numpy(np.array(clean, dtype=np.float32)).unsqueeze(1)
    te = ds.read("test", ["noisy", "clean"])
    test_y = torch.from_numpy(np.array(te["noisy"], dtype=np.float32)).unsqueeze(1)
    test_x = torch.from_numpy(np.array(te["clean"], dtype=np.float32)).unsqueeze(1)
    steps = -(-len(y) // config.batch_size)
    print(f"{dataset}: {len(y)} train pairs ({int(mask.sum())} contaminated, type {kind}, "
          f"eps {eps:g}), {len(test_y)} test; {config.method} -> {out}")

    progress = Progress(TextColumn("epoch {task.fields[epoch]}"), BarColumn(),
                        MofNCompleteColumn(), TimeElapsedColumn(),
                        TextColumn("{task.fields[losses]}"))
    task = progress.add_task("train", total=steps * config.epochs, epoch="-", losses="")
    state: dict = {}

    def train_batches(epoch: int):
        progress.update(task, epoch=f"{epoch + 1}/{config.epochs}", completed=steps * epoch)
        rng = np.random.default_rng([config.seed, epoch])
        for idx in torch.from_numpy(rng.permutation(len(y))).split(config.batch_size):
            yield y[idx], x[idx]
            progress.advance(task)

    def test_batches():
        return zip(test_y.split(256), test_x.split(256), strict=True)

    def on_epoch(record: dict, trainer: Trainer) -> None:
        state["trainer"] = trainer
        _write_bytes(out / "history.csv", _history_csv(trainer.history).encode())
        losses = " ".join(f"{k} {record[k]:.4g}" for k in
                          ("d_loss", "g_adv", "g_rec", "test_mse", "test_psnr"))
        progress.update(task, losses=losses)
        progress.console.print(f"epoch {record['epoch']}: {losses} "
                               f"({record['images_per_s']:.0f} images/s)")

    with progress:
        history = train(config, train_batches, test_batches, checkpoint_dir=out,
                        on_epoch=on_epoch, resume=args.resume)
    trainer = state.get("trainer") or Trainer.load_checkpoint(checkpoint, device=config.device)
    _write_bytes(out / "model.pt", checkpoint.read_bytes())  # the last checkpoint is final
    k = config.gallery
    buf = io.BytesIO()
    np.savez(buf, noisy=test_y[:k, 0].numpy(), clean=test_x[:k, 0].numpy(),
             denoised=trainer.gallery(test_y[:k, 0].numpy()))
    _write_bytes(out / "gallery.npz", buf.getvalue())
    if history:
        last = history[-1]
        print(f"done: epoch {last['epoch']}, test MSE {last['test_mse']:.4g} "
              f"(PSNR {last['test_psnr']:.2f} dB, SSIM {last['test_ssim']:.3f}); "
              f"model in {out / 'model.pt'}")
    return 0
