"""The built-in hinged-clamp model and PDB reading, checked against hand-made files."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation
from sklearn.cluster import KMeans
from sklearn.manifold import Isomap

from cryotune.data.molecules import (
    BUILTIN_OPEN_DEG,
    Atoms,
    builtin_conformations,
    load_pdb,
    load_pdb_conformations,
)
from cryotune.data.simulate import fit_pixel_size, project
from cryotune.errors import BadInput


def pdb_line(record, serial, name, resname, resseq, xyz, element="", altloc=" "):
    """One fixed-column PDB record (name given as the 4 columns 13-16)."""
    x, y, z = xyz
    return (f"{record:<6}{serial:>5} {name:<4}{altloc}{resname:>3} A{resseq:>4}    "
            f"{x:8.3f}{y:8.3f}{z:8.3f}{1.0:6.2f}{20.0:6.2f}          {element:>2}")


def write_pdb(path, lines):
    path.write_text("\n".join(["HEADER    TEST", *lines, "END", ""]))
    return path


@pytest.fixture
def peptide(tmp_path):
    """Two residues, hydrogens, a Mg ion, a water, an alternative location and a second model."""
    lines = [
        pdb_line("ATOM", 1, " N  ", "ALA", 1, (1.0, 2.0, 3.0), "N"),
        pdb_line("ATOM", 2, " CA ", "ALA", 1, (2.5, 2.0, 3.0), "C"),
        pdb_line("ATOM", 3, " H  ", "ALA", 1, (0.5, 2.5, 3.0), "H"),
        pdb_line("ATOM", 4, " O  ", "ALA", 1, (3.0, 1.0, 3.0), "O"),
        pdb_line("ATOM", 5, " CA ", "CYS", 2, (5.0, 2.0, 4.0), "C"),
        pdb_line("ATOM", 6, " SG ", "CYS", 2, (6.0, 3.0, 4.5), "S", altloc="A"),
        pdb_line("ATOM", 7, " SG ", "CYS", 2, (9.0, 9.0, 9.0), "S", altloc="B"),
        pdb_line("ATOM", 8, " HB2", "CYS", 2, (5.5, 1.0, 4.0), ""),  # hydrogen, no element
        pdb_line("HETATM", 9, "MG  ", "MG", 3, (4.0, 4.0, 4.0), "MG"),
        pdb_line("HETATM", 10, " O  ", "HOH", 4, (30.0, 30.0, 30.0), "O"),
        pdb_line("HETATM", 11, "CA  ", "CA", 5, (2.0, 6.0, 2.0), ""),  # calcium by its name
        "ENDMDL",
        "MODEL        2",
        pdb_line("ATOM", 1, " N  ", "ALA", 1, (50.0, 50.0, 50.0), "N"),
    ]
    heavy = np.array([[1.0, 2.0, 3.0], [2.5, 2.0, 3.0], [3.0, 1.0, 3.0], [5.0, 2.0, 4.0],
                      [6.0, 3.0, 4.5], [4.0, 4.0, 4.0], [2.0, 6.0, 2.0]])
    z = np.array([7, 6, 8, 6, 16, 12, 20], dtype=float)
    return write_pdb(tmp_path / "pep.pdb", ["MODEL        1", *lines]), heavy, z


def test_builtin_model_is_a_deterministic_hinged_claw():
    confs = builtin_conformations(5)
    again = builtin_conformations(5)
    assert len(confs) == 5 and all(len(a) == len(confs[0]) for a in confs)
    for a, b in zip(confs, again, strict=True):
        np.testing.assert_array_equal(a.coords, b.coords)
    closed, opened = confs[0], confs[-1]
    assert 500 <= len(closed) <= 5000
    assert np.all((closed.sigma >= 3.0) & (closed.sigma <= 5.0))
    np.testing.assert_allclose(closed.center_of_mass(), 0.0, atol=1e-9)
    extent = np.ptp(closed.coords, axis=0)
    assert 120 < extent.max() < 180 and 70 < np.sort(extent)[0] < 120
    # Only the clamp moves, rigidly, by the documented angle about a z axis.
    moved = np.linalg.norm(opened.coords - closed.coords, axis=1) > 1e-9
    assert 0.1 < moved.mean() < 0.4
    a, b = closed.coords[moved], opened.coords[moved]
    np.testing.assert_allclose(a[:, 2], b[:, 2], atol=1e-9)
    rot, _ = Rotation.align_vectors(b - b.mean(0), a - a.mean(0))
    assert np.degrees(rot.magnitude()) == pytest.approx(BUILTIN_OPEN_DEG, abs=1e-6)
    assert abs(rot.as_rotvec()[2]) == pytest.approx(rot.magnitude())
    steps = [np.linalg.norm(confs[i + 1].coords - confs[i].coords, axis=1).max() for i in range(4)]
    np.testing.assert_allclose(steps, steps[0], rtol=0.05)  # evenly spaced angles


def test_builtin_conformation_count():
    assert len(builtin_conformations(1)) == 1
    with pytest.raises(BadInput, match="--conformations"):
        builtin_conformations(0)


# The two conformations are so far apart that the neighbour graph falls in two pieces.
@pytest.mark.filterwarnings("ignore:The number of connected components")
@pytest.mark.filterwarnings("ignore::scipy.sparse.SparseEfficiencyWarning")
def test_closed_and_open_clamp_cluster_apart_on_clean_images():
    # 60 clean images of the closed and the open clamp within 10 degrees of one view, as in the
    # paper's clustering check: Isomap + 2-means separates them.
    confs = builtin_conformations(5)
    rng = np.random.default_rng(0)
    base = Rotation.random(random_state=1).as_matrix()
    views = Rotation.from_rotvec(rng.normal(0, np.radians(10) / np.sqrt(3), (60, 3))).as_matrix() @ base
    size = 32
    px = fit_pixel_size(confs, size)
    images = np.concatenate([project(confs[0], views[:30], size, px),
                             project(confs[-1], views[30:], size, px)])
    labels = np.repeat([0, 1], 30)
    embedding = Isomap(n_neighbors=10, n_components=2).fit_transform(images.reshape(60, -1))
    found = KMeans(2, n_init=10, random_state=0).fit_predict(embedding)
    assert max(np.mean(found == labels), np.mean(found != labels)) >= 0.95


def test_pdb_heavy_atoms_weighted_by_atomic_number(peptide):
    path, heavy, z = peptide
    atoms = load_pdb(path)
    com = (heavy * z[:, None]).sum(0) / z.sum()
    np.testing.assert_allclose(atoms.coords, heavy - com, atol=1e-9)
    np.testing.assert_array_equal(atoms.weight, z)
    np.testing.assert_allclose(atoms.sigma, 1.5)
    np.testing.assert_allclose(load_pdb(path, center=np.zeros(3)).coords, heavy)


def test_pdb_ca_only(peptide):
    path, heavy, _ = peptide
    atoms = load_pdb(path, ca_only=True, center=np.zeros(3))
    np.testing.assert_allclose(atoms.coords, heavy[[1, 3]])  # not the calcium ion
    np.testing.assert_allclose(atoms.sigma, 3.0)


def test_pdb_conformations_share_the_first_centre(peptide, tmp_path):
    path, heavy, z = peptide
    shifted = write_pdb(tmp_path / "moved.pdb", [
        pdb_line("ATOM", i + 1, " C  ", "GLY", i + 1, tuple(r + [10.0, 0.0, 0.0]), "C")
        for i, r in enumerate(heavy)])
    first, second = load_pdb_conformations([path, shifted])
    com = (heavy * z[:, None]).sum(0) / z.sum()
    np.testing.assert_allclose(second.coords, heavy + [10.0, 0.0, 0.0] - com, atol=1e-9)
    np.testing.assert_allclose(first.center_of_mass(), 0.0, atol=1e-9)


@pytest.mark.parametrize("lines, ca_only, message", [
    ([], False, "no heavy atoms"),
    ([pdb_line("ATOM", 1, " H  ", "ALA", 1, (0, 0, 0), "H")], False, "no heavy atoms"),
    ([pdb_line("ATOM", 1, " N  ", "ALA", 1, (0, 0, 0), "N")], True, "no C-alpha atoms"),
])
def test_pdb_without_atoms_is_bad_input_naming_the_file(tmp_path, lines, ca_only, message):
    path = write_pdb(tmp_path / "empty.pdb", lines)
    with pytest.raises(BadInput, match=message) as err:
        load_pdb(path, ca_only=ca_only)
    assert str(path) in str(err.value)


def test_unreadable_pdb_is_bad_input(tmp_path):
    with pytest.raises(BadInput, match="cannot read PDB file") as err:
        load_pdb(tmp_path / "missing.pdb")
    assert "missing.pdb" in str(err.value)
    bad = tmp_path / "bad.pdb"
    bad.write_text("ATOM      1  N   ALA A   1       1.000   xx.xx   3.000  1.00 20.00           N\n")
    with pytest.raises(BadInput, match="unreadable atom coordinates") as err:
        load_pdb(bad)
    assert f"{bad}:1" in str(err.value)


def test_atoms_npz_round_trip(tmp_path):
    atoms = builtin_conformations(2)[1]
    (tmp_path / "a.npz").write_bytes(atoms.to_npz())
    for source in (tmp_path / "a.npz", atoms.to_npz()):
        back = Atoms.from_npz(source)
        for field in ("coords", "weight", "sigma"):
            np.testing.assert_array_equal(getattr(back, field), getattr(atoms, field))
