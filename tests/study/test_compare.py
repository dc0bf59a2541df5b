"""Paired comparison against an independent scipy computation, on a study written to disk."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from cryotune.errors import BadInput
from cryotune.study.compare import compare_trials, paired_stats
from cryotune.study.store import StudyStore
from cryotune.study.tables import load_study

A = [3.1e-3, 2.9e-3, 3.4e-3, 5.0e-3, 4.6e-3, 6.1e-3, 3.3e-3, 3.0e-3, 4.2e-3, 5.5e-3, 4.9e-3, 3.8e-3]
B = [2.8e-3, 2.9e-3, 3.0e-3, 4.1e-3, 4.4e-3, 5.2e-3, 3.5e-3, 2.7e-3, 3.6e-3, 4.8e-3, 4.0e-3, 3.9e-3]
GAN = {"method": "beta_gan", "alpha": 0.5, "beta": 0.5, "lambda": 10.0, "p": 1, "reduction": "sum"}


def test_t_interval_and_wilcoxon_match_scipy():
    a, b = np.array(A[:8]), np.array(B[:8])
    s = paired_stats(a, b)
    d = b - a
    ref = stats.ttest_rel(b, a).confidence_interval(0.95)
    half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
    assert s.ci == "t" and s.n == 8
    assert s.diff == pytest.approx(d.mean())
    assert (s.diff_low, s.diff_high) == pytest.approx((ref.low, ref.high))
    assert (s.diff_low, s.diff_high) == pytest.approx((d.mean() - half, d.mean() + half))
    assert s.p == pytest.approx(stats.wilcoxon(b, a).pvalue)
    logs = np.log(b / a)
    ref_log = stats.ttest_1samp(logs, 0.0).confidence_interval(0.95)
    assert s.ratio == pytest.approx(math.exp(logs.mean()))
    assert (s.ratio_low, s.ratio_high) == pytest.approx((math.exp(ref_log.low), math.exp(ref_log.high)))


def test_bootstrap_from_ten_pairs_repeats_and_agrees_with_scipy():
    a, b = np.array(A), np.array(B)
    s = paired_stats(a, b)
    assert s.ci == "bootstrap" and s.n == 12
    assert paired_stats(a, b) == s  # a fixed seed: the same numbers every run
    ref = stats.bootstrap(((b - a),), np.mean, n_resamples=20000, method="percentile",
                          rng=np.random.default_rng(7)).confidence_interval
    width = ref.high - ref.low
    assert s.diff_low == pytest.approx(ref.low, abs=0.1 * width)
    assert s.diff_high == pytest.approx(ref.high, abs=0.1 * width)
    assert s.diff_low < s.diff < s.diff_high < 0
    assert s.p == pytest.approx(stats.wilcoxon(b, a).pvalue)


def test_too_few_pairs_say_so():
    s = paired_stats(A[:5], B[:5])
    assert s.p is None and "cannot reach p < 0.05" in s.note
    assert not math.isnan(s.diff_low)  # a CI still, a wide one
    one = paired_stats(A[:1], B[:1])
    assert one.ci == "none" and math.isnan(one.diff_low) and "too few" in one.note


def _study(tmp_path):
    """l1-AE and (0.5,0.5)-GAN + l1: eps 0 and types A-C at eps 0.1/0.2, seeds 0-1, fixed
    numbers; one GAN trial diverged, one l1-AE trial errored."""
    store = StudyStore(tmp_path, "c")
    values = {}
    i = 0
    cells = [("none", 0.0)] + [(k, e) for k in "ABC" for e in (0.1, 0.2)]
    for cell_index, (kind, eps) in enumerate(cells):
        for seed in (0, 1):
            a, b = A[(2 * cell_index + seed) % 12], B[(2 * cell_index + seed) % 12]
            for side, config, value in (("a", {"method": "l1_ae", "p": 1}, a), ("b", GAN, b)):
                status = "finished"
                if side == "b" and (kind, eps, seed) == ("C", 0.2, 1):
                    status, value = "diverged", 0.9
                if side == "a" and (kind, eps, seed) == ("B", 0.1, 0):
                    status = "error"
                store.record_trial({
                    "trial_id": f"t{i:03d}", "status": status, "epochs": 3,
                    "config": {**config, "eps": eps, "contamination": kind, "seed": seed,
                               "dataset": "d0"},
                    "metrics": {"test_mse": value * 1.1},
                    "test_mse_at_best": value, "select_score": value * 2, "best_epoch": 2})
                values[(side, kind, eps, seed)] = (status, value)
                i += 1
    return tmp_path / "c", values


def test_study_compare_pairs_and_counts(tmp_path):
    path, values = _study(tmp_path)
    c = load_study(path).compare(a="label == 'l1-AE'", b="label == '(0.5,0.5)-GAN + l1'",
                                 where="eps > 0", by=["contamination", "eps"])
    assert c.metric == "test_mse_at_best" and c.a == "ℓ1-AE" and c.b == "(0.5,0.5)-GAN + ℓ1"
    # 12 contaminated (cell, seed) pairs, less the diverged and the errored: 10
    keys = [(k, e, s) for k in "ABC" for e in (0.1, 0.2) for s in (0, 1)
            if values[("a", k, e, s)][0] == values[("b", k, e, s)][0] == "finished"]
    assert len(c.pairs) == len(keys) == 10
    a = np.array([values[("a", *k)][1] for k in keys])
    b = np.array([values[("b", *k)][1] for k in keys])
    pooled = c.pooled.iloc[0]
    assert pooled["n"] == 10 and pooled["diff"] == pytest.approx((b - a).mean())
    assert pooled["p"] == pytest.approx(stats.wilcoxon(b, a).pvalue)
    assert pooled["ratio"] == pytest.approx(math.exp(np.log(b / a).mean()))
    assert c.excluded["b"]["diverged"] == 1 and c.excluded["a"]["error"] == 1
    assert c.excluded["a"]["without a partner"] == 1 and c.excluded["b"]["without a partner"] == 1
    # per cell: 6 cells, each of at most 2 pairs, every one says it is too few for a test
    assert len(c.cells) == 6 and c.cells["p"].isna().all()
    cell = c.cells[(c.cells["contamination"] == "A") & (c.cells["eps"] == 0.1)].iloc[0]
    ref = stats.ttest_rel([values[("b", "A", 0.1, s)][1] for s in (0, 1)],
                          [values[("a", "A", 0.1, s)][1] for s in (0, 1)]).confidence_interval()
    assert (cell["diff_low"], cell["diff_high"]) == pytest.approx((ref.low, ref.high))
    text = c.sentences()
    assert "over ε 0.1-0.2 and types A-C, 10 pairs" in text[0]
    assert "better than ℓ1-AE by" in text[0] and "Wilcoxon signed-rank p =" in text[0]
    assert any("1 diverged" in line for line in text)


def test_pool_keeps_the_other_cell_columns(tmp_path):
    path, _ = _study(tmp_path)
    c = load_study(path).compare(a="method == 'l1_ae'", b="method == 'beta_gan'",
                                 where="eps > 0", pool="eps")
    assert sorted(c.pooled["contamination"]) == ["A", "B", "C"]
    assert c.pooled.set_index("contamination")["n"].to_dict() == {"A": 4, "B": 3, "C": 3}
    assert all("too few pairs for a signed-rank test" in s for s in c.pooled["sentence"])


def test_old_studies_fall_back_to_the_last_epoch(tmp_path):
    store = StudyStore(tmp_path, "old")
    for seed in range(3):
        for m, v in (("l1_ae", 1.0), ("l2_ae", 2.0)):
            store.record_trial({"trial_id": f"{m}{seed}", "status": "finished",
                                "config": {"method": m, "seed": seed, "eps": 0.0},
                                "metrics": {"test_mse": v + seed}})
    c = load_study(tmp_path / "old").compare(a="method == 'l1_ae'", b="method == 'l2_ae'")
    assert c.metric == "test_mse" and "last epoch" in c.notes[0]
    assert c.pooled.iloc[0]["diff"] == pytest.approx(1.0)


def test_bad_sides_are_refused(tmp_path):
    path, _ = _study(tmp_path)
    study = load_study(path)
    with pytest.raises(BadInput, match="match both sides"):
        study.compare(a="eps > 0", b="method == 'beta_gan'")
    StudyStore(tmp_path, "c").record_trial({
        "trial_id": "lambda5", "status": "finished", "test_mse_at_best": 1e-3,
        "config": {**GAN, "lambda": 5.0, "eps": 0.1, "contamination": "A", "seed": 0,
                   "dataset": "d0"}})
    study = load_study(path)
    with pytest.raises(BadInput, match=r"share dataset d0, eps 0.1, type A, seed 0.*config.lambda"):
        study.compare(a="method == 'l1_ae'", b="method == 'beta_gan'")
    assert study.compare(a="method == 'l1_ae'", b="method == 'beta_gan' and `lambda` == 10").pooled[
        "n"].iloc[0] == 12
    with pytest.raises(BadInput, match="not a cell column"):
        study.compare(a="method == 'l1_ae'", b="method == 'beta_gan'", by="lambda")
    with pytest.raises(BadInput, match="no trial matches"):
        compare_trials(study.trials, "method == 'wgan'", "method == 'beta_gan'")


def test_cli_names_the_same_cell_columns():
    from cryotune.commands import compare as command
    from cryotune.study import compare

    assert command.CELL == compare.CELL
