"""Huber contamination of training pairs: types A, B and C at rate eps, deterministic per sample.

Sample ``id`` is contaminated iff ``u(seed, id) < eps``, where ``u`` is a uniform number from
a counter-based hash (splitmix64 in uint64 numpy arithmetic). So the contaminated set
depends on nothing but (seed, id, eps): it is the same in every epoch, trial, batch order and
rerun, and the set at eps = 0.1 lies inside the set at eps = 0.2. Type A replaces the clean
reference, B the noisy image, C both, by Gaussian noise images whose mean and variance are the
replaced field's train-split statistics; the replacement pixels are hashed from (seed, id,
field, pixel) too, so they are also reproducible.

Example::

    import numpy as np
    from cryotune.data.contamination import contaminate
    ids = np.arange(100)
    clean = np.zeros((100, 16, 16), np.float32); noisy = clean + 1
    stats = {"clean_mean": 0.5, "clean_var": 0.04, "noisy_mean": 0.5, "noisy_var": 1.0}
    noisy2, clean2, mask = contaminate(noisy, clean, ids, eps=0.2, kind="A", seed=0, stats=stats)
    print(mask.sum(), clean2[mask].mean())      # about 20 images, mean about 0.5
"""

from __future__ import annotations

import numpy as np

from cryotune import vocab
from cryotune.errors import BadConfig

__all__ = ["check", "contaminate", "contaminated_mask", "holdout_mask"]

# Fields each type replaces.
_FIELDS = {"none": (), "A": ("clean",), "B": ("noisy",), "C": ("clean", "noisy")}
# Distinct hash streams, so the mask and each field's pixels are independent.
_STREAM = {"mask": 1, "clean": 2, "noisy": 3, "holdout": 4}
# The key of the validation hold-out: one for every trial, whatever its seed.
_HOLDOUT_SEED = 0x5EED_7A11
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser: a bijective, well-mixed map of uint64 (wraps by design)."""
    x = x + _GOLDEN
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _key(seed: int, stream: str) -> np.uint64:
    mixed = _splitmix64(np.array([int(seed) % 2**64], dtype=np.uint64))
    return _splitmix64(mixed ^ np.uint64(_STREAM[stream]))[0]


def _hash(ids: np.ndarray, seed: int, stream: str) -> np.ndarray:
    return _splitmix64(np.asarray(ids).astype(np.uint64) ^ _key(seed, stream))


def check(eps: float, kind: str) -> None:
    """Raise BadConfig unless 0 <= eps <= 1 and kind is one of :data:`cryotune.vocab.CONTAMINATIONS`."""
    if not (isinstance(eps, (int, float, np.floating)) and 0.0 <= float(eps) <= 1.0):
        raise BadConfig(f"contamination rate {eps!r} is outside [0, 1]", "eps",
                        "give eps between 0 and 1, e.g. 0.1")
    if kind not in vocab.CONTAMINATIONS:
        raise BadConfig(f"unknown contamination type {kind!r}", "contamination",
                        f"use one of {', '.join(vocab.CONTAMINATIONS)}")


def contaminated_mask(ids: np.ndarray, eps: float, seed: int) -> np.ndarray:
    """Which samples are contaminated at rate ``eps``: ``u(seed, id) < eps``.

    Args:
        ids: sample ids (N,), any integer dtype.
        eps: contamination rate in [0, 1].
        seed: contamination seed.

    Returns:
        bool (N,); nested in eps, independent of the order and batching of ``ids``.
    """
    check(eps, "none")
    u = (_hash(ids, seed, "mask") >> np.uint64(11)).astype(np.float64) * 2.0**-53
    return u < float(eps)


def holdout_mask(ids: np.ndarray, fraction: float) -> np.ndarray:
    """Which samples a store without a validation split holds out as one: ``v(id) < fraction``.

    ``v`` comes from a hash stream of its own under a fixed key, so the held-out set is the same
    for every trial, seed and epoch, and independent of which samples are contaminated.

    Args:
        ids: sample ids (N,), any integer dtype.
        fraction: the expected share held out, in [0, 1].

    Returns:
        bool (N,).
    """
    u = (_hash(ids, _HOLDOUT_SEED, "holdout") >> np.uint64(11)).astype(np.float64) * 2.0**-53
    return u < float(fraction)


def _gaussian_images(ids: np.ndarray, shape: tuple[int, ...], seed: int, field: str) -> np.ndarray:
    """Standard normal images (len(ids), *shape), a pure function of (seed, field, id, pixel)."""
    pixels = int(np.prod(shape))
    rows = _hash(ids, seed, field)[:, None]
    h = _splitmix64(rows ^ _splitmix64(np.arange(pixels, dtype=np.uint64))[None, :])
    u1 = ((h >> np.uint64(32)).astype(np.float64) + 0.5) * 2.0**-32
    u2 = ((h & np.uint64(0xFFFFFFFF)).astype(np.float64) + 0.5) * 2.0**-32
    z = np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)  # Box-Muller
    return z.reshape(len(ids), *shape)


def contaminate(noisy: np.ndarray, clean: np.ndarray, ids: np.ndarray, *, eps: float, kind: str,
                seed: int, stats: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Apply Huber contamination to a batch of training pairs.

    Args:
        noisy, clean: float32 (N, H, W) (or (N, 1, H, W)); never modified in place.
        ids: sample ids (N,).
        eps: contamination rate in [0, 1].
        kind: "none", "A" (replace clean), "B" (replace noisy) or "C" (replace both).
        seed: contamination seed.
        stats: train statistics with clean_mean, clean_var, noisy_mean, noisy_var.

    Returns:
        (noisy, clean, mask): the same arrays when nothing is replaced (eps 0, kind "none",
        or no sample of this batch drawn), otherwise copies with the drawn rows replaced.

    Raises:
        BadConfig: eps outside [0, 1] or an unknown kind.
    """
    check(eps, kind)
    if eps == 0 or kind == "none":
        return noisy, clean, np.zeros(len(ids), dtype=bool)
    mask = contaminated_mask(ids, eps, seed)
    if not mask.any():
        return noisy, clean, mask
    out = {"noisy": noisy, "clean": clean}
    for field in _FIELDS[kind]:
        arr = np.array(out[field], dtype=np.float32, copy=True)
        z = _gaussian_images(np.asarray(ids)[mask], arr.shape[1:], seed, field)
        arr[mask] = stats[f"{field}_mean"] + np.sqrt(stats[f"{field}_var"]) * z
        out[field] = arr
    return out["noisy"], out["clean"], mask
