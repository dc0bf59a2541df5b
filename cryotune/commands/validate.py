"""Validate a finished study's models: 3D reconstruction with FSC, and conformation clustering.

Each trial row with a model denoises the test split of its dataset with its selected epoch's
model (``best.pt``; the last checkpoint, with a warning, in a study from before selection on
validation), recorded as ``validated_epoch``; the denoised images are reconstructed per
conformation with the dataset's poses (FSC against the ground truth of a simulated dataset and
between half maps, resolutions at 0.143 and 0.5) and clustered (Isomap + k-means, first vs
last conformation). The row gains the columns ``fsc_res_0143_A``, ``fsc_res_05_A``,
``fsc_truth_*``, ``fsc_half_*``, ``cluster_acc``... (the other columns stay), and the curves,
volume views and embedding go under the trial. The clean and noisy test images are validated
once per dataset, for the report to compare.

Real particles (a store from ``cryotune ingest --map``) have no ground truth: the resolution
is the half-map FSC at 0.143 of the denoised test particles at their refined poses, beside the
raw particles' own, with ``fsc_n_images``; ``fsc_map_*`` correlate the full reconstruction
with the input map, which is biased toward that map.

Example usage:
    cryotune validate studies/smoke
    cryotune validate studies/table1 --what fsc --trials trial_00000,trial_00003
    cryotune validate studies/baselines --dataset data/rnap-32
"""

from __future__ import annotations

import argparse


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("study", metavar="STUDY", help="a study folder or URI")
    parser.add_argument("--what", default="fsc,clustering",
                        help="comma-separated validations: fsc, clustering (default: both)")
    parser.add_argument("--views", choices=("cone", "all"), default="cone",
                        help="clustering on a 30 degree cone of views aligned in-plane (default) "
                             "or on every view")
    parser.add_argument("--trials", default=None, help="comma-separated trial ids (default: all)")
    parser.add_argument("--dataset", default=None,
                        help="the dataset store, when the study's spec does not locate it")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")


def main(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from cryotune.runs.validate import validate_study  # torch: only when it runs

    rows = validate_study(args.study, what=args.what.split(","), views=args.views,
                          trials=args.trials.split(",") if args.trials else None,
                          dataset=args.dataset, device=args.device)
    table = Table("trial", "method", "FSC 0.143 (A)", "FSC 0.5 (A)", "from", "cluster acc", "note")
    for r in rows:
        def num(key, form, r=r):
            value = r.get(key)
            return "-" if value is None else format(value, form)
        source = {1: "truth", 0: "half maps"}.get(r.get("fsc_vs_truth"), "-")
        table.add_row(str(r["trial_id"]), str(r.get("config.method", "-")),
                      num("fsc_res_0143_A", ".1f"), num("fsc_res_05_A", ".1f"), source,
                      num("cluster_acc", ".3f"), r.get("validate_needs") or "")
    Console().print(table)
    return 0
