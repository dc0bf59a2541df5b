"""Validate a finished study afterwards, from each trial's last checkpoint.

:func:`validate_study` finds each trial's dataset (the study's ``spec.yaml`` names it; or pass
``dataset``), loads the model from the row's ``checkpoint`` (``checkpoint.pt``) with
:meth:`cryotune.nn.train.Trainer.load_checkpoint`, denoises the test split, validates it
(:func:`cryotune.validate.study.validate_images`) and rewrites the row with the new columns
(:meth:`cryotune.results.StudyStore.record_trial` replaces a row by trial id; every other
column is kept). Rows without a model (baselines, errored trials) are left as they are.

Example::

    from cryotune.validate.runner import validate_study
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

from cryotune.errors import BadInput

log = logging.getLogger(__name__)

__all__ = ["validate_study"]


def _study_store(study: str):
    from cryotune.results import StudyStore

    text = str(study).rstrip("/")
    root, name = text.rsplit("/", 1) if "/" in text else (".", text)
    return StudyStore(root, name)


def _dataset_paths(spec: dict | None) -> dict[str, Path]:
    if not spec:
        return {}
    from cryotune.sweep.run import prepare_datasets
    from cryotune.sweep.spec import spec_from_mapping

    raw = {k: v for k, v in spec.items() if k != "provenance"}
    datasets = prepare_datasets(spec_from_mapping(raw), create=False)
    return {d.key: d.path for d in datasets if d.manifest}


def _load_trainer(uri: str, device: str):
    import pyarrow.fs as pafs

    from cryotune.nn.train import Trainer

    if "://" not in uri:
        return Trainer.load_checkpoint(uri, device=device)
    fs, path = pafs.FileSystem.from_uri(uri)
    with tempfile.TemporaryDirectory(prefix="cryotune-validate-") as folder:
        local = Path(folder) / "checkpoint.pt"
        with fs.open_input_stream(path) as src:
            local.write_bytes(src.read())
        return Trainer.load_checkpoint(local, device=device)


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def validate_study(study: str, *, what: Sequence[str] = ("fsc", "clustering"),
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
    from cryotune.data.store import open_dataset
    from cryotune.results import dataset_key, load_study
    from cryotune.validate.record import (
        REFERENCES,
        columns,
        record_references,
        record_trial_validation,
    )
    from cryotune.validate.study import check_what, load_reference, validate_images

    what = check_what(what, "--what")
    loaded = load_study(study)
    store = _study_store(study)
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
    references, out = {}, []
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
        trainer = _load_trainer(str(checkpoint), device)
        result = validate_images(ref, trainer.denoise(ref.noisy), what, views=views,
                                 device=recon_device)
        updated = {k: v for k, v in row.items() if k != "study"}
        updated.update(record_trial_validation(store, str(row["trial_id"]), result))
        store.record_trial(updated)
        out.append(updated)
        log.info("%s validated in %.1f s", row["trial_id"], result.scalars["validate_s"])
    return out
