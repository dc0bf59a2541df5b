"""`cryotune inspect` through the real command-line dispatcher, on a real store and real Ray."""

from __future__ import annotations

import numpy as np
import pytest

from cryotune import cli
from cryotune.data.contamination import contaminated_mask
from cryotune.data.store import DatasetWriter


@pytest.fixture
def run(monkeypatch):
    """cli.main with only this command registered, so the test does not depend on the others."""
    monkeypatch.setattr(cli, "COMMANDS", ("inspect",))
    return lambda *argv: cli.main(["inspect", *map(str, argv)])


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    rng = np.random.default_rng(0)
    out = tmp_path_factory.mktemp("inspect") / "toy"
    clean = rng.random((54, 16, 16), dtype=np.float32)
    with DatasetWriter(out, name="toy", kind="simulated", image_shape=(16, 16), pixel_size=2.5,
                       formats=("parquet", "mrc"), shard_rows=16, command="cryotune simulate toy") as w:
        w.add("train", id=np.arange(40), clean=clean[:40], noisy=clean[:40] + 1)
        w.add("test", id=np.arange(40, 50), clean=clean[40:50], noisy=clean[40:50] + 1)
        w.add("val", id=np.arange(50, 54), clean=clean[50:], noisy=clean[50:] + 1)
        w.commit(snr=0.1, snr_measured=0.0987)
    return out


def test_summary_only(run, store, capsys):
    assert run(store, "--no-pipeline") == 0
    out = capsys.readouterr().out
    for text in ("toy (simulated)", "16 x 16 px, 2.5 A/px, float32", "target 0.1, measured 0.0987",
                 "train       40 images in 3 shard(s) of <= 16 rows", "test        10 images in 1 shard(s)",
                 "val         4 images in 1 shard(s)",
                 "formats     parquet, mrc", "command     cryotune simulate toy"):
        assert text in out
    assert "pipeline" not in out


@pytest.mark.parametrize("fmt", ["parquet", "mrc"])
def test_pipeline_preview(run, store, capsys, ray_session, fmt):
    assert run(store, "--format", fmt, "--batch-size", 40, "--eps", 0.5, "--contamination", "B",
               "--seed", 3) == 0
    out = capsys.readouterr().out
    assert f"pipeline    {fmt} shards, materialized" in out
    assert "train batch noisy (40, 1, 16, 16) float32" in out
    hit = int(contaminated_mask(np.arange(40), 0.5, 3).sum())  # the batch is the whole train split
    assert "eps 0.5 B  noisy (40, 1, 16, 16)" in out and f"{hit} of 40 contaminated" in out
    assert "test batch  noisy (10, 1, 16, 16) float32 [1, 2]" in out
    assert "images/s (40 train images in" in out


def test_bad_input_is_one_error_line(run, store, tmp_path, capsys):
    assert run(store, "--eps", 1.5) == 2
    assert "error: contamination rate 1.5 is outside [0, 1], eps" in capsys.readouterr().err
    assert run(tmp_path) == 2
    assert "not a cryotune dataset (no manifest.json)" in capsys.readouterr().err
