"""A CPU trial's speed knobs: what makes a 32 px GAN + l1 trial faster on one core.

The sweep's trainer (:class:`cryotune.nn.train.Trainer`, (.5, .5)-GAN + l1, ResNet width 16,
batch 20, k_d 1, k_g 2, the CPU preset of the paper's spaces) trains epochs of 400 in-memory
32 px pairs under each variant, one after another in this process; a variant's figure is the
median images/s of its epochs after one warm-up epoch (compilation happens there). Variants:

- ``eager`` -- one torch thread, contiguous tensors: a sweep trial today (``resources.cpu`` 1);
- ``channels_last`` -- NHWC tensors and weights (``train.channels_last``);
- ``compile`` -- ``torch.compile`` of the generator and discriminator (inductor, CPU);
- ``fused_adam`` -- Adam with ``fused=True`` for both optimisers;
- ``threads_2`` -- two torch threads for one trial (both cores, nothing beside it).

Beside them: ``Trainer.evaluate`` on 1,500 test pairs (the paper's test size) per epoch, one
thread, and the share of a GAN step's time in the discriminator and generator steps
(``torch.profiler``). Writes ``reports/benchmarks/trial_speed.json`` and the "trial-speed"
section of ``reports/benchmarks/BENCHMARKS.md``.

Example::

    .venv/bin/python benchmarks/trial_speed.py            # about 4 minutes on a quiet core
    .venv/bin/python benchmarks/trial_speed.py --smoke    # 16 px, no compile, seconds; prints only
"""

from __future__ import annotations

import os

os.environ["OMP_NUM_THREADS"] = "1"  # before numpy and torch start their thread pools

import statistics  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402
from _common import finish, load_average, machine, machine_line, parser, record, section  # noqa: E402

from cryotune.config import TrainConfig  # noqa: E402
from cryotune.nn.train import Trainer  # noqa: E402

BATCH = 20
VARIANTS = ("eager", "channels_last", "compile", "fused_adam", "threads_2")


def make_trainer(variant: str, size: int, width: int) -> Trainer:
    cfg = TrainConfig(method="beta_gan", alpha=0.5, beta=0.5, width=width, batch_size=BATCH,
                      reduction="sum", num_threads=2 if variant == "threads_2" else 1,
                      channels_last=variant == "channels_last", seed=0)
    trainer = Trainer(cfg, (size, size))
    if variant == "compile":
        trainer.generator = torch.compile(trainer.generator)
        trainer.discriminator = torch.compile(trainer.discriminator)
    if variant == "fused_adam":
        trainer.opt_g = torch.optim.Adam(trainer.generator.parameters(), lr=cfg.lr_g, fused=True)
        trainer.opt_d = torch.optim.Adam(trainer.discriminator.parameters(), lr=cfg.lr_d,
                                         fused=True)
    return trainer


def batches(noisy: torch.Tensor, clean: torch.Tensor):
    return [(noisy[i:i + BATCH], clean[i:i + BATCH]) for i in range(0, len(noisy), BATCH)]


def measure(variant: str, data, size: int, width: int, epochs: int) -> dict:
    trainer = make_trainer(variant, size, width)
    start = time.perf_counter()
    trainer.train_epoch(data)  # warm-up (and compilation)
    first = time.perf_counter() - start
    rates = [trainer.train_epoch(data)["images_per_s"] for _ in range(epochs)]
    torch.set_num_threads(1)
    return {"variant": variant, "images_per_s": round(statistics.median(rates), 2),
            "epochs": epochs, "first_epoch_s": round(first, 2),
            "images_per_s_all": [round(r, 2) for r in rates]}


def step_shares(data, size: int, width: int) -> dict:
    """Self CPU time of the discriminator and generator steps over a few batches."""
    trainer = make_trainer("eager", size, width)
    trainer.train_epoch(data[:2])
    d_s = g_s = 0.0
    for y, x in data[:10]:
        y, x = trainer._to_device(y), trainer._to_device(x)
        t0 = time.perf_counter()
        with torch.no_grad():
            fake = trainer.generator(y)
        trainer._d_step(x, fake)
        t1 = time.perf_counter()
        for _ in range(trainer.config.k_g):
            trainer._g_step(y, x)
        t2 = time.perf_counter()
        d_s, g_s = d_s + (t1 - t0), g_s + (t2 - t1)
    total = d_s + g_s
    return {"d_step_share": round(d_s / total, 3), "g_steps_share": round(g_s / total, 3)}


def evaluate_seconds(size: int, width: int, n: int) -> float:
    trainer = make_trainer("eager", size, width)
    g = torch.Generator().manual_seed(1)
    noisy, clean = torch.randn(n, size, size, generator=g), torch.randn(n, size, size, generator=g)
    data = batches(noisy, clean)
    trainer.evaluate(data)
    runs = []
    for _ in range(3):
        start = time.perf_counter()
        trainer.evaluate(data)
        runs.append(time.perf_counter() - start)
    return round(statistics.median(runs), 3)


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__).parse_args(argv)
    size, width, n, epochs, n_test = (16, 8, 40, 1, 40) if args.smoke else (32, 16, 400, 3, 1500)
    facts = machine()
    g = torch.Generator().manual_seed(0)
    clean = torch.randn(n, size, size, generator=g)
    noisy = clean + 3.0 * torch.randn(n, size, size, generator=g)
    data = batches(noisy, clean)
    results = []
    for variant in VARIANTS:
        if args.smoke and variant == "compile":  # its compilation alone takes 30-40 s
            continue
        results.append(measure(variant, data, size, width, epochs))
        print(results[-1], flush=True)
    base = results[0]["images_per_s"]
    for r in results:
        r["speedup"] = round(r["images_per_s"] / base, 3)
    report = record("trial_speed", facts, size=size, width=width, images=n, batch=BATCH,
                    results=results, shares=step_shares(data, size, width),
                    evaluate_s=evaluate_seconds(size, width, n_test), evaluate_images=n_test,
                    load_average_end=load_average())
    return finish("trial_speed", report, markdown, smoke=args.smoke)


def markdown(r: dict) -> str:
    rows = [f"| {x['variant']} | {x['images_per_s']} | {x['speedup']} | {x['first_epoch_s']} |"
            for x in r["results"]]
    sh = r["shares"]
    rate = {x["variant"]: x["images_per_s"] for x in r["results"]}
    per_epoch = 1000 / rate["eager"]
    return section("trial-speed", [
        f"## Trial speed: a {r['size']} px GAN + l1 trial on one CPU core",
        "",
        f"`benchmarks/trial_speed.py`: the sweep's Trainer, (.5,.5)-GAN + l1, width {r['width']},"
        f" batch {r['batch']}, epochs of {r['images']} pairs; median images/s after a warm-up "
        "epoch.",
        "",
        "| variant | images/s | vs eager | first epoch (s) |",
        "|---|---|---|---|",
        *rows,
        "",
        f"A GAN step's time: discriminator {sh['d_step_share']:.0%}, the two generator steps "
        f"{sh['g_steps_share']:.0%}. At the eager rate a 1,000-pair epoch trains in "
        f"{per_epoch:.1f} s; evaluating {r['evaluate_images']} test pairs takes "
        f"{r['evaluate_s']} s. A 6-epoch trial of 1,000 pairs trains in "
        f"{6 * per_epoch:.0f} s eager and {6000 / rate['channels_last']:.0f} s in channels_last "
        "(the CPU default since this record). Two single-thread trials side by side train "
        f"{2 * rate['eager']:.0f} images/s on two cores, one two-thread trial "
        f"{rate['threads_2']:.0f}: the sweeps keep one thread per trial.",
        "",
        machine_line(r["machine"], r["load_average_end"]),
    ])


if __name__ == "__main__":
    raise SystemExit(main())
