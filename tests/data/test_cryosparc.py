"""cryoSPARC .cs particle files written with numpy: poses, shifts, CTF, stacks, missing fields."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from cryotune.data.cryosparc import CTF_FIELDS, POSE_FIELDS, read_cs, rotvec_to_relion_matrix
from cryotune.data.geometry import relion_euler_to_matrix
from cryotune.data.mrc import write_stack
from cryotune.errors import BadInput

CS_DTYPE = [("uid", "<u8"), ("blob/path", "S64"), ("blob/idx", "<u4"), ("blob/psize_A", "<f4"),
            ("blob/shape", "<u4", (2,)), ("alignments3D/pose", "<f4", (3,)),
            ("alignments3D/shift", "<f4", (2,)), ("ctf/df1_A", "<f4"), ("ctf/df2_A", "<f4"),
            ("ctf/df_angle_rad", "<f4"), ("ctf/accel_kv", "<f4"), ("ctf/cs_mm", "<f4"),
            ("ctf/amp_contrast", "<f4"), ("ctf/phase_shift_rad", "<f4")]


def write_cs(path, rows: np.ndarray, drop=()):
    keep = [d for d in CS_DTYPE if d[0] not in drop]
    out = np.zeros(len(rows), dtype=keep)
    for name in out.dtype.names:
        out[name] = rows[name]
    with open(path, "wb") as f:  # np.save appends .npy to a bare name; a handle keeps .cs
        np.save(f, out)
    return path


def particles(n: int, rng, stack: str = "J3/extract/parts.mrc") -> np.ndarray:
    rows = np.zeros(n, dtype=CS_DTYPE)
    rows["uid"] = rng.integers(0, 2**62, n)
    rows["blob/path"] = stack.encode()
    rows["blob/idx"] = rng.permutation(n)
    rows["blob/psize_A"] = 1.25
    rows["blob/shape"] = 16
    rows["alignments3D/pose"] = Rotation.random(n, random_state=1).as_rotvec()
    rows["alignments3D/shift"] = rng.uniform(-4, 4, (n, 2))
    rows["ctf/df1_A"] = rng.uniform(1.5e4, 2.5e4, n)
    rows["ctf/df2_A"] = rows["ctf/df1_A"] - 500.0
    rows["ctf/df_angle_rad"] = rng.uniform(-np.pi, np.pi, n)
    rows["ctf/accel_kv"], rows["ctf/cs_mm"], rows["ctf/amp_contrast"] = 300.0, 2.7, 0.07
    rows["ctf/phase_shift_rad"] = np.pi / 6
    return rows


@pytest.fixture
def project(tmp_path):
    """A cryoSPARC-like project: J3/extract/parts.mrc and J9/J9_particles.cs."""
    (tmp_path / "J3" / "extract").mkdir(parents=True)
    (tmp_path / "J9").mkdir()
    write_stack(tmp_path / "J3" / "extract" / "parts.mrc", np.zeros((6, 16, 16), np.float32),
                pixel_size=1.25)
    return tmp_path


def test_reads_poses_shifts_ctf_as_relion(project):
    rows = particles(6, np.random.default_rng(0))
    cs = write_cs(project / "J9" / "J9_particles.cs", rows)
    table = read_cs(cs, require=("poses", "ctf"))
    assert len(table) == 6 and table.pixel_size == pytest.approx(1.25)
    assert [s.resolve() for s in table.stacks] == [project / "J3" / "extract" / "parts.mrc"]
    np.testing.assert_array_equal(table.indices, rows["blob/idx"])
    # RELION's A is the transpose of the rotation-vector matrix (pyem's expmap), via scipy
    want = np.swapaxes(Rotation.from_rotvec(rows["alignments3D/pose"]).as_matrix(), 1, 2)
    np.testing.assert_allclose(relion_euler_to_matrix(*table.poses.T), want, atol=1e-5)
    np.testing.assert_allclose(rotvec_to_relion_matrix(rows["alignments3D/pose"]), want,
                               atol=1e-6)
    np.testing.assert_allclose(table.shifts_px, rows["alignments3D/shift"])  # no sign change
    c = table.ctf_rows
    np.testing.assert_allclose(c.defocus_u, rows["ctf/df1_A"])
    np.testing.assert_allclose(c.defocus_v, rows["ctf/df2_A"])
    np.testing.assert_allclose(c.angle, np.rad2deg(rows["ctf/df_angle_rad"]), rtol=1e-6)
    np.testing.assert_allclose(c.phase_shift, 30.0, rtol=1e-6)
    assert table.ctf == pytest.approx({"voltage_kv": 300.0, "cs_mm": 2.7,
                                       "amplitude_contrast": 0.07})
    np.testing.assert_allclose(table.defocus[:, 2], c.angle)


def test_identity_and_quarter_turn_poses():
    np.testing.assert_allclose(rotvec_to_relion_matrix(np.zeros(3)), np.eye(3))
    # RELION's Rz(rot) is [[c, s, 0], [-s, c, 0], [0, 0, 1]], the transpose of the rotation by
    # rot about z: a rotation vector of +90 degrees about z is rot = +90
    np.testing.assert_allclose(rotvec_to_relion_matrix(np.array([0, 0, np.pi / 2])),
                               relion_euler_to_matrix(90.0, 0.0, 0.0), atol=1e-12)


def test_optional_fields_may_be_missing(project):
    rows = particles(6, np.random.default_rng(0))
    cs = write_cs(project / "J9" / "plain.cs", rows,
                  drop=(*POSE_FIELDS, *CTF_FIELDS, "ctf/phase_shift_rad", "blob/psize_A"))
    table = read_cs(cs)
    assert table.poses is None and table.shifts_px is None and table.ctf_rows is None
    assert table.pixel_size is None
    no_phase = read_cs(write_cs(project / "J9" / "np.cs", rows, drop=("ctf/phase_shift_rad",)))
    np.testing.assert_array_equal(no_phase.ctf_rows.phase_shift, 0.0)


@pytest.mark.parametrize("field", ["blob/path", "blob/idx", *POSE_FIELDS, *CTF_FIELDS])
def test_a_missing_needed_field_is_one_line_naming_it(project, field):
    cs = write_cs(project / "J9" / "J9_particles.cs", particles(6, np.random.default_rng(0)),
                  drop=(field,))
    with pytest.raises(BadInput) as err:
        read_cs(cs, require=("poses", "ctf"))
    message = str(err.value)
    assert f"no field '{field}'" in message and str(cs) in message and "\n" not in message


def test_missing_stack_and_unreadable_file(project):
    rows = particles(2, np.random.default_rng(0), stack="J4/gone.mrc")
    with pytest.raises(BadInput, match="image stack 'J4/gone.mrc' not found.*blob/path"):
        read_cs(write_cs(project / "J9" / "x.cs", rows))
    (project / "bad.cs").write_text("not numpy")
    with pytest.raises(BadInput, match="not a readable cryoSPARC .cs file"):
        read_cs(project / "bad.cs")
