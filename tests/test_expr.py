"""The query grammar: what it accepts, what it refuses, and that it never runs code."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from cryotune.errors import BadInput
from cryotune.expr import column_resolver, mask, parse


@pytest.fixture()
def trials() -> pd.DataFrame:
    return pd.DataFrame({
        "trial_id": ["a", "b", "c", "d", "e"],
        "status": ["finished", "finished", "errored", None, "finished"],
        "config.method": ["l2_ae", "beta_gan", "l2_ae", "wgan", None],
        "config.eps": [0.0, 0.1, 0.2, np.nan, 0.1],
        "test_mse": [0.5, 0.25, np.nan, 1.0, 0.125],
        "ok": [True, False, True, None, False],
        "config.lambda": [np.nan, 10.0, np.nan, 1.0, 100.0],  # a Python keyword as a column
    })


@pytest.mark.parametrize("text, expected", [
    ("method == 'l2_ae'", lambda t: t["config.method"] == "l2_ae"),
    ("config.method == 'l2_ae' and eps > 0", lambda t: (t["config.method"] == "l2_ae") & (t["config.eps"] > 0)),
    ("`config.eps` >= 0.1 or test_mse < 0.3", lambda t: (t["config.eps"] >= 0.1) | (t["test_mse"] < 0.3)),
    ("0 < eps <= 0.1", lambda t: (t["config.eps"] > 0) & (t["config.eps"] <= 0.1)),
    ("method in ['l2_ae', 'wgan']", lambda t: t["config.method"].isin(["l2_ae", "wgan"])),
    ("method not in ('l2_ae',)", lambda t: t["config.method"].notna() & (t["config.method"] != "l2_ae")),
    ("not (status == 'finished')", lambda t: ~(t["status"] == "finished")),
    ("status != 'finished'", lambda t: t["status"].notna() & (t["status"] != "finished")),
    ("eps != 0.1", lambda t: t["config.eps"].notna() & (t["config.eps"] != 0.1)),
    ("test_mse is None", lambda t: t["test_mse"].isna()),
    ("method is not None and test_mse < inf", lambda t: t["config.method"].notna() & (t["test_mse"] < math.inf)),
    ("eps > -1e-3", lambda t: t["config.eps"] > -1e-3),
    ("ok", lambda t: t["ok"].fillna(False).astype(bool)),
    ("not ok", lambda t: ~t["ok"].fillna(False).astype(bool)),
    ("True", lambda t: pd.Series(True, index=t.index)),
    ("status == 'finished' and (method == 'l2_ae' or eps == 0.1)",
     lambda t: (t["status"] == "finished") & ((t["config.method"] == "l2_ae") | (t["config.eps"] == 0.1))),
    ("status == 'a@b'", lambda t: t["status"] == "a@b"),
    ("lambda == 10", lambda t: t["config.lambda"] == 10),
    ("config.lambda >= 1 and lambda is not None", lambda t: t["config.lambda"] >= 1),
    ("lambda in [1, 10] or `lambda` < 0", lambda t: t["config.lambda"].isin([1, 10])),
])
def test_mask_matches_hand_built(trials, text, expected):
    got = mask(trials, text)
    want = expected(trials).fillna(False).astype(bool)
    assert got.dtype == bool
    pd.testing.assert_series_equal(got, want, check_names=False)


def test_nulls_compare_false(trials):
    for text in ("eps == eps", "eps != 5", "method != 'x'", "method not in ['x']", "status < 'zz'"):
        m = mask(trials, text)
        assert not m[trials["config.eps" if "eps" in text else
                            ("config.method" if "method" in text else "status")].isna()].any(), text


@pytest.mark.parametrize("text, word", [
    ("test_mse.max()>0", "function call"),
    ("__import__('os').system('true')", "function call"),
    ("eps + 1 > 0", "arithmetic"),
    ("trial_id[0] == 'a'", "subscript"),
    ("(lambda: 1)() == 1", "function call"),
    ("[x for x in trial_id] == 1", "comprehension"),
    ("eps in eps", "list of literals"),
    ("eps in [eps]", "list of literals"),
    ("eps is 1", "None only"),
    ("test_mse @ eps > 0", "'@"),
    ("eps >", "invalid syntax"),
    ("eps", "not true/false"),
    ("0.5", "not a condition"),
    ("'abc'.upper() == 'ABC'", "function call"),
    ("{'a': 1} == 1", "dict"),
    ("f'{eps}' == '1'", "f-string"),
    ("(eps := 1) == 1", "assignment"),
])
def test_refused_with_one_line(trials, text, word):
    with pytest.raises(BadInput) as info:
        mask(trials, text)
    message = str(info.value)
    assert word in message
    assert "\n" not in message
    assert repr(text) in message or word == "unknown column"


def test_unknown_column_and_type_errors(trials):
    with pytest.raises(BadInput, match="unknown column 'nope'.*known columns: trial_id"):
        mask(trials, "nope == 1")
    with pytest.raises(BadInput, match="unknown column 'pd.io.common.os.system'"):
        mask(trials, "pd.io.common.os.system == 0")
    with pytest.raises(BadInput, match="cannot compare column 'status' < 1"):
        mask(trials, "status < 1")


def test_custom_resolver(trials):
    resolve = column_resolver(trials.columns)
    seen = []

    def mine(name):
        seen.append(name)
        return resolve(name)

    expr = parse("`config.eps` > 0 and method == 'l2_ae'")
    assert expr.names == ("config.eps", "method")
    assert mask(trials, expr, resolve=mine).tolist() == [False, False, True, False, False]
    assert seen == ["config.eps", "method"]


def test_issue_exploit_runs_nothing(tmp_path, trials):
    """The --where exploit of issue 16 ran a shell command through pandas' @name."""
    target = tmp_path / "pwned"
    text = f"@pd.io.common.os.system('touch {target}') == 0 or eps >= 0"
    with pytest.raises(BadInput, match="'@pd.io.common.os.system"):
        mask(trials, text)
    for other in (f"__import__('os').system('touch {target}') == 0",
                  f"pd.io.common.os.system('touch {target}') == 0 or eps >= 0"):
        with pytest.raises(BadInput):
            mask(trials, other)
    assert not target.exists()


def test_exploit_through_the_cli(tmp_path):
    """`cryotune query --where` with the exploit: one error line, exit 2, no file."""
    target = tmp_path / "pwned"
    study = tmp_path / "study"
    study.mkdir()
    pd.DataFrame({"trial_id": ["a"], "study": ["s"], "status": ["finished"],
                  "config.eps": [0.1], "test_mse": [0.5]}).to_parquet(study / "trials.parquet")
    proc = subprocess.run(
        [sys.executable, "-m", "cryotune", "query", str(study), "--where",
         f"@pd.io.common.os.system('touch {target}') == 0 or eps >= 0"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert not target.exists()
    proc = subprocess.run(
        [sys.executable, "-m", "cryotune", "query", str(study), "--where", "test_mse.max()>0"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert proc.returncode == 2 and "function call" in proc.stderr, proc.stderr


def test_limits():
    with pytest.raises(BadInput, match="longer than"):
        parse("eps == 1 and " * 1000 + "eps == 1")
    with pytest.raises(BadInput, match="nested|syntax"):
        parse("(" * 300 + "eps == 1" + ")" * 300)
