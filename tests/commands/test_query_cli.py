"""`cryotune query` through the real dispatcher, on a study written with the study store."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from cryotune import cli
from cryotune.study.store import StudyStore


@pytest.fixture
def run(monkeypatch):
    monkeypatch.setattr(cli, "COMMANDS", ("query",))
    return lambda *argv: cli.main(["query", *map(str, argv)])


@pytest.fixture
def study(tmp_path):
    """12 trials: 2 methods x eps {0, 0.2} x 3 seeds, with known metrics."""
    store = StudyStore(tmp_path, "q")
    rng = np.random.default_rng(3)
    rows = []
    for method in ("l2_ae", "l1_ae"):
        for eps in (0.0, 0.2):
            for seed in range(3):
                mse = float(rng.uniform(1e-3, 1e-2))
                tid = f"{method}-{eps}-{seed}"
                store.record_trial({"trial_id": tid, "status": "finished", "epochs": 2,
                                    "config": {"method": method, "eps": eps, "seed": seed,
                                               "width": 8},
                                    "metrics": {"test_mse": mse, "test_psnr": -10 * np.log10(mse)}},
                                   [{"epoch": 1, "test_mse": 2 * mse}, {"epoch": 2, "test_mse": mse}])
                rows.append((tid, method, eps, seed, mse))
    return tmp_path / "q", pd.DataFrame(rows, columns=["trial_id", "method", "eps", "seed", "mse"])


def test_csv_summary_matches_pandas(run, study, capsys):
    path, truth = study
    assert run(path, "--where", "method == 'l2_ae' and eps > 0", "--by", "method,eps",
               "--metrics", "test_mse", "--agg", "mean,std,count", "--format", "csv") == 0
    out = pd.read_csv(pd.io.common.StringIO(capsys.readouterr().out))
    sub = truth[(truth["method"] == "l2_ae") & (truth["eps"] > 0)]["mse"]
    assert list(out.columns) == ["method", "eps", "test_mse_mean", "test_mse_std", "test_mse_count"]
    assert len(out) == 1 and out["test_mse_count"][0] == 3
    assert out["test_mse_mean"][0] == pytest.approx(np.mean(sub))
    assert out["test_mse_std"][0] == pytest.approx(np.std(sub, ddof=1))


def test_json_listing_and_parquet_file(run, study, capsys, tmp_path):
    path, truth = study
    assert run(path, "--where", "seed == 1", "--metrics", "test_mse", "--format", "json") == 0
    records = json.loads(capsys.readouterr().out)
    assert len(records) == 4
    assert {r["trial_id"] for r in records} == set(truth[truth["seed"] == 1]["trial_id"])
    # only the config values that differ in the selection are listed (not width, nor seed)
    assert set(records[0]) == {"trial_id", "status", "eps", "method", "test_mse"}
    by_id = truth.set_index("trial_id")["mse"]
    assert all(r["test_mse"] == pytest.approx(by_id[r["trial_id"]]) for r in records)
    out = tmp_path / "s.parquet"
    assert run(path, "--by", "method", "--format", "parquet", "--out", out) == 0
    frame = pd.read_parquet(out)
    expected = truth.groupby("method")["mse"].mean()
    assert dict(zip(frame["method"], frame["test_mse_mean"], strict=True)) == \
        pytest.approx(expected.to_dict())
    assert run(path, "--all", "--format", "csv", "--out", tmp_path / "all.csv") == 0
    assert len(pd.read_csv(tmp_path / "all.csv")) == 12


def test_table_and_two_studies(run, study, capsys, tmp_path):
    path, _ = study
    other = StudyStore(tmp_path, "r")
    other.record_trial({"trial_id": "x", "status": "error", "error": "boom",
                        "config": {"method": "wgan_gp", "eps": 0.0, "seed": 0, "width": 8}})
    assert run(path, tmp_path / "r", "--by", "method", "--metrics", "test_mse") == 0
    text = capsys.readouterr().out
    assert "l1_ae" in text and "l2_ae" in text and "wgan_gp" in text
    assert run(path, "--where", "status == 'finished'", "--format", "table") == 0
    assert "l1_ae-0.2-2" in capsys.readouterr().out
    assert run(path, "--by", "label,eps", "--format", "csv") == 0  # the paper's names
    labels = pd.read_csv(pd.io.common.StringIO(capsys.readouterr().out))["label"]
    assert set(labels) == {"ℓ1-AE", "ℓ2-AE"}


def test_bad_queries_exit_2_naming_the_columns(run, study, capsys):
    path, _ = study
    assert run(path, "--where", "methd == 'l2_ae'") == 2
    err = capsys.readouterr().err
    assert "methd" in err and "method" in err and "test_mse" in err
    assert run(path, "--by", "method", "--metrics", "test_msee") == 2
    assert "test_msee" in capsys.readouterr().err
    assert run(path, "--metrics", "psnr") == 2
    assert "known columns" in capsys.readouterr().err
    assert run(path, "--format", "parquet") == 2
    assert "--out" in capsys.readouterr().err
    assert run(path.parent / "nothing") == 2
    assert "not a cryotune study" in capsys.readouterr().err
