"""Validate a finished study afterwards, from each trial's selected model.

:func:`validate_study` finds each trial's dataset (the study's ``spec.yaml`` names it; or pass
``dataset``), loads the model of the trial's best validation epoch (``best.pt`` beside the
row's ``checkpoint``; a study without it, from before selection on validation, falls back to
the last ``checkpoint.pt`` with a warning) with :meth:`cryotune.nn.train.Trainer.load_checkpoint`,
denoises the test split, validates it (:func:`cryotune.validate.reference.validate_images`) and
sets the row's validation columns, ``validated_epoch`` (the epoch of the model validated)
included (:meth:`cryotune.study.store.StudyStore.update_trial`; every other column is kept).
Rows without a model (baselines, errored trials) are left as they are.

Example::

    from cryotune.runs.validate import validate_study
    for row in validate_study("studies/smoke", what=["fsc"]):
        print(row["trial_id"], row.get("fsc_res_0143_A"))
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from cryotune import vocab
from cryotune._io import study_location
from cryotune._lock import holding_lock
from cryotune.data.store import open_dataset
from cryotune.errors import BadInput
from cryotune.nn.train import BEST_NAME, Trainer
from cryotune.runs.sweep import prepare_datasets
from cryotune.study.store import StudyStore, dataset_key
from cryotune.study.tables import load_study
from cryotune.sweep.spec import spec_from_mapping
from cryotune.validate.record import REFERENCES, columns, record_references, record_trial_validation
from cryotune.validate.reference import check_what, load_reference, validate_images

log = logging.getLogger(__name__)

__all__ = ["validate_study"]


def _dataset_paths(spec: dict | None) -> dict[str, Path]:
    if not spec:
        return {}
    raw = {k: v for k, v in spec.items() if k != "provenance"}
    datasets = prepare_datasets(spec_from_mapping(raw), create=False)
    return {d.key: d.path for d in datasets if d.manifest}


def _load_trainer(uri: str, device: str):
    if "://" not in uri:
        return Trainer.load_checkpoint(uri, device=device)
    fs, path = pafs.FileSystem.from_uri(uri)
    with tempfile.TemporaryDirectory(prefix="cryotune-validate-") as folder:
        local = Path(folder) / Path(path).name
        with fs.open_input_stream(path) as src:
            local.write_bytes(src.read())
        return Trainer.load_checkpoint(local, device=device)


def _exists(uri: str) -> bool:
    if "://" not in uri:
        return Path(uri).is_file()
    fs, path = pafs.FileSystem.from_uri(uri)
    return fs.get_file_info(path).type == pafs.FileType.File


def _model_uri(checkpoint: str) -> str | None:
    """The trial's best validation epoch's checkpoint beside its last one, or None."""
    best = f"{checkpoint.rsplit('/', 1)[0]}/{BEST_NAME}"
    return best if _exists(best) else None


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


@holding_lock("study", "cryotune validate")
def validate_study(study: str, *, what: Sequence[str] = vocab.VALIDATIONS,
                   views: str = "cone", trials: Sequence[str] | None = None,
                   dataset: str | None = None, device: str = "auto") -> list[dict]:
    """Compute the validation columns of a study's trials and rewrite their rows.

    Args:
        study: the study folder or URI.
        what: any of ``fsc`` and ``clustering``.
        views: clustering view selection, ``cone`` or ``all``.
        trials: trial ids to validate (default: every row with a model).
        dataset: the dataset store for every trial (default: located from ``spec.yaml``).
        device: where the models and the reconstructions run.

    Returns:
        The clean and noisy reference rows (``trial_id`` ``clean``/``noisy``), then the
        updated rows.

    Raises:
        BadInput: an unknown trial id or validation, or a dataset that cannot be located.
    """
    what = check_what(what, "--what")
    loaded = load_study(study)
    store = StudyStore(*study_location(study))
    paths = _dataset_paths(next(iter(loaded.specs.values()), None))
    if dataset is not None:
        path = Path(dataset).expanduser().resolve()
        paths = {dataset_key(open_dataset(path, verify=False).manifest): path}
    table = loaded.trials
    if trials is not None:
        unknown = sorted(set(trials) - set(table["trial_id"].astype(str)))
        if unknown:
            raise BadInput(f"no trial {unknown[0]!r} in the study", study,
                           "list the trials with `cryotune query`")
        table = table[table["trial_id"].astype(str).isin(trials)]
    references, out, warned = {}, [], False
    recon_device = "cpu" if device == "auto" else device
    for row in table.to_dict("records"):
        checkpoint = row.get("checkpoint")
        if not _present(checkpoint) or row["status"] not in ("finished", "stopped"):
            log.info("%s: no model to validate", row["trial_id"])
            continue
        key = str(row.get("config.dataset"))
        if key not in paths:
            if dataset is None and len(paths) == 1 and not _present(row.get("config.dataset")):
                key = next(iter(paths))
            else:
                raise BadInput(f"the dataset {key!r} of {row['trial_id']} is not found", study,
                               "pass --dataset with its store")
        if key not in references:
            ref = load_reference(paths[key])
            results = {n: validate_images(ref, getattr(ref, n), what, views=views,
                                          device=recon_device) for n in REFERENCES}
            manifest = open_dataset(paths[key], verify=False).manifest
            record_references(store, key, manifest, results)
            references[key] = ref
            out += [{"trial_id": n, "config.method": n, **columns(results[n])}
                    for n in REFERENCES]
        ref = references[key]
        model = _model_uri(str(checkpoint))
        if model is None and not warned:
            log.warning("%s has no %s (a study from before selection on validation): its trials "
                        "without one are validated at their last epoch", study, BEST_NAME)
            warned = True
        trainer = _load_trainer(model or str(checkpoint), device)
        result = validate_images(ref, trainer.denoise(ref.noisy), what, views=views,
                                 device=recon_device)
        result.scalars["validated_epoch"] = float(trainer.epoch)
        out.append(store.update_trial(
            str(row["trial_id"]),
            validation=record_trial_validation(store, str(row["trial_id"]), result)))
        log.info("%s validated in %.1f s", row["trial_id"], result.scalars["validate_s"])
    return out
