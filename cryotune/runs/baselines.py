"""Run classical baselines on a dataset's test split as Ray tasks and write study rows.

Each baseline becomes one row of the study's ``trials.parquet`` (``config.method`` set to its
name, no history), with the same metrics and gallery images as a sweep's trials, so reports
put them in the same tables.

Example::

    from cryotune.runs.baselines import run_baselines
    run_baselines("data/rnap-32", "studies/table1", methods=["nlm", "ksvd", "cwf"])
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from cryotune._io import study_location
from cryotune._lock import holding_lock
from cryotune._ray import init_ray
from cryotune.baselines import make_baseline, sigma_from_stats
from cryotune.data.store import open_dataset
from cryotune.nn import metrics
from cryotune.study.store import StudyStore, dataset_key
from cryotune.validate.record import REFERENCES, record_references, record_trial_validation
from cryotune.validate.reference import check_what, load_reference, validate_images

log = logging.getLogger(__name__)

__all__ = ["run_baselines", "score"]


def score(denoised: np.ndarray, clean: np.ndarray) -> dict[str, float]:
    """test_mse/psnr/ssim means and (population) stds over images, as the trainer reports."""
    out, ref = torch.from_numpy(np.ascontiguousarray(denoised, np.float32)), torch.from_numpy(
        np.ascontiguousarray(clean, np.float32))
    values = {"test_mse": metrics.mse(out, ref), "test_psnr": metrics.psnr(out, ref),
              "test_ssim": metrics.ssim(out, ref)}
    result = {}
    for name, v in values.items():
        v = v.double()
        result[name] = float(v.mean())
        result[f"{name}_std"] = float(v.std(correction=0))
    result["test_images"] = int(len(denoised))
    return result


def _run_one(name: str, noisy: np.ndarray, clean: np.ndarray, sigma: float, gallery: int,
             reference=None, validate: tuple[str, ...] = ()) -> dict:
    start = time.perf_counter()
    denoised = make_baseline(name).denoise(noisy, sigma=sigma)
    wall = time.perf_counter() - start
    result = score(denoised, clean)
    out = {"metrics": result, "wall_s": wall, "gallery": denoised[:gallery].astype(np.float32)}
    if validate:
        out["validation"] = validate_images(reference, denoised, validate)
    return out


@holding_lock("study", "cryotune baselines")
def run_baselines(
    dataset_path: str | Path,
    study: str | Path,
    *,
    methods: Sequence[str] = ("nlm", "ksvd", "cwf"),
    gallery: int = 8,
    limit: int | None = None,
    address: str | None = None,
    validate: Sequence[str] = (),
) -> list[dict]:
    """Denoise the test split with each baseline (one Ray task each) and record the rows.

    Args:
        dataset_path: a dataset store.
        study: the study folder or URI (``<storage>/<name>``) to add rows to; created if new.
        methods: names from :data:`cryotune.baselines.BASELINES`.
        gallery: how many leading test images to keep as the gallery.
        limit: evaluate only the first ``limit`` test images (for quick looks).
        address: a Ray cluster to run on (default: embedded Ray).
        validate: any of ``fsc`` and ``clustering``: the same validation columns as a sweep's
            trials (:mod:`cryotune.validate.reference`), and the clean and noisy references.

    Returns:
        The recorded rows.
    """
    for m in methods:  # an unknown name or a missing optional extra fails before any work
        make_baseline(m, path="--methods")
    validate = check_what(validate, "--validate")
    ds = open_dataset(dataset_path)
    n = ds.count("test") if limit is None else min(limit, ds.count("test"))
    test = ds.read("test", ["noisy", "clean"], stop=n)
    sigma = sigma_from_stats(ds.stats())
    key = dataset_key(ds.manifest)
    store = StudyStore(*study_location(study))
    store.write_dataset(key, ds.manifest, {
        "gallery_clean": test["clean"][:gallery], "gallery_noisy": test["noisy"][:gallery]})

    reference = None
    if validate:
        reference = load_reference(dataset_path, limit=n)
        record_references(store, key, ds.manifest, {
            r: validate_images(reference, getattr(reference, r), validate) for r in REFERENCES})

    init_ray(address)
    import ray  # after init_ray has set the environment Ray reads when imported

    task = ray.remote(num_cpus=1)(_run_one)
    noisy_ref, clean_ref = ray.put(test["noisy"]), ray.put(test["clean"])
    reference_ref = ray.put(reference)
    pending = {task.remote(m, noisy_ref, clean_ref, sigma, gallery, reference_ref, validate): m
               for m in methods}
    rows = []
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        method = pending.pop(done[0])
        row = {"trial_id": f"baseline-{method}-{key}", "epochs": 0,
               "config": {"method": method, "dataset": key, "snr": ds.manifest.get("snr"),
                          "eps": 0.0, "contamination": "none", "seed": 0, "sigma": sigma,
                          method: make_baseline(method).params()}}
        try:
            result = ray.get(done[0])
        except ray.exceptions.RayTaskError as err:
            row.update(status="error", error=str(err.cause if hasattr(err, "cause") else err).splitlines()[-1])
            log.error("baseline %s failed: %s", method, row["error"])
        else:
            store.write_array(row["trial_id"], "gallery", result["gallery"])
            row.update(status="finished", metrics=result["metrics"], wall_s=result["wall_s"])
            if "validation" in result:
                row["validation"] = record_trial_validation(store, row["trial_id"],
                                                            result["validation"])
            log.info("%s: test MSE %.3e (%.1f s)", method, result["metrics"]["test_mse"], result["wall_s"])
        store.record_trial(row)
        rows.append(row)
    return rows
