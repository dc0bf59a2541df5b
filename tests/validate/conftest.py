"""A small chiral molecule of Gaussian blobs, its exact projections and its rendered volume."""

from __future__ import annotations

import numpy as np
import pytest

from cryotune.data.geometry import quaternion_to_matrix, random_quaternions
from cryotune.data.molecules import Atoms
from cryotune.data.simulate import project, render_volume

PIXEL_SIZE = 2.0  # Angstrom: the 32 px box spans 64 A, every blob lies within 27 A of its centre


def blob_molecule(mirror: bool = False) -> Atoms:
    """Five blobs of different sizes, not in one plane: no symmetry, and a distinct mirror image."""
    coords = np.array([[0, 0, 0], [12, 4, -2], [-6, 14, 6], [4, -10, 12], [-12, -6, -8]], float)
    if mirror:
        coords[:, 2] *= -1
    return Atoms(coords, weight=[3.0, 1.5, 1.0, 1.5, 1.0], sigma=[5.0, 4.0, 3.0, 3.5, 3.0])


class Blobs:
    """Views and volumes of :func:`blob_molecule` at :data:`PIXEL_SIZE`."""

    pixel_size = PIXEL_SIZE

    def __init__(self, mirror: bool = False):
        self.atoms = blob_molecule(mirror)

    @staticmethod
    def rotations(n: int, seed: int = 0) -> np.ndarray:
        return quaternion_to_matrix(random_quaternions(n, np.random.default_rng(seed)))

    def project(self, rotations: np.ndarray, size: int = 32) -> np.ndarray:
        return project(self.atoms, rotations, size, PIXEL_SIZE)

    def volume(self, size: int = 32) -> np.ndarray:
        return render_volume(self.atoms, size, PIXEL_SIZE)

    @staticmethod
    def add_noise(images: np.ndarray, snr: float, seed: int) -> np.ndarray:
        """Gaussian noise at var(clean stack) / var(noise) = snr, the project's SNR convention."""
        rng = np.random.default_rng(seed)
        sigma = np.sqrt(images.var() / snr)
        return (images + sigma * rng.standard_normal(images.shape)).astype(np.float32)


@pytest.fixture(scope="session")
def blobs() -> Blobs:
    return Blobs()


@pytest.fixture(scope="session")
def mirrored_blobs() -> Blobs:
    return Blobs(mirror=True)


@pytest.fixture(scope="session")
def views(blobs):
    """2,000 uniformly random poses and their clean 32 px projections."""
    rotations = Blobs.rotations(2000)
    return rotations, blobs.project(rotations)
