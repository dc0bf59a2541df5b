"""BM3D: a one-line MissingExtra without the extra; with it, lower MSE on noisy particles."""

from __future__ import annotations

import pickle
import sys

import numpy as np
import pytest

from cryotune.baselines import make_baseline
from cryotune.baselines.bm3d import BM3D
from cryotune.errors import MissingExtra


def test_without_the_extra_says_which_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "bm3d", None)  # import bm3d -> ImportError
    for build in (BM3D, lambda: make_baseline("bm3d")):
        with pytest.raises(MissingExtra) as err:
            build()
        message = str(err.value)
        assert message == ("BM3D needs the optional package 'bm3d', not installed: "
                           "pip install 'cryotune[bm3d]'")
        assert "\n" not in message and err.value.extra == "bm3d"


def test_licence_is_stated():
    assert "non-commercial" in BM3D.licence_note
    assert "cryotune[bm3d]" in BM3D.licence_note


@pytest.mark.parametrize("known", [True, False])
def test_lowers_mse(blobs, mse, known):
    bm3d = pytest.importorskip("bm3d")
    sigma = 0.2
    clean, noisy = blobs(2, 16, sigma, seed=4)
    baseline = pickle.loads(pickle.dumps(BM3D()))  # Ray ships baselines to workers
    out = baseline.denoise(noisy, sigma=sigma if known else None)
    assert out.shape == noisy.shape and out.dtype == np.float32
    assert mse(out, clean) < 0.3 * mse(noisy, clean)
    if known:  # the package, called directly on one image, gives the same result
        profile = bm3d.BM3DProfile()
        profile.num_threads = 1
        direct = bm3d.bm3d(noisy[0], sigma_psd=sigma, profile=profile)
        np.testing.assert_allclose(out[0], direct, rtol=1e-5, atol=1e-6)
