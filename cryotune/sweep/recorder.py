"""Driver-side recording: every ended trial becomes a row of the study store, live.

:class:`StudyRecorder` is a Ray Tune callback. When a trial ends (finished, stopped early by
ASHA, diverged, or errored) it writes the trial's row and per-epoch history with
:meth:`cryotune.study.store.StudyStore.record_trial`, and its gallery with ``write_array``. The
history is the union of the trial's last checkpoint (``history.json``, which survives worker
restarts and driver restarts) and the results this driver saw after it; an epoch seen twice
keeps its last record.

Tune pickles its callbacks into the experiment state, and a restored run uses the pickled
copy. The recorder therefore keeps nothing itself: it forwards to the :class:`Session` that
:func:`cryotune.runs.sweep.run_sweep` opens for the duration of one ``fit()``. Each trial's
history is a part file; the session merges them into one file every :data:`COMPACT_EVERY`
trials and when it closes (:meth:`cryotune.study.store.StudyStore.compact_history`), so a finished
sweep leaves one history file and a report of a large study opens a few files, not thousands.

Example::

    with Session(store, metric="val_mse_median", mode="min", epochs=10, total=6) as session:
        tuner = tune.Tuner(..., run_config=tune.RunConfig(callbacks=[StudyRecorder()]))
        tuner.fit()
    print(sorted(session.recorded))
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from ray import tune

from cryotune.errors import CryotuneError
from cryotune.nn.train import CHECKPOINT_NAME
from cryotune.study.store import SELECTION, StudyStore, finite_or_none
from cryotune.sweep.trainable import GALLERY_FILE, HISTORY_FILE
from cryotune.validate.record import VALIDATION_FILE, from_bytes, record_trial_validation

__all__ = ["FIRST_TRIAL", "Progress", "Session", "StudyRecorder", "study_trial_id", "trial_row"]

log = logging.getLogger(__name__)

# reported values that are bookkeeping, not metrics
_BOOKKEEPING = {"diverged", "error", "node_id", "started_at", "ended_at", "resumed_from"}
_NOT_METRICS = _BOOKKEEPING | {"epoch", "test_images"}
# Tune's own result keys
_TUNE_KEYS = {"timestamp", "checkpoint_dir_name", "should_checkpoint", "done", "training_iteration",
              "trial_id", "date", "time_this_iter_s", "time_total_s", "pid", "hostname",
              "node_ip", "config", "time_since_restore", "iterations_since_restore",
              "experiment_tag"}
_ACTIVE: Session | None = None
# param-space key of an extension's experiment: the study index of its first trial
FIRST_TRIAL = "first_trial"
# history parts between compactions: a compaction rewrites the study's history (~1 s a million
# rows), while reading 1,000 parts costs about as much
COMPACT_EVERY = 1000


@dataclass
class Progress:
    """What the live view shows: trial counts by state, the best trial so far, elapsed time."""

    total: int
    finished: int = 0
    running: int = 0
    pending: int = 0
    failed: int = 0
    best: tuple[float, str, dict] | None = None  # (selection score, trial id, trial config)
    metric: str = ""  # the selection score's name (the study's select.metric)
    elapsed: float = 0.0
    ended: list[dict] = field(default_factory=list)  # rows recorded since the last update


class Session:
    """One ``fit()``'s live state: the study store, the results seen, the progress.

    Args:
        store: the study store to record into.
        metric, mode: the study's selection score (``select``): its name in each row, and
            the best trial so far in the live view.
        epochs: epochs per trial (a trial that ended earlier without diverging was stopped).
        total: trials in the study.
        on_progress: called with a :class:`Progress` at most twice a second and at each end.
        recorded: trial ids already in the study's table (a resumed or extended study), or
            a mapping of them to their status; those not in this session's experiment (an
            extension's earlier trials) count in the live view as they ended.
        compact_every: merge the history's part files when this many have accumulated; they
            are merged in any case when the session closes.
    """

    def __init__(self, store: StudyStore, *, metric: str, mode: str, epochs: int, total: int,
                 on_progress: Callable[[Progress], None] | None = None,
                 recorded: Iterable[str] | Mapping[str, str] = (),
                 compact_every: int = COMPACT_EVERY):
        self.store, self.metric, self.mode, self.epochs = store, metric, mode, epochs
        self.compact_every = compact_every
        self.progress = Progress(total=total, metric=metric)
        self.on_progress = on_progress
        self._before = (dict(recorded) if isinstance(recorded, Mapping)
                        else dict.fromkeys(recorded, "finished"))
        self.recorded = set(self._before)
        self._results: dict[str, list[dict]] = defaultdict(list)
        self._start = time.monotonic()
        self._shown = 0.0
        self._trials: list[Any] = []  # Tune's trials at the last event
        self._ended: dict[str, str] = {}  # rows recorded in this session: trial id -> status
        self._seed_best()

    def _seed_best(self) -> None:
        """The best of the trials a resumed study already holds, so that the live view's best
        counts them too."""
        for trial_id, row in self.store.rows().items():
            if row.get("status") not in ("finished", "stopped"):
                continue
            value = (row.get("select_score") if row.get("select_metric") == self.metric
                     else row.get(f"best_{self.metric}", row.get(self.metric)))
            value = finite_or_none(value)
            if value is None:
                continue
            best = self.progress.best
            if best is None or (value < best[0] if self.mode == "min" else value > best[0]):
                config = {k.removeprefix("config."): v for k, v in row.items()
                          if k.startswith("config.") and v is not None and v == v}  # not NaN
                self.progress.best = (value, str(trial_id), config)

    def __enter__(self) -> Session:
        global _ACTIVE
        _ACTIVE = self
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: Any) -> None:
        global _ACTIVE
        _ACTIVE = None
        if kind is None or issubclass(kind, Exception):  # not on Ctrl-C: stop promptly
            self.compact()

    def compact(self) -> None:
        """Merge the study's history files; a failure leaves the parts, which read as well."""
        try:
            self.store.compact_history()
        except (CryotuneError, OSError) as err:
            log.warning("history of %s left in part files: %s", self.store.uri, err)

    # -- events -----------------------------------------------------------------------------
    def result(self, trial: Any, result: Mapping[str, Any]) -> None:
        self._results[study_trial_id(trial)].append(dict(result))
        value = finite_or_none(result.get(self.metric))
        if value is not None and not result.get("diverged"):
            best = self.progress.best
            better = best is None or (value < best[0] if self.mode == "min" else value > best[0])
            if better:
                self.progress.best = (value, study_trial_id(trial), dict(trial.config.get("t", {})))

    def ended(self, trial: Any, error: BaseException | str | None) -> None:
        row, history = trial_row(
            study_trial_id(trial), trial.config.get("t", {}), trial.last_result or {},
            self._results.pop(study_trial_id(trial), []), trial.checkpoint, error,
            metric=self.metric, epochs=self.epochs)
        row["restarts"] = _restarts(trial, error)
        self.record(row, history, trial.checkpoint)

    def record(self, row: dict, history: list[dict], checkpoint: Any) -> None:
        row["checkpoint"] = _checkpoint_uri(checkpoint)
        validation = _read_checkpoint_file(checkpoint, VALIDATION_FILE)
        if validation is not None:
            row["validation"] = record_trial_validation(self.store, row["trial_id"],
                                                        from_bytes(validation))
        self.store.record_trial(row, history)
        gallery = _read_checkpoint_file(checkpoint, GALLERY_FILE)
        if gallery is not None:
            self.store.write_array(row["trial_id"], "gallery", np.load(io.BytesIO(gallery)))
        self.recorded.add(row["trial_id"])
        self._ended[row["trial_id"]] = row["status"]
        self.progress.ended.append(row)
        log.debug("recorded trial %s: %s", row["trial_id"], row["status"])
        if self.store.history_parts >= self.compact_every:
            self.compact()

    def finish(self, trials: list[Any]) -> None:
        """Record the ended trials the table lacks (a driver killed between Tune's state save
        and the row's write)."""
        for trial in trials:
            if trial.status in ("TERMINATED", "ERROR") and \
                    study_trial_id(trial) not in self.recorded:
                self.ended(trial, _trial_error(trial) if trial.status == "ERROR" else None)
        self.step(trials, force=True)

    def interrupted(self) -> list[str]:
        """Record the trials that were running when the sweep was interrupted (Ctrl-C or
        SIGTERM of the driver) as ``interrupted``: no result, rerun by ``--resume``. A trial
        Tune had already ended gets its ordinary row. Returns the interrupted trials' ids."""
        out = []
        for trial in self._trials:
            trial_id = study_trial_id(trial)
            if trial_id in self._ended:
                continue
            if trial.status in ("TERMINATED", "ERROR"):
                if trial_id not in self.recorded:
                    self.ended(trial, _trial_error(trial) if trial.status == "ERROR" else None)
                continue
            seen = self._results.pop(trial_id, [])
            if trial.status == "PENDING" and not seen and trial.checkpoint is None:
                continue  # never started: it runs on resume like any pending trial
            row, history = trial_row(
                trial_id, trial.config.get("t", {}), trial.last_result or {}, seen,
                trial.checkpoint, None, metric=self.metric, epochs=self.epochs)
            row["status"], row["error"] = "interrupted", "the sweep was interrupted"
            row["restarts"] = _restarts(trial, None)
            self.record(row, history, trial.checkpoint)
            out.append(trial_id)
        return out

    def step(self, trials: list[Any], *, force: bool = False) -> None:
        self._trials = list(trials)
        now = time.monotonic()
        if self.on_progress is None or (not force and now - self._shown < 0.5):
            return
        self._shown = now
        # a trial whose row was just written is still RUNNING to Tune until its actor stops
        states = [("ERROR" if self._ended[study_trial_id(t)] == "error" else "TERMINATED")
                  if t.status not in ("TERMINATED", "ERROR") and study_trial_id(t) in self._ended
                  else t.status for t in trials]
        p = self.progress
        ids = {study_trial_id(t) for t in trials}
        earlier = [status for trial_id, status in self._before.items()
                   if trial_id not in ids and trial_id.startswith("trial_")]  # not baselines
        failed_earlier = sum(status == "error" for status in earlier)
        p.running = states.count("RUNNING")
        p.pending = states.count("PENDING") + max(0, p.total - len(trials) - len(earlier))
        p.finished = states.count("TERMINATED") + len(earlier) - failed_earlier
        p.failed = states.count("ERROR") + failed_earlier
        p.elapsed = now - self._start
        self.on_progress(p)
        p.ended = []


class StudyRecorder(tune.Callback):
    """Tune callback that forwards trial events to the active :class:`Session` (stateless, so
    the copy Tune pickles into its experiment state works after a restore)."""

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if _ACTIVE is not None:
            _ACTIVE.result(trial, result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        if _ACTIVE is not None:
            _ACTIVE.ended(trial, None)
            _ACTIVE.step(trials, force=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        if _ACTIVE is not None:
            _ACTIVE.ended(trial, _trial_error(trial))
            _ACTIVE.step(trials, force=True)

    def on_step_end(self, iteration, trials, **info):
        if _ACTIVE is not None:
            _ACTIVE.step(trials)

    def on_experiment_end(self, trials, **info):
        if _ACTIVE is not None:
            _ACTIVE.finish(trials)


# -- rows -------------------------------------------------------------------------------------

def study_trial_id(trial: Any) -> str:
    """``trial_00003``: the trial's place in the study, kept when Tune restarts an errored
    trial under a new Tune id; also its folder in the experiment. An extension's experiment
    numbers on from the study's trials (its param space's :data:`FIRST_TRIAL`)."""
    first = int((getattr(trial, "config", None) or {}).get(FIRST_TRIAL, 0))
    return f"trial_{first + int(str(trial.experiment_tag).split('_')[0]):05d}"


def trial_row(trial_id: str, config: Mapping[str, Any], last: Mapping[str, Any],
              seen: list[Mapping[str, Any]], checkpoint: Any, error: BaseException | str | None,
              *, metric: str, epochs: int) -> tuple[dict, list[dict]]:
    """One study row and its history from what Tune knows of an ended trial.

    Args:
        trial_id: Tune's trial id.
        config: the trial config (the study's ``config.*`` columns).
        last: the last reported result (empty when the trial never reported).
        seen: results this driver saw, in order (epochs after the last checkpoint).
        checkpoint: the trial's latest ``tune.Checkpoint`` or None.
        error: the trial's error when it errored.
        metric: the study's selection score (``select.metric``), named in ``select_metric``;
            the trial itself picked its best epoch by it (``best_epoch``, ``select_score``,
            ``test_*_at_best``, as it reported them).
        epochs: the epochs a complete trial runs.

    Returns:
        ``(row, history)`` for :meth:`StudyStore.record_trial`.
    """
    stored = _read_checkpoint_file(checkpoint, HISTORY_FILE)
    history = json.loads(stored) if stored else []
    # a report whose loss went non-finite carries NaN scores, not an epoch; a last epoch
    # worse than the noisy input (diverged too) is a whole epoch and stays
    history += [_epoch_record(r) for r in seen if "epoch" in r and (
        not r.get("diverged") or finite_or_none(r.get("train_mse")) is not None)]
    by_epoch = {int(h["epoch"]): h for h in history}  # a re-run epoch keeps its last record
    history = [by_epoch[e] for e in sorted(by_epoch)]
    final = history[-1] if history else {}
    if error is not None:
        status, message = "error", _error_text(error)
    elif last.get("diverged"):
        status, message = "diverged", str(last.get("error") or "diverged")
    else:
        status, message = ("finished" if final.get("epoch", 0) >= epochs else "stopped"), None
    # the trial's own selection (a diverged trial's last report keeps the epoch before it)
    selected = {k: finite_or_none(v) for k, v in {**final, **last}.items() if k in SELECTION}
    if not selected.get("best_epoch"):  # 0: no epoch was selected
        selected = {"noisy_test_mse": selected.get("noisy_test_mse")}
    else:
        selected["best_epoch"] = int(selected["best_epoch"])
    row = {
        "trial_id": trial_id,
        "status": status,
        "error": message,
        "config": dict(config),
        "metrics": {k: finite_or_none(v) for k, v in final.items()
                    if k not in _NOT_METRICS and k not in SELECTION},
        **selected,
        "select_metric": metric if selected.get("best_epoch") else None,
        "epochs": len(history),
        "wall_s": finite_or_none(last.get("time_total_s")),
        "node_id": last.get("node_id"),
        "started_at": finite_or_none(last.get("started_at")),
        "ended_at": finite_or_none(last.get("ended_at")),
        "resumed_from_epoch": last.get("resumed_from"),
    }
    return row, history


def _restarts(trial: Any, error: BaseException | str | None) -> int:
    """Times Tune restarted the trial after a failure (from its last checkpoint when it had
    one); the failure that ended an errored trial restarted nothing."""
    failures = int(getattr(trial, "num_failures", 0) or 0)
    return max(failures - (error is not None), 0)


def _epoch_record(result: Mapping[str, Any]) -> dict:
    return {k: v for k, v in result.items()
            if k not in _TUNE_KEYS and k not in _BOOKKEEPING
            and isinstance(v, (int, float)) and not isinstance(v, bool)}


def _checkpoint_uri(checkpoint: Any) -> str | None:
    """Where the trial's last model lies (``cryotune denoise --model STUDY`` loads it)."""
    if checkpoint is None:
        return None
    path = f"{checkpoint.path.rstrip('/')}/{CHECKPOINT_NAME}"
    scheme = {"local": "", "s3": "s3://", "gcs": "gs://"}.get(checkpoint.filesystem.type_name)
    return path if scheme == "" else f"{scheme or checkpoint.filesystem.type_name + '://'}{path}"


def _read_checkpoint_file(checkpoint: Any, name: str) -> bytes | None:
    if checkpoint is None:
        return None
    path = f"{checkpoint.path.rstrip('/')}/{name}"
    try:
        with checkpoint.filesystem.open_input_stream(path) as f:
            return f.read()
    except (FileNotFoundError, OSError):
        return None


def _trial_error(trial: Any) -> BaseException | str:
    """The trial's last error: Tune has just written it next to the trial, locally."""
    from ray import cloudpickle

    try:
        with open(trial.pickled_error_file, "rb") as f:
            return cloudpickle.load(f)
    except (TypeError, OSError, EOFError, AttributeError, ImportError):
        pass  # no pickled error (or not loadable here): its text then
    try:
        with open(trial.error_file) as f:
            return f.read()
    except (TypeError, OSError):
        return "trial failed"


def _error_text(error: BaseException | str) -> str:
    """The root cause's one-line message: cryotune errors as they print, others by type."""
    if isinstance(error, str):
        lines = [ln for ln in error.strip().splitlines() if ln.strip()]
        return lines[-1] if lines else "trial failed"
    while getattr(error, "cause", None) is not None and error.cause is not error:
        error = error.cause
    if isinstance(error, CryotuneError):
        return str(error)
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[-1] if text else ''}".rstrip(": ")
