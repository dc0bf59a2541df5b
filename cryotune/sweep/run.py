"""Run a sweep on Ray Tune: data once per study, trials by the CPU rule, a study store that
is always loadable, and resume after a killed driver.

The steps of :func:`run_sweep`:

1. Datasets: a store path is opened as is; an inline ``simulate:`` block is simulated once
   into ``<storage>/<name>/simulated/<spec key>/`` (reused when the study resumes). Each
   dataset is named in the study by :func:`cryotune.results.dataset_key`, and its manifest and
   gallery reference images go to ``datasets/<key>/``.
2. Ray starts through :func:`cryotune._ray.init_ray` (embedded, or joins ``address``). One
   :class:`~cryotune.data.pipeline.DataPipeline` per dataset reads the store once (kept in the
   object store when it fits, streamed from the shards otherwise) and goes to every trial with
   ``tune.with_parameters``; each trial adds only its own order, contamination and batching.
3. Trial resources follow :func:`cryotune.sweep.space.fit_resources`, fitted to the CPUs and
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

Example::

    from cryotune.sweep.spec import load_spec
    from cryotune.sweep.run import run_sweep
    outcome = run_sweep(load_spec("search_spaces/smoke.yaml"))
    print(outcome.study, outcome.counts, outcome.exit_code)
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from cryotune.errors import BadConfig
from cryotune.results import StudyStore, dataset_key, load_study
from cryotune.sweep.space import Fit, fit_resources, make_scheduler, make_search, trial_configs
from cryotune.sweep.spec import DatasetSpec, SweepSpec

if TYPE_CHECKING:  # Ray loads in run_sweep, after the environment that quiets it is set
    from cryotune.sweep.recorder import Progress

__all__ = [
    "PreparedDataset",
    "SweepOutcome",
    "prepare_datasets",
    "quiet_environment",
    "run_sweep",
    "study_paths",
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
    from cryotune._ray import prepare_env

    if not verbose:
        for key, value in _QUIET_SWEEP_ENV.items():
            os.environ.setdefault(key, value)
    prepare_env(joining=joining)


def study_paths(spec: SweepSpec) -> tuple[str, str]:
    """``(storage root, study folder)``: local folders made absolute, URIs kept as given."""
    root = spec.storage
    if root.startswith("file://"):
        root = root[len("file://"):]
    if "://" not in root:
        root = str(Path(root).expanduser().resolve())
    return root, f"{root.rstrip('/')}/{spec.name}"


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
    from cryotune.data.store import open_dataset

    out = []
    for ds in spec.dataset:
        if ds.path is not None:
            path = Path(ds.path).expanduser().resolve()
        else:
            path = _simulated_root(spec) / ds.key
            if not (path / "manifest.json").exists():
                if not create:
                    out.append(PreparedDataset(ds, path, {}, ds.key))
                    continue
                from cryotune.data.simulate import CTFParams, simulate

                log.info("simulating %s", path)
                kwargs = dict(ds.simulate)
                if "ctf" in kwargs:
                    kwargs["ctf"] = CTFParams(**kwargs["ctf"])
                simulate(path, **kwargs, command=f"cryotune sweep (study {spec.name})")
        dataset = open_dataset(path, verify=False)
        out.append(PreparedDataset(ds, path, dataset.manifest, dataset_key(dataset.manifest)))
    return out


def _check_image_sizes(spec: SweepSpec, datasets: list[PreparedDataset]) -> None:
    """Every depth of the spec must divide every dataset's image size (before Ray starts)."""
    from cryotune.config import TrainConfig
    from cryotune.nn.models import check_image_shape

    depths = {spec.train.get("depth", TrainConfig().depth)}
    depths |= {v for m in spec.methods for v in m.params.get("depth", [])}
    for d in datasets:
        for depth in sorted(depths):
            try:
                check_image_shape(tuple(d.manifest["image_shape"]), depth)
            except BadConfig as err:
                raise BadConfig(err.what, f"{err.where} (dataset {d.key})", err.fix) from None


def _gallery_size(spec: SweepSpec) -> int:
    from cryotune.config import TrainConfig

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


def run_sweep(spec: SweepSpec, *, address: str | None = None, resume: bool = False,
              verbose: bool = False, on_progress: Callable[[Progress], None] | None = None,
              provenance: Mapping[str, Any] | None = None) -> SweepOutcome:
    """Run (or resume) the sweep and record every trial in the study store.

    Args:
        spec: the validated sweep.
        address: a Ray cluster to join; None starts embedded Ray (or uses the running one).
        resume: continue the study's experiment; without it an existing study is an error.
        verbose: Ray's INFO logs and the trials' output on the console.
        on_progress: the live view's hook (see :class:`~cryotune.sweep.recorder.Progress`).
        provenance: version and command line, stamped into ``spec.yaml``.

    Returns:
        The study and its trial counts by status.

    Raises:
        BadConfig: the study exists and ``resume`` is False, or resume got another spec.
    """
    from cryotune._ray import init_ray

    quiet_environment(verbose=verbose, joining=bool(address or os.environ.get("RAY_ADDRESS")))
    from ray import tune

    from cryotune.sweep.recorder import Session, StudyRecorder
    from cryotune.sweep.trainable import run_trial

    root, study = study_paths(spec)
    restorable = tune.Tuner.can_restore(study)
    store_spec = _stored_spec(study)
    if restorable and not resume:
        raise BadConfig("the study already exists", study,
                        "add --resume to continue it, or --set name=<new name> for a new one")
    if resume:
        _check_resumable(store_spec, spec, study)
        if not restorable:
            log.warning("nothing to resume at %s: starting the study", study)
    datasets = prepare_datasets(spec)
    _check_image_sizes(spec, datasets)
    store = StudyStore(root, spec.name)
    if store_spec is None or not restorable:
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
                             validation=references, what=what),
        {"cpu": fit.cpu, "gpu": fit.gpu})
    if restorable and resume:
        tuner = tune.Tuner.restore(study, trainable=fn, resume_unfinished=True,
                                   restart_errored=True)
    else:
        param_space, search_alg, samples = make_search(spec, keys)
        tuner = tune.Tuner(
            fn, param_space=param_space,
            tune_config=tune.TuneConfig(
                metric=spec.metric, mode=spec.mode, search_alg=search_alg, num_samples=samples,
                scheduler=make_scheduler(spec), max_concurrent_trials=fit.concurrent,
                trial_name_creator=_trial_name, trial_dirname_creator=_trial_name,
                reuse_actors=True),
            run_config=tune.RunConfig(
                name=spec.name, storage_path=root, verbose=0,
                failure_config=tune.FailureConfig(max_failures=spec.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                callbacks=[StudyRecorder()]))
    total = spec.n_trials if spec.search != "grid" else len(trial_configs(spec, keys))
    previous = _statuses(store.uri)
    with Session(store, metric=spec.metric, mode=spec.mode, epochs=spec.epochs, total=total,
                 on_progress=on_progress, recorded=previous):
        with _quiet_tune_logs(verbose):
            tuner.fit()
    return SweepOutcome(study=store.uri, counts=_count(_statuses(store.uri)), total=total)


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
    from cryotune.data.pipeline import DataPipeline
    from cryotune.data.store import open_dataset

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
    from cryotune.validate.record import REFERENCES, record_references
    from cryotune.validate.study import load_reference, validate_images

    out = {}
    for d in datasets:
        ref = load_reference(d.path)
        record_references(store, d.key, d.manifest,
                          {n: validate_images(ref, getattr(ref, n), what) for n in REFERENCES})
        out[d.key] = ref
    return out


def _stored_spec(study: str) -> dict | None:
    import pyarrow.fs as pafs

    try:
        fs, path = pafs.FileSystem.from_uri(study if "://" in study else Path(study).as_uri())
        with fs.open_input_stream(f"{path}/spec.yaml") as f:
            return yaml.safe_load(f.read().decode()) or {}
    except (FileNotFoundError, OSError):
        return None


def _statuses(study: str) -> dict[str, str]:
    from cryotune.errors import BadInput

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
