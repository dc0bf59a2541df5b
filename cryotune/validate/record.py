"""Validation results into a study: scalar columns for the row, arrays under the trial.

A trial computes its :class:`~cryotune.validate.reference.Validation` where its model lives (a Ray
worker) and ships it in its checkpoint as one ``validation.npz`` (:func:`to_bytes`); the driver
turns that into row columns and ``trials/<trial_id>/<name>.npy`` arrays
(:func:`record_trial_validation`). The clean and noisy references go once per dataset under
``datasets/<key>/``: their scalars in the kept manifest's ``validation`` entry, their arrays as
``validate_clean_<name>.npy`` and ``validate_noisy_<name>.npy`` (:func:`record_references`).

Example::

    from cryotune.study.store import StudyStore
    from cryotune.validate.record import record_references
    from cryotune.validate.reference import load_reference, validate_images
    ref = load_reference("data/sim-32")
    refs = {n: validate_images(ref, getattr(ref, n)) for n in ("clean", "noisy")}
    record_references(StudyStore("studies", "s"), "sim-32-0a1b2c3d", manifest, refs)
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import numpy as np

from cryotune.validate.reference import Validation

__all__ = ["REFERENCES", "VALIDATION_FILE", "columns", "from_bytes", "record_references",
           "record_trial_validation", "to_bytes"]

VALIDATION_FILE = "validation.npz"
REFERENCES = ("clean", "noisy")


def to_bytes(validation: Validation) -> bytes:
    """One ``.npz`` (no pickle) holding the scalars, the arrays and the ``needs`` note."""
    items = {f"scalar.{k}": np.asarray(float(v)) for k, v in validation.scalars.items()}
    items.update({f"array.{k}": np.asarray(v) for k, v in validation.arrays.items()})
    items["needs"] = np.asarray(validation.needs or "")
    buf = io.BytesIO()
    np.savez(buf, **items)
    return buf.getvalue()


def from_bytes(data: bytes) -> Validation:
    """The :class:`Validation` that :func:`to_bytes` wrote."""
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        scalars = {k[7:]: float(z[k]) for k in z.files if k.startswith("scalar.")}
        arrays = {k[6:]: z[k] for k in z.files if k.startswith("array.")}
        needs = str(z["needs"]) or None
    return Validation(scalars, arrays, needs)


def columns(validation: Validation) -> dict[str, Any]:
    """The row columns of a validation: its scalars and ``validate_needs``."""
    out: dict[str, Any] = dict(validation.scalars)
    out["validate_needs"] = validation.needs
    return out


def record_trial_validation(store: Any, trial_id: str, validation: Validation) -> dict[str, Any]:
    """Write a trial's validation arrays; return the columns to add to its row.

    Args:
        store: a :class:`cryotune.study.store.StudyStore`.
        trial_id: the row's trial id.
        validation: the trial's results.

    Returns:
        ``fsc_res_0143_A``, ``cluster_acc``... and ``validate_needs`` (None when complete): the
        row's ``validation`` group (:data:`cryotune.study.store.GROUPS`).
    """
    for name, array in validation.arrays.items():
        store.write_array(trial_id, name, array)
    return columns(validation)


def record_references(store: Any, key: str, manifest: Mapping[str, Any],
                      references: Mapping[str, Validation]) -> None:
    """Keep the clean and noisy images' validation with the dataset in the study.

    Args:
        store: a :class:`cryotune.study.store.StudyStore`.
        key: the dataset's key in the study (:func:`cryotune.study.store.dataset_key`).
        manifest: the dataset's manifest; stored with a ``validation`` entry added.
        references: ``{"clean": ..., "noisy": ...}``.

    A validation of some checks only (``cryotune validate --what clustering``) updates their
    values and keeps the others' already recorded.
    """
    arrays = {f"validate_{name}_{k}": v for name, val in references.items()
              for k, v in val.arrays.items()}
    kept = (store.kept_manifest(key) or {}).get("validation") or {}
    entry = {name: {**(kept.get(name) or {}), **columns(val)} for name, val in references.items()}
    store.write_dataset(key, {**manifest, "validation": entry}, arrays)
