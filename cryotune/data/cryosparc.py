"""cryoSPARC particle files (``.cs``): images, poses, shifts and CTF in RELION's conventions.

A ``.cs`` file is a numpy structured array (``np.load``), one row a particle. The fields read,
and how they become RELION's (the conventions of pyem's ``csparc2star.py``,
``pyem/metadata/cryosparc2.py`` and ``pyem/geom/convert.py``):

- ``blob/path`` (bytes, relative to the cryoSPARC project folder) and ``blob/idx`` (0-based
  image index in that stack): the image. A relative path is tried against the ``.cs`` file's
  folder, its parent and its grandparent (the project folder for ``<project>/JNN/file.cs``).
- ``blob/psize_A``: the pixel size in Angstrom.
- ``alignments3D/pose``: a rotation vector (axis times angle, radians). pyem's ``expmap``
  builds its matrix with the skew matrix of ``-pose`` (its ``k`` is the transpose of the usual
  cross-product matrix), i.e. RELION's ``A = Rodrigues(pose)^T``, then reads RELION's Euler
  angles off ``A`` with RELION's decomposition (``rot2euler``).
- ``alignments3D/shift``: pixels, copied to ``rlnOriginX/Y`` as is (no sign change), so it is
  RELION's origin: the particle is centred by translating its image by ``+shift``.
- ``ctf/df1_A``, ``ctf/df2_A`` (``rlnDefocusU/V``), ``ctf/df_angle_rad`` (``rlnDefocusAngle``,
  radians to degrees), ``ctf/accel_kv``, ``ctf/cs_mm``, ``ctf/amp_contrast`` and, when present,
  ``ctf/phase_shift_rad`` (``rlnPhaseShift``, radians to degrees).

A field that the caller needs and the file lacks is a one-line :class:`~cryotune.errors.BadInput`
naming the field and the file.

Example::

    import numpy as np
    from cryotune.data.cryosparc import read_cs
    from cryotune.data.mrc import write_stack
    write_stack("/tmp/J1_parts.mrc", np.zeros((2, 16, 16), np.float32), pixel_size=1.5)
    rows = np.zeros(2, dtype=[("blob/path", "S32"), ("blob/idx", "<u4"),
                              ("blob/psize_A", "<f4"), ("alignments3D/pose", "<f4", (3,)),
                              ("alignments3D/shift", "<f4", (2,))])
    rows["blob/path"], rows["blob/idx"], rows["blob/psize_A"] = b"J1_parts.mrc", [0, 1], 1.5
    with open("/tmp/J1_particles.cs", "wb") as f:
        np.save(f, rows)
    table = read_cs("/tmp/J1_particles.cs", require=("poses",))
    print(len(table), table.pixel_size, table.poses.shape)   # 2 1.5 (2, 3)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cryotune.data.ctf import CTF
from cryotune.data.geometry import matrix_to_relion_euler
from cryotune.data.star import ParticleTable
from cryotune.errors import BadInput

__all__ = ["CTF_FIELDS", "POSE_FIELDS", "read_cs", "rotvec_to_relion_matrix"]

POSE_FIELDS = ("alignments3D/pose", "alignments3D/shift")
CTF_FIELDS = ("ctf/df1_A", "ctf/df2_A", "ctf/df_angle_rad", "ctf/accel_kv", "ctf/cs_mm",
              "ctf/amp_contrast")
_FIX = "export the particles from a 3D refinement job (its particles .cs file)"


def rotvec_to_relion_matrix(pose: np.ndarray) -> np.ndarray:
    """RELION's pose matrix ``A`` (..., 3, 3) of cryoSPARC rotation vectors (..., 3).

    ``A`` is the transpose of the Rodrigues rotation by ``|pose|`` about ``pose / |pose|``, as
    pyem's ``expmap`` computes it (module docstring).
    """
    v = np.asarray(pose, dtype=np.float64)
    theta = np.linalg.norm(v, axis=-1)[..., None, None]
    axis = v / np.where(theta[..., 0] > 0, theta[..., 0], 1.0)
    x, y, z = np.moveaxis(axis, -1, 0)
    zero = np.zeros_like(x)
    k = np.stack([np.stack([zero, -z, y], -1), np.stack([z, zero, -x], -1),
                  np.stack([-y, x, zero], -1)], -2)  # k @ u = axis x u
    rodrigues = np.eye(3) + np.sin(theta) * k + (1.0 - np.cos(theta)) * (k @ k)
    return np.swapaxes(rodrigues, -1, -2)


def _resolve(path: Path, name: str, row: int) -> Path:
    candidate = Path(name)
    folder = path.absolute().parent
    tried = [candidate] if candidate.is_absolute() else [folder / candidate,
                                                          folder.parent / candidate,
                                                          folder.parent.parent / candidate]
    for t in tried:
        if t.is_file():
            return t
    raise BadInput(f"image stack '{name}' not found", f"{path} row {row + 1} (blob/path)",
                   "put the stack there or run from the cryoSPARC project folder; looked in "
                   + ", ".join(str(t.parent) for t in tried))


def read_cs(path: str | Path, *, require: Sequence[str] = ()) -> ParticleTable:
    """Read a cryoSPARC particle ``.cs`` file as a :class:`~cryotune.data.star.ParticleTable`.

    Args:
        path: the ``.cs`` file.
        require: ``"poses"`` (``alignments3D/pose`` and ``shift``) and/or ``"ctf"`` (every
            ``ctf/*`` field but the optional phase shift): fail when one is missing.

    Returns:
        A table with ``stacks``, ``stack_ids``, ``indices``, ``pixel_sizes``, and ``poses``
        (RELION rot, tilt, psi in degrees), ``shifts_px`` (RELION origin, pixels), ``defocus``,
        ``ctf`` and ``ctf_rows`` where the file has them; ``blocks`` is empty.

    Raises:
        BadInput: unreadable file, a missing required field (named), or a missing stack.
    """
    path = Path(path)
    if not path.is_file():
        raise BadInput(".cs file not found", str(path), "check the path")
    try:
        cs = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as err:
        raise BadInput(f"not a readable cryoSPARC .cs file ({err})", str(path), _FIX) from None
    names = set(cs.dtype.names or ())
    needed = ["blob/path", "blob/idx"]
    needed += list(POSE_FIELDS) if "poses" in require else []
    needed += list(CTF_FIELDS) if "ctf" in require else []
    for field in needed:
        if field not in names:
            raise BadInput(f".cs file has no field '{field}'", str(path), _FIX)
    if len(cs) == 0:
        raise BadInput(".cs file has no particles", str(path), _FIX)
    stacks: dict[str, int] = {}
    paths: list[Path] = []
    stack_ids = np.empty(len(cs), dtype=np.int64)
    for r, raw in enumerate(cs["blob/path"]):
        name = raw.decode() if isinstance(raw, bytes) else str(raw)
        name = name.lstrip(">")  # cryoSPARC marks project-relative paths with a leading '>'
        sid = stacks.get(name)
        if sid is None:
            sid = stacks[name] = len(paths)
            paths.append(_resolve(path, name, r))
        stack_ids[r] = sid
    n = len(cs)
    sizes = (np.asarray(cs["blob/psize_A"], dtype=np.float64) if "blob/psize_A" in names
             else np.full(n, np.nan))
    poses = shifts = None
    if all(f in names for f in POSE_FIELDS):
        A = rotvec_to_relion_matrix(np.asarray(cs["alignments3D/pose"], dtype=np.float64))
        poses = np.stack(matrix_to_relion_euler(A), 1)
        shifts = np.asarray(cs["alignments3D/shift"], dtype=np.float64).reshape(n, 2)
    defocus = ctf = ctf_rows = None
    if all(f in names for f in CTF_FIELDS):
        get = {f: np.asarray(cs[f], dtype=np.float64).reshape(n) for f in CTF_FIELDS}
        phase = (np.rad2deg(np.asarray(cs["ctf/phase_shift_rad"], dtype=np.float64).reshape(n))
                 if "ctf/phase_shift_rad" in names else 0.0)
        ctf_rows = CTF.from_arrays(
            defocus_u=get["ctf/df1_A"], defocus_v=get["ctf/df2_A"],
            angle=np.rad2deg(get["ctf/df_angle_rad"]), voltage_kv=get["ctf/accel_kv"],
            cs_mm=get["ctf/cs_mm"], amplitude_contrast=get["ctf/amp_contrast"],
            phase_shift=phase)
        defocus = ctf_rows.defocus
        uniform = {k: v for k, v in (("voltage_kv", ctf_rows.voltage_kv),
                                     ("cs_mm", ctf_rows.cs_mm),
                                     ("amplitude_contrast", ctf_rows.amplitude_contrast))}
        if all(np.ptp(v) <= 1e-6 * max(abs(v).max(), 1.0) for v in uniform.values()):
            ctf = {k: float(v[0]) for k, v in uniform.items()}
    return ParticleTable(
        path=path, blocks={}, particles_block="", version="cryosparc", stacks=paths,
        stack_ids=stack_ids, indices=np.asarray(cs["blob/idx"], dtype=np.int64).reshape(n),
        pixel_sizes=np.where(np.isfinite(sizes) & (sizes > 0), sizes, np.nan), poses=poses,
        shifts_px=shifts, defocus=defocus, ctf=ctf, ctf_rows=ctf_rows)
