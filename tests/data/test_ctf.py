"""The CTF against an independent closed form written from the physics, pixel by pixel."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import constants

from cryotune.data.ctf import CTF, apply_ctf, ctf_2d, electron_wavelength


def wavelength(kv: float) -> float:
    """lambda = h / sqrt(2 m e V (1 + e V / (2 m c^2))), in Angstrom, from CODATA constants."""
    e, m, h, c = constants.e, constants.m_e, constants.h, constants.c
    v = kv * 1e3
    return h / math.sqrt(2 * m * e * v * (1 + e * v / (2 * m * c * c))) * 1e10


def closed_form(kx, ky, u, v, angle_deg, kv, cs_mm, q0, phase_deg):
    """CTF = Q0 cos(g) - sqrt(1 - Q0^2) sin(g), g = -pi lam z k^2 + pi/2 Cs lam^3 k^4 - phase,
    with z = u cos^2(t - a) + v sin^2(t - a) the defocus along azimuth t (underfocus > 0).
    The wavelength is RELION's formula, checked against CODATA on its own below: chi reaches
    ~100 rad at Nyquist, where their 1e-5 relative difference would show as 1e-3."""
    lam = electron_wavelength(kv)
    k2 = kx * kx + ky * ky
    t = math.atan2(ky, kx) - math.radians(angle_deg)
    z = u * math.cos(t) ** 2 + v * math.sin(t) ** 2
    g = -math.pi * lam * z * k2 + math.pi / 2 * cs_mm * 1e7 * lam**3 * k2 * k2 - math.radians(
        phase_deg)
    return q0 * math.cos(g) - math.sqrt(1 - q0 * q0) * math.sin(g)


def test_wavelength_matches_codata():
    for kv in (100.0, 200.0, 300.0):
        assert electron_wavelength(kv) == pytest.approx(wavelength(kv), rel=2e-5)


@pytest.mark.parametrize("shape", [(12, 12), (11, 13)])
@pytest.mark.parametrize("params", [
    (15000.0, 12000.0, 35.0, 300.0, 2.7, 0.1, 0.0),
    (9000.0, 11000.0, -70.0, 200.0, 0.01, 0.07, 0.0),
    (5000.0, 5000.0, 0.0, 300.0, 2.7, 0.1, 90.0),  # a phase plate
])
def test_ctf_matches_the_closed_form_pixel_by_pixel(shape, params):
    u, v, a, kv, cs, q0, ph = params
    px = 1.7
    got = ctf_2d(shape, [[u, v, a]], px, kv, cs, q0, phase_shift=ph)[0]
    h, w = shape
    fy, fx = np.fft.fftfreq(h, px), np.fft.fftfreq(w, px)
    want = np.array([[closed_form(fx[j], fy[i], u, v, a, kv, cs, q0, ph) for j in range(w)]
                     for i in range(h)])
    np.testing.assert_allclose(got, want, atol=1e-9)
    assert got[0, 0] == pytest.approx(math.cos(math.radians(ph)) * q0
                                       + math.sin(math.radians(ph)) * math.sqrt(1 - q0 * q0))


def test_astigmatism_axis_runs_from_image_x_towards_y():
    # U along x at angle 0: on the kx axis the defocus is U, on the ky axis V
    u, v = 20000.0, 10000.0
    grid = ctf_2d((64, 64), [[u, v, 0.0]], 1.0, cs_mm=0.0)[0]
    along_x = ctf_2d((64, 64), [[u, u, 0.0]], 1.0, cs_mm=0.0)[0]
    along_y = ctf_2d((64, 64), [[v, v, 0.0]], 1.0, cs_mm=0.0)[0]
    np.testing.assert_allclose(grid[0, :], along_x[0, :], atol=1e-12)
    np.testing.assert_allclose(grid[:, 0], along_y[:, 0], atol=1e-12)
    turned = ctf_2d((64, 64), [[u, v, 90.0]], 1.0, cs_mm=0.0)[0]
    np.testing.assert_allclose(turned[:, 0], along_x[:, 0], atol=1e-12)


def test_per_particle_parameters_equal_one_call_each():
    rng = np.random.default_rng(0)
    ctf = CTF.from_arrays(defocus_u=rng.uniform(8e3, 2e4, 4), defocus_v=rng.uniform(8e3, 2e4, 4),
                          angle=rng.uniform(-90, 90, 4), voltage_kv=[300.0, 200.0, 300.0, 120.0],
                          cs_mm=[2.7, 2.0, 0.01, 2.7], amplitude_contrast=[0.1, 0.07, 0.1, 0.2],
                          phase_shift=[0.0, 0.0, 60.0, 0.0])
    together = ctf.grid((16, 16), 1.3, half=True)
    for i in range(4):
        c = ctf[i:i + 1]
        alone = ctf_2d((16, 16), c.defocus, 1.3, float(c.voltage_kv[0]), float(c.cs_mm[0]),
                       float(c.amplitude_contrast[0]), half=True,
                       phase_shift=float(c.phase_shift[0]))
        np.testing.assert_allclose(together[i], alone[0])
    images = rng.standard_normal((4, 16, 16)).astype(np.float32)
    np.testing.assert_allclose(ctf.apply(images, 1.3),
                               np.fft.irfft2(np.fft.rfft2(images) * together, s=(16, 16)),
                               atol=1e-5)
    ky, kx = np.fft.fftfreq(16, 1.3)[:, None], np.fft.rfftfreq(16, 1.3)[None, :]
    np.testing.assert_allclose(ctf.at(kx, ky), together)
    assert apply_ctf(images, ctf.defocus, 1.3, ctf.voltage_kv, ctf.cs_mm, ctf.amplitude_contrast,
                     ctf.phase_shift).shape == images.shape
