"""Simulation: exact projections, the CTF and the simulate() driver, against closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial.transform import Rotation
from scipy.special import erf

from cryotune.data import simulate as sim
from cryotune.data.ctf import CTFParams, apply_ctf, ctf_2d, electron_wavelength
from cryotune.data.geometry import relion_euler_to_matrix
from cryotune.data.molecules import Atoms, builtin_conformations
from cryotune.data.simulate import (
    fit_pixel_size,
    project,
    render_volume,
    simulate,
)
from cryotune.data.store import open_dataset
from cryotune.errors import BadInput


def reference_projection(atoms: Atoms, R: np.ndarray, size: int, pixel_size: float) -> np.ndarray:
    """Float64 pixel integrals of every rotated Gaussian, written out atom by atom."""
    image = np.zeros((size, size))
    edges = (np.arange(size + 1) - size // 2 - 0.5) * pixel_size
    for r, w, s in zip(atoms.coords @ R.T, atoms.weight, atoms.sigma, strict=True):
        gx = np.diff(0.5 * erf((edges - r[0]) / (math.sqrt(2) * s)))
        gy = np.diff(0.5 * erf((edges - r[1]) / (math.sqrt(2) * s)))
        image += w * np.outer(gy, gx)
    return image


def rel_err(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def molecule():
    return builtin_conformations(2)


@pytest.mark.parametrize("size", [16, 17, 32, 33])
def test_projection_equals_rendered_volume_summed_along_z(molecule, size):
    px = fit_pixel_size(molecule, size)
    R = Rotation.random(random_state=size).as_matrix()
    for atoms in molecule:
        turned = Atoms(atoms.coords @ R.T, atoms.weight, atoms.sigma)
        volume = render_volume(turned, size, px)
        image = project(atoms, R[None], size, px)[0]
        assert volume.shape == (size, size, size) and volume.dtype == np.float32
        assert rel_err(volume.sum(axis=0, dtype=np.float64), image.astype(np.float64)) < 1e-5


@pytest.mark.parametrize("size", [16, 21])
def test_projection_is_the_exact_pixel_integral(size):
    rng = np.random.default_rng(size)
    atoms = Atoms(rng.uniform(-4.5, 4.5, (40, 3)), rng.uniform(0.5, 2, 40), rng.uniform(0.7, 1.5, 40))
    R = Rotation.random(5, random_state=1).as_matrix()
    images = project(atoms, R, size, 2.0)
    for image, r in zip(images, R, strict=True):
        want = reference_projection(atoms, r, size, 2.0)
        np.testing.assert_allclose(image, want, atol=1e-5 * want.max())
        assert image.sum() == pytest.approx(atoms.weight.sum(), rel=1e-5)  # all mass inside


def test_pose_convention_puts_the_atom_at_R_r():
    atom = Atoms(np.array([[10.0, 0.0, 3.0]]), 1.0, 0.5)
    size, c = 32, 16
    R = np.stack([np.eye(3), relion_euler_to_matrix(90, 0, 0), relion_euler_to_matrix(30, 60, -20)])
    for image, r in zip(project(atom, R, size, 1.0), R, strict=True):
        x, y = r[0] @ atom.coords[0], r[1] @ atom.coords[0]
        peak = np.unravel_index(np.argmax(image), image.shape)
        assert peak == (c + round(y), c + round(x))


def test_fitted_pixel_size_keeps_every_view_inside_the_box():
    confs = builtin_conformations(5)
    size = 24
    px = fit_pixel_size(confs, size)
    R = Rotation.random(100, random_state=3).as_matrix()
    for atoms in confs:
        images = project(atoms, R, size, px).astype(np.float64)
        np.testing.assert_allclose(images.sum((1, 2)), atoms.weight.sum(), rtol=1e-4)


def test_electron_wavelength():
    assert electron_wavelength(300) == pytest.approx(0.019687, abs=1e-6)
    assert electron_wavelength(200) == pytest.approx(0.025079, abs=1e-6)


def test_ctf_matches_the_textbook_form_with_astigmatism():
    # sqrt(1 - A^2) sin(chi) + A cos(chi), chi = pi lam dz k^2 - pi/2 Cs lam^3 k^4 and the
    # defocus of direction theta = u cos^2(theta - phi) + v sin^2(theta - phi).
    shape, px, amp, cs, kv = (20, 17), 1.3, 0.07, 2.0, 200.0
    defocus = np.array([[15000.0, 12000.0, 35.0], [9000.0, 9000.0, 0.0]])
    got = ctf_2d(shape, defocus, px, kv, cs, amp)
    ky, kx = np.meshgrid(np.fft.fftfreq(shape[0], px), np.fft.fftfreq(shape[1], px), indexing="ij")
    lam = electron_wavelength(kv)
    k2, theta = kx**2 + ky**2, np.arctan2(ky, kx)
    for c, (u, v, phi) in zip(got, defocus, strict=True):
        dz = u * np.cos(theta - np.radians(phi)) ** 2 + v * np.sin(theta - np.radians(phi)) ** 2
        chi = np.pi * lam * dz * k2 - np.pi / 2 * cs * 1e7 * lam**3 * k2**2
        np.testing.assert_allclose(c, np.sqrt(1 - amp**2) * np.sin(chi) + amp * np.cos(chi),
                                   atol=1e-12)
    half = ctf_2d(shape, defocus, px, kv, cs, amp, half=True)
    np.testing.assert_allclose(half, got[..., : shape[1] // 2 + 1])


def test_ctf_first_zero_at_the_analytic_frequency():
    # Applied to a delta image, the CTF is the image's spectrum. Its first zero solves
    # pi lam D k^2 - pi/2 Cs lam^3 k^4 + asin(A) = pi.
    size, px, defocus, amp, cs = 128, 1.0, 20000.0, 0.1, 2.7
    delta = np.zeros((1, size, size))
    delta[0, 0, 0] = 1.0
    spectrum = np.fft.fft2(apply_ctf(delta, [defocus], px, 300.0, cs, amp))[0].real
    lam = electron_wavelength(300.0)
    a, b, c = np.pi / 2 * cs * 1e7 * lam**3, np.pi * lam * defocus, np.pi - math.asin(amp)
    k0 = math.sqrt((b - math.sqrt(b * b - 4 * a * c)) / (2 * a))
    profile = spectrum[0, : size // 2]  # along kx
    k = np.fft.fftfreq(size, px)[: size // 2]
    assert profile[0] == pytest.approx(amp, abs=1e-6)
    first = int(np.argmax(profile < 0))
    zero = k[first - 1] - profile[first - 1] * (k[first] - k[first - 1]) / (profile[first] - profile[first - 1])
    assert zero == pytest.approx(k0, rel=0.01)


def read_all(path):
    ds = open_dataset(path)
    parts = [ds.read(s) for s in ("train", "test", "val")]
    return ds, {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


def test_snr_normalisation_and_splits(tmp_path):
    out = simulate(tmp_path / "ds", size=16, n_train=400, n_test=100, snr=0.1, seed=5,
                   shard_rows=128)
    ds, data = read_all(out)
    m = ds.manifest
    assert ds.count("train") == 400 and ds.count("test") == 100 and ds.count("val") == 40
    assert {s: m["splits"][s]["count"] for s in ("train", "val", "test")} == {"train": 400, "val": 40, "test": 100}
    # train and test ids are those of a store without validation; validation ids come after
    np.testing.assert_array_equal(data["id"], np.arange(540))
    np.testing.assert_array_equal(ds.read("val", ["id"])["id"], np.arange(500, 540))
    assert m["generator"]["n_val"] == 40 and m["generator"]["val_fraction"] == 0.1
    clean, noise = data["clean"].astype(np.float64), (data["noisy"] - data["clean"]).astype(np.float64)
    assert clean.min() == 0.0 and clean.max() == 1.0
    assert clean.var() / noise.var() == pytest.approx(0.1, rel=0.05)
    assert m["snr"] == 0.1 and m["snr_measured"] == pytest.approx(clean.var() / noise.var(), rel=1e-3)
    assert noise.std() == pytest.approx(m["generator"]["noise_sigma"], rel=0.01)
    assert m["normalization"]["method"] == "minmax_clean" and m["conformations"] == 5
    assert m["has_poses"] and m["ctf"] is None
    assert set(np.unique(data["conformation"])) == set(range(5))
    np.testing.assert_array_equal(data["shift"], 0.0)
    assert len(ds.truth_volumes()) == 5


@pytest.mark.parametrize("ctf", [None, CTFParams(defocus_min=8000, defocus_max=12000)])
def test_stored_pose_conformation_and_defocus_reproduce_the_clean_image(tmp_path, ctf):
    out = simulate(tmp_path / "ds", size=20, n_train=30, n_test=10, snr=1.0, ctf=ctf, seed=2,
                   formats=("mrc",))
    ds, data = read_all(out)
    lo, hi = ds.manifest["normalization"]["min"], ds.manifest["normalization"]["max"]
    truth = [Atoms.from_npz(p) for p in ds.truth_volumes()]
    for i in (0, 7, 35):
        q = data["rotation"][i].astype(np.float64)
        R = Rotation.from_quat(q[[1, 2, 3, 0]]).as_matrix()  # scipy is scalar-last
        want = reference_projection(truth[data["conformation"][i]], R, 20, ds.pixel_size)
        if ctf is not None:
            u, v, angle = data["defocus"][i]
            assert u == v and angle == 0 and 8000 <= u <= 12000
            want = apply_ctf(want[None], [u], ds.pixel_size, 300.0, 2.7, 0.1)[0]
        got = data["clean"][i] * (hi - lo) + lo
        np.testing.assert_allclose(got, want, atol=1e-4 * np.abs(want).max())
    assert (ds.manifest["ctf"] is None) == (ctf is None)


def test_seeded_streams_and_two_pass_path(tmp_path, monkeypatch):
    a = read_all(simulate(tmp_path / "a", size=16, n_train=50, n_test=10, snr=0.5, seed=9))[1]
    b = read_all(simulate(tmp_path / "b", size=16, n_train=50, n_test=10, snr=0.2, seed=9,
                          ctf=CTFParams()))[1]
    monkeypatch.setattr(sim, "_CACHE_BYTES", 0)  # project twice instead of keeping the images
    c = read_all(simulate(tmp_path / "c", size=16, n_train=50, n_test=10, snr=0.5, seed=9))[1]
    d = read_all(simulate(tmp_path / "d", size=16, n_train=50, n_test=10, snr=0.5, seed=10))[1]
    for key in a:
        np.testing.assert_array_equal(a[key], c[key])
    for key in ("rotation", "conformation"):  # independent of the noise and defocus streams
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["rotation"], d["rotation"])


def test_pdb_conformations(tmp_path):
    rng = np.random.default_rng(0)
    xyz = rng.uniform(-15, 15, (60, 3))
    for k, shift in enumerate((0.0, 6.0)):
        lines = [f"ATOM  {i + 1:>5}  CA  GLY A{i + 1:>4}    {x + shift:8.3f}{y:8.3f}{z:8.3f}"
                 f"  1.00 20.00           C" for i, (x, y, z) in enumerate(xyz)]
        (tmp_path / f"c{k}.pdb").write_text("\n".join(lines) + "\nEND\n")
    out = simulate(tmp_path / "ds", size=16, n_train=20, n_test=0, snr=1.0,
                   pdb=[tmp_path / "c0.pdb", tmp_path / "c1.pdb"], ca_only=True)
    ds = open_dataset(out)
    assert ds.manifest["conformations"] == 2 and ds.manifest["generator"]["model"] == "pdb"
    first, second = (Atoms.from_npz(p) for p in ds.truth_volumes())
    np.testing.assert_allclose(first.coords, xyz - xyz.mean(0), atol=1e-3)
    np.testing.assert_allclose(second.coords - first.coords, [[6.0, 0, 0]] * 60, atol=2e-3)


def test_progress_reports_both_passes(tmp_path, monkeypatch):
    monkeypatch.setattr(sim, "_CHUNK_IMAGES", 16)
    seen = []
    simulate(tmp_path / "ds", size=16, n_train=40, n_test=8, snr=1.0, val_fraction=0,
             progress=lambda *a: seen.append(a))
    assert [s for s in seen if s[0] == "project"] == [("project", d, 48) for d in (16, 32, 48)]
    assert [s for s in seen if s[0] == "write"] == [("write", d, 48) for d in (16, 32, 48)]


@pytest.mark.parametrize("kwargs, where", [
    ({"size": 15}, "--size"),
    ({"snr": 0.0}, "--snr"),
    ({"snr": -1.0}, "--snr"),
    ({"n_train": 0}, "--n-train"),
    ({"val_fraction": 1.5}, "--val-fraction"),
    ({"val_fraction": -0.1}, "--val-fraction"),
    ({"pixel_size": 0.0}, "--pixel-size"),
    ({"conformations": 0}, "--conformations"),
    ({"ctf": CTFParams(defocus_min=5000, defocus_max=1000)}, "--defocus-min/--defocus-max"),
    ({"ctf": CTFParams(amplitude_contrast=1.0)}, "--amplitude-contrast"),
])
def test_bad_arguments_name_the_option_and_leave_nothing(tmp_path, kwargs, where):
    args = {"size": 16, "n_train": 4, "n_test": 1, "snr": 0.1} | kwargs
    with pytest.raises(BadInput) as err:
        simulate(tmp_path / "ds", **args)
    assert where in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_existing_output_is_left_untouched_without_overwrite(tmp_path):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(BadInput, match="output already exists"):
        simulate(out, size=16, n_train=4, n_test=1, snr=0.1)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    simulate(out, size=16, n_train=4, n_test=1, snr=0.1, overwrite=True)
    assert open_dataset(out).count("train") == 4 and not (out / "keep.txt").exists()


def test_pdb_errors(tmp_path):
    (tmp_path / "empty.pdb").write_text("HEADER\nEND\n")
    with pytest.raises(BadInput, match="empty.pdb"):
        simulate(tmp_path / "ds", n_train=4, n_test=1, snr=0.1, pdb=[tmp_path / "empty.pdb"])
    with pytest.raises(BadInput, match="one PDB file per conformation"):
        simulate(tmp_path / "ds", n_train=4, n_test=1, snr=0.1, conformations=3,
                 pdb=[tmp_path / "empty.pdb"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.pdb"]


@pytest.mark.parametrize("fraction, n_val", [(0.0, 0), (0.25, 5), (0.1, 2)])
def test_val_fraction_of_the_train_pairs(tmp_path, fraction, n_val):
    out = simulate(tmp_path / "ds", size=16, n_train=20, n_test=4, snr=1.0, seed=1,
                   val_fraction=fraction, formats=("parquet", "mrc"))
    ds, data = read_all(out)
    assert (ds.count("train"), ds.count("val"), ds.count("test")) == (20, n_val, 4)
    assert len(np.unique(data["id"])) == 24 + n_val  # unique across the dataset
    for fmt in ("parquet", "mrc"):
        val = ds.read("val", ["id", "clean", "conformation"], fmt=fmt)
        np.testing.assert_array_equal(val["id"], np.arange(24, 24 + n_val))
        assert val["clean"].shape == (n_val, 16, 16)
