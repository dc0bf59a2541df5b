"""cryotune bench: finds the repository's benchmarks, lists them, rejects unknown names."""

from __future__ import annotations

import argparse

import pytest

from cryotune.commands import bench
from cryotune.errors import BadInput


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench.add_args(parser)
    return parser.parse_args(argv)


def test_lists_the_scripts_but_not_private_modules(capsys):
    assert bench.main(parse("--list")) == 0
    names = capsys.readouterr().out.split()
    expected = sorted(p.stem for p in bench.benchmarks_dir().glob("*.py") if not p.stem.startswith("_"))
    assert names == expected and "study_scale" in names and "_common" not in names


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(BadInput, match="use one of .*study_scale"):
        bench.main(parse("no_such_bench"))


def test_installed_without_the_repository(monkeypatch, tmp_path):
    import cryotune

    monkeypatch.setattr(cryotune, "__file__", str(tmp_path / "site-packages" / "cryotune" / "__init__.py"))
    with pytest.raises(BadInput, match="clone it"):
        bench.benchmarks_dir()
