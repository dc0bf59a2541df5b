"""Direct Fourier inversion against exact projections of a known molecule (``conftest.Blobs``).

The truth is the molecule rendered voxel by voxel (``render_volume``), independent of the
reconstruction; the FSC itself is checked against direct shell sums in ``test_fsc.py``.
"""

import numpy as np
import pandas as pd
import pytest
import starfile
import torch

from cryotune.data.ctf import apply_ctf
from cryotune.data.geometry import relion_euler_to_matrix
from cryotune.data.mrc import open_stack, write_stack
from cryotune.data.star import read_particles
from cryotune.errors import BadInput
from cryotune.validate.fsc import fsc, fsc_summary
from cryotune.validate.reconstruct import reconstruct


def corr(a, b):
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def test_clean_views_reconstruct_the_truth(blobs, views):
    rotations, images = views
    truth = blobs.volume()
    volume = reconstruct(images, rotations)
    assert volume.shape == (32, 32, 32) and volume.dtype == np.float32
    _, curve = fsc(volume, truth)
    assert curve[:9].min() >= 0.99  # up to half Nyquist (shell 8 of 16)
    assert curve[:13].min() >= 0.9  # and to 3/4 of Nyquist
    # same scale as the images: an image is the volume summed along z; the molecule's mass is 8
    assert volume.sum() == pytest.approx(truth.sum(), rel=0.03)
    assert truth.sum() == pytest.approx(8.0, rel=1e-3)


@pytest.mark.parametrize("pad", [1, 2])  # odd and even Fourier grids (33 and 66)
def test_odd_box(blobs, pad):
    rotations = blobs.rotations(1000, seed=1)
    volume = reconstruct(blobs.project(rotations, 33), rotations, pad=pad)
    _, curve = fsc(volume, blobs.volume(33))
    assert volume.shape == (33, 33, 33)
    assert curve[:9].min() >= (0.99 if pad == 2 else 0.95)


def test_nearest_gridding_and_no_padding_are_coarser(blobs, views):
    rotations, images = views
    truth = blobs.volume()
    err, curve = {}, {}
    for interpolation, pad in (("trilinear", 2), ("nearest", 2), ("trilinear", 1)):
        volume = reconstruct(images, rotations, interpolation=interpolation, pad=pad)
        curve[interpolation, pad] = fsc(volume, truth)[1]
        assert curve[interpolation, pad][:9].min() >= 0.9
        err[interpolation, pad] = np.linalg.norm(volume - truth) / np.linalg.norm(truth)
    assert err["trilinear", 2] < 0.03
    assert err["trilinear", 1] > 4 * err["trilinear", 2]  # why padding 2 is the default
    assert curve["trilinear", 2][13] > curve["nearest", 2][13] + 0.05  # 13/16 of Nyquist


def test_noise_lowers_the_resolution(blobs, views):
    rotations, images = views
    truth = blobs.volume()
    clean = fsc_summary(reconstruct(images, rotations), truth, blobs.pixel_size)
    noisy = fsc_summary(reconstruct(blobs.add_noise(images, 0.1, seed=0), rotations), truth,
                        blobs.pixel_size)
    assert noisy["crossed_0143"] and noisy["crossed_05"]
    assert noisy["res_0143_A"] > clean["res_0143_A"] + 1.0
    assert noisy["res_05_A"] > clean["res_05_A"] + 1.0
    assert noisy["curve"][1:5].min() > 0.95  # the low resolution survives SNR 0.1


def test_chunks_give_the_same_volume(blobs, views):
    rotations, images = views[0][:300], views[1][:300]
    a = reconstruct(images, rotations, chunk=7)
    b = reconstruct(images, rotations, chunk=300)
    np.testing.assert_allclose(a, b, atol=1e-5 * np.abs(b).max())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(blobs, views):
    rotations, images = views
    a = reconstruct(images, rotations, device="cpu")
    b = reconstruct(images, rotations, device="cuda", chunk=512)
    np.testing.assert_allclose(a, b, atol=1e-4 * np.abs(a).max())


def relion_views(n: int, rng):
    """RELION angles (rot, tilt, psi) uniform on SO(3): tilt with density sin(tilt)."""
    return (rng.uniform(-180, 180, n), np.rad2deg(np.arccos(rng.uniform(-1, 1, n))),
            rng.uniform(-180, 180, n))


def translate(images, shifts_px):
    """Move each image's content by (dx, dy) whole pixels: the particle then sits at that offset."""
    return np.stack([np.roll(im, (dy, dx), axis=(0, 1))
                     for im, (dx, dy) in zip(images, shifts_px, strict=True)])


def test_shifts_follow_relion_origins(blobs, views):
    # RELION's origin is the translation that centres the particle: the recorded particle sits at
    # -origin, and the reconstruction must translate the image by +origin.
    rotations, images = views
    origins = np.random.default_rng(3).integers(-3, 4, size=(len(images), 2))
    shifted = translate(images, -origins)
    truth = blobs.volume()
    good = fsc(reconstruct(shifted, rotations, shifts_px=origins), truth)[1]
    wrong = fsc(reconstruct(shifted, rotations, shifts_px=-origins), truth)[1]
    assert good[:9].min() >= 0.99
    assert wrong[:9].min() < 0.5


def test_relion_star_poses_and_origins_give_the_truth_not_its_mirror(tmp_path, blobs,
                                                                     mirrored_blobs):
    rng = np.random.default_rng(4)
    n, pixel_size = 1500, blobs.pixel_size
    rot, tilt, psi = relion_views(n, rng)
    origins = rng.integers(-2, 3, size=(n, 2))
    images = translate(blobs.project(relion_euler_to_matrix(rot, tilt, psi)), -origins)
    write_stack(tmp_path / "particles.mrcs", images, pixel_size=pixel_size)
    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"],
                           "rlnImagePixelSize": [pixel_size], "rlnImageSize": [32],
                           "rlnVoltage": [300.0], "rlnSphericalAberration": [2.7],
                           "rlnAmplitudeContrast": [0.1]})
    particles = pd.DataFrame({
        "rlnImageName": [f"{i + 1:06d}@particles.mrcs" for i in range(n)],
        "rlnAngleRot": rot, "rlnAngleTilt": tilt, "rlnAnglePsi": psi,
        "rlnOriginXAngst": origins[:, 0] * pixel_size,
        "rlnOriginYAngst": origins[:, 1] * pixel_size,
        "rlnOpticsGroup": np.ones(n, dtype=int),
    })
    starfile.write({"optics": optics, "particles": particles}, tmp_path / "particles.star")

    table = read_particles(tmp_path / "particles.star")
    with open_stack(table.stacks[0]) as stack:
        read_back = stack.read(0, n)
    volume = reconstruct(read_back, relion_euler_to_matrix(*table.poses.T),
                         shifts_px=table.shifts_px)
    truth, mirror = blobs.volume(), mirrored_blobs.volume()
    assert corr(volume, truth) > 0.99
    assert corr(volume, mirror) < corr(truth, mirror) + 0.05 < 0.6


def test_ctf_correction(blobs, views):
    rotations, images = views
    rng = np.random.default_rng(5)
    u = rng.uniform(3000, 6000, len(images))  # Angstrom; astigmatic so that x/y mix-ups show
    defocus = np.stack([u, 0.8 * u, rng.uniform(0, 180, len(images))], axis=1)
    scope = dict(voltage_kv=300.0, cs_mm=2.7, amplitude_contrast=0.1)
    observed = apply_ctf(images, defocus, blobs.pixel_size, **scope)
    ctf = dict(scope, pixel_size=blobs.pixel_size, defocus=defocus)
    truth = blobs.volume()
    plain = fsc(reconstruct(observed, rotations), truth)[1]
    assert plain[1:9].min() < -0.5  # contrast reversed past the first CTF zero
    for mode in ("wiener", "phase_flip"):
        curve = fsc(reconstruct(observed, rotations, ctf=dict(ctf, mode=mode)), truth)[1]
        assert curve[1:9].min() > 0.9, mode
    swapped = dict(ctf, defocus=defocus[:, [1, 0, 2]])  # U and V exchanged: astigmatism off by 90
    assert fsc(reconstruct(observed, rotations, ctf=swapped), truth)[1][1:13].min() < 0.5


@pytest.mark.parametrize("change, where", [
    (dict(rotations=np.zeros((3, 3, 3))), "rotations"),
    (dict(images=np.zeros((4, 8, 9))), "images"),
    (dict(shifts_px=np.zeros((4, 3))), "shifts_px"),
    (dict(interpolation="cubic"), "interpolation"),
    (dict(ctf={"voltage_kv": 300.0}), "ctf"),
    (dict(pad=0), "pad"),
])
def test_bad_input(change, where):
    args = dict(images=np.zeros((4, 8, 8)), rotations=np.tile(np.eye(3), (4, 1, 1)))
    args.update(change)
    with pytest.raises(BadInput, match=where):
        reconstruct(args.pop("images"), args.pop("rotations"), **args)


def test_unknown_pose_names_the_row():
    rotations = np.tile(np.eye(3), (4, 1, 1))
    rotations[2, 0, 0] = np.nan
    with pytest.raises(BadInput, match=r"rotations\[2\]"):
        reconstruct(np.zeros((4, 8, 8)), rotations)
