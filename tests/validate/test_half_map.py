"""The half-map FSC of real particles (no ground truth) and their FSC against the input map.

Data: an asymmetric blob map (``tests/blobmaps.py``) projected at known poses with noise, and
the RELION project :func:`cryotune.data.example.write_relion_example` writes (map, STAR file,
noisy stacks), ingested with ``--map`` as a user's own data would be.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from blobmaps import blob_map

from cryotune.data.example import write_relion_example
from cryotune.data.geometry import quaternion_to_matrix, random_quaternions
from cryotune.data.ingest import ingest
from cryotune.data.project import Projector
from cryotune.report.validation_sections import half_map_table
from cryotune.study.store import FSC_COLUMNS
from cryotune.validate.fsc import half_map_fsc
from cryotune.validate.reference import load_reference, validate_images

PIXEL = 2.0


def shell_correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """FSC written independently: centred transforms, a Python loop over integer shells."""
    n = a.shape[0]
    fa = np.fft.fftshift(np.fft.fftn(np.fft.ifftshift(a)))
    fb = np.fft.fftshift(np.fft.fftn(np.fft.ifftshift(b)))
    r = np.sqrt(sum((g - n // 2) ** 2 for g in np.indices(a.shape)))
    out = []
    for s in range(n // 2 + 1):
        m = np.abs(r - s) < 0.5
        num = np.sum(fa[m] * np.conj(fb[m])).real
        out.append(num / np.sqrt(np.sum(np.abs(fa[m]) ** 2) * np.sum(np.abs(fb[m]) ** 2)))
    return np.array(out)


def first_below(curve: np.ndarray, threshold: float, n: int) -> float:
    """Resolution (A) where ``curve`` first drops below ``threshold`` after shell 0, linearly."""
    for s in range(1, len(curve)):
        if curve[s] < threshold:
            if curve[s - 1] < threshold:
                return n * PIXEL / s
            f = (s - 1) + (curve[s - 1] - threshold) / (curve[s - 1] - curve[s])
            return n * PIXEL / f
    return 2 * PIXEL


@pytest.fixture(scope="module")
def noisy_views():
    n, count = 24, 400
    volume = blob_map(n)
    rotations = quaternion_to_matrix(random_quaternions(count, np.random.default_rng(3)))
    clean = Projector(volume).project(rotations)
    rng = np.random.default_rng(4)
    noisy = clean + np.sqrt(clean.var() / 0.5) * rng.standard_normal(clean.shape)
    return volume, rotations, clean, noisy.astype(np.float32)


def test_half_map_fsc_matches_an_independent_shell_correlation(noisy_views):
    _, rotations, _, noisy = noisy_views
    ids = np.arange(len(noisy)) + 1000
    out = half_map_fsc(noisy, rotations, ids, pixel_size=PIXEL, seed=0, device="cpu")
    a, b = out["half_maps"]
    expected = shell_correlation(a, b)
    np.testing.assert_allclose(out["curve"][1:], expected[1:], atol=1e-6)
    res = first_below(expected, 0.143, len(a))
    assert 2 * PIXEL < res < 24 * PIXEL  # finite: the curve crosses 0.143 before Nyquist
    assert out["res_0143_A"] == pytest.approx(res, rel=1e-6)
    assert out["n_half"] == (200, 200)


def test_clean_projections_reconstruct_the_input_map(noisy_views):
    from cryotune.validate.reconstruct import reconstruct

    volume, rotations, clean, _ = noisy_views
    curve = shell_correlation(reconstruct(clean, rotations, device="cpu"), volume)
    assert curve[1:7].min() > 0.98  # to half of Nyquist


@pytest.fixture(scope="module", params=["apply", "none"])
def ingested(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"relion-{request.param}")
    paths = write_relion_example(root / "relion", size=24, n=240, snr=0.5, seed=1)
    store = ingest(root / "store", particles=paths["star"], map_path=paths["map"],
                   ctf=request.param, test_fraction=0.5, seed=0)
    return request.param, load_reference(store)


def test_real_data_fsc_has_half_maps_and_the_input_map(ingested):
    ctf, ref = ingested
    assert ref.input_map is not None and not ref.truth
    assert ref.clean_ctf == (ctf == "apply")
    clean = validate_images(ref, ref.clean, ["fsc"])
    noisy = validate_images(ref, ref.noisy, ["fsc"])
    for v in (clean, noisy):
        assert v.scalars["fsc_vs_truth"] == 0 and v.scalars["fsc_n_images"] == 120
        assert v.scalars["fsc_res_0143_A"] == v.scalars["fsc_half_res_0143_A"]
        assert set(k for k in v.scalars if k.startswith("fsc_")) <= set(FSC_COLUMNS)
    # the references are the map's projections: their reconstruction is the map
    assert clean.arrays["fsc_map_curve"][1:7].min() > 0.95
    assert noisy.arrays["fsc_map_curve"][1:4].min() > 0.5
    raw = noisy.scalars["fsc_half_res_0143_A"]
    assert clean.scalars["fsc_half_res_0143_A"] < raw < 24 * ref.pixel_size


def test_half_map_table_compares_denoised_with_raw_and_escapes():
    refs = [("s", "mine-0a1b", {
        "noisy": {"fsc_vs_truth": 0, "fsc_half_res_0143_A": 30.0, "fsc_n_images": 1200,
                  "fsc_map_res_0143_A": 20.0, "fsc_map_res_05_A": 26.0},
        "clean": {"fsc_vs_truth": 0, "fsc_half_res_0143_A": 17.4, "fsc_n_images": 1200}})]
    v = pd.DataFrame({"label": ["<b>gan</b>", "<b>gan</b>", "l1"],
                      "config.dataset": ["mine-0a1b"] * 3,
                      "fsc_half_res_0143_A": [24.0, 26.0, 31.0], "fsc_n_images": [1200] * 3,
                      "fsc_map_res_0143_A": [19.0, 19.0, 21.0],
                      "fsc_map_res_05_A": [25.0, 25.0, 27.0]})
    html = half_map_table(refs, v)
    assert "<b>gan" not in html and "&lt;b&gt;gan&lt;/b&gt;" in html
    assert "5.0 Å finer" in html and "1.0 Å coarser" in html and "1,200" in html
    assert "biased" in html
    truth = [("s", "sim", {"noisy": {"fsc_vs_truth": 1, "fsc_half_res_0143_A": 9.0}})]
    assert half_map_table(truth, v) == ""
