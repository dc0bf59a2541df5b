"""Run a sweep on Ray Tune: data once per study, trials by the CPU rule, a study store that
is always loadable, and resume after a killed driver.

The steps of :func:`run_sweep`:

1. Datasets: a store path is opened as is; an inline ``simulate:`` block is simulated once
   into ``<storage>/<name>/simulated/<spec key>/`` (reused when the study resumes). Each
   dataset is named in the study by :func:`cryotune.study.store.dataset_key`, and its manifest and
   gallery reference images go to ``datasets/<key>/``.
2. Ray starts through :func:`cryotune._ray.init_ray` (embedded, or joins ``address``). One
   :class:`~cryotune.data.pipeline.DataPipeline` per dataset reads the store once (kept in the
   object store when it fits, streamed from the shards otherwise) and goes to every trial with
   ``tune.with_parameters``; each trial adds only its own order, contamination and batching.
3. Trial resources follow :func:`cryotune.sweep.resources.fit_resources`, fitted to the CPUs and
   GPUs of each node alive when the sweep starts, so Ray Data always has a whole CPU on some
   node (``RAY_NOTES.md``: without it reads hang). One node: trial CPUs x concurrent trials <=
   CPUs - 1. Several nodes: whole trial CPUs, trials counted node by node.
4. The Tuner runs with the study folder as its experiment folder, ``FailureConfig(max_failures)``
   (a dead worker's trial restarts from its last checkpoint) and the
   :class:`~cryotune.sweep.recorder.StudyRecorder` callback, which writes each ended trial's
   row as it ends. ``TUNE_GLOBAL_CHECKPOINT_S=0`` (set by ``init_ray``) saves Tune's state after
   every event, so a killed driver never reruns a finished trial.
5. ``resume=True`` restores the experiment with ``Tuner.restore(resume_unfinished=True,
   restart_errored=True)``; finished trials stay finished, unfinished ones continue from their
   checkpoints, errored ones start again. Trials Tune knows as ended but the table lacks (a
   driver killed between the two writes) are recorded when the experiment ends.
6. ``extend=True`` (:func:`extend_study`) grows a finished grid study: the union spec of
   :mod:`cryotune.sweep.extend` (a changed fixed setting is refused), and the cells no trial row
   holds run in a new experiment ``<study>/tune-ext-N/`` whose trials number on from the
   study's (``first_trial`` in its param space). ``spec.yaml`` becomes the union, with the
   extension in ``provenance.extensions``, before the experiment starts; so a killed extension
   continues from its own experiment folder on ``--resume`` or on the same extension again.

Example::

    from cryotune.runs.sweep import run_sweep
    from cryotune.sweep.spec import load_spec
    outcome = run_sweep(load_spec("search_spaces/smoke.yaml"))
    print(outcome.study, outcome.counts, outcome.exit_code)
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import glob
import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryotune import vocab
from cryotune._io import join, resolve, storage_root
from cryotune._lock import StudyLock
from cryotune._ray import init_ray, prepare_env
from cryotune.config import TrainConfig
from cryotune.data.ctf import CTFParams
from cryotune.data.store import open_dataset
from cryotune.errors import BadConfig, BadInput, CryotuneError
from cryotune.study.store import TRIALS_FILE, StudyStore, dataset_key, read_spec, read_table
from cryotune.study.tables import load_study
from cryotune.sweep.extend import cell_key, new_cells, row_configs, trial_index, union_spec
from cryotune.sweep.resources import Fit, fit_resources
from cryotune.sweep.space import make_scheduler, make_search, trial_configs
from cryotune.sweep.spec import DatasetSpec, SweepSpec, load_spec, spec_from_mapping
from cryotune.validate.record import REFERENCES, record_references
from cryotune.validate.reference import load_reference, validate_images

if TYPE_CHECKING:  # Ray loads in run_sweep, after the environment that quiets it is set
    from cryotune.sweep.recorder import Progress

__all__ = [
    "ExtensionPlan",
    "PreparedDataset",
    "SweepOutcome",
    "at_study",
    "extend_study",
    "plan_extension",
    "planned_trials",
    "prepare_datasets",
    "quiet_environment",
    "run_sweep",
    "study_paths",
    "trial_count",
]

log = logging.getLogger(__name__)

# Quiet on top of cryotune._ray.QUIET_ENV: Ray Data's progress bars (tqdm reads TQDM_DISABLE
# when imported), and Tune's warning about saving its state often, which
# TUNE_GLOBAL_CHECKPOINT_S=0 asks for on purpose.
_QUIET_SWEEP_ENV = {
    "TQDM_DISABLE": "1",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
}


@dataclasses.dataclass
class PreparedDataset:
    """A spec dataset ready to read: its store folder, manifest and key in the study."""

    spec: DatasetSpec
    path: Path
    manifest: dict
    key: str

    @property
    def snr(self) -> float | None:
        value = self.manifest.get("snr")
        return float(value) if value is not None else self.spec.snr


@dataclasses.dataclass
class SweepOutcome:
    """How a sweep ended: the study's location and its trials by status."""

    study: str
    counts: dict[str, int]
    total: int

    @property
    def exit_code(self) -> int:
        """0 when every trial ended (finished, stopped, diverged), 1 when some errored."""
        return 1 if self.counts.get("error") else 0


def quiet_environment(*, verbose: bool = False, joining: bool = False) -> None:
    """Set the environment Ray, Ray Data and tqdm read when first imported: call it before
    anything imports them (:func:`run_sweep` does, for the parts still to come).

    Args:
        verbose: keep Ray Data's progress bars and Tune's checkpoint warnings.
        joining: a cluster is joined (its token must be in the environment).
    """
    if not verbose:
        for key, value in _QUIET_SWEEP_ENV.items():
            os.environ.setdefault(key, value)
    prepare_env(joining=joining)


def study_paths(spec: SweepSpec) -> tuple[str, str]:
    """``(storage root, study folder)``: local folders made absolute, URIs kept as given."""
    root = storage_root(spec.storage)
    return root, join(root, spec.name)


def _simulated_root(spec: SweepSpec) -> Path:
    root, study = study_paths(spec)
    if "://" in root:  # simulate() writes local files: keep them in the user's cache
        cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
        return cache / "cryotune" / "simulated"
    return Path(study) / "simulated"


def prepare_datasets(spec: SweepSpec, *, create: bool = True) -> list[PreparedDataset]:
    """Open every dataset of the spec, simulating the inline ones that do not exist yet.

    Args:
        spec: the sweep.
        create: simulate missing datasets (False: a dry run, which lists them only).

    Returns:
        The datasets in spec order; a dataset still to simulate has an empty manifest.
    """
    out = []
    for ds in spec.dataset:
        if ds.path is not None:
            path = Path(ds.path).expanduser().resolve()
        else:
            path = _simulated_root(spec) / ds.key
            if not (path / "manifest.json").exists():
                if not create:
                    out.append(PreparedDataset(ds, path, {}, _recorded_key(spec, ds.key)))
                    continue
                with _simulation_lock(path):  # another sweep may simulate the same data
                    if not (path / "manifest.json").exists():
                        _simulate(spec, ds, path)
        dataset = open_dataset(path, verify=False)
        out.append(PreparedDataset(ds, path, dataset.manifest, dataset_key(dataset.manifest)))
    return out


def _recorded_key(spec: SweepSpec, name: str) -> str:
    """The content key the study recorded for inline dataset ``name`` (its
    ``datasets/<name>-<checksum>/`` folder: a study copied without its simulated data, as the
    committed ones are), else ``name``; a dry run's rows then pair with the study's."""
    _, study = study_paths(spec)
    if "://" not in study:
        found = sorted(Path(study, "datasets").glob(f"{glob.escape(name)}-*/manifest.json"))
        if len(found) == 1:
            return found[0].parent.name
    return name


def _simulate(spec: SweepSpec, ds: DatasetSpec, path: Path) -> None:
    from cryotune.data.simulate import simulate

    log.info("simulating %s", path)
    kwargs = dict(ds.simulate)
    if "ctf" in kwargs:
        kwargs["ctf"] = CTFParams(**kwargs["ctf"])
    simulate(path, **kwargs, command=f"cryotune sweep (study {spec.name})")


@contextlib.contextmanager
def _simulation_lock(path: Path):
    """Hold ``.<name>.lock`` next to a dataset to simulate, so that two sweeps asking for the
    same inline data (studies sharing the simulation cache) simulate it once: the second
    waits, then reuses the first's store."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another sweep that simulates %s", path)
            fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _check_image_sizes(spec: SweepSpec, datasets: list[PreparedDataset]) -> None:
    """Every depth of the spec must divide every dataset's image size (before Ray starts)."""
    from cryotune.nn.models import check_image_shape  # torch: not for a dry run

    depths = {spec.train.get("depth", TrainConfig().depth)}
    depths |= {v for m in spec.methods for v in m.params.get("depth", [])}
    for d in datasets:
        for depth in sorted(depths):
            try:
                check_image_shape(tuple(d.manifest["image_shape"]), depth)
            except BadConfig as err:
                raise BadConfig(err.what, f"{err.where} (dataset {d.key})", err.fix) from None


def _check_oracle(spec: SweepSpec, datasets: list[PreparedDataset]) -> None:
    """An oracle selection score reads clean validation pairs, which only a simulation has."""
    if not spec.select.oracle:
        return
    for d in datasets:
        if d.manifest.get("kind") != "simulated":
            raise BadConfig(f"{spec.select.metric} needs clean validation pairs, and dataset "
                            f"{d.key} is {d.manifest.get('kind') or 'not simulated'}",
                            "select.metric", "select on val_mse_median (the oracle score is "
                            "for simulated data, to measure the robust score against it)")


def _gallery_size(spec: SweepSpec) -> int:
    sizes = [spec.train.get("gallery", TrainConfig().gallery)]
    sizes += [v for m in spec.methods for v in m.params.get("gallery", [])]
    return max(sizes)


def _trial_name(trial: Any) -> str:
    from cryotune.sweep.recorder import study_trial_id

    return study_trial_id(trial)


def _check_resumable(store_spec: Mapping[str, Any] | None, spec: SweepSpec, study: str) -> None:
    if store_spec is None:
        return
    ignore = ("provenance", "scales", "name", "storage")  # these two found the study
    old = {k: v for k, v in store_spec.items() if k not in ignore}
    new = {k: v for k, v in spec.raw.items() if k not in ignore}
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if changed:
        raise BadConfig(f"the spec differs from the study's spec.yaml in {', '.join(changed)}",
                        study, "resume with the same spec (or the study folder itself), or "
                        "start a new study with --set name=...")


def _locked(fn: Callable[..., SweepOutcome]) -> Callable[..., SweepOutcome]:
    """Run ``fn(spec, ...)`` holding the study's lock (:class:`cryotune._lock.StudyLock`):
    one writer per study, a second sweep or resume is refused with the holder's name."""

    @functools.wraps(fn)
    def run(spec: SweepSpec, *args: Any, **kwargs: Any) -> SweepOutcome:
        command = dict(kwargs.get("provenance") or {}).get("command") or "cryotune.run_sweep"
        with StudyLock(study_paths(spec)[1], command=command):
            return fn(spec, *args, **kwargs)

    return run


@_locked
def run_sweep(spec: SweepSpec, *, address: str | None = None, resume: bool = False,
              extend: bool = False,
              verbose: bool = False, on_progress: Callable[[Progress], None] | None = None,
              provenance: Mapping[str, Any] | None = None) -> SweepOutcome:
    """Run (or resume, or extend) the sweep and record every trial in the study store.

    Args:
        spec: the validated sweep.
        address: a Ray cluster to join; None starts embedded Ray (or uses the running one).
        resume: continue the study's experiment; without it an existing study is an error.
            An extended study's unfinished extensions continue too.
        extend: grow the existing study ``<storage>/<name>`` by the spec's grid axes and run
            only the cells no trial holds, in a new Tune experiment ``<study>/tune-ext-N/``
            (:func:`extend_study`); a killed extension continues first.
        verbose: Ray's INFO logs and the trials' output on the console.
        on_progress: the live view's hook (see :class:`~cryotune.sweep.recorder.Progress`).
        provenance: version and command line, stamped into ``spec.yaml``.

    Returns:
        The study and its trial counts by status.

    Raises:
        BadConfig: the study exists and ``resume`` is False, or resume got another spec.
    """
    quiet_environment(verbose=verbose, joining=bool(address or os.environ.get("RAY_ADDRESS")))
    # Ctrl-C raises KeyboardInterrupt here, as SIGTERM does through cryotune.cli, instead of
    # Tune's own handler, which ends the run as if it had finished and marks the running
    # trials ended; the experiment state is saved after every event (TUNE_GLOBAL_CHECKPOINT_S)
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    # Ray Tune and the modules that import it, after the environment that quiets Ray is set
    from ray import tune

    from cryotune.sweep.recorder import FIRST_TRIAL, StudyRecorder
    from cryotune.sweep.trainable import run_trial

    root, study = study_paths(spec)
    restorable = tune.Tuner.can_restore(study)
    store_spec = read_spec(*resolve(study))
    plan = None
    if extend:
        plan = plan_extension(spec)
        spec = plan.spec
    elif restorable and not resume:
        raise BadConfig("the study already exists", study,
                        "add --resume to continue it, or --set name=<new name> for a new one")
    if resume and not extend:
        _check_resumable(store_spec, spec, study)
        if not restorable:
            log.warning("nothing to resume at %s: starting the study", study)
        elif _set_aside_unreadable_table(study):
            log.warning("%s is unreadable: set aside; the sweep's rows are rebuilt from Ray "
                        "Tune's experiment as the resumed sweep ends (rows of `cryotune "
                        "baselines` are not: run it again)", join(study, TRIALS_FILE))
    datasets = prepare_datasets(spec)
    _check_image_sizes(spec, datasets)
    _check_oracle(spec, datasets)
    store = StudyStore(root, spec.name)
    if plan is None and (store_spec is None or not restorable):
        store.write_spec({**spec.raw, "provenance": dict(provenance or {})})
    init_ray(address, verbose=verbose)
    fit = _fit(spec)
    pipelines, gallery = _pipelines(spec, datasets, store)
    keys = {d.spec.key: (d.key, d.snr) for d in datasets}
    what = tuple(spec.validate)
    references = _references(datasets, what, store) if what else None
    fn = tune.with_resources(
        tune.with_parameters(run_trial, pipelines=pipelines, gallery=gallery,
                             threads=fit.threads, gpu_share=fit.gpu,
                             validation=references, what=what,
                             select_metric=spec.select.metric, select_mode=spec.select.mode,
                             oracle=True if spec.select.oracle else None),
        {"cpu": fit.cpu, "gpu": fit.gpu})
    total = trial_count(spec, keys)

    def tuner_for(param_space, search_alg, samples, storage_path, name):
        return tune.Tuner(
            fn, param_space=param_space,
            tune_config=tune.TuneConfig(
                search_alg=search_alg, num_samples=samples,
                scheduler=make_scheduler(spec),  # both judge on spec.select
                max_concurrent_trials=fit.concurrent,
                trial_name_creator=_trial_name, trial_dirname_creator=_trial_name,
                reuse_actors=True),
            run_config=tune.RunConfig(
                name=name, storage_path=storage_path, verbose=0,
                failure_config=tune.FailureConfig(max_failures=spec.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                callbacks=[StudyRecorder()]))

    def restored(path, *, restart_errored=True):
        # restoring reads each trial's result files, which this sweep does not write
        # (TUNE_DISABLE_AUTO_CALLBACK_LOGGERS): quiet its warning about them
        with _quiet_tune_logs(verbose):
            return tune.Tuner.restore(path, trainable=fn, resume_unfinished=True,
                                      restart_errored=restart_errored)

    run = functools.partial(_fit_experiment, store=store, spec=spec, total=total,
                            on_progress=on_progress, verbose=verbose)
    extensions = _extensions(store_spec)
    statuses = _statuses(store.uri)
    if plan is not None:  # an extension: finish what a killed run left, keep ended trials
        for path, ids in _experiments(study, store_spec, extensions):
            if _unfinished(ids, statuses, errors=False) and tune.Tuner.can_restore(path):
                run(restored(path, restart_errored=False))
    else:
        if restorable and resume:
            tuner = restored(study)
        else:
            tuner = tuner_for(*make_search(spec, keys), root, spec.name)
        run(tuner)
        for path, ids in _experiments(study, store_spec, extensions)[1:] if extensions else []:
            if tune.Tuner.can_restore(path) and _unfinished(ids, statuses, errors=True):
                run(restored(path))
    if plan is not None or extensions:
        new = _new_cells(spec, keys, store.uri)
        if new:
            record = _extension_record(study, store_spec, extensions, store.uri, len(new),
                                       plan, provenance)
            stored = dict(read_spec(*resolve(study)) or {})
            history = [*extensions[: record["index"]], record["entry"]]
            store.write_spec({**spec.raw, "provenance": {
                **dict(stored.get("provenance") or {}), "extensions": history}})
            entry = record["entry"]
            log.info("extension %s: %d new trials from %s", entry["experiment"], len(new),
                     f"trial_{entry['first_trial']:05d}")
            run(tuner_for({"t": tune.grid_search(new), FIRST_TRIAL: entry["first_trial"]},
                          None, 1, study, entry["experiment"]))
    return SweepOutcome(study=store.uri, counts=_count(_statuses(store.uri)), total=total)


def _fit_experiment(tuner: Any, *, store: StudyStore, spec: SweepSpec, total: int,
                    on_progress: Callable[[Progress], None] | None, verbose: bool) -> None:
    """One Tune experiment's ``fit()`` in a recording :class:`~cryotune.sweep.recorder.Session`."""
    from cryotune.sweep.recorder import Session

    previous = _statuses(store.uri)
    # interrupted trials run again: their rows are replaced, even when Tune saw them end
    recorded = {k: v for k, v in previous.items() if v != "interrupted"}
    with Session(store, metric=spec.select.metric, mode=spec.select.mode, epochs=spec.epochs,
                 total=total,
                 on_progress=on_progress, recorded=recorded) as session:
        with _quiet_tune_logs(verbose):
            try:
                tuner.fit()
            except KeyboardInterrupt:  # Ctrl-C, or SIGTERM through cryotune.cli
                session.interrupted()
                raise


# -- extending a study -----------------------------------------------------------------------

@dataclasses.dataclass
class ExtensionPlan:
    """What ``--extend`` will do: the union spec, what it adds and the trials it runs.

    ``new`` are the cells of the union grid no trial row holds (trial configs, in grid order),
    to run as ``trial_<first_trial>`` on in the experiment ``<study>/<experiment>``;
    ``unfinished`` are the study's experiments a killed run left, which continue first.
    """

    spec: SweepSpec
    added: dict[str, Any]
    new: list[dict]
    first_trial: int
    experiment: str
    unfinished: list[str]


def extend_study(study: str | Path, spec: SweepSpec | str | Path, **kwargs: Any) -> SweepOutcome:
    """Grow a finished grid study by a spec's axes and run only its missing cells.

    Each grid axis of the study (methods, lambda, reduction, eps, contamination, seeds)
    becomes the union of the study's values and the spec's
    (:func:`cryotune.sweep.extend.union_spec`); the cells of that grid that no trial row holds
    run in a new Tune experiment ``<study>/tune-ext-N/``, numbered on from the study's trials.
    Existing trials are never run again nor rewritten; ``spec.yaml`` becomes the union, with
    each extension in ``provenance.extensions``. A killed extension continues when extended
    again or resumed (``cryotune sweep STUDY --resume``).

    Args:
        study: the study folder or URI.
        spec: the extension (a SweepSpec or a YAML path); its name and storage are the study's.
        **kwargs: :func:`run_sweep`'s ``address``, ``verbose``, ``on_progress``, ``provenance``.

    Returns:
        The study's outcome (every trial, old and new, by status).

    Raises:
        BadConfig: the study does not exist, is not a grid, or the spec changes a setting
            other than a grid axis (naming the key and both values).

    Example::

        import cryotune
        cryotune.extend_study("studies/smoke", "search_spaces/smoke.yaml")
    """
    if not isinstance(spec, SweepSpec):
        spec = load_spec(spec)
    return run_sweep(at_study(spec, study), extend=True, **kwargs)


def at_study(spec: SweepSpec, study: str | Path) -> SweepSpec:
    """``spec`` renamed to the study at ``study`` (its name and storage)."""
    text = str(study).rstrip("/")
    if "://" in text:
        storage, name = text.rsplit("/", 1)
    else:
        path = Path(text).expanduser().resolve()
        storage, name = str(path.parent), path.name
    return spec_from_mapping({**spec.raw, "name": name, "storage": storage})


def plan_extension(spec: SweepSpec) -> ExtensionPlan:
    """Check an extension of the study ``<spec.storage>/<spec.name>`` and list its new trials;
    starts nothing (the dry run's plan, and the first step of ``run_sweep(extend=True)``).

    Raises:
        BadConfig: no study there, a study that is not a grid, or a changed fixed setting.
    """
    _, study = study_paths(spec)
    fs, path = resolve(study)
    stored = read_spec(fs, path)
    table = read_table(fs, join(path, TRIALS_FILE))
    if stored is None or table is None:
        raise BadConfig("no study to extend here (no spec.yaml and trials.parquet)", study,
                        "run the sweep first, then extend it with --extend")
    union, added = union_spec(stored, spec, legacy_reduction=_legacy_reduction(
        stored, table.to_pandas()))
    datasets = prepare_datasets(union, create=False)
    keys = {d.spec.key: (d.key, d.snr) for d in datasets}
    extensions = _extensions(stored)
    statuses = _statuses(study)
    unfinished = [p.rsplit("/", 1)[-1] for p, ids in _experiments(study, stored, extensions)
                  if _unfinished(ids, statuses, errors=False)]
    new = _new_cells(union, keys, study)
    first = _next_trial(stored, extensions, statuses)
    return ExtensionPlan(union, added, new, first, f"tune-ext-{len(extensions) + 1}",
                         unfinished)


def _legacy_reduction(stored: Mapping[str, Any], trials: Any) -> bool:
    """The study's adversarial rows predate ``reduction`` and its spec names none."""
    methods = [m for m in stored.get("methods") or [] if isinstance(m, Mapping)]
    if "reduction" in stored or "reduction" in (stored.get("train") or {}) or any(
            "reduction" in m for m in methods):
        return False
    if "config.method" not in trials:
        return False
    gan = trials["config.method"].isin(vocab.ADVERSARIAL)
    if "config.reduction" not in trials:
        return bool(gan.any())
    return bool((gan & trials["config.reduction"].isna()).any())


def _extensions(stored: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    return [dict(e) for e in ((stored or {}).get("provenance") or {}).get("extensions") or []]


def _experiments(study: str, stored: Mapping[str, Any] | None,
                 extensions: list[dict[str, Any]]) -> list[tuple[str, list[str]]]:
    """The study's Tune experiments, first the sweep's own, then each extension's: (folder,
    its trial ids)."""
    if extensions:
        main = int(extensions[0]["first_trial"])
    else:
        main = planned_trials(stored or {}) or 0
    out = [(study, [f"trial_{i:05d}" for i in range(main)])]
    for e in extensions:
        first = int(e["first_trial"])
        out.append((join(study, e["experiment"]),
                    [f"trial_{i:05d}" for i in range(first, first + int(e["trials"]))]))
    return out


def _unfinished(ids: list[str], statuses: Mapping[str, str], *, errors: bool) -> bool:
    """Some trial has no row, or was cut short (or errored, with ``errors``)."""
    again = {"interrupted", "running", "pending"} | ({"error"} if errors else set())
    return any(statuses.get(i) is None or statuses[i] in again for i in ids)


def _new_cells(spec: SweepSpec, keys: Mapping[str, tuple[str, float | None]],
               study: str) -> list[dict]:
    """The cells of the spec's grid that no row of the study holds."""
    try:
        trials = load_study(study).trials
    except BadInput:
        return trial_configs(spec, keys)
    return new_cells(trial_configs(spec, keys), {cell_key(c) for c in row_configs(trials)})


def _next_trial(stored: Mapping[str, Any], extensions: list[dict[str, Any]],
                statuses: Mapping[str, str]) -> int:
    used = [i + 1 for i in map(trial_index, statuses) if i is not None]
    used += [int(e["first_trial"]) + int(e["trials"]) for e in extensions]
    if not extensions:
        used.append(planned_trials(stored) or 0)
    return max(used, default=0)


def _extension_record(study: str, stored: Mapping[str, Any] | None,
                      extensions: list[dict[str, Any]], uri: str, trials: int,
                      plan: ExtensionPlan | None, provenance: Mapping[str, Any] | None
                      ) -> dict[str, Any]:
    """The ``provenance.extensions`` entry of the experiment that runs the new cells, and its
    index: the last entry again when its experiment never started (killed before Tune saved
    its state), else a new one."""
    from ray import tune

    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if extensions and not tune.Tuner.can_restore(join(study, extensions[-1]["experiment"])):
        return {"index": len(extensions) - 1,
                "entry": {**extensions[-1], "trials": trials, "restarted_at": when}}
    entry = {"experiment": f"tune-ext-{len(extensions) + 1}",
             "first_trial": _next_trial(stored or {}, extensions, _statuses(uri)),
             "trials": trials, "added": plan.added if plan is not None else {},
             "started_at": when, **dict(provenance or {})}
    return {"index": len(extensions), "entry": entry}


def trial_count(spec: SweepSpec, datasets: Mapping[str, tuple[str, float | None]] | None = None
                ) -> int:
    """How many trials the sweep runs: the grid's size, else ``n_trials``."""
    return spec.n_trials if spec.search != "grid" else len(trial_configs(spec, datasets))


def planned_trials(stored: Mapping[str, Any]) -> int | None:
    """The trial count a study's stored ``spec.yaml`` asks for; None when it does not parse
    here (written by another version)."""
    # metric/mode: a study from before select (its count does not depend on them)
    raw = {k: v for k, v in stored.items() if k not in ("provenance", "metric", "mode")}
    try:
        return trial_count(spec_from_mapping(raw))
    except CryotuneError:
        return None


@contextlib.contextmanager
def _quiet_tune_logs(verbose: bool):
    """Tune's per-trial result files are off (TUNE_DISABLE_AUTO_CALLBACK_LOGGERS): its analysis
    would warn that it cannot read them. Trial errors go to the study and the live view (with
    the traceback in the trial's error.txt); Tune logs them again unless ``verbose``."""
    levels = {"ray.tune.analysis.experiment_analysis": logging.ERROR}
    if not verbose:
        levels.update({"ray.tune.execution.tune_controller": logging.CRITICAL,
                       "ray.tune.tune": logging.CRITICAL})
    saved = {name: logging.getLogger(name).level for name in levels}
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    try:
        yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def _fit(spec: SweepSpec) -> Fit:
    """Fit the trials to the nodes alive now; nodes an autoscaler adds later are not counted."""
    import ray

    nodes = [n["Resources"] for n in ray.nodes() if n["Alive"]]
    fit = fit_resources(spec, [r.get("CPU", 0) for r in nodes], [r.get("GPU", 0) for r in nodes])
    limit = spec.max_concurrent
    if fit.adjusted or (limit is not None and fit.concurrent < limit):
        log.warning("trials get %g CPU each (asked %g), %d at once (max_concurrent %s): %s",
                    fit.cpu, spec.resources.cpu, fit.concurrent, limit, fit.rule)
    return fit


def _pipelines(spec: SweepSpec, datasets: list[PreparedDataset], store: StudyStore):
    """One pipeline and the gallery images per dataset; the gallery is stored in the study."""
    from cryotune.data.pipeline import DataPipeline  # Ray Data: after quiet_environment()

    n = _gallery_size(spec)
    pipelines, gallery = {}, {}
    for d in datasets:
        pipelines[d.key] = DataPipeline.from_store(d.path)
        ref = open_dataset(d.path, verify=False).read("test", ["id", "clean", "noisy"], stop=n)
        gallery[d.key] = ref["noisy"]
        store.write_dataset(d.key, d.manifest, {"gallery_clean": ref["clean"],
                                                "gallery_noisy": ref["noisy"],
                                                "gallery_ids": ref["id"]})
    return pipelines, gallery


def _references(datasets: list[PreparedDataset], what: tuple[str, ...], store: StudyStore):
    """Each dataset's validation reference for the trials; the clean and noisy test images'
    own validation goes to the study once, next to the dataset."""
    out = {}
    for d in datasets:
        ref = load_reference(d.path)
        record_references(store, d.key, d.manifest,
                          {n: validate_images(ref, getattr(ref, n), what) for n in REFERENCES})
        out[d.key] = ref
    return out


def _set_aside_unreadable_table(study: str) -> str | None:
    """Rename an unreadable ``trials.parquet`` to ``trials.parquet.unreadable-<time>``; the
    path it got, or None when the table reads (or does not exist)."""
    fs, path = resolve(study)
    table = join(path, TRIALS_FILE)
    try:
        read_table(fs, table)
        return None
    except BadInput:
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        aside = f"{table}.unreadable-{stamp}"
        fs.move(table, aside)
        return aside


def _statuses(study: str) -> dict[str, str]:
    try:
        trials = load_study(study).trials
    except BadInput:
        return {}
    return dict(zip(trials["trial_id"].astype(str), trials["status"], strict=True))


def _count(statuses: Mapping[str, str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for status in statuses.values():
        out[status] = out.get(status, 0) + 1
    return out
