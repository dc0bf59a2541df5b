import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from cryotune.data.geometry import (
    matrix_to_quaternion,
    matrix_to_relion_euler,
    quaternion_to_matrix,
    random_quaternions,
    relion_euler_to_matrix,
)


def test_quaternion_matrix_matches_scipy():
    q = random_quaternions(200, np.random.default_rng(1))
    ours = quaternion_to_matrix(q)
    ref = Rotation.from_quat(q[:, [1, 2, 3, 0]]).as_matrix()  # scipy is scalar-last
    np.testing.assert_allclose(ours, ref, atol=1e-12)
    np.testing.assert_allclose(matrix_to_quaternion(ours), q, atol=1e-10)


def test_random_quaternions_are_uniform():
    # For uniform rotations the rotated z axis is uniform on the sphere: its z component is
    # uniform on [-1, 1] (mean 0, variance 1/3).
    R = quaternion_to_matrix(random_quaternions(20000, np.random.default_rng(2)))
    zc = R[:, 2, 2]
    assert abs(zc.mean()) < 0.02
    assert abs(zc.var() - 1 / 3) < 0.01


def test_relion_euler_is_passive_zyz():
    # RELION's A(rot, tilt, psi) = Rz(psi) Ry(tilt) Rz(rot) with passive (transposed) factors,
    # i.e. the transpose of scipy's intrinsic ZYZ rotation by (rot, tilt, psi).
    rng = np.random.default_rng(3)
    ang = rng.uniform([-180, 0, -180], [180, 180, 180], size=(100, 3))
    A = relion_euler_to_matrix(ang[:, 0], ang[:, 1], ang[:, 2])
    ref = Rotation.from_euler("ZYZ", ang, degrees=True).as_matrix().transpose(0, 2, 1)
    np.testing.assert_allclose(A, ref, atol=1e-12)


@pytest.mark.parametrize("tilt", [0.0, 37.0, 90.0, 180.0])
def test_relion_euler_round_trip(tilt):
    rng = np.random.default_rng(4)
    rot, psi = rng.uniform(-180, 180, 50), rng.uniform(-180, 180, 50)
    A = relion_euler_to_matrix(rot, np.full(50, tilt), psi)
    back = relion_euler_to_matrix(*matrix_to_relion_euler(A))
    np.testing.assert_allclose(back, A, atol=1e-9)
