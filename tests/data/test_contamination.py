"""Contamination: deterministic, nested in eps, binomial rate, right fields, matching moments."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from cryotune.data.contamination import contaminate, contaminated_mask
from cryotune.errors import BadConfig

STATS = {"clean_mean": 0.3, "clean_var": 0.04, "noisy_mean": -0.2, "noisy_var": 2.5}


def pairs(n, shape=(16, 16), seed=0):
    rng = np.random.default_rng(seed)
    clean = rng.random((n, *shape), dtype=np.float32)
    return clean + rng.standard_normal((n, *shape), dtype=np.float32), clean


def test_mask_is_deterministic_and_order_free():
    ids = np.arange(5000)
    mask = contaminated_mask(ids, 0.2, seed=7)
    assert np.array_equal(mask, contaminated_mask(ids.copy(), 0.2, seed=7))
    perm = np.random.default_rng(0).permutation(ids)
    assert np.array_equal(contaminated_mask(perm, 0.2, seed=7), mask[perm])
    assert np.array_equal(contaminated_mask(ids[:37], 0.2, seed=7), mask[:37])  # batching
    assert not np.array_equal(contaminated_mask(ids, 0.2, seed=8), mask)


def test_masks_are_nested_in_eps():
    ids = np.arange(20000)
    m1, m2, m3 = (contaminated_mask(ids, e, seed=3) for e in (0.1, 0.2, 0.3))
    assert np.all(m1 <= m2) and np.all(m2 <= m3) and m1.sum() < m2.sum() < m3.sum()
    assert not contaminated_mask(ids, 0.0, seed=3).any() and contaminated_mask(ids, 1.0, seed=3).all()


@pytest.mark.parametrize("eps", [0.05, 0.2, 0.5])
@pytest.mark.parametrize("seed", [0, 12345])
def test_rate_is_binomial(eps, seed):
    n = 20000
    k = contaminated_mask(np.arange(n), eps, seed).sum()
    assert abs(k - n * eps) < 4 * np.sqrt(n * eps * (1 - eps))


def test_hash_uniforms_are_uniform():
    # the fraction below every threshold is the threshold: a KS test on the implied CDF
    ids = np.arange(4000)
    grid = np.linspace(0, 1, 201)
    cdf = np.array([contaminated_mask(ids, e, 1).mean() for e in grid])
    assert np.max(np.abs(cdf - grid)) < sps.kstwo.ppf(0.999, len(ids))


@pytest.mark.parametrize("kind,replaced", [("A", {"clean"}), ("B", {"noisy"}), ("C", {"clean", "noisy"})])
def test_right_fields_replaced_with_matching_moments(kind, replaced):
    noisy, clean = pairs(600)
    ids = np.arange(1000, 1600)
    noisy_c, clean_c, mask = contaminate(noisy, clean, ids, eps=0.3, kind=kind, seed=5, stats=STATS)
    assert np.array_equal(mask, contaminated_mask(ids, 0.3, 5))
    new = {"noisy": noisy_c, "clean": clean_c}
    old = {"noisy": noisy, "clean": clean}
    for field in ("noisy", "clean"):
        assert new[field].dtype == np.float32
        assert np.array_equal(new[field][~mask], old[field][~mask])
        if field in replaced:
            assert not np.any(np.all(new[field][mask] == old[field][mask], axis=(1, 2)))
            x = new[field][mask].astype(np.float64).ravel()
            mean, var = STATS[f"{field}_mean"], STATS[f"{field}_var"]
            assert abs(x.mean() - mean) < 5 * np.sqrt(var / x.size)
            assert abs(x.var() / var - 1) < 5 * np.sqrt(2 / x.size)
            assert sps.kstest((x - mean) / np.sqrt(var), "norm").pvalue > 1e-4
        else:
            assert new[field] is old[field]
    # pixels of different images and fields are independent
    if kind == "C":
        assert abs(np.corrcoef(new["clean"][mask].ravel(), new["noisy"][mask].ravel())[0, 1]) < 0.02


def test_replacement_is_reproducible_and_inputs_untouched():
    noisy, clean = pairs(50)
    noisy0, clean0 = noisy.copy(), clean.copy()
    ids = np.arange(50)
    a = contaminate(noisy, clean, ids, eps=0.5, kind="C", seed=2, stats=STATS)
    perm = np.random.default_rng(1).permutation(50)
    b = contaminate(noisy[perm], clean[perm], ids[perm], eps=0.5, kind="C", seed=2, stats=STATS)
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x[perm], y)
    assert np.array_equal(noisy, noisy0) and np.array_equal(clean, clean0)
    readonly = clean.copy()
    readonly.flags.writeable = False
    contaminate(noisy, readonly, ids, eps=0.5, kind="A", seed=2, stats=STATS)


@pytest.mark.parametrize("eps,kind", [(0.0, "C"), (0.4, "none")])
def test_identity(eps, kind):
    noisy, clean = pairs(10)
    n2, c2, mask = contaminate(noisy, clean, np.arange(10), eps=eps, kind=kind, seed=0, stats=STATS)
    assert n2 is noisy and c2 is clean and not mask.any()


@pytest.mark.parametrize("eps,kind,match", [(-0.1, "A", "outside"), (1.5, "A", "outside"),
                                            (float("nan"), "A", "outside"), (0.1, "D", "unknown")])
def test_bad_config(eps, kind, match):
    noisy, clean = pairs(2)
    with pytest.raises(BadConfig, match=match):
        contaminate(noisy, clean, np.arange(2), eps=eps, kind=kind, seed=0, stats=STATS)


def test_holdout_mask_is_nested_seed_free_and_not_the_contaminated_set():
    from cryotune.data.contamination import holdout_mask

    ids = np.arange(20_000)
    small, large = holdout_mask(ids, 0.1), holdout_mask(ids, 0.2)
    assert abs(small.mean() - 0.1) < 0.01 and not (small & ~large).any()
    shuffled = np.random.default_rng(0).permutation(ids)
    assert np.array_equal(holdout_mask(shuffled, 0.1), small[shuffled])  # per id, any order
    for seed in (0, 1, 7):  # not the contaminated set of any trial seed: independent of it
        both = (small & contaminated_mask(ids, 0.1, seed)).mean()
        assert abs(both - 0.01) < 0.004
