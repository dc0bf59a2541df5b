"""FSC against direct shell sums, exact threshold crossings, gold-standard half maps."""

import numpy as np
import pytest
from scipy import ndimage

from cryotune.errors import BadInput
from cryotune.validate.fsc import crossing, fsc, fsc_summary, half_map_fsc, resolution, truth_fsc


def direct_fsc(v1, v2):
    """The FSC from centred spectra and voxel distances to the centre, summed with scipy."""
    n = v1.shape[0]
    F1 = np.fft.fftshift(np.fft.fftn(v1))
    F2 = np.fft.fftshift(np.fft.fftn(v2))
    r = np.sqrt(sum((g - n // 2) ** 2 for g in np.indices(v1.shape)))
    labels = np.where(np.round(r) <= n // 2, np.round(r) + 1, 0).astype(int)  # 0: beyond Nyquist
    index = np.arange(1, n // 2 + 2)
    num = ndimage.sum_labels((F1 * F2.conj()).real, labels, index)
    den = np.sqrt(ndimage.sum_labels(np.abs(F1) ** 2, labels, index)
                  * ndimage.sum_labels(np.abs(F2) ** 2, labels, index))
    return num / den


@pytest.mark.parametrize("n", [16, 17])
def test_fsc_matches_direct_shell_sums(n):
    rng = np.random.default_rng(n)
    a = ndimage.gaussian_filter(rng.standard_normal((n, n, n)), 1.0)
    b = a + 0.05 * rng.standard_normal(a.shape)
    freq, curve = fsc(a, b)
    np.testing.assert_allclose(freq, np.arange(n // 2 + 1) / n)
    np.testing.assert_allclose(curve, direct_fsc(a, b), atol=1e-12)
    assert curve[-1] < curve[1]  # the noise is white, the signal smooth


def test_fsc_identities():
    a = np.random.default_rng(0).standard_normal((12, 12, 12))
    np.testing.assert_allclose(fsc(a, 3.0 * a)[1], 1.0)
    np.testing.assert_allclose(fsc(a, -a)[1], -1.0)
    with pytest.raises(BadInput, match="cubic"):
        fsc(a, a[:, :, :10])


def test_crossing_is_interpolated_exactly():
    freq = np.arange(17) / 32
    curve = 1.0 - 2.5 * freq  # crosses 0.143 at f = 0.3428 and 0.5 at f = 0.2
    assert crossing(freq, curve, 0.143) == pytest.approx(0.857 / 2.5, abs=1e-12)
    assert resolution(freq, curve, 1.6, 0.143) == pytest.approx(1.6 * 2.5 / 0.857, rel=1e-12)
    assert resolution(freq, curve, 1.6, 0.5) == pytest.approx(1.6 / 0.2, rel=1e-12)
    # the first crossing counts, even when the curve comes back up (Fig. 5i's red curve)
    bumpy = np.array([1.0, 0.9, 0.6, 0.1, 0.4, 0.05])
    f = np.arange(6) / 10
    assert crossing(f, bumpy, 0.143) == pytest.approx(0.2 + (0.6 - 0.143) / 0.5 * 0.1, abs=1e-12)
    # shell 0 (one voxel, +-1) is no resolution: volumes with sums of opposite signs still count
    flipped_dc = np.array([-1.0, 0.9, 0.6, 0.1])
    assert crossing(f[:4], flipped_dc, 0.143) == pytest.approx(0.2 + 0.457 / 0.5 * 0.1, abs=1e-12)
    assert crossing(f[:4], np.array([-1.0, 0.1, 0.0, 0.0])) == 0.1  # nothing past the box size


def test_no_crossing_reports_nyquist_with_a_flag():
    a = np.random.default_rng(1).standard_normal((10, 10, 10))
    out = fsc_summary(a, a, pixel_size=1.5)
    assert out["res_0143_A"] == out["res_05_A"] == 3.0
    assert not out["crossed_0143"] and not out["crossed_05"]
    assert crossing(out["freq"], out["curve"]) is None


def test_half_maps_split_by_id(blobs, views):
    rotations, clean = views
    images = blobs.add_noise(clean, 0.1, seed=1)
    ids = np.arange(1000, 1000 + len(images))
    out = half_map_fsc(images, rotations, ids, pixel_size=blobs.pixel_size, seed=0)
    assert out["n_half"] == (1000, 1000)
    # the split depends on the ids and the seed, not on the order of the rows
    order = np.random.default_rng(2).permutation(len(images))
    again = half_map_fsc(images[order], rotations[order], ids[order],
                         pixel_size=blobs.pixel_size, seed=0)
    np.testing.assert_allclose(again["curve"], out["curve"], atol=1e-5)
    other = half_map_fsc(images, rotations, ids, pixel_size=blobs.pixel_size, seed=1)
    assert np.abs(other["curve"] - out["curve"]).max() > 1e-3
    # the half-map FSC predicts the full map's FSC against the truth: sqrt(2 F / (1 + F))
    truth = truth_fsc(images, rotations, blobs.volume(), pixel_size=blobs.pixel_size)
    mid = (out["curve"] > 0.3) & (out["curve"] < 0.97)
    assert mid.sum() >= 2
    half = out["curve"][mid]
    np.testing.assert_allclose(np.sqrt(2 * half / (1 + half)), truth["curve"][mid], atol=0.1)
    assert out["crossed_0143"] and 2 * blobs.pixel_size < out["res_0143_A"] < 12.0


def test_clean_half_maps_agree(blobs, views):
    rotations, images = views
    out = half_map_fsc(images, rotations, np.arange(len(images)), pixel_size=blobs.pixel_size)
    assert out["curve"][:9].min() >= 0.99
    assert out["half_maps"][0].shape == (32, 32, 32)


def test_half_map_ids_must_be_unique(views):
    rotations, images = views
    with pytest.raises(BadInput, match="ids"):
        half_map_fsc(images[:4], rotations[:4], [1, 1, 2, 3], pixel_size=1.0)
