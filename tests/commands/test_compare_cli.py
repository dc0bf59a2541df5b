"""`cryotune compare` and `cryotune query --rank-by` through the real dispatcher."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
from scipy import stats

from cryotune import cli
from cryotune.study.store import StudyStore

GAN = {"method": "beta_gan", "alpha": 0.5, "beta": 0.5, "lambda": 10.0, "p": 1, "reduction": "sum"}


@pytest.fixture
def study(tmp_path):
    """ℓ1-AE and (0.5,0.5)-GAN + ℓ1 at eps 0 and types A-C at eps 0.2, seeds 0-2; the GAN
    diverged once."""
    store = StudyStore(tmp_path, "cmp")
    rng = np.random.default_rng(5)
    values = {}
    i = 0
    for side, config, factor in (("a", {"method": "l1_ae", "p": 1}, 1.0), ("b", GAN, 0.9)):
        for kind, eps in (("none", 0.0), ("A", 0.2), ("B", 0.2), ("C", 0.2)):
            for seed in range(3):
                v = float(3e-3 * factor * (1 + 0.05 * rng.standard_normal()))
                status = "diverged" if (side, kind, seed) == ("b", "C", 2) else "finished"
                store.record_trial({
                    "trial_id": f"t{i:02d}", "status": status,
                    "config": {**config, "eps": eps, "contamination": kind, "seed": seed,
                               "dataset": "d0"},
                    "test_mse_at_best": v, "select_score": 2 * v})
                values[(side, kind, seed)] = (v, status)
                i += 1
    return tmp_path / "cmp", values


def test_compare_prints_the_pooled_sentence(study, capsys, monkeypatch):
    path, values = study
    monkeypatch.setattr(cli, "COMMANDS", ("compare",))
    assert cli.main(["compare", str(path), "--a", "label == 'l1-AE'",
                     "--b", "label == '(0.5,0.5)-GAN + l1'", "--where", "eps > 0",
                     "--by", "contamination"]) == 0
    out = capsys.readouterr().out
    keys = [(k, s) for k in "ABC" for s in range(3) if values[("b", k, s)][1] == "finished"]
    a = [values[("a", *k)][0] for k in keys]
    b = [values[("b", *k)][0] for k in keys]
    p = stats.wilcoxon(b, a).pvalue
    assert f"over ε 0.2 and types A-C, {len(keys)} pairs; Wilcoxon signed-rank p = {p:.2g}." in out
    assert "(0.5,0.5)-GAN + ℓ1: of 9 trials, 1 diverged" in out
    assert "per cell" in out


def test_compare_errors_are_one_line(study, capsys, monkeypatch):
    path, _ = study
    monkeypatch.setattr(cli, "COMMANDS", ("compare",))
    assert cli.main(["compare", str(path), "--a", "eps > 0", "--b", "method == 'l1_ae'"]) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_query_rank_by_ranks_on_validation(study, capsys, monkeypatch):
    path, values = study
    monkeypatch.setattr(cli, "COMMANDS", ("query",))
    assert cli.main(["query", str(path), "--rank-by", "clean", "--format", "csv"]) == 0
    captured = capsys.readouterr()
    lines = list(csv.reader(io.StringIO(captured.out)))
    assert lines[0][:2] == ["rank", "label"]
    clean = {side: np.mean([values[(side, "none", s)][0] for s in range(3)]) for side in "ab"}
    first = "(0.5,0.5)-GAN + ℓ1" if clean["b"] < clean["a"] else "ℓ1-AE"
    assert lines[1][:2] == ["1", first]
    assert "ranked by clean on select_score (validation)" in captured.err
    assert "left out: 1 diverged" in captured.err
    assert cli.main(["query", str(path), "--rank-by", "median"]) == 2
