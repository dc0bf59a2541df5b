"""Classical denoisers that the learned ones are compared with (the paper's Table 1).

Every baseline is a dataclass of its parameters with one method,
``denoise(noisy, *, sigma=None) -> denoised`` on (n, H, W) float32 stacks, and two class
attributes: ``name`` (the label reports print) and ``licence_note``. They are listed here
explicitly under the method names that study rows carry in ``config.method``:

- ``nlm``: non-local means (scikit-image);
- ``ksvd``: K-SVD of our own on scikit-learn's OMP (8 x 8 patches, overcomplete DCT start,
  error-bounded coding);
- ``cwf``: a covariance Wiener filter built in, "CWF (no CTF)";
- ``cwf_aspire``: ASPIRE's CWF (optional extra ``aspire``; never run unless asked for);
- ``bm3d``: BM3D (optional extra ``bm3d``, whose licence is non-commercial).

Example::

    import numpy as np
    from cryotune.baselines import make_baseline
    noisy = np.random.default_rng(0).normal(0.5, 0.3, (16, 32, 32)).astype(np.float32)
    ksvd = make_baseline("ksvd", {"stride": 4})
    print(ksvd.name, ksvd.denoise(noisy, sigma=0.3).shape)   # K-SVD (16, 32, 32)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cryotune.baselines._base import (
    Baseline,
    check_stack,
    estimate_noise_sigma,
    resolve_sigma,
    sigma_from_stats,
)
from cryotune.baselines.bm3d import BM3D
from cryotune.baselines.cwf import AspireCWF, CovarianceWiener
from cryotune.baselines.ksvd import KSVD
from cryotune.baselines.nlm import NLMeans
from cryotune.config import from_dict
from cryotune.errors import BadConfig

__all__ = [
    "BASELINES",
    "BM3D",
    "KSVD",
    "AspireCWF",
    "Baseline",
    "CovarianceWiener",
    "NLMeans",
    "check_stack",
    "estimate_noise_sigma",
    "make_baseline",
    "resolve_sigma",
    "sigma_from_stats",
]

BASELINES: dict[str, type[Baseline]] = {
    "nlm": NLMeans,
    "ksvd": KSVD,
    "cwf": CovarianceWiener,
    "cwf_aspire": AspireCWF,
    "bm3d": BM3D,
}


def make_baseline(method: str, params: Mapping[str, Any] | None = None, *,
                  path: str = "") -> Baseline:
    """Build the baseline ``method`` from a parameter mapping, validating every key.

    Args:
        method: a key of :data:`BASELINES`.
        params: the baseline's parameters (e.g. from YAML); None for the defaults.
        path: the key path of ``params`` in its file, for error messages.

    Returns:
        The baseline.

    Raises:
        BadConfig: for an unknown method, unknown keys, wrong types or out-of-range values.
        MissingExtra: when the baseline needs an optional package that is not installed.
    """
    cls = BASELINES.get(method)
    if cls is None:
        raise BadConfig(f"unknown baseline {method!r}", path or "method",
                        f"use one of {', '.join(BASELINES)}")
    return from_dict(cls, params or {}, path)
