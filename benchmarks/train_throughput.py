"""Training throughput on one core: our Trainer against a bare PyTorch loop, every method.

For each method at 64 and 128 px, the same model (same seed, width 16: the CPU preset) is
trained on the same in-memory minibatches (batch 20, the paper's k_d = 1, k_g = 2, lambda = 10)
by ``Trainer.train_epoch`` and by a bare loop of Algorithm 1 written out in plain PyTorch
(the same steps, no metric sums, no device moves, no checks). A 32 px group at width 4, where
a step takes milliseconds, repeated many times, bounds the trainer's own per-step cost. The two
alternate
(ours, bare, ours, bare, ...) after a warm-up of each; the figure is the ratio of the medians of
their images per second, in wall-clock time and in process CPU time (the fairer one on a
shared machine; the load average is recorded). Target: ratio >= 0.95. Writes
``reports/benchmarks/train_throughput.json`` and the "train" section of
``reports/benchmarks/BENCHMARKS.md`` (other sections are kept).

Example::

    .venv/bin/python benchmarks/train_throughput.py           # a few minutes; writes the reports
    .venv/bin/python benchmarks/train_throughput.py --smoke   # seconds; prints, writes nothing
"""

from __future__ import annotations

import os

os.environ["OMP_NUM_THREADS"] = "1"  # before numpy and torch start their thread pools

import statistics  # noqa: E402
import sys  # noqa: E402

import torch  # noqa: E402
from _common import finish, load_average, machine, machine_line, parser, record, section, timed  # noqa: E402

from cryotune.config import TrainConfig  # noqa: E402
from cryotune.nn.models import build_models, count_parameters  # noqa: E402
from cryotune.nn.scoring import clip_weights, gradient_penalty, make_rule  # noqa: E402
from cryotune.nn.train import Trainer  # noqa: E402
from cryotune.vocab import METHOD_NAMES  # noqa: E402

TARGET = 0.95


class Bare:
    """Algorithm 1 as a reader would write it in plain PyTorch, for the comparison."""

    def __init__(self, cfg: TrainConfig, size: int):
        torch.manual_seed(cfg.seed)
        self.cfg = cfg
        self.g, self.d = build_models(cfg, (size, size))
        self.rule = make_rule(cfg.method, cfg.alpha, cfg.beta)
        self.opt_g = torch.optim.Adam(self.g.parameters(), lr=cfg.lr_g)
        self.opt_d = torch.optim.Adam(self.d.parameters(), lr=cfg.lr_d) if self.d else None

    def epoch(self, batches) -> None:
        cfg, g, d, rule = self.cfg, self.g, self.d, self.rule
        for y, x in batches:
            if d is not None:
                with torch.no_grad():
                    fake = g(y)
                for _ in range(cfg.k_d):
                    d.requires_grad_(True)
                    loss = -(rule.real(d(x)).mean() + rule.fake(d(fake)).mean())
                    if cfg.method == "wgan_gp":
                        loss = loss + gradient_penalty(d, x, fake, cfg.mu)
                    self.opt_d.zero_grad(set_to_none=True)
                    loss.backward()
                    self.opt_d.step()
                    if cfg.method == "wgan":
                        clip_weights(d, cfg.clip)
            for _ in range(cfg.k_g):
                out = g(y)
                rec = (out - x).abs().mean() if cfg.loss_p == 1 else (out - x).square().mean()
                if d is not None:
                    d.requires_grad_(False)
                    loss = rule.fake(d(out)).mean() + cfg.lam * rec
                else:
                    loss = rec
                self.opt_g.zero_grad(set_to_none=True)
                loss.backward()
                self.opt_g.step()


def measure(method: str, size: int, width: int, batch: int, steps: int, repeats: int) -> dict:
    cfg = TrainConfig(method=method, width=width, batch_size=batch, num_threads=1, device="cpu")
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(batch * steps, 1, size, size, generator=gen)
    y = x + 0.5 * torch.randn(x.shape, generator=gen)
    batches = list(zip(y.split(batch), x.split(batch), strict=True))
    ours, bare = Trainer(cfg, (size, size)), Bare(cfg, size)
    ours.train_epoch(batches[:1])  # warm-up: allocator, oneDNN primitives
    bare.epoch(batches[:1])
    runs: dict[str, list[tuple[float, float]]] = {"ours": [], "bare": []}
    for _ in range(repeats):
        runs["ours"].append(timed(lambda: ours.train_epoch(batches)))
        runs["bare"].append(timed(lambda: bare.epoch(batches)))
    images = batch * steps
    out = {"method": method, "size": size, "width": width, "batch": batch, "steps": steps,
           "repeats": repeats, "parameters": count_parameters(ours.generator) + count_parameters(ours.discriminator)}
    for clock, i in (("wall", 0), ("cpu", 1)):
        for name in ("ours", "bare"):
            rates = [images / r[i] for r in runs[name]]
            out[f"{name}_images_per_s_{clock}"] = [round(r, 3) for r in rates]
            out[f"{name}_median_{clock}"] = round(statistics.median(rates), 3)
            out[f"{name}_best_{clock}"] = round(max(rates), 3)
        out[f"ratio_{clock}"] = round(out[f"ours_median_{clock}"] / out[f"bare_median_{clock}"], 3)
        out[f"ratio_best_{clock}"] = round(out[f"ours_best_{clock}"] / out[f"bare_best_{clock}"], 3)
    print(f"{method:9s} {size:4d} px  ours {out['ours_median_wall']:8.2f}  bare "
          f"{out['bare_median_wall']:8.2f} images/s  ratio wall {out['ratio_wall']:.3f} "
          f"cpu {out['ratio_cpu']:.3f} best-of cpu {out['ratio_best_cpu']:.3f}", flush=True)
    return out


def markdown(report: dict) -> str:
    m, p = report["machine"], report["plan"]
    groups = "; ".join(f"{g['size']} px: width {g['width']}, {g['repeats']} repeats of "
                       f"{g['minibatches']} minibatches" for g in p["groups"])
    lines = [
        "## train: Trainer against a bare PyTorch loop, one core",
        "",
        f"`benchmarks/train_throughput.py`, {report['created']}. Batch {p['batch']}, k_d 1, "
        f"k_g 2, lambda 10, data in memory, torch on 1 thread. {groups}. Ours and bare "
        "alternate after a warm-up of each; medians of images per second, ratio = ours / bare "
        "in wall-clock time (process CPU time in brackets); the last column compares the best "
        "run of each. Width 16 is the CPU preset; the 32 px rows, where a step takes "
        "milliseconds, bound the trainer's own per-step cost.",
        "",
        "| method | size (px) | width | parameters | ours images/s | bare images/s | ratio | "
        "ratio, best of each |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        lines.append(f"| {r['method']} | {r['size']} | {r['width']} | {r['parameters']:,} | "
                     f"{r['ours_median_wall']:.2f} | {r['bare_median_wall']:.2f} | "
                     f"{r['ratio_wall']:.3f} ({r['ratio_cpu']:.3f}) | "
                     f"{r['ratio_best_wall']:.3f} ({r['ratio_best_cpu']:.3f}) |")
    s = report["summary"]
    lines += [
        "",
        f"Target: ratio >= {TARGET} on every row. Median of the rows' ratios "
        f"{s['median_ratio_wall']:.3f} wall, {s['median_ratio_cpu']:.3f} CPU; lowest row "
        f"{s['min_ratio_wall']:.3f} wall, {s['min_ratio_cpu']:.3f} CPU; {s['rows_below_cpu']} "
        f"of {len(report['results'])} rows below target in CPU time: "
        f"{'met' if s['met'] else 'not met'}.",
        "",
        machine_line(m, report["load_average_end"], note="a shared machine: single runs vary; "
                     "the CPU-time ratio is the steadier figure") + " Both loops run on the CPU.",
    ]
    return section("train", lines)


def main(argv=None) -> int:
    p = parser(__doc__, smoke="tiny run (32 px, width 4), print only")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats (default 3)")
    p.add_argument("--methods", nargs="+", default=list(METHOD_NAMES), choices=METHOD_NAMES)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    batch = 8 if args.smoke else 20
    if args.smoke:
        groups = [(32, 4, 2, 2)]
    else:  # (size, width, minibatches per measurement, repeats); the 32 px group, where a
        # step takes milliseconds, bounds the trainer's per-step overhead with many repeats
        groups = [(32, 4, 5, 15), (64, 16, 2, args.repeats), (128, 16, 1, args.repeats)]
    info = machine()
    results = [measure(method, size, width, batch, steps, repeats)
               for size, width, steps, repeats in groups for method in args.methods]
    wall = [r["ratio_wall"] for r in results]
    cpu = [r["ratio_cpu"] for r in results]
    report = record(
        "train_throughput", info, threads=1, load_average_end=load_average(),
        plan={"batch": batch, "groups": [
            {"size": z, "width": w, "minibatches": s, "repeats": r} for z, w, s, r in groups]},
        results=results,
        summary={"median_ratio_wall": statistics.median(wall), "min_ratio_wall": min(wall),
                 "median_ratio_cpu": statistics.median(cpu), "min_ratio_cpu": min(cpu),
                 "rows_below_cpu": sum(r < TARGET for r in cpu),
                 "target": TARGET, "met": min(cpu) >= TARGET})
    return finish("train_throughput", report, markdown, smoke=args.smoke)


if __name__ == "__main__":
    sys.exit(main())
