"""Run a hyperparameter sweep on Ray Tune and record every trial in a study.

SPACE is a search-space YAML (``search_spaces/*.yaml``) or, with ``--resume``, a study folder.
Without ``--address`` (or RAY_ADDRESS) an embedded Ray starts with this machine's CPUs and
GPUs. The study goes to ``<storage>/<name>/``: Ray Tune's experiment, ``spec.yaml``,
``trials.parquet`` and ``history.parquet`` (updated as trials end), checkpoints and galleries.
``--scale cpu`` applies the file's ``scales.cpu`` preset (the paper-scale files shrink to 32 px,
1,000 pairs, width 16, CPU trials); ``--set key=value`` overrides any key (dotted paths,
values in YAML). Exit status: 0 when every trial ended (finished, stopped early or diverged),
1 when some trial errored (the study is still written), 2 for a bad spec or arguments.

Example usage:
    cryotune sweep search_spaces/smoke.yaml
    cryotune sweep search_spaces/paper-fig5-robustness.yaml --scale cpu --set seeds=1 --dry-run
    cryotune sweep search_spaces/paper-table1.yaml --scale cpu --set epochs=5 --storage studies
    cryotune sweep search_spaces/smoke.yaml --resume
    cryotune sweep studies/smoke --resume
    RAY_ADDRESS=10.0.0.1:6379 cryotune sweep search_spaces/paper-table1.yaml --storage s3://lab/studies
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from cryotune.errors import BadConfig


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("space", help="search-space YAML, or a study folder to resume")
    parser.add_argument("--scale", default=None, metavar="NAME",
                        help="apply the spec's scales.NAME preset, e.g. cpu")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a spec key (repeatable), e.g. epochs=2")
    parser.add_argument("--storage", default=None,
                        help="where studies live: a folder or a pyarrow URI (s3://...)")
    parser.add_argument("--address", default=None,
                        help="join this Ray cluster (default: RAY_ADDRESS, else embedded Ray)")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted study: finished trials stay, others resume")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the trials, resources and data, and start nothing")
    parser.add_argument("--verbose", action="store_true", help="show Ray's own logs")


def load(args: argparse.Namespace):
    """The spec from a YAML file, or from a study folder's ``spec.yaml`` (its own storage)."""
    from cryotune.config import load_yaml
    from cryotune.sweep.spec import load_spec, spec_from_mapping

    overrides = list(args.overrides)
    if args.storage:
        overrides.append(f"storage={json.dumps(args.storage)}")
    path = Path(args.space)
    if path.is_dir():
        if not (path / "spec.yaml").exists():
            raise BadConfig("not a search space or a study folder (no spec.yaml)", str(path),
                            "pass a search_spaces/*.yaml file or a study folder")
        raw = load_yaml(path / "spec.yaml")
        raw.pop("provenance", None)
        if args.scale:
            raise BadConfig("--scale applies to a search-space file", "--scale",
                            "a study folder already holds its resolved spec")
        raw["name"], raw["storage"] = path.resolve().name, str(path.resolve().parent)
        return spec_from_mapping(raw, overrides=overrides, source=str(path / "spec.yaml"))
    return load_spec(path, scale=args.scale, overrides=overrides)


def main(args: argparse.Namespace) -> int:
    from cryotune.sweep.run import quiet_environment

    quiet_environment(verbose=args.verbose,
                      joining=bool(args.address or os.environ.get("RAY_ADDRESS")))
    spec = load(args)
    if args.dry_run:
        print_plan(spec, address=args.address or os.environ.get("RAY_ADDRESS"))
        return 0
    from cryotune import __version__
    from cryotune.sweep.run import run_sweep

    started_ray = "ray" not in sys.modules or not sys.modules["ray"].is_initialized()
    view = LiveView()
    try:
        with view:
            outcome = run_sweep(spec, address=args.address, resume=args.resume,
                                verbose=args.verbose, on_progress=view.update,
                                provenance={"cryotune_version": __version__,
                                            "command": " ".join(["cryotune", *sys.argv[1:]])})
        print_outcome(outcome, spec)
    finally:
        ray = sys.modules.get("ray")
        if started_ray and ray is not None and ray.is_initialized():
            ray.shutdown()
    return outcome.exit_code


# -- console ----------------------------------------------------------------------------------

def _label(config: dict) -> str:
    """``(0.5,0.5)-GAN + l1 eps 0.2 A seed 0`` for a trial config."""
    import pandas as pd

    from cryotune.results import flatten_config, method_labels

    name = method_labels(pd.DataFrame([flatten_config(config)])).iloc[0]
    eps = config.get("eps") or 0
    data = f" eps {eps:g} {config.get('contamination')}" if eps else ""
    return f"{name}{data} seed {config.get('seed')}"


class LiveView:
    """One live status line (finished/running/pending/failed, best so far, elapsed) and a line
    per ended trial; a plain line per event when the output is not a terminal."""

    def __init__(self):
        from rich.console import Console

        self.console = Console(highlight=False, soft_wrap=True)
        self.metric = "metric"
        self._live = None

    def __enter__(self) -> LiveView:
        from rich.live import Live

        if self.console.is_terminal:
            self._live = Live(console=self.console, auto_refresh=False, transient=True)
            self._live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)

    def update(self, p) -> None:
        for row in p.ended:
            self.console.print(self._ended_line(row))
        line = self._status_line(p)
        if self._live is not None:
            self._live.update(line, refresh=True)
        elif p.ended:
            self.console.print(line)

    def _ended_line(self, row: dict) -> str:
        mark = {"finished": "[green]✓[/]", "stopped": "[yellow]■[/]",
                "diverged": "[magenta]~[/]"}.get(row["status"], "[red]✗[/]")
        metrics = row.get("metrics") or {}
        value = metrics.get("test_mse")
        tail = f"test_mse {value:.3e}" if value is not None else ""
        if row.get("error"):
            tail = f"{tail} {row['error']}".strip()
        wall = f"{row['wall_s']:.1f} s" if row.get("wall_s") is not None else ""
        return (f"{mark} {row['status']:<8} {row['trial_id']}  {_label(row['config'])}  "
                f"{row['epochs']} ep  {wall}  {tail}")

    def _status_line(self, p) -> str:
        minutes, seconds = divmod(int(p.elapsed), 60)
        best = ""
        if p.best is not None:
            best = f" | best {p.best[0]:.4g} ({_label(p.best[2])})"
        return (f"trials: {p.finished}/{p.total} finished, {p.running} running, "
                f"{p.pending} pending, {p.failed} failed{best} | {minutes}:{seconds:02d}")


def print_outcome(outcome, spec) -> None:
    from rich.console import Console

    from cryotune.commands.query import print_frame
    from cryotune.results import Study, load_study, method_labels

    console = Console(highlight=False)
    counts = ", ".join(f"{n} {status}" for status, n in sorted(outcome.counts.items()))
    console.print(f"study {spec.name}: {counts} of {outcome.total} trials")
    study = load_study(outcome.study)
    trials = study.trials
    if len(trials) and spec.metric in trials:
        trials = trials.assign(method=method_labels(trials))
        by = ["method"] + [c for c in ("config.eps", "config.contamination", "config.snr")
                           if c in trials and trials[c].nunique() > 1]
        summary = Study(trials=trials).summary(by=by, metrics=[spec.metric])
        if (summary[f"{spec.metric}_count"] == 1).all():  # one trial a group: no spread
            summary = summary.drop(columns=[f"{spec.metric}_std", f"{spec.metric}_count"])
        print_frame(summary.rename(columns=lambda c: c.removeprefix("config.")))
    for row in trials[trials["status"] == "error"].itertuples():
        console.print(f"[red]error[/] {row.trial_id}: {row.error}")
    console.print(f"study: {outcome.study}")
    console.print(f"query it: cryotune query {outcome.study} --by label,eps")


def print_plan(spec, *, address: str | None) -> None:
    """The dry run: trial count, resources, data; starts nothing."""
    from collections import Counter

    import pandas as pd

    from cryotune.results import flatten_config, method_labels
    from cryotune.sweep.run import prepare_datasets, study_paths
    from cryotune.sweep.space import fit_resources, trial_configs

    _, study = study_paths(spec)
    print(f"study {spec.name} -> {study}")
    datasets = prepare_datasets(spec, create=False)
    if spec.search == "optuna":
        print(f"trials: {spec.n_trials} asked of Optuna TPE (seed {spec.search_seed})")
    else:
        configs = trial_configs(spec, {d.spec.key: (d.key, d.snr) for d in datasets})
        labels = method_labels(pd.DataFrame([flatten_config(c) for c in configs]))
        print(f"trials: {len(configs)} ({spec.search})")
        for name, n in Counter(labels).items():
            print(f"  {n:5d} x {name}")
    print(f"epochs: {spec.epochs} (checkpoint every {spec.checkpoint_every}), scheduler "
          f"{spec.scheduler.type}, metric {spec.metric} ({spec.mode}), max_failures "
          f"{spec.max_failures}")
    if address:
        print(f"resources: {spec.resources.cpu:g} CPU, {spec.resources.gpu:g} GPU per trial "
              f"on the cluster at {address} (fitted node by node to the nodes alive at start: "
              f"whole trial CPUs on several nodes, one node keeps a whole CPU for Ray Data)")
    else:
        cpus, gpus = os.cpu_count() or 1, _local_gpus()
        try:
            fit = fit_resources(spec, cpus, gpus)
        except BadConfig as err:
            print(f"resources: {spec.resources.cpu:g} CPU, {spec.resources.gpu:g} GPU per trial: "
                  f"{err.what} on this machine ({err.fix})")
        else:
            note = f" (asked {spec.resources.cpu:g})" if fit.adjusted else ""
            print(f"resources: {fit.cpu:g} CPU{note}, {fit.gpu:g} GPU per trial; up to "
                  f"{fit.concurrent} at once on this machine's {cpus} CPUs, {gpus} GPUs "
                  f"({fit.rule})")
    print("data:")
    for d in datasets:
        if not d.manifest:
            sim = d.spec.simulate
            print(f"  {d.key}: simulate {sim.get('size', 'default')} px, "
                  f"{sim.get('n_train', 'default')} train / {sim.get('n_test', 'default')} test "
                  f"pairs, SNR {sim['snr']:g} -> {d.path} (not yet simulated)")
            continue
        m = d.manifest
        h, w = m["image_shape"]
        n = sum(s["count"] for s in m["splits"].values())
        print(f"  {d.key}: {d.path}, {h}x{w} px, {m['splits']['train']['count']} train / "
              f"{m['splits']['test']['count']} test pairs, SNR {d.snr}, "
              f"{n * h * w * 8 / 1e9:.2f} GB of images ({', '.join(m.get('formats', []) or ['parquet'])})")


def _local_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0
