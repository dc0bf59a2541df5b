"""Run a hyperparameter sweep on Ray Tune and record every trial in a study.

SPACE is a search-space YAML (``search_spaces/*.yaml``) or, with ``--resume``, a study folder.
Without ``--address`` (or RAY_ADDRESS) an embedded Ray starts with this machine's CPUs and
GPUs. The study goes to ``<storage>/<name>/``: Ray Tune's experiment, ``spec.yaml``,
``trials.parquet`` and ``history.parquet`` (updated as trials end), checkpoints and galleries.
``--scale cpu`` applies the file's ``scales.cpu`` preset (the paper-scale files shrink to 32 px,
1,000 pairs, width 16, CPU trials); ``--set key=value`` overrides any key (dotted paths,
values in YAML). Exit status: 0 when every trial ended (finished, stopped early or diverged),
1 when some trial errored (the study is still written), 2 for a bad spec or arguments, or a
study another process writes (its lock names it); 130 on Ctrl-C and 143 on SIGTERM, after a
line with the trials finished and the ``--resume`` command: the trials that were running are
recorded as ``interrupted`` (no result) and run again on resume.

``--extend STUDY`` grows a finished grid study: each grid axis (methods, lambda, reduction,
eps, contamination, seeds) becomes the union of the study's values and SPACE's, and only the
cells no trial holds run, in ``STUDY/tune-ext-N/``; existing trials stay as they are. Any other
setting that SPACE changes (dataset, epochs, train, select, ...) is refused, naming the key.
``--dry-run`` lists the new trials. A killed extension continues with ``--extend`` again or
``cryotune sweep STUDY --resume``.

Example usage:
    cryotune sweep search_spaces/smoke.yaml
    cryotune sweep search_spaces/paper-fig5-robustness.yaml --scale cpu --set seeds=1 --dry-run
    cryotune sweep search_spaces/paper-table1.yaml --scale cpu --set epochs=5 --storage studies
    cryotune sweep search_spaces/smoke.yaml --resume
    cryotune sweep studies/smoke --resume
    cryotune sweep search_spaces/smoke.yaml --set seeds=3 --extend studies/smoke --dry-run
    RAY_ADDRESS=10.0.0.1:6379 cryotune sweep search_spaces/paper-table1.yaml --storage s3://lab/studies
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from collections import Counter
from pathlib import Path

import pandas as pd

from cryotune._ray import shutdown_ray
from cryotune._version import __version__
from cryotune.commands.query import print_frame
from cryotune.config import load_yaml
from cryotune.errors import BadConfig, CryotuneError
from cryotune.runs.sweep import (
    at_study,
    plan_extension,
    prepare_datasets,
    quiet_environment,
    run_sweep,
    study_paths,
)
from cryotune.study.labels import method_labels
from cryotune.study.store import SELECTABLE, flatten_config
from cryotune.study.tables import Study, load_study
from cryotune.sweep.resources import fit_resources
from cryotune.sweep.space import trial_configs
from cryotune.sweep.spec import load_spec, spec_from_mapping


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
    parser.add_argument("--extend", default=None, metavar="STUDY",
                        help="grow this finished grid study by SPACE's axes (seeds, eps, types, "
                             "methods, lambdas) and run only the cells it lacks")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the trials, resources and data, and start nothing")
    parser.add_argument("--verbose", action="store_true", help="show Ray's own logs")


def load(args: argparse.Namespace):
    """The spec from a YAML file, or from a study folder's ``spec.yaml`` (its own storage)."""
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
    quiet_environment(verbose=args.verbose,
                      joining=bool(args.address or os.environ.get("RAY_ADDRESS")))
    spec = load(args)
    if args.extend:
        if args.resume:
            raise BadConfig("--extend continues a killed extension itself", "--resume",
                            "drop --resume (or resume with: cryotune sweep STUDY --resume)")
        spec = at_study(spec, args.extend)
    if args.dry_run:
        if args.extend:
            print_extension(plan_extension(spec))
            return 0
        print_plan(spec, address=args.address or os.environ.get("RAY_ADDRESS"))
        return 0
    started_ray = "ray" not in sys.modules or not sys.modules["ray"].is_initialized()
    view = LiveView()
    try:
        with view:
            outcome = run_sweep(spec, address=args.address, resume=args.resume,
                                extend=bool(args.extend), verbose=args.verbose, on_progress=view.update,
                                provenance={"cryotune_version": __version__,
                                            "command": " ".join(["cryotune", *sys.argv[1:]])})
        print_outcome(outcome, spec)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: cryotune.cli sets the exit status
        print_interrupted(spec, args)
        raise
    finally:
        if started_ray:
            shutdown_ray()
    return outcome.exit_code


# -- console ----------------------------------------------------------------------------------

def _label(config: dict) -> str:
    """``(0.5,0.5)-GAN + l1 eps 0.2 A seed 0`` for a trial config."""
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
            best = f" | best {p.metric} {p.best[0]:.4g} ({_label(p.best[2])})"
        return (f"trials: {p.finished}/{p.total} finished, {p.running} running, "
                f"{p.pending} pending, {p.failed} failed{best} | {minutes}:{seconds:02d}")


def resume_command(spec, args: argparse.Namespace) -> str:
    """The exact command that continues the study: its folder with ``--resume`` (a study at a
    URI: the space and options it was started with, and ``--resume``)."""
    _, study = study_paths(spec)
    if "://" not in study:
        words = ["cryotune", "sweep", study]
    else:
        words = ["cryotune", "sweep", args.space]
        words += ["--scale", args.scale] if args.scale else []
        words += [w for o in args.overrides for w in ("--set", o)]
        words += ["--storage", args.storage] if args.storage else []
    words += ["--resume"] + (["--address", args.address] if args.address else [])
    return " ".join(shlex.quote(w) for w in words)


def print_interrupted(spec, args: argparse.Namespace) -> None:
    """How far the interrupted sweep got, and how to finish it (one line, on stderr)."""
    _, study = study_paths(spec)
    try:
        statuses = load_study(study).trials["status"]
    except CryotuneError:
        statuses = pd.Series([], dtype=object)
    total = len(trial_configs(spec)) if spec.search == "grid" else spec.n_trials
    ended = int(statuses.isin(("finished", "stopped", "diverged", "error")).sum())
    finished = int((statuses == "finished").sum())
    cut = int((statuses == "interrupted").sum())
    print(f"sweep interrupted: {finished} of {total} trials finished ({ended} ended), {cut} "
          f"interrupted; finish it with: {resume_command(spec, args)}", file=sys.stderr)


def print_outcome(outcome, spec) -> None:
    from rich.console import Console

    console = Console(highlight=False)
    counts = ", ".join(f"{n} {status}" for status, n in sorted(outcome.counts.items()))
    console.print(f"study {spec.name}: {counts} of {outcome.total} trials")
    study = load_study(outcome.study)
    trials = study.trials
    # the test MSE of each trial's best validation epoch, reported (chosen on validation)
    reported = "test_mse_at_best"
    ended = trials[trials["status"].isin(SELECTABLE)]  # diverged trials are counted, not averaged
    if len(ended) and reported in ended:
        ended = ended.assign(method=method_labels(ended))
        by = ["method"] + [c for c in ("config.eps", "config.contamination", "config.snr")
                           if c in ended and ended[c].nunique() > 1]
        summary = Study(trials=ended).summary(by=by, metrics=[reported])
        if (summary[f"{reported}_count"] == 1).all():  # one trial a group: no spread
            summary = summary.drop(columns=[f"{reported}_std", f"{reported}_count"])
        print_frame(summary.rename(columns=lambda c: c.removeprefix("config.")))
    for row in trials[trials["status"] == "error"].itertuples():
        console.print(f"[red]error[/] {row.trial_id}: {row.error}")
    console.print(f"study: {outcome.study}")
    console.print(f"query it: cryotune query {outcome.study} --by label,eps")


def print_extension(plan) -> None:
    """The extension's dry run: what it adds, and exactly the trials it would run."""
    _, study = study_paths(plan.spec)
    added = "; ".join(f"{k} +{json.dumps(v)}" for k, v in plan.added.items()) or "nothing"
    print(f"extend {study}: adds {added}")
    if plan.unfinished:  # its pending cells have no row yet: they are listed below too
        print(f"continues first: {', '.join(plan.unfinished)} (a killed run), which runs its "
              f"own cells of those below")
    print(f"new trials: {len(plan.new)} (in {plan.experiment})")
    for i, config in enumerate(plan.new):
        print(f"  trial_{plan.first_trial + i:05d}  {_label(config)}")


def print_plan(spec, *, address: str | None) -> None:
    """The dry run: trial count, resources, data; starts nothing."""
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
          f"{spec.scheduler.type}, select {spec.select.metric} ({spec.select.mode}), max_failures "
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
