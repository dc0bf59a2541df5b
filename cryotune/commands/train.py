"""Train one denoiser on a dataset store, without Ray Tune, exactly as a sweep trial would.

CONFIG is a YAML mapping of training settings (method, alpha, beta, lambda, p, arch, width,
depth, lr_d, lr_g, batch_size, k_d, k_g, mu, clip, epochs, seed, device, ...; the paper's
defaults fill the rest). It may also name the run's data with the keys dataset, eps and
contamination; the options below override them. The pairs are read through the Ray Data
pipeline a sweep uses (on embedded Ray), ordered, contaminated (Huber, types A/B/C at rate eps,
seeded by the config's seed) and batched as in a sweep trial, so the same config gives the same
history as that trial; the validation pairs are contaminated likewise, the test split never.

OUT receives history.csv (one row per epoch: losses, validation and test MSE/PSNR/SSIM, seconds,
images per second), checkpoint.pt (every checkpoint_every epochs, for --resume), best.pt (the
best validation epoch), model.pt (the final model, for 'cryotune denoise') and gallery.npz
(noisy, clean and denoised first test images).

Example usage:

    cryotune train l1-gan.yaml --dataset data/rnap-32 --epochs 5 --out runs/l1-gan
    cryotune train l1-gan.yaml --dataset data/rnap-32 --eps 0.1 --contamination A --out runs/a10
    cryotune train l1-gan.yaml --dataset data/rnap-32 --epochs 10 --out runs/l1-gan --resume
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cryotune import vocab
from cryotune.config import TrainConfig, from_dict, load_yaml
from cryotune.errors import BadConfig

RUN_KEYS = ("dataset", "eps", "contamination")


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="training config YAML")
    parser.add_argument("--dataset", help="dataset store folder (overrides the config's)")
    parser.add_argument("--eps", type=float, help="contamination rate in [0, 1] (default 0)")
    parser.add_argument("--contamination", choices=vocab.CONTAMINATIONS,
                        help="contamination type: "
                        + "; ".join(f"{k} {v}" for k, v in vocab.CONTAMINATION_TYPES.items()))
    parser.add_argument("--epochs", type=int, help="train to this many epochs in all")
    parser.add_argument("--out", help="output folder (default runs/<config name>)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in OUT from its checkpoint.pt")


def _run_settings(args: argparse.Namespace, mapping: dict) -> tuple[Path, float, str]:
    run = {k: mapping.pop(k) for k in RUN_KEYS if k in mapping}
    dataset = args.dataset or run.get("dataset")
    if not dataset:
        raise BadConfig("no dataset given", args.config,
                        "pass --dataset DIR or add 'dataset: DIR' to the config")
    eps = args.eps if args.eps is not None else float(run.get("eps", 0.0))
    kind = args.contamination or str(run.get("contamination", "A" if eps else "none"))
    return Path(dataset), eps, kind


def main(args: argparse.Namespace) -> int:
    mapping = load_yaml(args.config)
    dataset, eps, kind = _run_settings(args, mapping)
    if args.epochs is not None:
        mapping["epochs"] = args.epochs
    try:
        config = from_dict(TrainConfig, mapping)
    except BadConfig as err:
        raise BadConfig(err.what, f"{args.config} key {err.where}", err.fix) from None
    from cryotune.runs.train import describe, train  # torch and Ray: only when a run starts

    out = Path(args.out) if args.out else Path("runs") / Path(args.config).stem
    data = describe(dataset, eps=eps, contamination=kind, seed=config.seed)
    print(f"{dataset}: {data['train']} train pairs ({data['contaminated']} contaminated, type "
          f"{kind}, eps {eps:g}), {data['test']} test; {config.method} -> {out}")

    def on_epoch(record: dict) -> None:
        losses = " ".join(f"{k} {record[k]:.4g}" for k in
                          ("d_loss", "g_adv", "g_rec", "val_mse", "test_mse", "test_psnr")
                          if k in record)
        print(f"epoch {record['epoch']}/{config.epochs}: {losses} "
              f"({record['images_per_s']:.0f} images/s)", flush=True)

    history = train(config, dataset, eps=eps, contamination=kind, out=out, resume=args.resume,
                    on_epoch=on_epoch)
    if history:
        last = history[-1]
        print(f"done: epoch {last['epoch']}, test MSE {last['test_mse']:.4g} "
              f"(PSNR {last['test_psnr']:.2f} dB, SSIM {last['test_ssim']:.3f}); "
              f"model in {out / 'model.pt'}")
    return 0
