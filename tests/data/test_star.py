"""RELION particle STAR files: the 3.0, 3.1 and 5 dialects as RELION and other tools write them."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from cryotune.data.geometry import matrix_to_relion_euler, quaternion_to_matrix
from cryotune.data.mrc import write_stack
from cryotune.data.star import read_particles, stack_image_names, write_particles
from cryotune.errors import BadInput

RNG = np.random.default_rng(3)
N = 6
ANGLES = np.column_stack([RNG.uniform(-180, 180, N), RNG.uniform(5, 175, N),
                          RNG.uniform(-180, 180, N)])
ORIGIN_PX = RNG.uniform(-3, 3, (N, 2))
DEFOCUS = np.column_stack([RNG.uniform(9000, 20000, N), RNG.uniform(9000, 20000, N),
                           RNG.uniform(-90, 90, N)])


def loop(name: str, columns: dict, version: str | None = None) -> str:
    """A RELION-style loop block: header lines with #k indices, space-separated rows."""
    head = "" if version is None else f"# version {version}\n\n"
    lines = [f"{head}data_{name}", "", "loop_"]
    lines += [f"_{c} #{i + 1}" for i, c in enumerate(columns)]
    n = len(next(iter(columns.values())))
    for r in range(n):
        lines.append("  ".join(f"{v[r]:.6f}" if isinstance(v[r], float) else str(v[r])
                               for v in columns.values()))
    return "\n".join(lines) + "\n\n"


def particle_columns(stack: str, *, angst: float | None = None) -> dict:
    cols = {
        "rlnImageName": [f"{i + 1:06d}@{stack}" for i in range(N)],
        "rlnMicrographName": ["0001"] * N,  # looks like a number, is a name
        "rlnAngleRot": list(ANGLES[:, 0]), "rlnAngleTilt": list(ANGLES[:, 1]),
        "rlnAnglePsi": list(ANGLES[:, 2]),
        "rlnDefocusU": list(DEFOCUS[:, 0]), "rlnDefocusV": list(DEFOCUS[:, 1]),
        "rlnDefocusAngle": list(DEFOCUS[:, 2]),
    }
    if angst is None:
        cols |= {"rlnOriginX": list(ORIGIN_PX[:, 0]), "rlnOriginY": list(ORIGIN_PX[:, 1])}
    else:
        cols |= {"rlnOriginXAngst": list(ORIGIN_PX[:, 0] * angst),
                 "rlnOriginYAngst": list(ORIGIN_PX[:, 1] * angst)}
    return cols


def make_stack(path, n=N, size=16, pixel_size=1.0):
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_stack(path, RNG.standard_normal((n, size, size)).astype(np.float32), pixel_size)


def relion30(tmp_path):
    """RELION 3.0: one unnamed block, optics per particle, pixel size as detector/magnification."""
    make_stack(tmp_path / "stacks" / "a.mrcs")
    cols = particle_columns("stacks/a.mrcs")
    cols |= {"rlnVoltage": [300.0] * N, "rlnSphericalAberration": [2.7] * N,
             "rlnAmplitudeContrast": [0.1] * N, "rlnMagnification": [50000.0] * N,
             "rlnDetectorPixelSize": [14.0] * N}
    path = tmp_path / "p30.star"
    path.write_text(loop("", cols))
    return path


def optics(pixel_size=2.5, voltages=(300.0, 300.0)) -> dict:
    return {"rlnOpticsGroupName": ["opticsGroup1", "opticsGroup2"], "rlnOpticsGroup": [1, 2],
            "rlnMicrographOriginalPixelSize": [0.8, 0.8], "rlnVoltage": list(voltages),
            "rlnSphericalAberration": [2.7, 2.7], "rlnAmplitudeContrast": [0.1, 0.1],
            "rlnImagePixelSize": [pixel_size, pixel_size], "rlnImageSize": [16, 16],
            "rlnImageDimensionality": [2, 2]}


def relion31(tmp_path, *, optics_last=False, voltages=(300.0, 300.0), name="p31.star"):
    """RELION 3.1 (optics first) or 5 (optics after the particles), origins in Angstrom."""
    make_stack(tmp_path / "a.mrcs")
    cols = particle_columns("a.mrcs", angst=2.5) | {"rlnOpticsGroup": [1, 2] * (N // 2)}
    blocks = [loop("optics", optics(voltages=voltages), "30001"),
              loop("particles", cols, "30001")]
    path = tmp_path / name
    path.write_text("".join(blocks[::-1] if optics_last else blocks))
    return path


def expected_quaternions():
    # RELION's A is the inverse of scipy's intrinsic ZYZ rotation with the same angles
    q = Rotation.from_euler("ZYZ", ANGLES, degrees=True).inv().as_quat(scalar_first=True)
    return q * np.where(q[:, :1] < 0, -1, 1)


def check_common(table):
    assert len(table) == N
    np.testing.assert_allclose(table.poses, ANGLES, atol=1e-6)
    np.testing.assert_allclose(table.shifts_px, ORIGIN_PX, atol=1e-5)
    np.testing.assert_allclose(table.defocus, DEFOCUS, atol=1e-5)
    np.testing.assert_array_equal(table.indices, np.arange(N))
    np.testing.assert_allclose(table.quaternions(), expected_quaternions(), atol=1e-7)
    assert table.particles["rlnMicrographName"].tolist() == ["0001"] * N


def test_relion30_unnamed_block_and_detector_pixel_size(tmp_path):
    table = read_particles(relion30(tmp_path))
    check_common(table)
    assert table.version == "3.0" and table.optics is None and table.particles_block == ""
    assert table.pixel_size == pytest.approx(14.0 * 1e4 / 50000.0)
    assert table.ctf == {"voltage_kv": 300.0, "cs_mm": 2.7, "amplitude_contrast": 0.1}
    assert table.stacks == [tmp_path / "stacks" / "a.mrcs"]
    assert table.image_refs[2] == (2, tmp_path / "stacks" / "a.mrcs")


@pytest.mark.parametrize("optics_last", [False, True], ids=["3.1-optics-first", "5-optics-last"])
def test_relion31_and_5_optics_in_either_order(tmp_path, optics_last):
    table = read_particles(relion31(tmp_path, optics_last=optics_last))
    check_common(table)  # Angstrom origins divided by rlnImagePixelSize
    assert table.version == "3.1" and len(table.optics) == 2
    assert table.pixel_size == pytest.approx(2.5)
    assert table.ctf == {"voltage_kv": 300.0, "cs_mm": 2.7, "amplitude_contrast": 0.1}


def test_optics_groups_that_disagree(tmp_path):
    table = read_particles(relion31(tmp_path, voltages=(300.0, 200.0)))
    assert table.ctf is None and table.defocus is not None  # no single voltage to record
    text = (tmp_path / "p31.star").read_text().replace("2.500000", "3.000000", 1)
    (tmp_path / "mixed.star").write_text(text)
    with pytest.raises(BadInput, match=r"different pixel sizes.*mixed\.star row 1.*--pixel-size"):
        _ = read_particles(tmp_path / "mixed.star").pixel_size


def test_pose_round_trip_to_relion_angles(tmp_path):
    table = read_particles(relion31(tmp_path))
    rot, tilt, psi = matrix_to_relion_euler(quaternion_to_matrix(table.quaternions()))
    back = np.column_stack([rot, tilt, psi])
    wrapped = (back - ANGLES + 180) % 360 - 180
    np.testing.assert_allclose(wrapped, 0, atol=1e-6)


def test_relion_project_layout_resolves_from_the_project_folder(tmp_path):
    project = tmp_path / "project"
    make_stack(project / "Extract" / "job003" / "Movies" / "mic1.mrcs")
    job = project / "Refine3D" / "job020"
    job.mkdir(parents=True)
    cols = {"rlnImageName": [f"{i + 1}@Extract/job003/Movies/mic1.mrcs" for i in range(N)]}
    (job / "run_data.star").write_text(loop("particles", cols) + loop("optics", {
        "rlnOpticsGroup": [1], "rlnImagePixelSize": [1.2]}))
    table = read_particles(job / "run_data.star")
    assert table.stacks == [project / "Extract" / "job003" / "Movies" / "mic1.mrcs"]
    assert table.poses is None and table.shifts_px is None and table.defocus is None
    assert table.pixel_size == pytest.approx(1.2)  # a lone optics group needs no column


def test_key_value_block_and_bare_image_name(tmp_path):
    make_stack(tmp_path / "single.mrc", n=1)
    path = tmp_path / "one.star"
    path.write_text("data_particles\n\n_rlnImageName single.mrc\n_rlnAngleRot 10\n"
                    "_rlnAngleTilt 20\n_rlnAnglePsi 30\n")
    table = read_particles(path)
    assert len(table) == 1 and table.image_refs == [(0, tmp_path / "single.mrc")]
    np.testing.assert_allclose(table.poses, [[10, 20, 30]])
    assert table.pixel_size is None


def test_write_particles_keeps_every_other_column(tmp_path):
    for source in (relion30(tmp_path), relion31(tmp_path, optics_last=True)):
        table = read_particles(source)
        stack = make_stack(tmp_path / "out" / "denoised.mrcs")
        out = tmp_path / "out" / f"denoised-{source.stem}.star"
        names = stack_image_names(stack, N, relative_to=out.parent)
        assert names[0] == "000001@denoised.mrcs" and names[-1] == f"{N:06d}@denoised.mrcs"
        assert write_particles(out, table, names) == out
        assert sorted(p.name for p in out.parent.iterdir() if p.name.startswith(".")) == []
        back = read_particles(out)
        assert list(back.blocks) == list(table.blocks)
        assert back.stacks == [stack] and back.particles["rlnImageName"].tolist() == names
        old, new = table.particles, back.particles
        assert list(new.columns) == list(old.columns)
        for col in old.columns.drop("rlnImageName"):
            if old[col].dtype.kind in "fi":
                np.testing.assert_allclose(new[col], old[col], atol=1e-6, err_msg=col)
            else:
                assert new[col].tolist() == old[col].tolist(), col
        check_common(back)
        if table.version == "3.1":
            assert out.read_text().count("# version 30001") == 2
    with pytest.raises(ValueError, match="2 image names for 6"):
        write_particles(tmp_path / "x.star", table, names[:2])


def test_stack_image_names_without_folder():
    assert stack_image_names("a/b.mrcs", 2) == ["000001@a/b.mrcs", "000002@a/b.mrcs"]


def bad(tmp_path, text, name="bad.star"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_bad_star_files_name_file_row_and_fix(tmp_path):
    make_stack(tmp_path / "a.mrcs", n=3)
    with pytest.raises(BadInput, match=r"no rlnImageName.*nonames\.star.*rlnImageName such as"):
        read_particles(bad(tmp_path, loop("particles", {"rlnAngleRot": [1.0]}), "nonames.star"))
    for text in ("", "just some text\n"):
        with pytest.raises(BadInput, match=r"no data blocks.*notes\.star"):
            read_particles(bad(tmp_path, text, "notes.star"))
    with pytest.raises(BadInput, match=r"'stacks/gone\.mrcs' not found.*bad\.star row 2"):
        read_particles(bad(tmp_path, loop("", {"rlnImageName": ["1@a.mrcs", "1@stacks/gone.mrcs"]})))
    for name in ("x@a.mrcs", "0@a.mrcs", "3@"):
        with pytest.raises(BadInput, match=rf"'{name}' is not an image name.*row 1"):
            read_particles(bad(tmp_path, loop("", {"rlnImageName": [name]})))
    with pytest.raises(BadInput, match=r"no image index but the file holds 3 images.*row 1"):
        read_particles(bad(tmp_path, loop("", {"rlnImageName": ["a.mrcs"]})))
    cols = {"rlnImageName": ["1@a.mrcs", "2@a.mrcs"], "rlnAngleRot": [1.0, "nan"],
            "rlnAngleTilt": [1.0, 2.0], "rlnAnglePsi": [1.0, 2.0]}
    with pytest.raises(BadInput, match=r"rlnAngleRot is not a finite number.*bad\.star data_ row 2"):
        read_particles(bad(tmp_path, loop("", cols)))
    cols = {"rlnImageName": ["1@a.mrcs"], "rlnOpticsGroup": [4]}
    text = loop("optics", optics()) + loop("particles", cols)
    with pytest.raises(BadInput, match=r"rlnOpticsGroup 4 is not in the optics block.*row 1"):
        read_particles(bad(tmp_path, text))
    cols = {"rlnImageName": ["1@a.mrcs"], "rlnOriginXAngst": [1.0], "rlnOriginYAngst": [2.0]}
    with pytest.raises(BadInput, match=r"Angstrom but the file gives no pixel size.*--pixel-size"):
        read_particles(bad(tmp_path, loop("", cols)))
    table = read_particles(tmp_path / "bad.star", pixel_size=2.0)
    np.testing.assert_allclose(table.shifts_px, [[0.5, 1.0]])
    with pytest.raises(BadInput, match=r"no particle rows.*data_particles"):
        read_particles(bad(tmp_path, "data_particles\n\nloop_\n_rlnImageName #1\n"))
    with pytest.raises(BadInput, match=r"STAR file not found.*nothere\.star"):
        read_particles(tmp_path / "nothere.star")

