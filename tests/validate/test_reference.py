"""Validation of a dataset's test images: FSC against the truth and half maps, clustering."""

from __future__ import annotations

import numpy as np
import pytest

from cryotune.data.geometry import quaternion_to_matrix, random_quaternions
from cryotune.data.molecules import Atoms
from cryotune.data.simulate import project, simulate
from cryotune.data.writer import DatasetWriter
from cryotune.validate.fsc import fsc, resolution
from cryotune.validate.reconstruct import reconstruct
from cryotune.validate.reference import (
    NEEDS_POSES,
    load_reference,
    validate_dataset,
    validate_images,
    view_selection,
)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("validate") / "sim"
    return simulate(path, size=32, n_train=20, n_test=200, snr=0.1, conformations=3, seed=0)


def test_truth_volume_matches_the_images_normalisation(store):
    from cryotune.data.store import open_dataset

    ref = load_reference(store)
    ds = open_dataset(store)
    lo, hi = ds.manifest["normalization"]["min"], ds.manifest["normalization"]["max"]
    files = sorted(ds.truth_volumes())
    assert sorted(ref.truth) == list(range(len(files)))
    for k, file in enumerate(files):
        atoms = Atoms.from_npz(file)
        row = int(np.nonzero(ref.conformation == k)[0][0])
        # the clean image is (projection - min) / (max - min): its projection along the pose
        image = (project(atoms, ref.rotations[row:row + 1], 32, ds.pixel_size)[0] - lo) / (hi - lo)
        np.testing.assert_allclose(ref.clean[row], image, atol=1e-5)
        # the truth volume, summed along z, is the identity view divided by (max - min)
        ident = project(atoms, np.eye(3)[None], 32, ds.pixel_size)[0] / (hi - lo)
        np.testing.assert_allclose(ref.truth[k].sum(axis=0), ident, rtol=1e-4, atol=1e-5)


def test_clean_images_resolve_better_than_noisy(store):
    out = validate_dataset(store, what=["fsc"])
    clean, noisy = out["clean"].scalars, out["noisy"].scalars
    assert clean["fsc_vs_truth"] == 1 and noisy["fsc_vs_truth"] == 1
    assert clean["fsc_truth_res_0143_A"] < noisy["fsc_truth_res_0143_A"]
    assert clean["fsc_half_res_0143_A"] < noisy["fsc_half_res_0143_A"]
    assert clean["fsc_res_0143_A"] == clean["fsc_truth_res_0143_A"]
    # the stored curve is the image-count weighted mean of per-conformation FSCs vs the truth
    ref = load_reference(store)
    curves, weights = [], []
    for k in sorted(ref.truth):
        rows = ref.conformation == k
        vol = reconstruct(ref.noisy[rows], ref.rotations[rows], device="cpu")
        curves.append(fsc(vol, ref.truth[k])[1])
        weights.append(rows.sum())
    expected = (np.stack(curves) * np.array(weights)[:, None]).sum(0) / sum(weights)
    arrays = out["noisy"].arrays
    np.testing.assert_allclose(arrays["fsc_truth_curve"], expected, atol=1e-6)
    np.testing.assert_allclose(arrays["fsc_freq"], np.arange(17) / 32 / ref.pixel_size)
    freq = np.arange(17) / 32
    assert noisy["fsc_truth_res_05_A"] == pytest.approx(
        resolution(freq, expected, ref.pixel_size, 0.5))
    assert arrays["volume_views"].shape == (4, 32, 32)


def test_clustering_columns_and_arrays(store):
    ref = load_reference(store)
    result = validate_images(ref, ref.clean, ["clustering"], cone_deg=40, min_cone=20)
    s, a = result.scalars, result.arrays
    assert 0.5 <= s["cluster_acc"] <= 1 and 0.5 <= s["cluster_acc_all"] <= 1
    assert s["cluster_n"] == len(a["cluster_labels"]) == len(a["cluster_embedding"]) >= 20
    assert set(a["cluster_labels"].tolist()) == {0, 2}
    every = validate_images(ref, ref.clean, ["clustering"], views="all").scalars
    assert every["cluster_acc"] == s["cluster_acc_all"]
    assert every["cluster_n"] == int(np.isin(ref.conformation, [0, 2]).sum())


def test_view_selection_against_brute_force():
    rotations = quaternion_to_matrix(random_quaternions(300, np.random.default_rng(1)))
    d = rotations[:, 2]
    rows, angle = view_selection(rotations, cone_deg=30, min_images=5)
    counts = [(np.degrees(np.arccos(np.clip(d @ c, -1, 1))) <= 30).sum() for c in d]
    assert angle == 30 and len(rows) == max(counts)
    # too few in the cone: it widens to the tightest cone holding min_images around the centre
    rows, angle = view_selection(rotations, cone_deg=1, min_images=40)
    assert len(rows) == 40 and 1 < angle < 90
    centre = [i for i in rows if np.all(np.degrees(np.arccos(np.clip(d[rows] @ d[i], -1, 1)))
                                        <= angle + 1e-6)]
    assert centre


def test_in_plane_alignment_brings_views_together(store):
    """Aligned clean images of one conformation in a view cone are closer than unaligned ones."""
    from cryotune.validate.reference import _align_in_plane

    ref = load_reference(store)
    rows = np.nonzero(ref.conformation == 0)[0]
    keep, _ = view_selection(ref.rotations[rows], cone_deg=35, min_images=10)
    rows = rows[keep]
    centre = ref.rotations[rows][:, 2].mean(0)
    axis = np.cross(centre, [0, 0, 1.0])
    aligned = _align_in_plane(ref.clean[rows], ref.rotations[rows], axis / np.linalg.norm(axis))

    def spread(x):
        return float(((x - x.mean(0)) ** 2).sum())

    assert spread(aligned) < 0.7 * spread(ref.clean[rows])


def test_in_plane_alignment_puts_the_axis_on_plus_x():
    """A lone blob on a molecule axis lands on image +x, at its projected distance, in any pose."""
    from cryotune.validate.reference import _align_in_plane

    rotations = quaternion_to_matrix(random_quaternions(100, np.random.default_rng(3)))
    axis = np.array([1.0, 0.0, 0.0])
    rotations = rotations[np.abs(rotations[:, 2] @ axis) < 0.7]  # the axis well off the view
    atoms = Atoms(np.array([[20.0, 0.0, 0.0]]), weight=[1.0], sigma=[3.0])
    aligned = _align_in_plane(project(atoms, rotations, 32, 2.0), rotations, axis)
    y, x = np.mgrid[:32, :32] - 16  # the projection origin is pixel 16
    mass = aligned.sum(axis=(1, 2))
    cx, cy = (aligned * x).sum(axis=(1, 2)) / mass, (aligned * y).sum(axis=(1, 2)) / mass
    expected = 10.0 * np.hypot(rotations[:, 0] @ axis, rotations[:, 1] @ axis)  # px
    np.testing.assert_allclose(cx, expected, atol=0.05)
    np.testing.assert_allclose(cy, 0.0, atol=0.05)


def test_needs_poses(tmp_path):
    rng = np.random.default_rng(0)
    with DatasetWriter(tmp_path / "ds", name="ds", kind="ingested", image_shape=(16, 16),
                       pixel_size=2.0) as w:
        for split, ids in (("train", np.arange(10)), ("test", np.arange(10, 30))):
            clean = rng.random((len(ids), 16, 16), dtype=np.float32)
            w.add(split, id=ids, clean=clean, noisy=clean)
        path = w.commit()
    out = validate_dataset(path)
    assert out["clean"].needs == f"{NEEDS_POSES}; needs conformation labels"
    assert set(out["noisy"].scalars) == {"validate_s"}
