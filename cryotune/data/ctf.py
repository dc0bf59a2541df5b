"""The contrast transfer function (CTF) in RELION's convention, per particle.

One home for the CTF that the simulator applies, the projector multiplies into references
(:mod:`cryotune.data.project`) and reconstruction inverts (:mod:`cryotune.validate.reconstruct`).
It follows RELION's ``CTF::getCTF`` (``src/ctf.h``), without B-factor, scale or aberrations::

    ctf(k) = -sin(chi),  chi = pi lambda dz k^2 + pi/2 Cs lambda^3 k^4 - phase_shift - asin(Q0)
    dz = -(u + v)/2 - (u - v)/2 cos(2 (atan2(ky, kx) - angle))

with ``u``, ``v`` RELION's ``rlnDefocusU``/``rlnDefocusV`` in Angstrom (underfocus positive),
``angle`` ``rlnDefocusAngle`` (degrees, from image x towards image y), ``phase_shift``
``rlnPhaseShift`` (degrees, phase plates), ``Q0`` ``rlnAmplitudeContrast``, ``Cs``
``rlnSphericalAberration`` (mm) and ``lambda`` the relativistic wavelength at ``rlnVoltage``.
``ctf(0) = Q0`` with no phase shift, and low frequencies keep their sign. ``kx`` runs along
image x (columns), in 1/Angstrom. Voltage, Cs, amplitude contrast and phase shift may differ
per particle (RELION keeps them per optics group), so every parameter is an array.

Example::

    import numpy as np
    from cryotune.data.ctf import CTF, apply_ctf, ctf_2d
    ctf = CTF.from_arrays(defocus_u=[15000.0, 20000.0], defocus_v=[14000.0, 20000.0],
                          angle=[30.0, 0.0], voltage_kv=300.0, cs_mm=2.7,
                          amplitude_contrast=0.1)
    grid = ctf.grid((32, 32), pixel_size=1.5, half=True)          # (2, 32, 17)
    images = ctf.apply(np.zeros((2, 32, 32), np.float32), pixel_size=1.5)
    assert ctf_2d((8, 8), [10000.0], 1.0)[0, 0, 0] == 0.1       # ctf(0) = Q0
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["CTF", "CTFParams", "apply_ctf", "ctf_2d", "ctf_at", "electron_wavelength"]


def electron_wavelength(voltage_kv):
    """Relativistic electron wavelength in Angstrom (RELION's formula): 0.01969 A at 300 kV.

    Accepts a float (returns a float) or an array (returns an array).
    """
    volts = np.asarray(voltage_kv, dtype=np.float64) * 1e3
    lam = 12.2643247 / np.sqrt(volts * (1.0 + volts * 0.978466e-6))
    return float(lam) if lam.ndim == 0 else lam


def _column(value, n: int) -> np.ndarray:
    """A scalar or (n,) parameter as an (n, 1, 1) float64 column."""
    a = np.asarray(value, dtype=np.float64).reshape(-1)
    return np.broadcast_to(a, (n,)).reshape(n, 1, 1) if a.size in (1, n) else a.reshape(-1, 1, 1)


def ctf_2d(shape: tuple[int, int], defocus, pixel_size: float, voltage_kv=300.0, cs_mm=2.7,
           amplitude_contrast=0.1, *, half: bool = False, phase_shift=0.0) -> np.ndarray:
    """The CTF on the unshifted FFT grid (module docstring), one image per defocus row.

    Args:
        shape: (H, W) of the images.
        defocus: (n,) defocus in Angstrom (no astigmatism) or (n, 3) rows
            (defocus_u, defocus_v, astigmatism angle in degrees), RELION's rlnDefocusU/V/Angle.
        pixel_size: Angstrom per pixel.
        voltage_kv, cs_mm, amplitude_contrast: the microscope (kV, mm, fraction), scalars or
            (n,) arrays (one value per particle, e.g. from its optics group).
        half: the ``rfft2`` half grid (W // 2 + 1 columns) instead of the full one.
        phase_shift: phase-plate shift in degrees (``rlnPhaseShift``), scalar or (n,).

    Returns:
        float64 array (n, H, W) or (n, H, W // 2 + 1).
    """
    d = np.asarray(defocus, dtype=np.float64)
    d = np.stack([d, d, np.zeros_like(d)], -1) if d.ndim <= 1 else d
    h, w = shape
    ky = np.fft.fftfreq(h, d=pixel_size)[:, None]
    kx = (np.fft.rfftfreq if half else np.fft.fftfreq)(w, d=pixel_size)[None, :]
    return ctf_at(kx, ky, d.reshape(-1, 3), voltage_kv, cs_mm, amplitude_contrast, phase_shift)


def ctf_at(kx: np.ndarray, ky: np.ndarray, defocus: np.ndarray, voltage_kv=300.0, cs_mm=2.7,
           amplitude_contrast=0.1, phase_shift=0.0) -> np.ndarray:
    """The CTF of n particles at given frequencies (1/Angstrom, any 2D shape ``S``).

    Args:
        kx, ky: frequencies along image x and y, broadcastable to ``S`` (2D).
        defocus: (n, 3) rows (defocus_u, defocus_v, angle in degrees).
        voltage_kv, cs_mm, amplitude_contrast, phase_shift: scalars or (n,) arrays.

    Returns:
        float64 array (n, *S).
    """
    n = len(defocus)
    u, v, angle = (defocus[:, i, None, None] for i in range(3))
    k2 = kx * kx + ky * ky
    dz = -0.5 * (u + v) - 0.5 * (u - v) * np.cos(2.0 * (np.arctan2(ky, kx) - np.deg2rad(angle)))
    lam = _column(electron_wavelength(voltage_kv), n)
    cs = _column(cs_mm, n) * 1e7  # mm -> Angstrom
    q0 = np.arcsin(_column(amplitude_contrast, n))
    chi = (math.pi * lam * dz * k2 + 0.5 * math.pi * cs * lam**3 * k2 * k2
           - np.deg2rad(_column(phase_shift, n)) - q0)
    return -np.sin(chi)


def apply_ctf(images: np.ndarray, defocus, pixel_size: float, voltage_kv=300.0, cs_mm=2.7,
              amplitude_contrast=0.1, phase_shift=0.0) -> np.ndarray:
    """Multiply each image's Fourier transform by its CTF (:func:`ctf_2d`), in the box.

    Args:
        images: (n, H, W) real images.
        defocus: (n,) or (n, 3) as in :func:`ctf_2d`.
        pixel_size, voltage_kv, cs_mm, amplitude_contrast, phase_shift: as in :func:`ctf_2d`.

    Returns:
        float32 array (n, H, W).
    """
    images = np.asarray(images)
    shape = images.shape[-2:]
    spectrum = np.fft.rfft2(images) * ctf_2d(shape, defocus, pixel_size, voltage_kv, cs_mm,
                                             amplitude_contrast, half=True,
                                             phase_shift=phase_shift)
    return np.fft.irfft2(spectrum, s=shape).astype(np.float32)


@dataclass(frozen=True)
class CTF:
    """Per-particle CTF parameters, RELION's columns as (n,) float64 arrays.

    Attributes:
        defocus_u, defocus_v: ``rlnDefocusU``/``rlnDefocusV`` in Angstrom, underfocus positive.
        angle: ``rlnDefocusAngle`` in degrees.
        voltage_kv: ``rlnVoltage``; cs_mm: ``rlnSphericalAberration``;
        amplitude_contrast: ``rlnAmplitudeContrast``; phase_shift: ``rlnPhaseShift`` (degrees).
    """

    defocus_u: np.ndarray
    defocus_v: np.ndarray
    angle: np.ndarray
    voltage_kv: np.ndarray
    cs_mm: np.ndarray
    amplitude_contrast: np.ndarray
    phase_shift: np.ndarray

    @classmethod
    def from_arrays(cls, *, defocus_u, defocus_v, angle=0.0, voltage_kv, cs_mm,
                    amplitude_contrast, phase_shift=0.0) -> CTF:
        """Broadcast scalars and (n,) arrays to n particles (n from ``defocus_u``)."""
        n = np.asarray(defocus_u).size
        vals = [np.broadcast_to(np.asarray(v, dtype=np.float64).reshape(-1), (n,)).copy()
                for v in (defocus_u, defocus_v, angle, voltage_kv, cs_mm, amplitude_contrast,
                          phase_shift)]
        return cls(*vals)

    def __len__(self) -> int:
        return len(self.defocus_u)

    def __getitem__(self, rows) -> CTF:
        return CTF(*(getattr(self, f)[rows] for f in self.__dataclass_fields__))

    @property
    def defocus(self) -> np.ndarray:
        """(n, 3) rows (defocus_u, defocus_v, angle), as the store keeps them."""
        return np.stack([self.defocus_u, self.defocus_v, self.angle], 1)

    def grid(self, shape: tuple[int, int], pixel_size: float, *, half: bool = False) -> np.ndarray:
        """:func:`ctf_2d` of every particle: (n, H, W) or (n, H, W // 2 + 1) float64."""
        return ctf_2d(shape, self.defocus, pixel_size, self.voltage_kv, self.cs_mm,
                      self.amplitude_contrast, half=half, phase_shift=self.phase_shift)

    def at(self, kx: np.ndarray, ky: np.ndarray) -> np.ndarray:
        """:func:`ctf_at` of every particle at frequencies (1/Angstrom): float64 (n, *S)."""
        return ctf_at(kx, ky, self.defocus, self.voltage_kv, self.cs_mm, self.amplitude_contrast,
                      self.phase_shift)

    def apply(self, images: np.ndarray, pixel_size: float) -> np.ndarray:
        """:func:`apply_ctf` with each particle's own parameters: float32 (n, H, W)."""
        return apply_ctf(images, self.defocus, pixel_size, self.voltage_kv, self.cs_mm,
                         self.amplitude_contrast, self.phase_shift)

    def summary(self) -> dict:
        """The manifest's description: the distinct microscope values and the defocus range."""
        def distinct(a):
            return sorted({round(float(x), 6) for x in a})
        return {"voltage_kv": distinct(self.voltage_kv), "cs_mm": distinct(self.cs_mm),
                "amplitude_contrast": distinct(self.amplitude_contrast),
                "phase_shift_deg": distinct(self.phase_shift)[:8],
                "defocus_range_A": [float(min(self.defocus_u.min(), self.defocus_v.min())),
                                    float(max(self.defocus_u.max(), self.defocus_v.max()))],
                "convention": "RELION CTF::getCTF"}


@dataclass(frozen=True)
class CTFParams:
    """Microscope settings of a simulated weak-phase CTF (defocus drawn per image)."""

    defocus_min: float = 10_000.0  # Angstrom, underfocus positive (1.0-2.5 um: a typical range)
    defocus_max: float = 25_000.0
    voltage_kv: float = 300.0  # a 300 kV Krios
    cs_mm: float = 2.7  # spherical aberration of most 300 kV objectives
    amplitude_contrast: float = 0.1  # RELION's default for cryo samples

    def manifest(self) -> dict:
        """The manifest's ``ctf`` entry."""
        return {"voltage_kv": self.voltage_kv, "cs_mm": self.cs_mm,
                "amplitude_contrast": self.amplitude_contrast, "defocus_min_A": self.defocus_min,
                "defocus_max_A": self.defocus_max, "convention": "RELION", "applied_to": "clean"}
