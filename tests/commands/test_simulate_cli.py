"""`cryotune simulate` through the real command-line dispatcher."""

from __future__ import annotations

import shlex

import numpy as np
import pytest

from cryotune import cli
from cryotune.data.store import open_dataset


@pytest.fixture
def run(monkeypatch):
    """cli.main with only this command registered, so the test does not depend on the others."""
    monkeypatch.setattr(cli, "COMMANDS", ("simulate",))
    return lambda *argv: cli.main(["simulate", *map(str, argv)])


def test_simulate_writes_a_dataset_and_prints_a_summary(run, tmp_path, capsys):
    out = tmp_path / "ds"
    assert run(out, "--size", 16, "--n-train", 40, "--n-test", 10, "--snr", 0.5,
               "--conformations", 3, "--ctf", "--defocus-min", 5000, "--defocus-max", 9000,
               "--format", "both", "--shard-rows", 16, "--seed", 4) == 0
    stdout = capsys.readouterr().out
    assert f"dataset: {out}" in stdout
    assert "40 train + 4 validation + 10 test pairs of 16x16 px" in stdout
    assert "built-in hinged clamp, 3 conformations" in stdout
    assert "CTF: defocus 5000-9000 A, 300 kV, Cs 2.7 mm, Q0 0.1" in stdout
    ds = open_dataset(out)
    m = ds.manifest
    assert ds.formats == ("parquet", "mrc") and m["conformations"] == 3
    assert m["ctf"]["voltage_kv"] == 300.0 and m["generator"]["seed"] == 4
    argv = shlex.split(m["command"])
    assert argv[:3] == ["cryotune", "simulate", str(out)] and "--ctf" in argv
    assert argv[argv.index("--val-fraction") + 1] == "0.1" and ds.count("val") == 4
    test = ds.read("test", ["id", "defocus"], fmt="mrc")
    np.testing.assert_array_equal(test["id"], np.arange(40, 50))
    assert np.all((test["defocus"][:, 0] >= 5000) & (test["defocus"][:, 0] <= 9000))


@pytest.mark.parametrize("argv, message", [
    (["--size", "8"], "image size 8 px is below 16, --size: pass --size 16 or more"),
    (["--snr", "0"], "SNR 0.0 must be positive, --snr"),
    (["--ctf", "--amplitude-contrast", "1.5"], "--amplitude-contrast"),
    (["--val-fraction", "2"], "validation fraction 2.0 is outside [0, 1], --val-fraction"),
])
def test_bad_options_are_one_line_exit_2(run, tmp_path, capsys, argv, message):
    assert run(tmp_path / "ds", *argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert list(tmp_path.iterdir()) == []


def test_existing_output_and_empty_pdb(run, tmp_path, capsys):
    out = tmp_path / "ds"
    out.mkdir()
    assert run(out, "--size", 16) == 2
    assert "output already exists" in capsys.readouterr().err
    assert list(out.iterdir()) == []
    empty = tmp_path / "empty.pdb"
    empty.write_text("REMARK nothing here\n")
    assert run(tmp_path / "other", "--pdb", empty) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: PDB file has no heavy atoms") and str(empty) in err
    assert not (tmp_path / "other").exists()
