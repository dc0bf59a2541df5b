"""Ingest: MRC/MRCS stacks and RELION STAR files into a dataset store, checked pixel by pixel."""

from __future__ import annotations

import tracemalloc

import mrcfile
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from cryotune.data.ingest import ingest, open_images
from cryotune.data.mrc import write_stack
from cryotune.data.store import open_dataset
from cryotune.errors import BadInput

N, SIZE = 40, 20


def pair(tmp_path, n=N, size=SIZE, seed=0, clean_voxel=1.5, noisy_voxel=1.5, names=("c", "p")):
    """Clean references with a bright centre pixel, and noisy copies, written as .mrcs stacks."""
    rng = np.random.default_rng(seed)
    clean = (rng.random((n, size, size)) * 4 - 1).astype(np.float32)
    clean[:, size // 2, size // 2] = 5.0  # the box centre, to follow through crops
    noisy = (clean + rng.normal(0, 2, clean.shape)).astype(np.float32)
    c = write_stack(tmp_path / f"{names[0]}.mrcs", clean, clean_voxel)
    p = write_stack(tmp_path / f"{names[1]}.mrcs", noisy, noisy_voxel)
    return p, c, noisy, clean


def read_all(path):
    """The splits merged and sorted by id, plus the dataset and the test ids."""
    ds = open_dataset(path)
    parts = [ds.read(s) for s in ("train", "val", "test")]
    merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    order = np.argsort(merged["id"])
    return ds, {k: v[order] for k, v in merged.items()}, parts[2]["id"]


def expected(noisy, clean, crop=None):
    if crop is not None:
        lo = SIZE // 2 - crop // 2
        noisy, clean = (a[:, lo:lo + crop, lo:lo + crop] for a in (noisy, clean))
    lo, hi = clean.min(), clean.max()
    return (noisy.astype(np.float64) - lo) / (hi - lo), (clean.astype(np.float64) - lo) / (hi - lo)


def nothing_left(folder, inputs):
    """Only the input files remain: no output, no hidden temporary folder."""
    return sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in inputs)


@pytest.mark.parametrize("fmt", [("parquet",), ("mrc",), ("parquet", "mrc")])
def test_mrc_pairs_normalised_and_split(tmp_path, fmt):
    p, c, noisy, clean = pair(tmp_path)
    calls = []
    out = ingest(tmp_path / "ds", particles=p, references=c, formats=fmt, shard_rows=7,
                 seed=3, progress=lambda *a: calls.append(a))
    ds, rows, test_ids = read_all(out)
    np.testing.assert_array_equal(rows["id"], np.arange(N))
    want_noisy, want_clean = expected(noisy, clean)
    np.testing.assert_allclose(rows["clean"], want_clean, atol=2e-6)
    np.testing.assert_allclose(rows["noisy"], want_noisy, atol=2e-6)
    assert rows["clean"].min() == 0.0 and rows["clean"].max() == pytest.approx(1.0, abs=1e-6)
    assert len(test_ids) == 2 and ds.count("val") == 4  # round(40 * 0.05), round(38 * 0.1)
    assert ds.count("train") == N - 6 and ds.manifest["splits"]["val"]["count"] == 4
    assert np.isnan(rows["rotation"]).all() and not rows["shift"].any()
    m = ds.manifest
    assert m["kind"] == "ingested" and m["has_poses"] is False and m["ctf"] is None
    assert m["normalization"] == {"method": "minmax_clean", "min": float(clean.min()),
                                  "max": float(clean.max())}
    assert m["pixel_size"] == pytest.approx(1.5) and m["source"]["pixel_size_from"] == (
        "particles MRC header")
    snr = want_clean.var() / (want_noisy - want_clean).var()
    assert m["snr_measured"] == pytest.approx(snr, rel=1e-6)
    assert ("scan", N, N) in calls and calls[-1] == ("write", N, N)
    # the split is a function of the seed
    again = ingest(tmp_path / "again", particles=p, references=c, shard_rows=40, seed=3)
    other = ingest(tmp_path / "other", particles=p, references=c, seed=4, test_fraction=0.25)
    assert np.array_equal(np.sort(read_all(again)[2]), np.sort(test_ids))
    assert len(read_all(other)[2]) == 10


@pytest.mark.parametrize("size, crop", [(20, 16), (21, 16), (20, 15), (20, 20)])
def test_centre_crop_keeps_the_centre(tmp_path, size, crop):
    p, c, noisy, clean = pair(tmp_path, size=size)
    out = ingest(tmp_path / "ds", particles=p, references=c, crop=crop)
    ds, rows, _ = read_all(out)
    assert ds.image_shape == (crop, crop)
    # the bright box-centre pixel (index size // 2) lands on the crop's centre (crop // 2)
    assert (rows["clean"][:, crop // 2, crop // 2] == 1.0).all()
    lo = size // 2 - crop // 2
    window = (slice(None), slice(lo, lo + crop), slice(lo, lo + crop))
    c_crop = clean[window]
    want = (clean[window].astype(np.float64) - c_crop.min()) / (c_crop.max() - c_crop.min())
    np.testing.assert_allclose(rows["clean"], want, atol=2e-6)


OPTICS = """# version 30001

data_optics

loop_
_rlnOpticsGroup #1
_rlnOpticsGroupName #2
_rlnVoltage #3
_rlnSphericalAberration #4
_rlnAmplitudeContrast #5
_rlnImagePixelSize #6
_rlnImageSize #7
_rlnImageDimensionality #8
1 opticsGroup1 300.0 2.7 0.1 2.5 20 2

"""


def star_particles(folder, noisy, angles, origins_px, defocus, *, optics_last=False):
    """A RELION 3.1+ STAR file in ``folder`` whose images sit in two stacks under stacks/."""
    stacks = folder / "stacks"
    stacks.mkdir(parents=True)
    half = len(noisy) // 2
    write_stack(stacks / "m1.mrcs", noisy[:half], 1.0)  # header 1.0 means unset
    write_stack(stacks / "m2.mrcs", noisy[half:][::-1], 0.0)  # stored in reverse order
    rows = []
    for i in range(len(noisy)):
        name = f"{i + 1:06d}@stacks/m1.mrcs" if i < half else (
            f"{len(noisy) - i:06d}@stacks/m2.mrcs")
        values = [*angles[i], *(origins_px[i] * 2.5), *defocus[i]]
        rows.append(f"{name} 1 " + " ".join(f"{v:.6f}" for v in values))
    cols = ["rlnImageName", "rlnOpticsGroup", "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi",
            "rlnOriginXAngst", "rlnOriginYAngst", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle"]
    particles = ("# version 30001\n\ndata_particles\n\nloop_\n"
                 + "".join(f"_{c} #{k + 1}\n" for k, c in enumerate(cols)) + "\n".join(rows) + "\n\n")
    path = folder / "particles.star"
    path.write_text(particles + OPTICS if optics_last else OPTICS + particles)
    return path


@pytest.mark.parametrize("optics_last", [False, True])
def test_star_particles_with_poses_shifts_ctf(tmp_path, optics_last):
    p, c, noisy, clean = pair(tmp_path, clean_voxel=1.5)
    rng = np.random.default_rng(1)
    angles = np.column_stack([rng.uniform(-180, 180, N), rng.uniform(1, 179, N),
                              rng.uniform(-180, 180, N)])
    origins = rng.uniform(-4, 4, (N, 2))
    defocus = np.column_stack([rng.uniform(8000, 25000, (N, 2)), rng.uniform(-90, 90, N)])
    star = star_particles(tmp_path / "sub", noisy, angles, origins, defocus,
                          optics_last=optics_last)
    out = ingest(tmp_path / "ds", particles=star, references=c, shard_rows=6,
                 formats=("parquet", "mrc"))
    ds, rows, _ = read_all(out)
    want_noisy, want_clean = expected(noisy, clean)
    np.testing.assert_allclose(rows["noisy"], want_noisy, atol=2e-6)
    np.testing.assert_allclose(rows["clean"], want_clean, atol=2e-6)
    q = Rotation.from_euler("ZYZ", angles, degrees=True).inv().as_quat(scalar_first=True)
    q *= np.where(q[:, :1] < 0, -1, 1)
    np.testing.assert_allclose(rows["rotation"], q, atol=1e-6)
    np.testing.assert_allclose(rows["shift"], origins, atol=1e-5)
    np.testing.assert_allclose(rows["defocus"], defocus, rtol=1e-6, atol=1e-3)
    m = ds.manifest
    assert m["has_poses"] is True and ds.ctf_params() == {
        "voltage_kv": 300.0, "cs_mm": 2.7, "amplitude_contrast": 0.1}
    # the STAR file's 2.5 A wins over the references' header (1.5 A)
    assert ds.pixel_size == pytest.approx(2.5) and m["source"]["pixel_size_from"] == (
        "particles STAR file")
    assert m["source"]["poses_from"] == str(star)
    # MRC shards carry the same metadata as the Parquet ones
    mrc_rows = ds.read("train", ["id", "rotation", "shift"], fmt="mrc")
    np.testing.assert_allclose(mrc_rows["rotation"], q[mrc_rows["id"]], atol=1e-6)


def test_star_references_and_star_particles(tmp_path):
    p, c, noisy, clean = pair(tmp_path)
    for name, stack in (("refs.star", "c.mrcs"), ("parts.star", "p.mrcs")):
        lines = "\n".join(f"{i + 1}@{stack}" for i in range(N))
        (tmp_path / name).write_text(f"data_\n\nloop_\n_rlnImageName #1\n{lines}\n")
    out = ingest(tmp_path / "ds", particles=tmp_path / "parts.star",
                 references=tmp_path / "refs.star")
    _, rows, _ = read_all(out)
    np.testing.assert_allclose(rows["clean"], expected(noisy, clean)[1], atol=2e-6)
    assert np.isnan(rows["rotation"]).all()


def test_pixel_size_precedence(tmp_path):
    p, c, *_ = pair(tmp_path, clean_voxel=1.7, noisy_voxel=1.0)  # particles' header unset
    ds = open_dataset(ingest(tmp_path / "a", particles=p, references=c))
    assert ds.pixel_size == pytest.approx(1.7)
    assert ds.manifest["source"]["pixel_size_from"] == "references MRC header"
    ds = open_dataset(ingest(tmp_path / "b", particles=p, references=c, pixel_size=3.1))
    assert ds.pixel_size == pytest.approx(3.1)
    assert ds.manifest["source"]["pixel_size_from"] == "--pixel-size"
    for voxel in (0.0, 1.0):
        p, c, *_ = pair(tmp_path, clean_voxel=voxel, noisy_voxel=voxel, names=(f"c{voxel}",
                                                                                f"p{voxel}"))
        with pytest.raises(BadInput, match=r"no pixel size.*p\d\.0\.mrcs.*--pixel-size"):
            ingest(tmp_path / "c", particles=p, references=c)
    assert not (tmp_path / "c").exists()
    with pytest.raises(BadInput, match="--pixel-size"):
        ingest(tmp_path / "c", particles=p, references=c, pixel_size=-1.0)


def test_mislabelled_stacks_and_the_stack_override(tmp_path):
    rng = np.random.default_rng(5)
    clean = rng.random((16, 16, 16)).astype(np.float32)
    for name, data in (("p.mrc", clean + 0.5), ("c.mrc", clean)):
        with mrcfile.new(tmp_path / name) as m:  # space group 1, no voxel size: a 'volume'
            m.set_data(data)
    with pytest.raises(BadInput, match=r"looks like a 3D volume.*p\.mrc.*--stack"):
        ingest(tmp_path / "ds", particles=tmp_path / "p.mrc", references=tmp_path / "c.mrc",
               pixel_size=2.0)
    out = ingest(tmp_path / "ds", particles=tmp_path / "p.mrc", references=tmp_path / "c.mrc",
                 pixel_size=2.0, force_stack=True)
    assert sum(open_dataset(out).count(s) for s in ("train", "val", "test")) == 16


def test_overwrite_replaces(tmp_path):
    p, c, *_ = pair(tmp_path)
    out = ingest(tmp_path / "ds", particles=p, references=c, test_fraction=0.5)
    with pytest.raises(BadInput, match=r"already exists.*ds.*--overwrite"):
        ingest(out, particles=p, references=c)
    ingest(out, particles=p, references=c, overwrite=True, test_fraction=0.1)
    assert open_dataset(out).count("test") == 4


def _poison(path, index, value):
    with mrcfile.open(path, mode="r+") as m:
        m.data[index, 3, 4] = value
    return path


def _file(path, content):
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


def _star(t, rows):
    return _file(t / "s.star", "data_\nloop_\n_rlnImageName #1\n" + "\n".join(rows) + "\n")


def _cube(path):
    with mrcfile.new(path) as m:  # a 3D map as mrcfile writes it: space group 1
        m.set_data(np.ones((SIZE, SIZE, SIZE), np.float32))
    return path


# case -> (make(tmp_path, particles, references) -> (particles, references, kwargs), message)
BAD_CASES = {
    "count": (lambda t, p, c: (write_stack(t / "short.mrcs", np.ones((N - 1, SIZE, SIZE)), 1.5),
                               c, {}), r"39 particle images but 40 references"),
    "shape": (lambda t, p, c: (p, write_stack(t / "big.mrcs", np.ones((N, 24, 24)), 1.5), {}),
              r"20x20 but references are 24x24"),
    "nan": (lambda t, p, c: (_poison(p, 17, np.nan), c, {}),
            r"NaN or inf pixels.*p\.mrcs image 18 of 40"),
    "inf": (lambda t, p, c: (p, _poison(c, 3, np.inf), {}),
            r"NaN or inf pixels.*c\.mrcs image 4 of 40"),
    "nan in star": (lambda t, p, c: (_star(t, [f"{i + 1}@{_poison(p, 17, np.nan).name}"
                                               for i in range(N)]), c, {}),
                    r"NaN or inf pixels.*s\.star row 18 \(18@.*p\.mrcs\)"),
    "volume": (lambda t, p, c: (p, _cube(t / "map.mrc"), {}), r"3D volume.*map\.mrc.*--stack"),
    "crop": (lambda t, p, c: (p, c, {"crop": 21}), r"--crop 21 does not fit the 20x20"),
    "fraction": (lambda t, p, c: (p, c, {"test_fraction": 1.0}), r"outside \[0, 1\)"),
    "empty": (lambda t, p, c: (_file(t / "e.mrcs", b""), c, {}), r"empty.*e\.mrcs"),
    "truncated": (lambda t, p, c: (_file(t / "t.mrcs", p.read_bytes()[:-50]), c, {}),
                  r"truncated.*t\.mrcs"),
    "not mrc": (lambda t, p, c: (_file(t / "x.mrcs", "hello\n" * 400), c, {}),
                r"not an MRC file.*x\.mrcs"),
    "no image names": (lambda t, p, c: (_file(t / "s.star", "data_\nloop_\n_rlnAngleRot #1\n1\n"),
                                        c, {}), r"no rlnImageName.*s\.star"),
    "missing stack": (lambda t, p, c: (_star(t, ["1@p.mrcs", "2@gone.mrcs"]), c, {}),
                      r"'gone\.mrcs' not found.*s\.star row 2"),
    "index past end": (lambda t, p, c: (_star(t, [f"{i + 2}@p.mrcs" for i in range(N)]), c, {}),
                       r"image 41 is past the end of .*p\.mrcs \(40 images\).*s\.star row 40"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_input_names_the_problem_and_leaves_nothing(tmp_path, case):
    p, c, *_ = pair(tmp_path)
    make, message = BAD_CASES[case]
    particles, references, extra = make(tmp_path, p, c)
    inputs = list(tmp_path.iterdir())
    with pytest.raises(BadInput, match=message):
        ingest(tmp_path / "ds", particles=particles, references=references, shard_rows=8, **extra)
    assert nothing_left(tmp_path, inputs)


def _peak_memory(tmp_path, n, rows, size=32):
    """Peak Python-heap bytes (numpy included; memory maps are not) of one ingest of n pairs."""
    clean = np.random.default_rng(n).random((n, size, size), dtype=np.float32)
    p = write_stack(tmp_path / f"p{n}.mrcs", clean + 1, 2.0)
    c = write_stack(tmp_path / f"c{n}.mrcs", clean, 2.0)
    del clean
    tracemalloc.start()
    try:
        ingest(tmp_path / f"ds{n}", particles=p, references=c, shard_rows=rows)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_stays_bounded_by_the_shard_size(tmp_path):
    # small fills every split's shard buffer (train, val, test) at least once, as large does
    rows, small, large = 50, 1000, 4000
    _peak_memory(tmp_path, 100, rows)  # first use: imports and caches
    grown = _peak_memory(tmp_path, large, rows) - _peak_memory(tmp_path, small, rows)
    extra_stack_bytes = 2 * (large - small) * 32 * 32 * 4  # particles and references
    # four times the images, about the same peak: only per-shard bookkeeping grows
    assert grown < 0.05 * extra_stack_bytes, (grown, extra_stack_bytes)


def test_open_images_picks_the_reader_by_extension(tmp_path):
    p, c, noisy, _ = pair(tmp_path)
    (tmp_path / "p.star").write_text("data_\nloop_\n_rlnImageName #1\n3@p.mrcs\n1@p.mrcs\n")
    with open_images(tmp_path / "p.star") as star, open_images(p) as stack:
        assert star.shape == (2, SIZE, SIZE) and stack.shape == (N, SIZE, SIZE)
        np.testing.assert_array_equal(star.read(), noisy[[2, 0]])
        assert star.describe(0).endswith("row 1 (3@" + str(p) + ")")


def test_val_split_comes_from_the_training_pairs_and_leaves_the_test_split(tmp_path):
    p, c, _, _ = pair(tmp_path)
    split = {}
    for fraction in (0.0, 0.25):
        ds = open_dataset(ingest(tmp_path / f"ds{fraction}", particles=p, references=c, seed=2,
                                 test_fraction=0.1, val_fraction=fraction))
        split[fraction] = {s: ds.read(s, ["id"])["id"] for s in ("train", "val", "test")}
        assert ds.manifest["source"]["val_fraction"] == fraction
    assert np.array_equal(split[0.0]["test"], split[0.25]["test"])  # the test split stays
    assert len(split[0.0]["val"]) == 0 and len(split[0.25]["val"]) == 9  # round(36 * 0.25)
    assert set(split[0.25]["val"]) | set(split[0.25]["train"]) == set(split[0.0]["train"])
    assert not set(split[0.25]["val"]) & set(split[0.25]["train"])
    with pytest.raises(BadInput, match="--val-fraction"):
        ingest(tmp_path / "bad", particles=p, references=c, val_fraction=1.0)
    assert not (tmp_path / "bad").exists()
