"""BM3D (Dabov et al. 2007) through the ``bm3d`` package, an opt-in extra.

The ``bm3d`` package (Tampere University) is free for non-commercial use only, so cryotune does
not depend on it: ``pip install 'cryotune[bm3d]'`` brings it in. Without it, constructing this
baseline raises :class:`~cryotune.errors.MissingExtra` with that one line.

Each image is denoised on its own with white noise of std sigma (both BM3D stages: hard
thresholding, then Wiener filtering with the first estimate as pilot), on one thread. The
package costs about half a CPU second per call whatever the image size (0.46 s at 32 px,
0.67 s at 64 px on a 2-core Xeon), so it is by far the slowest baseline on small particles.

Example::

    import numpy as np
    from cryotune.baselines.bm3d import BM3D
    noisy = np.random.default_rng(0).normal(0.5, 0.3, (2, 32, 32)).astype(np.float32)
    print(BM3D().denoise(noisy, sigma=0.3).shape)   # (2, 32, 32) when the extra is installed
"""

from __future__ import annotations

import dataclasses
from types import ModuleType

import numpy as np

from cryotune.baselines._base import Baseline, resolve_sigma
from cryotune.errors import MissingExtra

__all__ = ["BM3D"]


@dataclasses.dataclass
class BM3D(Baseline):
    """BM3D on each image (the ``bm3d`` package; non-commercial licence)."""

    name = "BM3D"
    licence_note = ("the bm3d package (Tampere University) is free for non-commercial use "
                    "only; it is an opt-in extra: pip install 'cryotune[bm3d]'.")

    # the package's profiles: "np" normal (best here on blob stacks at SNR 0.1 and 1), "vn" very
    # noisy, "high" (its "refilter" profile fails on 32 px images, so it is not offered)
    profile: str = dataclasses.field(default="np", metadata={"choices": ("np", "vn", "high")})

    def __post_init__(self) -> None:
        _import_bm3d()

    def _denoise(self, stack: np.ndarray, sigma: float | None) -> np.ndarray:
        bm3d = _import_bm3d()
        sigma = resolve_sigma(stack, sigma, self.name)
        profile = {"np": bm3d.BM3DProfile, "vn": bm3d.BM3DProfileVN,
                   "high": bm3d.BM3DProfileHigh}[self.profile]()
        # one thread: the result is then deterministic (the package says several threads may
        # change it slightly), and a Ray task holding one CPU uses one CPU
        profile.num_threads = 1
        out = np.empty_like(stack)
        for i, image in enumerate(stack):
            out[i] = bm3d.bm3d(image, sigma_psd=sigma, profile=profile)
        return out


def _import_bm3d() -> ModuleType:
    # imported per call, never stored: a module attribute would stop the baseline pickling
    try:
        import bm3d
    except ImportError:
        raise MissingExtra("BM3D", "bm3d", "bm3d") from None
    return bm3d
