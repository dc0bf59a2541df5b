"""Rotations: unit quaternions, rotation matrices and RELION's Euler angles.

Conventions used everywhere in cryotune:

- A quaternion is ``(w, x, y, z)`` (scalar first, Hamilton product), float32 in the store.
- A pose rotation ``R`` acts on molecule coordinates ``r`` (Angstrom, centred): the image is the
  projection along z of ``R @ r``; image x is ``R[0] . r`` and image y is ``R[1] . r``.
- ``R`` equals RELION's ``A = Euler_angles2matrix(rot, tilt, psi)`` (ZYZ, angles in degrees), so
  poses read from ``rlnAngleRot``/``rlnAngleTilt``/``rlnAnglePsi`` need no further change.
- Volumes are arrays indexed ``[z, y, x]`` with the origin at index ``n // 2`` on each axis
  (the centre of ``np.fft.fftshift``); images are ``[y, x]`` with the same origin.

Example::

    import numpy as np
    from cryotune.data.geometry import random_quaternions, quaternion_to_matrix
    q = random_quaternions(10, np.random.default_rng(0))
    R = quaternion_to_matrix(q)         # (10, 3, 3)
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "matrix_to_quaternion",
    "matrix_to_relion_euler",
    "quaternion_to_matrix",
    "random_quaternions",
    "relion_euler_to_matrix",
]


def random_quaternions(n: int, rng: np.random.Generator) -> np.ndarray:
    """Uniform random rotations on SO(3): normalised 4D Gaussians, with w >= 0.

    Returns:
        float64 array (n, 4).
    """
    q = rng.standard_normal((n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    q *= np.where(q[:, :1] < 0, -1.0, 1.0)  # q and -q are the same rotation
    return q


def quaternion_to_matrix(q: np.ndarray) -> np.ndarray:
    """Rotation matrices (..., 3, 3) of unit quaternions (..., 4) in (w, x, y, z) order."""
    q = np.asarray(q, dtype=np.float64)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = np.moveaxis(q, -1, 0)
    return np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
            np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
            np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
        ],
        -2,
    )


def matrix_to_quaternion(R: np.ndarray) -> np.ndarray:
    """Unit quaternions (..., 4), w >= 0, of rotation matrices (..., 3, 3).

    Uses the numerically stable branch (largest of w, x, y, z) per matrix.
    """
    R = np.asarray(R, dtype=np.float64)
    shape = R.shape[:-2]
    R = R.reshape(-1, 3, 3)
    tr = np.trace(R, axis1=1, axis2=2)
    diag = np.stack([tr, R[:, 0, 0], R[:, 1, 1], R[:, 2, 2]], axis=1)
    pick = np.argmax(diag, axis=1)
    q = np.empty((len(R), 4))
    for k in range(4):
        m = pick == k
        if not m.any():
            continue
        r = R[m]
        if k == 0:
            s = 2.0 * np.sqrt(1.0 + tr[m])
            q[m] = np.stack([0.25 * s, (r[:, 2, 1] - r[:, 1, 2]) / s,
                             (r[:, 0, 2] - r[:, 2, 0]) / s, (r[:, 1, 0] - r[:, 0, 1]) / s], 1)
        elif k == 1:
            s = 2.0 * np.sqrt(1.0 + r[:, 0, 0] - r[:, 1, 1] - r[:, 2, 2])
            q[m] = np.stack([(r[:, 2, 1] - r[:, 1, 2]) / s, 0.25 * s,
                             (r[:, 0, 1] + r[:, 1, 0]) / s, (r[:, 0, 2] + r[:, 2, 0]) / s], 1)
        elif k == 2:
            s = 2.0 * np.sqrt(1.0 + r[:, 1, 1] - r[:, 0, 0] - r[:, 2, 2])
            q[m] = np.stack([(r[:, 0, 2] - r[:, 2, 0]) / s, (r[:, 0, 1] + r[:, 1, 0]) / s,
                             0.25 * s, (r[:, 1, 2] + r[:, 2, 1]) / s], 1)
        else:
            s = 2.0 * np.sqrt(1.0 + r[:, 2, 2] - r[:, 0, 0] - r[:, 1, 1])
            q[m] = np.stack([(r[:, 1, 0] - r[:, 0, 1]) / s, (r[:, 0, 2] + r[:, 2, 0]) / s,
                             (r[:, 1, 2] + r[:, 2, 1]) / s, 0.25 * s], 1)
    q *= np.where(q[:, :1] < 0, -1.0, 1.0)
    return q.reshape(*shape, 4)


def relion_euler_to_matrix(rot, tilt, psi) -> np.ndarray:
    """RELION's ``Euler_angles2matrix`` (ZYZ, degrees), vectorised: (..., 3, 3)."""
    a, b, g = (np.deg2rad(np.asarray(v, dtype=np.float64)) for v in (rot, tilt, psi))
    ca, sa, cb, sb, cg, sg = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(g), np.sin(g)
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    return np.stack(
        [
            np.stack([cg * cc - sg * sa, cg * cs + sg * ca, -cg * sb], -1),
            np.stack([-sg * cc - cg * sa, -sg * cs + cg * ca, sg * sb], -1),
            np.stack([sc, ss, cb], -1),
        ],
        -2,
    )


def matrix_to_relion_euler(R: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RELION's ``Euler_matrix2angles``: (rot, tilt, psi) in degrees from (..., 3, 3)."""
    R = np.asarray(R, dtype=np.float64)
    abs_sb = np.hypot(R[..., 0, 2], R[..., 1, 2])
    regular = abs_sb > 16 * np.finfo(np.float64).eps
    # regular case: sin(tilt) > 0
    psi = np.arctan2(R[..., 1, 2], -R[..., 0, 2])
    rot = np.arctan2(R[..., 2, 1], R[..., 2, 0])
    sign_sb = np.where(np.abs(np.sin(psi)) > np.abs(np.cos(psi)),
                       np.sign(R[..., 1, 2] / np.where(np.sin(psi) == 0, 1, np.sin(psi))),
                       np.sign(-R[..., 0, 2] / np.where(np.cos(psi) == 0, 1, np.cos(psi))))
    tilt = np.arctan2(sign_sb * abs_sb, R[..., 2, 2])
    # gimbal lock: tilt is 0 or 180 and only rot +- psi is defined; like RELION, put it in rot
    up = R[..., 2, 2] > 0
    tilt_s = np.where(up, 0.0, np.pi)
    rot_s = np.arctan2(-R[..., 1, 0], np.where(up, R[..., 0, 0], -R[..., 0, 0]))
    rot = np.where(regular, rot, rot_s)
    tilt = np.where(regular, tilt, tilt_s)
    psi = np.where(regular, psi, 0.0)
    return np.rad2deg(rot), np.rad2deg(tilt), np.rad2deg(psi)
