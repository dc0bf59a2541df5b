"""`cryotune ingest` through the real command-line dispatcher, on real files."""

from __future__ import annotations

import shlex

import mrcfile
import numpy as np
import pytest

from cryotune import cli
from cryotune.commands import ingest as command
from cryotune.data.mrc import write_stack
from cryotune.data.store import open_dataset


@pytest.fixture
def run(monkeypatch):
    """cli.main with only this command registered, so the test does not depend on the others."""
    monkeypatch.setattr(cli, "COMMANDS", ("ingest",))
    return lambda *argv: cli.main(["ingest", *map(str, argv)])


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(0)
    clean = rng.random((30, 24, 24)).astype(np.float32)
    noisy = clean + rng.normal(0, 1, clean.shape).astype(np.float32)
    stacks = tmp_path / "Extract" / "job007"
    stacks.mkdir(parents=True)
    write_stack(stacks / "noisy.mrcs", noisy, 1.0)  # header pixel size unset
    refs = write_stack(tmp_path / "refs.mrcs", clean, 1.0)
    job = tmp_path / "Refine3D" / "job010"
    job.mkdir(parents=True)
    rows = "\n".join(f"{i + 1:06d}@Extract/job007/noisy.mrcs 1 {i * 7.0} {i * 3.0 + 1} 15.0"
                     for i in range(30))
    star = job / "run_data.star"
    star.write_text(
        "data_optics\n\nloop_\n_rlnOpticsGroup #1\n_rlnImagePixelSize #2\n1 2.2\n\n"
        "data_particles\n\nloop_\n_rlnImageName #1\n_rlnOpticsGroup #2\n_rlnAngleRot #3\n"
        f"_rlnAngleTilt #4\n_rlnAnglePsi #5\n{rows}\n")
    return {"star": star, "refs": refs, "noisy": noisy, "clean": clean}


def test_ingest_star_file_prints_a_summary(run, files, tmp_path, capsys):
    out = tmp_path / "ds"
    assert run(out, "--particles", files["star"], "--references", files["refs"], "--crop", 16,
               "--format", "both", "--shard-rows", 8, "--test-fraction", 0.2, "--seed", 1) == 0
    stdout = capsys.readouterr().out
    assert f"dataset: {out}" in stdout
    assert "24 train + 6 test pairs of 16x16 px at 2.2 A/px (from particles STAR file)" in stdout
    assert "poses: yes, CTF: no" in stdout
    ds = open_dataset(out)
    assert ds.formats == ("parquet", "mrc") and ds.manifest["has_poses"]
    assert ds.manifest["command"].startswith("cryotune ingest ")
    assert "--crop 16" in ds.manifest["command"]
    clean = files["clean"][:, 4:20, 4:20]
    test = ds.read("test", ["id", "clean"], fmt="mrc")
    want = (clean[test["id"]] - clean.min()) / (clean.max() - clean.min())
    np.testing.assert_allclose(test["clean"], want, atol=2e-6)


def test_pixel_size_override_and_stack_flag(run, files, tmp_path):
    for name, data in (("p.mrc", files["noisy"][:24]), ("c.mrc", files["clean"][:24])):
        with mrcfile.new(tmp_path / name) as m:  # 24 images of 24x24, space group 1: a 'map'
            m.set_data(data)
    args = ["--particles", tmp_path / "p.mrc", "--references", tmp_path / "c.mrc"]
    assert run(tmp_path / "ds", *args, "--pixel-size", 1.3) == 2
    assert run(tmp_path / "ds", *args, "--pixel-size", 1.3, "--stack") == 0
    assert open_dataset(tmp_path / "ds").pixel_size == pytest.approx(1.3)


@pytest.mark.parametrize("extra, message", [
    ([], "no pixel size"),
    (["--pixel-size", "2", "--crop", "25"], "--crop 25 does not fit the 24x24 images"),
])
def test_errors_are_one_line_exit_2_and_leave_nothing(run, files, tmp_path, capsys, extra,
                                                      message):
    before = sorted(tmp_path.iterdir())
    status = run(tmp_path / "ds", "--particles", files["refs"], "--references", files["refs"],
                 *extra)
    err = capsys.readouterr().err.strip()
    assert status == 2
    assert err.startswith("error: ") and message in err and "refs.mrcs" in err
    assert len(err.splitlines()) == 1
    assert sorted(tmp_path.iterdir()) == before


def test_existing_output_needs_overwrite(run, files, tmp_path, capsys):
    args = ["--particles", files["star"], "--references", files["refs"]]
    assert run(tmp_path / "ds", *args) == 0
    assert run(tmp_path / "ds", *args) == 2
    assert "already exists" in capsys.readouterr().err
    assert run(tmp_path / "ds", *args, "--overwrite") == 0


def test_help_examples_parse(monkeypatch):
    monkeypatch.setattr(cli, "COMMANDS", ("ingest",))
    parser = cli.build_parser()
    doc = command.__doc__
    assert doc.splitlines()[0].startswith("Ingest")
    examples = [line.strip() for line in doc.split("Example usage:")[1].splitlines() if line.strip()]
    assert len(examples) == 3
    for line in examples:
        argv = shlex.split(line)
        assert argv[:2] == ["cryotune", "ingest"]
        args = parser.parse_args(argv[1:])
        assert args.particles and args.references
