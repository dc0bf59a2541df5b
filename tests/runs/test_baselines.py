"""Baselines as study rows: real Ray tasks on a real dataset store."""

import numpy as np
import pytest

from cryotune.data.writer import DatasetWriter
from cryotune.errors import BadConfig, MissingExtra
from cryotune.runs.baselines import run_baselines
from cryotune.study.store import dataset_key
from cryotune.study.tables import load_study


def _blobs(n, size, rng):
    yy, xx = np.mgrid[:size, :size]
    out = np.empty((n, size, size), np.float32)
    for i in range(n):
        cy, cx = rng.uniform(size * 0.3, size * 0.7, 2)
        out[i] = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (size / 6) ** 2))
    return out


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    rng = np.random.default_rng(0)
    out = tmp_path_factory.mktemp("ds") / "blobs"
    with DatasetWriter(out, name="blobs", kind="simulated", image_shape=(24, 24), pixel_size=4.0) as w:
        for split, n, start in (("train", 64, 0), ("test", 12, 64)):
            clean = _blobs(n, 24, rng)
            w.add(split, id=np.arange(start, start + n), clean=clean,
                  noisy=clean + rng.normal(0, 0.3, clean.shape).astype(np.float32))
        w.commit(snr=0.1)
    return out


def test_rows_match_an_independent_computation(dataset, tmp_path, ray_session):
    from skimage.metrics import structural_similarity

    from cryotune.baselines import make_baseline, sigma_from_stats
    from cryotune.data.store import open_dataset

    rows = run_baselines(dataset, tmp_path / "study", methods=["nlm", "cwf"], gallery=3)
    assert {r["status"] for r in rows} == {"finished"}
    study = load_study(tmp_path / "study")
    ds = open_dataset(dataset)
    key = dataset_key(ds.manifest)
    assert set(study.trials["config.method"]) == {"nlm", "cwf"}
    assert set(study.trials["config.dataset"]) == {key}
    test = ds.read("test", ["noisy", "clean"])
    noisy_mse = np.mean((test["noisy"] - test["clean"]) ** 2)
    for _, row in study.trials.iterrows():
        denoised = make_baseline(row["config.method"]).denoise(test["noisy"], sigma=sigma_from_stats(ds.stats()))
        mse = np.mean((denoised.astype(np.float64) - test["clean"]) ** 2, axis=(1, 2))
        assert row["test_mse"] == pytest.approx(mse.mean(), rel=1e-5)
        assert row["test_mse"] < noisy_mse
        ssim = [structural_similarity(c, d, data_range=1.0) for c, d in zip(test["clean"], denoised, strict=True)]
        assert row["test_ssim"] == pytest.approx(np.mean(ssim), abs=1e-4)
        gallery = study.array("study", row["trial_id"], "gallery")
        np.testing.assert_allclose(gallery, denoised[:3], atol=1e-6)
    np.testing.assert_array_equal(study.dataset_array("study", key, "gallery_clean"), test["clean"][:3])


def test_bad_methods_fail_before_work(dataset, tmp_path):
    with pytest.raises(BadConfig, match="unknown baseline"):
        run_baselines(dataset, tmp_path / "s", methods=["median"])
    try:
        import bm3d  # noqa: F401
    except ImportError:
        with pytest.raises(MissingExtra, match=r"cryotune\[bm3d\]"):
            run_baselines(dataset, tmp_path / "s", methods=["bm3d"])
    assert not (tmp_path / "s").exists()
