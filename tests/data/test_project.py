"""The Fourier-slice projector against independent real-space projections (scipy) and the
simulator's exact Gaussian projections: RELION's pose and origin conventions, odd and even boxes,
mirrored maps and transposed angles that must not match, CTF applied or not."""

from __future__ import annotations

import numpy as np
import pytest
from blobmaps import blob_map, correlation, reference_projection, write_map

from cryotune.data.ctf import CTF
from cryotune.data.geometry import quaternion_to_matrix, random_quaternions, relion_euler_to_matrix
from cryotune.data.molecules import builtin_conformations
from cryotune.data.project import Projector, read_map
from cryotune.data.simulate import project, render_volume
from cryotune.errors import BadInput

# (rot, tilt, psi) in degrees: generic poses, a top view, a side view, a tilt past 90
ANGLES = np.array([[0.0, 0.0, 0.0], [30.0, 60.0, 90.0], [-120.0, 35.0, 10.0],
                   [75.0, 90.0, -40.0], [200.0, 140.0, 300.0], [10.0, 170.0, 55.0]])
SHIFTS = np.array([[0.0, 0.0], [2.5, -1.0], [-3.0, 1.75], [1.0, 2.0], [-0.5, -2.5], [0.0, 3.0]])


@pytest.fixture(params=[24, 25], ids=["even", "odd"])
def size(request):
    return request.param


def test_projections_match_real_space_sums_and_not_mirrors_or_transposes(size):
    volume = blob_map(size)
    A = relion_euler_to_matrix(*ANGLES.T)
    got = Projector(volume).project(A, shifts_px=SHIFTS)
    assert got.shape == (len(A), size, size) and got.dtype == np.float32
    for i in range(len(A)):
        right = correlation(got[i], reference_projection(volume, A[i], SHIFTS[i]))
        assert right > 0.99, (i, right)
        # the other hand: x mirrored (a z mirror projects the same along z, at tilt 0)
        mirrored = correlation(got[i], reference_projection(volume[:, :, ::-1], A[i], SHIFTS[i]))
        transposed = correlation(got[i], reference_projection(volume, A[i].T, SHIFTS[i]))
        swapped = relion_euler_to_matrix(*ANGLES[i, ::-1])  # (psi, tilt, rot) read as (rot, ...)
        wrong_order = correlation(got[i], reference_projection(volume, swapped, SHIFTS[i]))
        assert mirrored < 0.9, (i, mirrored)
        if i == 0:
            continue  # the identity is its own transpose
        assert transposed < min(0.95, right - 0.05), (i, transposed)  # near-top views are close
        if abs(ANGLES[i, 0] - ANGLES[i, 2]) > 1:
            assert wrong_order < 0.95, (i, wrong_order)


def test_identity_pose_is_the_sum_along_z(size):
    volume = blob_map(size)
    image = Projector(volume).project(np.eye(3)[None])[0]
    want = volume.sum(0)
    assert correlation(image, want) > 0.999
    # on-grid samples take the full sinc^2 gridding correction, which suits off-grid ones: the
    # largest error of any pose, 5% of the peak at padding 2 (2% mean L2 over random poses)
    assert np.abs(image - want).max() < 0.06 * want.max()


def test_matches_the_simulators_exact_projections():
    atoms = builtin_conformations(1)[0]
    n, px = 32, 5.0
    volume = render_volume(atoms, n, px)
    R = quaternion_to_matrix(random_quaternions(6, np.random.default_rng(3)))
    exact = project(atoms, R, n, px)
    got = Projector(volume).project(R)
    for g, e in zip(got, exact, strict=True):
        assert correlation(g, e) > 0.995


def test_origin_sign_is_relions_the_image_is_the_projection_moved_by_minus_origin():
    n = 32
    zz, yy, xx = np.mgrid[:n, :n, :n] - n // 2
    volume = np.exp(-(xx**2 + yy**2 + zz**2) / 4.0).astype(np.float32)  # one centred blob
    shifts = np.array([[4.0, -3.0], [-5.0, 2.0]])
    images = Projector(volume).project(np.stack([np.eye(3)] * 2), shifts_px=shifts)
    y, x = np.mgrid[:n, :n] - n // 2
    for image, (ox, oy) in zip(images, shifts, strict=True):
        m = image.sum()
        assert (image * x).sum() / m == pytest.approx(-ox, abs=0.02)
        assert (image * y).sum() / m == pytest.approx(-oy, abs=0.02)


def test_ctf_is_each_particles_own_and_matches_ctf_of_the_reference(size):
    volume = blob_map(size)
    A = relion_euler_to_matrix(*ANGLES.T)
    px = 3.0
    ctf = CTF.from_arrays(defocus_u=np.linspace(8000, 20000, len(A)),
                          defocus_v=np.linspace(7000, 18000, len(A)),
                          angle=np.linspace(-60, 60, len(A)), voltage_kv=300.0, cs_mm=2.7,
                          amplitude_contrast=0.1, phase_shift=[0, 0, 0, 0, 30, 0])
    got = Projector(volume).project(A, shifts_px=SHIFTS, ctf=ctf, pixel_size=px)
    plain = Projector(volume).project(A, shifts_px=SHIFTS)
    for i in range(len(A)):
        want = ctf[i:i + 1].apply(reference_projection(volume, A[i], SHIFTS[i])[None], px)[0]
        assert correlation(got[i], want) > 0.99
        other = ctf[(i + 3) % len(A):(i + 3) % len(A) + 1].apply(got[i][None] * 0 + plain[i], px)
        assert correlation(got[i], other[0]) < correlation(got[i], want)
    with pytest.raises(BadInput, match="pixel size"):
        Projector(volume).project(A, ctf=ctf)


def test_chunks_give_the_same_images(monkeypatch):
    import cryotune.data.project as module

    volume = blob_map(16)
    A = quaternion_to_matrix(random_quaternions(7, np.random.default_rng(1)))
    whole = Projector(volume).project(A)
    monkeypatch.setattr(module, "_CHUNK_SAMPLES", 1)  # one image per chunk
    np.testing.assert_allclose(Projector(volume).project(A), whole, atol=1e-6 * np.abs(whole).max())


def test_read_map_refuses_crystallographic_and_anisotropic_maps(tmp_path):
    crystal = write_map(tmp_path / "p21.mrc", np.zeros((25, 43, 73), np.float32),
                        voxel=(1.1, 1.3, 1.7), space_group=4)
    with pytest.raises(BadInput, match="73 x 43 x 25 voxels, not a cubic 3D map"):
        read_map(crystal)
    aniso = write_map(tmp_path / "aniso.mrc", np.zeros((16, 16, 16), np.float32),
                      voxel=(1.0, 1.2, 1.0))
    with pytest.raises(BadInput, match="anisotropic"):
        read_map(aniso)
    ok = write_map(tmp_path / "ok.mrc", blob_map(16), voxel=1.6)
    volume, voxel = read_map(ok)
    assert volume.shape == (16, 16, 16) and voxel == pytest.approx(1.6)


def _ingest_peak(tmp_path, n: int, rows: int) -> int:
    import tracemalloc

    from cryotune.data.ingest import ingest
    from cryotune.data.mrc import write_stack

    size = 32
    folder = tmp_path / f"in{n}"
    folder.mkdir()
    rng = np.random.default_rng(n)
    write_stack(folder / "p.mrcs", rng.standard_normal((n, size, size)).astype(np.float32), 1.5)
    body = "".join(f"{i + 1}@p.mrcs {a:.2f} {t:.2f} {p:.2f} {x:.2f} {-x:.2f} 15000 14000 30\n"
                   for i, (a, t, p, x) in enumerate(rng.uniform(-3, 170, (n, 4))))
    (folder / "p.star").write_text(
        "data_optics\nloop_\n_rlnOpticsGroup #1\n_rlnImagePixelSize #2\n_rlnVoltage #3\n"
        "_rlnSphericalAberration #4\n_rlnAmplitudeContrast #5\n1 1.5 300 2.7 0.1\n"
        "data_particles\nloop_\n_rlnImageName #1\n_rlnAngleRot #2\n_rlnAngleTilt #3\n"
        "_rlnAnglePsi #4\n_rlnOriginXAngst #5\n_rlnOriginYAngst #6\n_rlnDefocusU #7\n"
        "_rlnDefocusV #8\n_rlnDefocusAngle #9\n" + body)
    write_map(folder / "m.mrc", blob_map(size), 1.5)
    tracemalloc.start()
    try:
        ingest(tmp_path / f"ds{n}", particles=folder / "p.star", map_path=folder / "m.mrc",
               shard_rows=rows)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_ingest_from_a_map_streams_in_chunks(tmp_path):
    _ingest_peak(tmp_path, 60, 20)  # first use: imports and caches
    # both sizes fill every split's shard buffer; then only per-particle metadata grows
    grown = _ingest_peak(tmp_path, 3000, 20) - _ingest_peak(tmp_path, 600, 20)
    extra_stack_bytes = 2 * (3000 - 600) * 32 * 32 * 4  # particles and references
    assert grown < 0.05 * extra_stack_bytes, (grown, extra_stack_bytes)
