"""Hostile and careless input to query/status: one error line, never a traceback or a side effect."""

from __future__ import annotations

import resource
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cryotune.cli import main


@pytest.fixture()
def study(tmp_path):
    """A tiny study whose string columns hold nulls."""
    path = tmp_path / "study"
    path.mkdir()
    pq.write_table(pa.table({
        "trial_id": pa.array(["t1", "t2", "t3"], pa.string()),
        "study": pa.array(["s", "s", None], pa.string()),
        "status": pa.array(["finished", None, "finished"], pa.string()),
        "config.method": pa.array(["l2_ae", None, "beta_gan"], pa.string()),
        "config.eps": [0.0, 0.1, None],
        "test_mse": [0.5, 0.25, None],
        "error": pa.array([None, None, "boom"], pa.string()),
    }), path / "trials.parquet")
    return path


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_agg_refuses_names_outside_the_list(study, capsys):
    assert main(["query", str(study), "--by", "method", "--agg", "sum,__import__"]) == 2
    assert "unknown aggregation '__import__'" in _one_error_line(capsys)
    assert main(["query", str(study), "--by", "method", "--agg", "sum,max"]) == 0


@pytest.mark.parametrize("where, word", [
    ("test_mse.max()>0", "function call"),
    ("__import__('os').system('true') == 0", "function call"),
    ("@pd.io.common.os.system('true') == 0 or eps >= 0", "'@pd.io.common.os.system"),
])
def test_where_outside_the_grammar(study, capsys, where, word):
    assert main(["query", str(study), "--where", where]) == 2
    assert word in _one_error_line(capsys)


def test_where_exploit_creates_nothing(study, tmp_path, capsys):
    target = tmp_path / "pwned"
    code = main(["query", str(study), "--where",
                 f"@pd.io.common.os.system('touch {target}') == 0 or eps >= 0"])
    assert code == 2 and not target.exists()


def test_where_on_null_columns(study, capsys):
    assert main(["query", str(study), "--where", "status == 'finished' and method != 'x'",
                 "--format", "csv"]) == 0
    out = capsys.readouterr().out
    assert [ln.split(",")[0] for ln in out.splitlines()[1:]] == ["t1", "t3"]  # t2: null status


@pytest.mark.parametrize("extra", [[], ["--all"], ["--by", "label"], ["--by", "status,method"],
                                   ["--format", "json"]])
def test_null_strings_do_not_crash(study, capsys, extra):
    assert main(["query", str(study), *extra]) == 0
    assert "Traceback" not in capsys.readouterr().err


def test_out_creates_parent_folders(study, tmp_path, capsys):
    for fmt in ("csv", "table", "parquet"):
        out = tmp_path / "missing" / fmt / f"x.{fmt}"
        assert main(["query", str(study), "--format", fmt, "--out", str(out)]) == 0
        assert out.stat().st_size > 0
    frame = pd.read_parquet(tmp_path / "missing" / "parquet" / "x.parquet")
    assert list(frame["trial_id"]) == ["t1", "t2", "t3"]


@pytest.mark.parametrize("command", ["query", "status"])
def test_tagged_spec_is_one_line(study, capsys, command):
    (study / "spec.yaml").write_text("name: s\nx: !!python/object/apply:os.system ['true']\n")
    assert main([command, str(study)]) == 2
    line = _one_error_line(capsys)
    assert "YAML tag !!python/object/apply:os.system is not allowed" in line
    assert "spec.yaml:2" in line


def test_alias_bomb_spec_is_refused_quickly(study):
    """A billion-laughs spec costs `query` and `status` no more memory than a plain one: the
    peak (VmHWM, the program's own) is the interpreter, pandas and pyarrow, not the bomb."""
    script = ("import resource, sys\nfrom cryotune.cli import main\ncode = main(sys.argv[1:])\n"
              "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0]\n"
              "print(int(hwm.split()[1]) / 1024)\nsys.exit(code)\n")  # this program's own peak

    def peak_mb(command: str) -> tuple[float, subprocess.CompletedProcess]:
        proc = subprocess.run([sys.executable, "-c", script, command, str(study)],
                              capture_output=True, text=True, timeout=120,
                              preexec_fn=lambda: resource.setrlimit(
                                  resource.RLIMIT_AS, (3 << 30, 3 << 30)))
        return float(proc.stdout.split()[-1]), proc

    plain = {command: peak_mb(command)[0] for command in ("query", "status")}
    levels = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    levels += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    (study / "spec.yaml").write_text("\n".join(levels) + "\n")
    for command in ("query", "status"):
        peak, proc = peak_mb(command)
        assert proc.returncode == 2, proc.stderr
        assert "YAML aliases expand to more than" in proc.stderr
        assert peak < plain[command] + 50, (peak, plain[command])  # MB


def test_report_spec_block_keeps_unicode():
    from cryotune.report.tables import overview
    from cryotune.study.tables import Study

    trials = pd.DataFrame({"trial_id": ["t1"], "study": ["s"], "status": ["finished"],
                           "config.method": ["l2_ae"], "test_mse": [np.float64(0.5)]})
    html = overview(Study(trials=trials, specs={"s": {"name": "étude ℓ1 ✓"}}, uris=["s"]), trials)
    assert "étude ℓ1 ✓" in html and "\\u" not in html
