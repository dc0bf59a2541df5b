"""Show a dataset store's manifest summary and a preview of its Ray Data pipeline.

Prints the name, kind, image shape, pixel size, SNR (target and measured), split counts,
formats, shards and train statistics, after checking every shard's sha256. Unless
--no-pipeline is given it then starts (or joins) Ray, builds the pipeline and shows the first
train batch's shapes, dtypes and value ranges without and with the contamination you ask for,
the test batch, and the pipeline's throughput over one epoch (or --bench-images images).

Example usage:
    cryotune inspect data/rnap-32
    cryotune inspect data/rnap-32 --eps 0.2 --contamination A --batch-size 20
    cryotune inspect data/empiar-10028 --format mrc --stream --bench-images 5000
    cryotune inspect data/rnap-32 --no-pipeline
"""

from __future__ import annotations

import argparse

from cryotune import vocab
from cryotune._ray import prepare_env
from cryotune.data.contamination import check
from cryotune.data.store import open_dataset


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", metavar="DATASET", help="the dataset folder")
    parser.add_argument("--eps", type=float, default=0.2,
                        help="contamination rate for the preview (default: 0.2)")
    parser.add_argument("--contamination", choices=vocab.CONTAMINATIONS, default="A",
                        help="contamination type for the preview (default: A)")
    parser.add_argument("--seed", type=int, default=0, help="order and contamination seed")
    parser.add_argument("--batch-size", type=int, default=20, help="images per batch (default: 20)")
    parser.add_argument("--format", choices=("auto", "parquet", "mrc"), default="auto",
                        help="which shards the pipeline reads (default: Parquet when present)")
    parser.add_argument("--stream", action="store_true",
                        help="stream the shards every epoch instead of materializing when they fit")
    parser.add_argument("--bench-images", type=int, default=20000,
                        help="images to time the pipeline over, at most one epoch (default: 20000)")
    parser.add_argument("--no-pipeline", action="store_true", help="print the manifest summary only")


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.4g}"


def summary(dataset) -> list[str]:
    """The manifest summary of an opened dataset, as lines."""
    m = dataset.manifest
    h, w = dataset.image_shape
    stats = dataset.stats()
    lines = [
        f"dataset     {m.get('name')} ({m.get('kind')}) at {dataset.path}",
        f"images      {h} x {w} px, {dataset.pixel_size:.4g} A/px, {m.get('dtype', 'float32')}",
        f"snr         target {_fmt(m.get('snr'))}, measured {_fmt(m.get('snr_measured'))}"
        f" ({m.get('snr_convention')})",
    ]
    for split in ("train", "val", "test"):
        if split not in m["splits"]:
            lines.append(f"{split:<11} none (written before the validation split; studies hold "
                         "out part of train)")
            continue
        shards = m["splits"][split]["shards"]
        lines.append(f"{split:<11} {dataset.count(split)} images in {len(shards)} shard(s)"
                     f" of <= {max((s['rows'] for s in shards), default=0)} rows")
    lines += [
        f"formats     {', '.join(dataset.formats)}",
        f"train stats clean mean {_fmt(stats['clean_mean'])} var {_fmt(stats['clean_var'])}; "
        f"noisy mean {_fmt(stats['noisy_mean'])} var {_fmt(stats['noisy_var'])}",
        f"ground      conformations {m.get('conformations') or 'unknown'}, poses "
        f"{'yes' if m.get('has_poses') else 'no'}, ctf {m.get('ctf') or 'none'}",
        f"created     {m.get('created')} by cryotune {m.get('cryotune_version')}",
    ]
    if m.get("normalization"):
        lines.append(f"normalized  {m['normalization']}")
    if m.get("command"):
        lines.append(f"command     {m['command']}")
    return lines


def _describe(name: str, x) -> str:
    return f"{name} {tuple(x.shape)} {str(x.dtype).replace('torch.', '')} [{float(x.min()):.4g}, {float(x.max()):.4g}]"


def main(args: argparse.Namespace) -> int:
    import os
    import time

    check(args.eps, args.contamination)
    dataset = open_dataset(args.dataset, verify=True)
    print("\n".join(summary(dataset)))
    if args.no_pipeline:
        return 0

    # the preview prints its own lines: no Ray Data progress bars (read when Ray Data loads);
    # Ray Data also reads the environment prepare_env() sets when it is imported
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    prepare_env()
    from cryotune.data.pipeline import DataPipeline

    start = time.perf_counter()
    pipe = DataPipeline.from_store(dataset.path, fmt=args.format, materialize=False if args.stream else None)
    print(f"pipeline    {pipe.fmt} shards, {'materialized in the object store' if pipe.materialized else 'streamed'}"
          f" ({time.perf_counter() - start:.2f} s to set up)")
    bs = args.batch_size
    noisy, clean = next(iter(pipe.train_batches(0, batch_size=bs, seed=args.seed)))
    print(f"train batch {_describe('noisy', noisy)}; {_describe('clean', clean)}")
    if args.eps > 0 and args.contamination != "none":
        # the same (seed, epoch) gives the same order, so the rows that changed are the contaminated ones
        noisy_c, clean_c = next(iter(pipe.train_batches(0, batch_size=bs, eps=args.eps,
                                                        kind=args.contamination, seed=args.seed)))
        hit = int(((noisy_c != noisy) | (clean_c != clean)).flatten(1).any(1).sum())
        print(f"  eps {args.eps:g} {args.contamination}  {_describe('noisy', noisy_c)}; "
              f"{_describe('clean', clean_c)}; {hit} of {len(noisy_c)} contaminated")
    noisy, clean = next(iter(pipe.test_batches(batch_size=bs)))
    print(f"test batch  {_describe('noisy', noisy)}; {_describe('clean', clean)}")

    limit = min(args.bench_images, dataset.count("train"))
    seen, start = 0, time.perf_counter()
    for noisy, _ in pipe.train_batches(1, batch_size=bs, eps=args.eps, kind=args.contamination,
                                       seed=args.seed):
        seen += len(noisy)
        if seen >= limit:
            break
    seconds = time.perf_counter() - start
    print(f"throughput  {seen / seconds:,.0f} images/s ({seen} train images in {seconds:.2f} s, "
          f"batch {bs}, contamination included)")
    return 0
