"""Molecules as Gaussian pseudo-atoms: the built-in hinged-clamp model and PDB files.

An :class:`Atoms` is a set of isotropic 3D Gaussians (centre in Angstrom, weight, sigma in
Angstrom); :mod:`cryotune.data.simulate` projects them exactly. Two sources:

- :func:`builtin_conformations`: an RNA-polymerase-like crab claw, no download needed. An
  elongated two-lobed body carries two pincers; one of them, the clamp, turns about a hinge, and
  the K conformations open it at evenly spaced angles from closed (0) to open (K - 1).
- :func:`load_pdb` / :func:`load_pdb_conformations`: heavy atoms (or C-alpha atoms) of
  ATOM/HETATM records, weighted by atomic number (about their electron count).

Example::

    from cryotune.data.molecules import builtin_conformations
    confs = builtin_conformations(5)
    print(len(confs), confs[0].coords.shape, confs[0].radius())
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cryotune.errors import BadInput

__all__ = [
    "BUILTIN_OPEN_DEG",
    "Atoms",
    "builtin_conformations",
    "hinge_angles",
    "load_pdb",
    "load_pdb_conformations",
]

log = logging.getLogger(__name__)

# Clamp opening of the last built-in conformation: the clamp tip moves about 50 A, so closed and
# open projections of one view differ by a third of their norm (median over views) at 32 px.
BUILTIN_OPEN_DEG = 40.0
_BUILTIN_SEED = 20_02  # fixed: the built-in molecule is the same everywhere
_LATTICE_A = 8.0  # pseudo-atom spacing; with sigma 4-5 A the density is smooth (0.2% ripple)
_SIGMA_A = (4.0, 5.0)
# Ellipsoids (centre, semi-axes) in Angstrom; the claw opens in the x-y plane.
_BODY = (
    ((-30.0, -20.0, 0.0), (45.0, 30.0, 45.0)),  # lobe 1
    ((35.0, -25.0, 0.0), (40.0, 26.0, 40.0)),  # lobe 2
    ((-35.0, 25.0, 0.0), (26.0, 30.0, 36.0)),  # fixed pincer on lobe 1
)
_CLAMP = ((36.0, 26.0, 0.0), (26.0, 34.0, 38.0))  # mobile pincer on lobe 2
_HINGE = np.array([25.0, -12.0, 0.0])  # the clamp turns about the z axis through this point

# Atomic numbers (electrons of the neutral atom) of the elements found in biomolecular models.
_Z = {
    "H": 1, "D": 1, "C": 6, "N": 7, "O": 8, "F": 9, "NA": 11, "MG": 12, "P": 15, "S": 16,
    "CL": 17, "K": 19, "CA": 20, "MN": 25, "FE": 26, "CO": 27, "NI": 28, "CU": 29, "ZN": 30,
    "SE": 34, "BR": 35, "RB": 37, "SR": 38, "CD": 48, "I": 53, "CS": 55, "BA": 56, "PT": 78,
    "AU": 79, "HG": 80, "PB": 82, "U": 92,
}
_SIGMA_HEAVY_A = 1.5  # a blur of about a B-factor of 180 A^2: atoms, not points
_SIGMA_CA_A = 3.0  # one C-alpha stands for a whole residue
_WATERS = {"HOH", "WAT", "DOD", "H2O"}


@dataclass(frozen=True)
class Atoms:
    """Isotropic Gaussian pseudo-atoms.

    Attributes:
        coords: (M, 3) centres in Angstrom, (x, y, z), centred on the molecule.
        weight: (M,) integrated density of each Gaussian (electrons for PDB atoms).
        sigma: (M,) standard deviation of each Gaussian in Angstrom.
    """

    coords: np.ndarray
    weight: np.ndarray
    sigma: np.ndarray

    def __post_init__(self):
        coords = np.asarray(self.coords, dtype=np.float64)
        n = len(coords)
        weight = np.broadcast_to(np.asarray(self.weight, dtype=np.float64), (n,)).copy()
        sigma = np.broadcast_to(np.asarray(self.sigma, dtype=np.float64), (n,)).copy()
        if coords.ndim != 2 or coords.shape[1] != 3:
            raise ValueError(f"coords must be (M, 3), got {coords.shape}")
        if np.any(sigma <= 0):
            raise ValueError("every sigma must be positive")
        object.__setattr__(self, "coords", coords)
        object.__setattr__(self, "weight", weight)
        object.__setattr__(self, "sigma", sigma)

    def __len__(self) -> int:
        return len(self.coords)

    def center_of_mass(self) -> np.ndarray:
        """Weighted mean position (3,) in Angstrom."""
        return np.average(self.coords, axis=0, weights=self.weight)

    def shifted(self, origin: np.ndarray) -> Atoms:
        """The same atoms with ``origin`` moved to (0, 0, 0)."""
        return Atoms(self.coords - np.asarray(origin, dtype=np.float64), self.weight, self.sigma)

    def radius(self) -> float:
        """Distance from the origin within which all density lies (3 sigma), in Angstrom."""
        return float(np.max(np.linalg.norm(self.coords, axis=1) + 3.0 * self.sigma))

    def to_npz(self) -> bytes:
        """The atoms as ``.npz`` bytes with arrays ``coords``, ``weight`` and ``sigma``."""
        buf = io.BytesIO()
        np.savez(buf, coords=self.coords, weight=self.weight, sigma=self.sigma)
        return buf.getvalue()

    @classmethod
    def from_npz(cls, source: str | Path | bytes) -> Atoms:
        """Read atoms written by :meth:`to_npz` (a path or the bytes)."""
        with np.load(io.BytesIO(source) if isinstance(source, bytes) else source) as z:
            return cls(z["coords"], z["weight"], z["sigma"])


def hinge_angles(k: int, open_deg: float = BUILTIN_OPEN_DEG) -> np.ndarray:
    """Clamp opening angles in degrees of ``k`` evenly spaced conformations, closed first."""
    return np.linspace(0.0, open_deg, k) if k > 1 else np.zeros(1)


def builtin_conformations(k: int = 5) -> list[Atoms]:
    """The built-in hinged-clamp molecule in ``k`` conformations, closed to open.

    About 150 x 105 x 85 Angstrom and 1,286 pseudo-atoms (sigma 4-5 A); every conformation
    is centred on the centre of mass of the closed one, so only the clamp moves.

    Args:
        k: number of conformations (>= 1); the clamp opens by :func:`hinge_angles`.

    Returns:
        ``k`` :class:`Atoms` with the same atoms in the same order.
    """
    if k < 1:
        raise BadInput(f"conformations must be at least 1, got {k}", "--conformations",
                       "pass a positive number")
    rng = np.random.default_rng(_BUILTIN_SEED)
    axis = np.arange(-80.0, 80.0 + _LATTICE_A, _LATTICE_A)
    grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    grid = grid + rng.uniform(-0.25, 0.25, grid.shape) * _LATTICE_A

    def inside(centre_axes):
        centre, semi = (np.asarray(v) for v in centre_axes)
        return (((grid - centre) / semi) ** 2).sum(1) <= 1.0

    body = np.logical_or.reduce([inside(e) for e in _BODY])
    clamp = inside(_CLAMP) & ~body
    coords = np.concatenate([grid[body], grid[clamp]])
    n_body = int(body.sum())
    weight = rng.uniform(0.8, 1.2, len(coords))
    sigma = rng.uniform(*_SIGMA_A, len(coords))

    confs = []
    for angle in np.deg2rad(hinge_angles(k)):
        c, s = np.cos(-angle), np.sin(-angle)  # clockwise: away from the fixed pincer
        turn = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
        moved = coords.copy()
        moved[n_body:] = (coords[n_body:] - _HINGE) @ turn.T + _HINGE
        confs.append(Atoms(moved, weight, sigma))
    centre = confs[0].center_of_mass()
    return [a.shifted(centre) for a in confs]


def _element(line: str) -> str:
    element = line[76:78].strip().upper()
    if element and element.isalpha():
        return element
    # No element column: the atom name holds it, right-justified in columns 13-14 for
    # one-letter elements (" CA " is a C-alpha, "CA  " calcium).
    name = line[12:16]
    if name[:1].strip() and name[:1].isalpha() and name[:2].strip().upper() in _Z:
        return name[:2].strip().upper()
    return "".join(ch for ch in name if ch.isalpha())[:1].upper()


def _read_pdb(path: Path, ca_only: bool) -> Atoms:
    try:
        text = path.read_text(errors="replace")
    except OSError as err:
        raise BadInput(f"cannot read PDB file ({err.strerror or err})", str(path),
                       "check the path and its permissions") from None
    coords, weight = [], []
    unknown = set()
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith("ENDMDL"):
            break  # several models (an NMR ensemble): the first one only
        if not line.startswith(("ATOM  ", "HETATM")):
            continue
        if line[16:17] not in (" ", "A") or line[17:20].strip() in _WATERS:
            continue  # alternative locations after the first, and ordered waters
        element = _element(line)
        if element in ("H", "D"):
            continue
        if ca_only and not (line.startswith("ATOM") and line[12:16].strip() == "CA"
                            and element == "C"):
            continue
        try:
            coords.append((float(line[30:38]), float(line[38:46]), float(line[46:54])))
        except ValueError:
            raise BadInput("unreadable atom coordinates (columns 31-54)", f"{path}:{number}",
                           "fix the ATOM/HETATM record") from None
        if element not in _Z:
            unknown.add(element)
        weight.append(_Z.get(element, 6))
    if not coords:
        what = "no C-alpha atoms" if ca_only else "no heavy atoms in ATOM/HETATM records"
        raise BadInput(f"PDB file has {what}", str(path),
                       "pass a PDB file with atoms" + ("" if ca_only else " (or drop --ca-only)"))
    if unknown:
        log.warning("%s: unknown elements %s weighted as carbon", path, sorted(unknown))
    sigma = _SIGMA_CA_A if ca_only else _SIGMA_HEAVY_A
    return Atoms(np.array(coords), np.array(weight, dtype=np.float64), sigma)


def load_pdb(path: str | Path, *, center: np.ndarray | None = None,
             ca_only: bool = False) -> Atoms:
    """Atoms of a PDB file: ATOM/HETATM heavy atoms (hydrogens skipped) or C-alpha atoms only.

    Coordinates come from the fixed columns 31-38, 39-46 and 47-54, the element from columns
    77-78 or else the atom name. Weights are atomic numbers; sigma is 1.5 A for heavy atoms and
    3.0 A for C-alphas (each stands for a residue). Only the first model, the first alternative
    location and no waters are read.

    Args:
        path: the PDB file.
        center: the point moved to the origin, in the file's coordinates; ``None`` for the
            file's own centre of mass.
        ca_only: keep only the C-alpha atoms of ATOM records.

    Returns:
        The centred :class:`Atoms`.

    Raises:
        BadInput: the file cannot be read, has a malformed coordinate, or has no atoms.
    """
    atoms = _read_pdb(Path(path), ca_only)
    return atoms.shifted(atoms.center_of_mass() if center is None else center)


def load_pdb_conformations(paths: Sequence[str | Path], *, ca_only: bool = False) -> list[Atoms]:
    """One conformation per PDB file, all centred on the centre of mass of the first file.

    Args:
        paths: the PDB files, one per conformation, in conformation order.
        ca_only: keep only the C-alpha atoms.

    Returns:
        A list of :class:`Atoms`, one per file.
    """
    raw = [_read_pdb(Path(p), ca_only) for p in paths]
    centre = raw[0].center_of_mass()
    return [a.shifted(centre) for a in raw]
