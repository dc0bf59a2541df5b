"""`cryotune ingest` through the real command-line dispatcher, on real files."""

from __future__ import annotations

import shlex

import mrcfile
import numpy as np
import pytest

from cryotune import cli
from cryotune.commands import ingest as command
from cryotune.data.mrc import write_stack
from cryotune.data.store import open_dataset


@pytest.fixture
def run(monkeypatch):
    """cli.main with only this command registered, so the test does not depend on the others."""
    monkeypatch.setattr(cli, "COMMANDS", ("ingest",))
    return lambda *argv: cli.main(["ingest", *map(str, argv)])


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(0)
    clean = rng.random((30, 24, 24)).astype(np.float32)
    noisy = clean + rng.normal(0, 1, clean.shape).astype(np.float32)
    stacks = tmp_path / "Extract" / "job007"
    stacks.mkdir(parents=True)
    write_stack(stacks / "noisy.mrcs", noisy, 1.0)  # header pixel size unset
    refs = write_stack(tmp_path / "refs.mrcs", clean, 1.0)
    job = tmp_path / "Refine3D" / "job010"
    job.mkdir(parents=True)
    rows = "\n".join(f"{i + 1:06d}@Extract/job007/noisy.mrcs 1 {i * 7.0} {i * 3.0 + 1} 15.0"
                     for i in range(30))
    star = job / "run_data.star"
    star.write_text(
        "data_optics\n\nloop_\n_rlnOpticsGroup #1\n_rlnImagePixelSize #2\n1 2.2\n\n"
        "data_particles\n\nloop_\n_rlnImageName #1\n_rlnOpticsGroup #2\n_rlnAngleRot #3\n"
        f"_rlnAngleTilt #4\n_rlnAnglePsi #5\n{rows}\n")
    return {"star": star, "refs": refs, "noisy": noisy, "clean": clean}


def test_ingest_star_file_prints_a_summary(run, files, tmp_path, capsys):
    out = tmp_path / "ds"
    assert run(out, "--particles", files["star"], "--references", files["refs"], "--crop", 16,
               "--format", "both", "--shard-rows", 8, "--test-fraction", 0.2, "--seed", 1) == 0
    stdout = capsys.readouterr().out
    assert f"dataset: {out}" in stdout
    assert "22 train + 2 validation + 6 test pairs of 16x16 px at 2.2 A/px (from particles STAR file)" in stdout
    assert "poses: yes, CTF: no" in stdout
    ds = open_dataset(out)
    assert ds.formats == ("parquet", "mrc") and ds.manifest["has_poses"]
    assert ds.manifest["command"].startswith("cryotune ingest ")
    assert "--crop 16" in ds.manifest["command"]
    clean = files["clean"][:, 4:20, 4:20]
    test = ds.read("test", ["id", "clean"], fmt="mrc")
    want = (clean[test["id"]] - clean.min()) / (clean.max() - clean.min())
    np.testing.assert_allclose(test["clean"], want, atol=2e-6)


def test_pixel_size_override_and_stack_flag(run, files, tmp_path):
    for name, data in (("p.mrc", files["noisy"][:24]), ("c.mrc", files["clean"][:24])):
        with mrcfile.new(tmp_path / name) as m:  # 24 images of 24x24, space group 1: a 'map'
            m.set_data(data)
    args = ["--particles", tmp_path / "p.mrc", "--references", tmp_path / "c.mrc"]
    assert run(tmp_path / "ds", *args, "--pixel-size", 1.3) == 2
    assert run(tmp_path / "ds", *args, "--pixel-size", 1.3, "--stack") == 0
    assert open_dataset(tmp_path / "ds").pixel_size == pytest.approx(1.3)


@pytest.mark.parametrize("extra, message", [
    ([], "no pixel size"),
    (["--pixel-size", "2", "--crop", "25"], "--crop 25 does not fit the 24x24 images"),
])
def test_errors_are_one_line_exit_2_and_leave_nothing(run, files, tmp_path, capsys, extra,
                                                      message):
    before = sorted(tmp_path.iterdir())
    status = run(tmp_path / "ds", "--particles", files["refs"], "--references", files["refs"],
                 *extra)
    err = capsys.readouterr().err.strip()
    assert status == 2
    assert err.startswith("error: ") and message in err and "refs.mrcs" in err
    assert len(err.splitlines()) == 1
    assert sorted(tmp_path.iterdir()) == before


def test_existing_output_needs_overwrite(run, files, tmp_path, capsys):
    args = ["--particles", files["star"], "--references", files["refs"]]
    assert run(tmp_path / "ds", *args) == 0
    assert run(tmp_path / "ds", *args) == 2
    assert "already exists" in capsys.readouterr().err
    assert run(tmp_path / "ds", *args, "--overwrite") == 0


def test_help_examples_parse(monkeypatch):
    monkeypatch.setattr(cli, "COMMANDS", ("ingest",))
    parser = cli.build_parser()
    doc = command.__doc__
    assert doc.splitlines()[0].startswith("Ingest")
    examples = [line.strip() for line in doc.split("Example usage:")[1].splitlines() if line.strip()]
    assert len(examples) == 5
    for line in examples:
        argv = shlex.split(line)
        assert argv[:2] == ["cryotune", "ingest"]
        args = parser.parse_args(argv[1:])
        assert args.particles and (args.references is None) != (args.map_path is None)


# --- references projected from a map (--map) -------------------------------------------------

MAP_SIZE, MAP_PX = 24, 2.0


@pytest.fixture
def mapped(tmp_path):
    """A blob map, 12 particles at chosen poses and origins of both signs, two optics groups,
    and their noiseless images made independently of the projector (scipy, then the CTF)."""
    from blobmaps import blob_map, reference_projection, write_map

    from cryotune.data.ctf import CTF
    from cryotune.data.geometry import relion_euler_to_matrix

    rng = np.random.default_rng(5)
    n = 12
    angles = np.column_stack([rng.uniform(-180, 180, n), rng.uniform(5, 175, n),
                              rng.uniform(-180, 180, n)])
    origins = rng.uniform(-3, 3, (n, 2))
    origins[0], origins[1] = (2.5, -1.5), (-2.0, 3.0)
    group = np.array([1, 2] * (n // 2))
    kv, cs = np.where(group == 1, 300.0, 200.0), np.where(group == 1, 2.7, 2.0)
    du = rng.uniform(12000, 24000, n)
    dv, da = du - rng.uniform(0, 2000, n), rng.uniform(-90, 90, n)
    volume = blob_map(MAP_SIZE)
    A = relion_euler_to_matrix(*angles.T)
    plain = np.stack([reference_projection(volume, A[i], origins[i]) for i in range(n)])
    ctf = CTF.from_arrays(defocus_u=du, defocus_v=dv, angle=da, voltage_kv=kv, cs_mm=cs,
                          amplitude_contrast=0.1)
    with_ctf = ctf.apply(plain, MAP_PX)
    noisy = with_ctf + rng.normal(0, 0.1 * with_ctf.std(), with_ctf.shape).astype(np.float32)
    (tmp_path / "Extract").mkdir()
    write_stack(tmp_path / "Extract" / "parts.mrcs", noisy, MAP_PX)
    names = [f"{i + 1:06d}@Extract/parts.mrcs" for i in range(n)]
    rows31 = "\n".join(
        f"{names[i]} {group[i]} {angles[i, 0]:.6f} {angles[i, 1]:.6f} {angles[i, 2]:.6f} "
        f"{origins[i, 0] * MAP_PX:.6f} {origins[i, 1] * MAP_PX:.6f} {du[i]:.3f} {dv[i]:.3f} "
        f"{da[i]:.4f}" for i in range(n))
    star31 = tmp_path / "run_data.star"
    star31.write_text(
        "# version 50001\n\ndata_optics\n\nloop_\n_rlnOpticsGroup #1\n_rlnOpticsGroupName #2\n"
        "_rlnImagePixelSize #3\n_rlnImageSize #4\n_rlnVoltage #5\n_rlnSphericalAberration #6\n"
        "_rlnAmplitudeContrast #7\n1 opticsGroup1 2.0 24 300.0 2.7 0.1\n"
        "2 opticsGroup2 2.0 24 200.0 2.0 0.1\n\n"
        "# version 50001\n\ndata_particles\n\nloop_\n_rlnImageName #1\n_rlnOpticsGroup #2\n"
        "_rlnAngleRot #3\n_rlnAngleTilt #4\n_rlnAnglePsi #5\n_rlnOriginXAngst #6\n"
        f"_rlnOriginYAngst #7\n_rlnDefocusU #8\n_rlnDefocusV #9\n_rlnDefocusAngle #10\n{rows31}\n")
    rows30 = "\n".join(
        f"{names[i]} {angles[i, 0]:.6f} {angles[i, 1]:.6f} {angles[i, 2]:.6f} "
        f"{origins[i, 0]:.6f} {origins[i, 1]:.6f} {du[i]:.3f} {dv[i]:.3f} {da[i]:.4f} "
        f"{kv[i]} {cs[i]} 0.1 10000.0 2.0" for i in range(n))
    star30 = tmp_path / "relion30.star"
    star30.write_text(
        "data_\n\nloop_\n_rlnImageName #1\n_rlnAngleRot #2\n_rlnAngleTilt #3\n_rlnAnglePsi #4\n"
        "_rlnOriginX #5\n_rlnOriginY #6\n_rlnDefocusU #7\n_rlnDefocusV #8\n_rlnDefocusAngle #9\n"
        "_rlnVoltage #10\n_rlnSphericalAberration #11\n_rlnAmplitudeContrast #12\n"
        f"_rlnMagnification #13\n_rlnDetectorPixelSize #14\n{rows30}\n")
    return {"map": write_map(tmp_path / "run_class001.mrc", volume, MAP_PX), "volume": volume,
            "star31": star31, "star30": star30, "plain": plain, "with_ctf": with_ctf,
            "angles": angles, "origins": origins, "ctf": ctf, "A": A}


def _stored_clean(path) -> np.ndarray:
    """Every stored clean reference by id, in the units of the input (normalisation undone)."""
    ds = open_dataset(path)
    norm = ds.manifest["normalization"]
    out = {}
    for split in ("train", "val", "test"):
        if ds.count(split):
            rows = ds.read(split, ["id", "clean"])
            out.update(zip(rows["id"], rows["clean"], strict=True))
    clean = np.stack([out[i] for i in sorted(out)])
    return clean * (norm["max"] - norm["min"]) + norm["min"]


def _correlations(a, b):
    return [float(np.corrcoef(x.ravel(), y.ravel())[0, 1]) for x, y in zip(a, b, strict=True)]


def test_map_at_relion_31_poses_with_ctf_matches_independent_projections(run, mapped, tmp_path,
                                                                         capsys):
    out = tmp_path / "ds"
    assert run(out, "--particles", mapped["star31"], "--map", mapped["map"],
               "--shard-rows", 5, "--test-fraction", 0.25) == 0
    stdout = capsys.readouterr().out
    assert "projected at the particles' poses, CTF applied" in stdout
    clean = _stored_clean(out)
    assert min(_correlations(clean, mapped["with_ctf"])) > 0.99
    assert max(_correlations(clean, mapped["plain"])) < 0.9  # the CTF is there
    m = open_dataset(out).manifest
    refs = m["references"]
    assert refs["source"] == "map" and refs["ctf"] == "apply" and refs["mask"] is None
    assert refs["map"] == str(mapped["map"].absolute())
    assert refs["ctf_parameters"]["voltage_kv"] == [200.0, 300.0]
    assert "--map" in m["command"] and m["has_poses"]


def test_map_at_relion_30_poses_without_ctf(run, mapped, tmp_path):
    out = tmp_path / "ds"
    assert run(out, "--particles", mapped["star30"], "--map", mapped["map"], "--ctf", "none",
               "--test-fraction", 0.25) == 0
    clean = _stored_clean(out)
    assert min(_correlations(clean, mapped["plain"])) > 0.99
    ds = open_dataset(out)
    assert ds.manifest["references"]["ctf"] == "none"
    assert ds.pixel_size == pytest.approx(2.0)  # 2 um detector pixels at 10,000x
    # per-particle voltage, Cs and amplitude contrast columns (3.0 has no optics block)
    assert run(tmp_path / "auto", "--particles", mapped["star30"], "--map", mapped["map"]) == 0
    assert min(_correlations(_stored_clean(tmp_path / "auto"), mapped["with_ctf"])) > 0.99


def test_map_with_a_mask_and_the_mirrored_map_does_not_match(run, mapped, tmp_path):
    from blobmaps import write_map

    zz = np.mgrid[:MAP_SIZE, :MAP_SIZE, :MAP_SIZE][0] - MAP_SIZE // 2
    mask = write_map(tmp_path / "mask.mrc", (zz < 100).astype(np.float32), MAP_PX)  # all ones
    mirrored = write_map(tmp_path / "mirror.mrc", mapped["volume"][:, :, ::-1], MAP_PX)
    assert run(tmp_path / "a", "--particles", mapped["star31"], "--map", mapped["map"],
               "--mask", mask) == 0
    assert open_dataset(tmp_path / "a").manifest["references"]["mask"] == str(mask.absolute())
    assert min(_correlations(_stored_clean(tmp_path / "a"), mapped["with_ctf"])) > 0.99
    assert run(tmp_path / "b", "--particles", mapped["star31"], "--map", mirrored) == 0
    assert np.median(_correlations(_stored_clean(tmp_path / "b"), mapped["with_ctf"])) < 0.8


def test_map_at_cryosparc_poses(run, mapped, tmp_path, capsys):
    from scipy.spatial.transform import Rotation

    n = len(mapped["A"])
    c = mapped["ctf"]
    fields = [("blob/path", "S64"), ("blob/idx", "<u4"), ("blob/psize_A", "<f4"),
              ("alignments3D/pose", "<f4", (3,)), ("alignments3D/shift", "<f4", (2,)),
              ("ctf/df1_A", "<f4"), ("ctf/df2_A", "<f4"), ("ctf/df_angle_rad", "<f4"),
              ("ctf/accel_kv", "<f4"), ("ctf/cs_mm", "<f4"), ("ctf/amp_contrast", "<f4")]
    rows = np.zeros(n, dtype=fields)
    rows["blob/path"], rows["blob/idx"], rows["blob/psize_A"] = b"Extract/parts.mrcs", range(n), 2.0
    # RELION's A is the transpose of the rotation-vector matrix, so the vector is that of A^T
    rows["alignments3D/pose"] = Rotation.from_matrix(np.swapaxes(mapped["A"], 1, 2)).as_rotvec()
    rows["alignments3D/shift"] = mapped["origins"]
    rows["ctf/df1_A"], rows["ctf/df2_A"] = c.defocus_u, c.defocus_v
    rows["ctf/df_angle_rad"] = np.deg2rad(c.angle)
    rows["ctf/accel_kv"], rows["ctf/cs_mm"], rows["ctf/amp_contrast"] = (
        c.voltage_kv, c.cs_mm, c.amplitude_contrast)
    (tmp_path / "J7").mkdir()
    cs = tmp_path / "J7" / "J7_particles.cs"
    with open(cs, "wb") as f:
        np.save(f, rows)
    assert run(tmp_path / "ds", "--particles", cs, "--map", mapped["map"], "--ctf", "apply") == 0
    assert min(_correlations(_stored_clean(tmp_path / "ds"), mapped["with_ctf"])) > 0.99
    with open(tmp_path / "J7" / "bare.cs", "wb") as f:
        np.save(f, rows[["blob/path", "blob/idx"]])
    assert run(tmp_path / "ds2", "--particles", tmp_path / "J7" / "bare.cs",
               "--map", mapped["map"]) == 2
    assert "no field 'alignments3D/pose'" in capsys.readouterr().err


def _map_error(run, capsys, tmp_path, *argv):
    before = sorted(tmp_path.iterdir())
    status = run(tmp_path / "ds", *argv)
    err = capsys.readouterr().err.strip()
    assert status == 2 and err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert sorted(tmp_path.iterdir()) == before
    return err


def test_map_errors_are_one_line(run, mapped, tmp_path, capsys):
    from blobmaps import write_map

    star = mapped["star31"]
    wrong_px = write_map(tmp_path / "px.mrc", mapped["volume"], 2.2)
    err = _map_error(run, capsys, tmp_path, "--particles", star, "--map", wrong_px)
    assert "map voxel size 2.2 A differs from the particles' pixel size 2 A" in err
    small = write_map(tmp_path / "small.mrc", mapped["volume"][2:22, 2:22, 2:22], MAP_PX)
    err = _map_error(run, capsys, tmp_path, "--particles", star, "--map", small)
    assert "map box is 20^3 voxels but the particles are 24x24 px" in err
    stack = tmp_path / "Extract" / "parts.mrcs"
    err = _map_error(run, capsys, tmp_path, "--particles", stack, "--map", mapped["map"])
    assert "--map needs the particles' poses" in err
    bare = tmp_path / "bare.star"
    bare.write_text("data_\nloop_\n_rlnImageName #1\n_rlnAngleRot #2\n_rlnAngleTilt #3\n"
                    "_rlnAnglePsi #4\n" + "".join(f"{i + 1}@Extract/parts.mrcs 0 0 0\n"
                                                  for i in range(12)))
    err = _map_error(run, capsys, tmp_path, "--particles", bare, "--map", mapped["map"],
                     "--ctf", "apply", "--pixel-size", 2)
    assert "--ctf apply but the particles lack CTF parameters (no rlnDefocusU" in err
    with pytest.raises(SystemExit):  # argparse: --references and --map exclude each other
        run(tmp_path / "ds", "--particles", star, "--map", mapped["map"], "--references", stack)


def test_crystallographic_maps_and_anisotropic_pixels_are_refused(run, tmp_path, capsys):
    from blobmaps import write_map

    crystal = write_map(tmp_path / "p21.mrc", np.zeros((25, 43, 73), np.float32),
                        voxel=(1.1, 1.3, 1.7), space_group=4)
    err = _map_error(run, capsys, tmp_path, "--particles", crystal, "--references", crystal)
    assert "pixel size is anisotropic (1.1 x 1.3 A)" in err
    square_px = write_map(tmp_path / "p21b.mrc", np.zeros((25, 43, 73), np.float32),
                          voxel=1.3, space_group=4)
    err = _map_error(run, capsys, tmp_path, "--particles", square_px, "--references", square_px)
    assert "images are 73 x 43 pixels, not square" in err
