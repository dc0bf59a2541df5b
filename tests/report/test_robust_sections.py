"""The report's bold rule, diverged counts, test-at-best columns, compare sentences and the
Pareto front, on studies written with the study store."""

from __future__ import annotations

import re

import numpy as np
import pytest
from scipy import stats

from cryotune.report import render
from cryotune.report.tables import prepare, table1
from cryotune.study.store import StudyStore
from cryotune.study.tables import load_study

GAN = {"method": "beta_gan", "alpha": 0.5, "beta": 0.5, "lambda": 10.0, "p": 1, "reduction": "sum"}
WGAN_GP = {"method": "wgan_gp", "lambda": 10.0, "p": 1, "reduction": "sum"}


def _row(i, config, value, *, status="finished", eps=0.0, kind="none", seed=0, dataset="d0",
         last=None):
    return {"trial_id": f"t{i:03d}", "status": status, "epochs": 3,
            "config": {**config, "eps": eps, "contamination": kind, "seed": seed,
                       "dataset": dataset, "snr": 0.1},
            "metrics": {"test_mse": last if last is not None else value * 1.2,
                        "test_psnr": -10 * np.log10(value), "test_ssim": 0.8},
            "test_mse_at_best": value, "test_psnr_at_best": -10 * np.log10(value),
            "test_ssim_at_best": 0.8, "select_score": 2 * value, "best_epoch": 2,
            "noisy_test_mse": 0.03}


def table1_study(tmp_path, values):
    """eps 0 only: method -> [(value, status)] per seed."""
    store = StudyStore(tmp_path, "t1")
    i = 0
    for config, per_seed in values:
        for seed, (value, status) in enumerate(per_seed):
            store.record_trial(_row(i, config, value, status=status, seed=seed))
            i += 1
    return load_study(tmp_path / "t1")


def _cell_of(html, label):
    row = re.search(rf"<tr><td class=\"l\">{re.escape(label)}</td>(.*?)</tr>", html)
    assert row, label
    return row.group(1)


def test_a_diverged_method_is_counted_and_never_bold(tmp_path):
    l1 = [(3.0e-3, "finished"), (3.1e-3, "finished"), (2.9e-3, "finished")]
    wild = [(5e-3, "finished"), (4.5e-2, "diverged"), (9e-2, "diverged")]
    html = table1(prepare(table1_study(tmp_path, [({"method": "l1_ae", "p": 1}, l1),
                                                   (WGAN_GP, wild)])))
    wgan = _cell_of(html, "WGAN-GP + ℓ1")
    assert "1 (2 of 3 diverged)" in wgan
    assert "<b" not in wgan  # one finished trial: below 3 pairs, never bold
    assert "5.00e-3" in wgan  # its mean is its finished trial's alone
    assert "<b" in _cell_of(html, "ℓ1-AE")


def test_bold_follows_the_paired_ci(tmp_path):
    best = [3.0e-3, 3.2e-3, 2.8e-3]
    tie = [3.05e-3, 3.0e-3, 3.1e-3]     # paired differences straddle 0: bold
    worse = [3.5e-3, 3.7e-3, 3.3e-3]    # every pair 5e-4 worse: CI excludes 0
    study = table1_study(tmp_path, [
        ({"method": "l1_ae", "p": 1}, [(v, "finished") for v in best]),
        ({"method": "l2_ae", "p": 2}, [(v, "finished") for v in tie]),
        (GAN, [(v, "finished") for v in worse])])
    html = table1(prepare(study))
    d_tie = np.array(tie) - np.array(best)
    ci = stats.ttest_rel(tie, best).confidence_interval()
    assert ci.low < 0 < ci.high and d_tie.std() > 0
    mse = lambda label: _cell_of(html, label).split("</td><td>")[1]  # noqa: E731
    assert mse("ℓ1-AE").startswith("<b") and mse("ℓ2-AE").startswith("<b")
    assert not mse("(0.5,0.5)-GAN + ℓ1").startswith("<b")
    assert "n = 3 pairs" in mse("ℓ2-AE")
    # two seeds: too few pairs, only the best is bold
    two = table1(prepare(table1_study(tmp_path / "two", [
        ({"method": "l1_ae", "p": 1}, [(v, "finished") for v in best[:2]]),
        ({"method": "l2_ae", "p": 2}, [(v, "finished") for v in tie[:2]])])))
    assert _cell_of(two, "ℓ2-AE").split("</td><td>")[1].startswith("<b")  # 3.03e-3, the best
    assert "2 pairs with the best: too few" in _cell_of(two, "ℓ1-AE").split("</td><td>")[1]


def test_tables_show_test_at_the_best_epoch_and_the_validation_score(tmp_path):
    study = table1_study(tmp_path, [({"method": "l1_ae", "p": 1},
                                     [(3e-3, "finished"), (5e-3, "finished")])])
    html = table1(prepare(study))
    assert "4.00e-3" in html and "4.80e-3" not in html  # at best, not the last epoch's
    assert "best validation epoch" in html and "validation score" in html
    assert "8.00e-3" in html  # select_score: mean of 2 x value
    old = StudyStore(tmp_path, "old")
    old.record_trial({"trial_id": "x", "status": "finished",
                      "config": {"method": "l1_ae", "eps": 0.0, "seed": 0},
                      "metrics": {"test_mse": 7e-3}})
    old_html = table1(prepare(load_study(tmp_path / "old")))
    assert "7.00e-3" in old_html and "at the last epoch" in old_html


def robust_study(tmp_path, dataset="d0"):
    """ℓ1-AE, (0.5,0.5)-GAN + ℓ1 and ℓ2-AE at eps 0 and types A-C at eps 0.2, 3 seeds."""
    store = StudyStore(tmp_path, "rb")
    rng = np.random.default_rng(1)
    i = 0
    for config, clean, factor in (({"method": "l1_ae", "p": 1}, 3.0e-3, 1.3),
                                  (GAN, 2.8e-3, 1.1), ({"method": "l2_ae", "p": 2}, 2.7e-3, 3.0)):
        for kind, eps in (("none", 0.0), ("A", 0.2), ("B", 0.2), ("C", 0.2)):
            for seed in range(3):
                v = clean * (factor if eps else 1.0) * (1 + 0.02 * rng.standard_normal())
                store.record_trial(_row(i, config, v, eps=eps, kind=kind, seed=seed,
                                        dataset=dataset))
                i += 1
    return load_study(tmp_path / "rb")


def test_report_has_compare_sentences_and_the_pareto_front(tmp_path):
    html = render(robust_study(tmp_path))
    section = html[html.index('id="compare"'):html.index('id="selection"')]
    assert re.search(r"\(0\.5,0\.5\)-GAN \+ ℓ1 is better than ℓ1-AE by \d+(\.\d)?% in "
                     r"test_mse_at_best \(95% CI [^)]*\) over ε 0\.2 and types A-C, 9 pairs; "
                     r"Wilcoxon signed-rank p = ", section)
    chosen = html[html.index('id="selection"'):html.index('id="summary"')]
    assert "<svg" in chosen and "Pareto front" in chosen
    # the front: ℓ2-AE (best clean) and the GAN (best worst case); ℓ1-AE is beaten on both
    svg = chosen[chosen.index("<svg"):chosen.index("</svg>")]
    legend = re.findall(r'<text x="\d+" y="\d+">([^<]*)</text>', svg)
    assert legend == ["Pareto front", "ℓ2-AE", "(0.5,0.5)-GAN + ℓ1", "other configurations"]
    # clean: ℓ2-AE has the lowest eps 0 score; worst_ratio: the GAN degrades least
    rows = re.findall(r"<tr><td class=\"l\">(\w+)</td><td class=\"l\">[^<]*</td>"
                      r"<td class=\"l\">([^<]*)</td>", chosen)
    assert ("clean", "ℓ2-AE") in rows and ("worst_ratio", "(0.5,0.5)-GAN + ℓ1") in rows


@pytest.mark.parametrize("evil", ["<script>alert(1)</script>", '"><img src=x onerror=alert(1)>'])
def test_new_sections_escape_every_string(tmp_path, evil):
    html = render(robust_study(tmp_path, dataset=evil))
    assert "<script>alert" not in html and "<img src=x" not in html
    assert "Dataset &lt;script&gt;" in html or "Dataset &quot;&gt;&lt;img" in html
