"""Paired comparison of two methods: B against A, per cell and pooled, with CIs and n.

Trials pair when they differ only in the method: the same dataset, eps, contamination type and
seed. ``--a`` and ``--b`` pick each side with a query expression (config names bare, ``label``
the method's display name with ℓ written l; ``lambda`` is a Python word: write `lambda`).
The metric is the test MSE at each trial's best validation epoch (``test_mse_at_best``; the
last epoch's ``test_mse`` for studies without a validation split, said so). Printed: one
sentence per pooled group ("B is worse than A by 12% (95% CI 4-20%) over ε 0.1-0.3 and types
A-C, 27 pairs; Wilcoxon signed-rank p = 0.003"), the trials left out (diverged, errored...),
and with ``--by`` the table per cell. The ratio is the geometric mean of the per-pair ratios
b/a; CIs are Student t below 10 pairs, a fixed-seed percentile bootstrap from 10; below 6
pairs no p is given, since the signed-rank test cannot reach p < 0.05 there.

Example usage:
    cryotune compare studies/fig5 --a "label == 'l1-AE'" --b "label == '(0.5,0.5)-GAN + l1'"
    cryotune compare studies/fig5 --a "method == 'l1_ae'" --b "method == 'beta_gan'" --where "eps > 0" --by contamination,eps
    cryotune compare studies/fig5 --a "method == 'l2_ae'" --b "method == 'l1_ae'" --where "eps > 0" --pool eps
    cryotune compare studies/t1 studies/t1-gpu --a "method == 'wgan_gp'" --b "method == 'js_gan'" --metric test_ssim_at_best
"""

from __future__ import annotations

import argparse

from cryotune.commands.query import print_frame
from cryotune.study.tables import load_study

CELL = ("dataset", "contamination", "eps")  # cryotune.study.compare.CELL, without its imports


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("studies", nargs="+", metavar="STUDY", help="study folders or URIs")
    parser.add_argument("--a", required=True, metavar="EXPR", help="the trials of side A")
    parser.add_argument("--b", required=True, metavar="EXPR", help="the trials of side B")
    parser.add_argument("--where", default=None, metavar="EXPR",
                        help="a filter both sides must pass, e.g. \"eps > 0\"")
    parser.add_argument("--by", default=None,
                        help=f"cell columns to break down by, of {','.join(CELL)} "
                             "(default: those that vary)")
    parser.add_argument("--pool", default=None,
                        help="cell columns to pool over (default: all, one pooled answer); "
                             "the pooled groups are the other cell columns")
    parser.add_argument("--metric", default="test_mse_at_best",
                        help="the column compared (default: test_mse_at_best)")
    parser.add_argument("--pairs", action="store_true", help="also list every pair")


def main(args: argparse.Namespace) -> int:

    study = load_study(*args.studies)
    result = study.compare(a=args.a, b=args.b, by=args.by, pool=args.pool, metric=args.metric,
                           where=args.where)
    for note in result.notes:
        print(f"note: {note}")
    for line in result.sentences():
        print(line)
    cols = ["n", "mean_a", "mean_b", "diff", "diff_low", "diff_high", "ratio", "ratio_low",
            "ratio_high", "ci", "p"]
    if args.by is not None or len(result.cells) > 1:
        print(f"\nper cell (A = {result.a}, B = {result.b}, {result.metric}):")
        keys = [c for c in result.cells if c in CELL]
        print_frame(result.cells[keys + cols])
    if args.pairs:
        print_frame(result.pairs)
    return 0
