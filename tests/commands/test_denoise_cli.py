"""``cryotune denoise`` on real MRC stacks and RELION STAR files written with mrcfile/starfile."""

from __future__ import annotations

import shlex
import tracemalloc

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile
import torch

from cryotune import cli
from cryotune.commands import denoise as command
from cryotune.config import TrainConfig
from cryotune.nn.train import Trainer

SIZE = 16


@pytest.fixture(autouse=True)
def run(monkeypatch):
    """cli.main with only this command registered, so the test does not depend on the others."""
    monkeypatch.setattr(cli, "COMMANDS", ("denoise",))
    return lambda *argv: cli.main(["denoise", *map(str, argv)])


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A briefly trained narrow l2 autoencoder (so batch norm has running statistics)."""
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.random((40, 1, SIZE, SIZE), dtype=np.float32))
    trainer = Trainer(TrainConfig(method="l2_ae", width=4, num_threads=1), (SIZE, SIZE))
    trainer.train_epoch(zip((x + 0.1).split(20), x.split(20), strict=True))
    path = tmp_path_factory.mktemp("model") / "model.pt"
    trainer.save_checkpoint(path)
    return path, trainer


def _write_mrcs(path, images, voxel):
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(images.astype(np.float32))
        mrc.set_image_stack()
        mrc.voxel_size = voxel
    return path


def _images(n, seed, size=SIZE):
    return np.random.default_rng(seed).normal(0.5, 0.3, (n, size, size)).astype(np.float32)


def test_mrc_round_trip(run, model, tmp_path):
    path, trainer = model
    images = _images(23, 1)
    src = _write_mrcs(tmp_path / "in.mrcs", images, 1.7)
    assert run("--model", path, "--input", src, "--output", tmp_path / "out.mrcs",
               "--batch-size", 5, "--device", "cpu") == 0
    with mrcfile.open(tmp_path / "out.mrcs") as mrc:
        assert float(mrc.voxel_size.x) == pytest.approx(1.7)
        assert mrc.header.ispg == 0
        np.testing.assert_allclose(mrc.data, trainer.denoise(images), atol=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mrcs", "out.mrcs"]  # no temporaries


def test_star_round_trip_keeps_columns_and_order(run, model, tmp_path):
    path, trainer = model
    a, b = _images(10, 2), _images(8, 3)
    (tmp_path / "Extract").mkdir()
    _write_mrcs(tmp_path / "Extract" / "a.mrcs", a, 2.2)
    _write_mrcs(tmp_path / "Extract" / "b.mrcs", b, 2.2)
    order = [("a", 3), ("b", 1), ("a", 10), ("b", 8), ("a", 1), ("b", 2), ("a", 5)]
    particles = pd.DataFrame({
        "rlnImageName": [f"{i:06d}@Extract/{s}.mrcs" for s, i in order],
        "rlnOpticsGroup": [1] * len(order),
        "rlnAngleRot": np.arange(len(order)) * 10.0,
        "rlnDefocusU": 15000.0 + np.arange(len(order)),
    })
    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"],
                           "rlnImagePixelSize": [2.2], "rlnVoltage": [300.0]})
    src = tmp_path / "run_data.star"
    starfile.write({"optics": optics, "particles": particles}, src)
    out = tmp_path / "den" / "deeper" / "denoised.star"  # missing folders are created
    assert run("--model", path, "--input", src, "--output", out, "--batch-size", 3) == 0

    written = starfile.read(out)
    got = written["particles"]
    assert list(got["rlnImageName"]) == [f"{i:06d}@denoised.mrcs" for i in range(1, 8)]
    for col in ("rlnAngleRot", "rlnDefocusU", "rlnOpticsGroup"):
        np.testing.assert_allclose(got[col], particles[col], rtol=1e-6)
    assert float(written["optics"]["rlnImagePixelSize"][0]) == pytest.approx(2.2)
    expected = np.stack([{"a": a, "b": b}[s][i - 1] for s, i in order])
    with mrcfile.open(out.with_suffix(".mrcs")) as mrc:
        assert float(mrc.voxel_size.x) == pytest.approx(2.2)
        np.testing.assert_allclose(mrc.data, trainer.denoise(expected), atol=1e-5)


def _peak(run, model_path, tmp_path, n):
    src = _write_mrcs(tmp_path / f"in{n}.mrcs", _images(n, 4), 1.0)
    tracemalloc.start()
    try:
        assert run("--model", model_path, "--input", src, "--output", tmp_path / f"o{n}.mrcs",
                   "--batch-size", 50) == 0
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_stays_bounded_by_the_batch(run, model, tmp_path):
    small, large = 200, 2000
    _peak(run, model[0], tmp_path, 100)  # first use: imports and caches
    grown = _peak(run, model[0], tmp_path, large) - _peak(run, model[0], tmp_path, small)
    extra = 2 * (large - small) * SIZE * SIZE * 4  # input and output stacks
    assert grown < 0.05 * extra, (grown, extra)


def test_refuses_another_image_size(run, model, tmp_path, capsys):
    src = _write_mrcs(tmp_path / "big.mrcs", _images(3, 5, size=32), 1.0)
    assert run("--model", model[0], "--input", src, "--output", tmp_path / "o.mrcs") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "trained on 16x16 images, the stack holds 32x32" in err
    assert not (tmp_path / "o.mrcs").exists()


@pytest.mark.parametrize("content", [b"PK\x03\x04 not a checkpoint", "state_dict"])
def test_refuses_a_foreign_model_file(run, tmp_path, capsys, content):
    path = tmp_path / "model.pt"
    if content == "state_dict":
        torch.save(torch.nn.Conv2d(1, 1, 3).state_dict(), path)
    else:
        path.write_bytes(content)
    src = _write_mrcs(tmp_path / "in.mrcs", _images(2, 6), 1.0)
    assert run("--model", path, "--input", src, "--output", tmp_path / "o.mrcs") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: not a cryotune model file") and err.count("\n") == 1


def test_refuses_mismatched_or_clobbering_outputs(run, model, tmp_path, capsys):
    src = _write_mrcs(tmp_path / "in.mrcs", _images(2, 7), 1.0)
    assert run("--model", model[0], "--input", src, "--output", tmp_path / "o.star") == 2
    assert "needs an .mrcs output" in capsys.readouterr().err
    assert run("--model", model[0], "--input", src, "--output", src) == 2
    assert "overwrite the input" in capsys.readouterr().err


def test_help_examples_parse():
    parser = cli.build_parser()
    examples = [line.strip() for line in command.__doc__.split("Example usage:")[1].splitlines()
                if line.strip()]
    assert len(examples) >= 3
    for line in examples:
        argv = shlex.split(line)
        assert argv[:2] == ["cryotune", "denoise"]
        args = parser.parse_args(argv[1:])
        assert args.model and args.input and args.output


def _two_models(model, tmp_path):
    """The fixture's model and the same trained one epoch further (distinct outputs)."""
    path, _ = model
    later = Trainer.load_checkpoint(path)
    x = torch.from_numpy(np.random.default_rng(5).random((40, 1, SIZE, SIZE), dtype=np.float32))
    later.train_epoch(zip((x + 0.1).split(20), x.split(20), strict=True))
    later_path = tmp_path / "later.pt"
    later.save_checkpoint(later_path)
    return path, later_path


def test_a_study_applies_its_best_trial_at_its_best_validation_epoch(run, model, tmp_path, caplog,
                                                                     capsys):
    import shutil

    from cryotune.study.store import StudyStore

    first, later = _two_models(model, tmp_path)
    store = StudyStore(tmp_path / "studies", "s")
    for tid, score, test, best in (("a", 0.01, 0.009, first), ("b", 0.02, 0.001, later)):
        folder = tmp_path / "ckpt" / tid
        folder.mkdir(parents=True)
        shutil.copy(later, folder / "checkpoint.pt")   # the last epoch
        shutil.copy(best, folder / "best.pt")          # the best validation epoch
        store.record_trial({"trial_id": tid, "status": "finished",
                            "checkpoint": str(folder / "checkpoint.pt"), "best_epoch": 1,
                            "select_metric": "val_mse_median", "select_score": score,
                            "test_mse_at_best": test, "noisy_test_mse": 0.1,
                            "metrics": {"test_mse": test}})
    src = _write_mrcs(tmp_path / "in.mrcs", _images(6, 2), 1.0)
    out = tmp_path / "out.mrcs"
    assert run("--model", tmp_path / "studies" / "s", "--input", src, "--output", out,
               "--device", "cpu") == 0
    with mrcfile.open(out) as m:  # trial a (validation), at its best.pt (not its last, b's)
        np.testing.assert_allclose(m.data, Trainer.load_checkpoint(first).denoise(_images(6, 2)),
                                   atol=1e-6)
        assert not np.allclose(m.data, Trainer.load_checkpoint(later).denoise(_images(6, 2)))

    # a study recorded before validation selection: no trial is chosen; a named one applies
    # its last checkpoint, with a warning
    (tmp_path / "ckpt" / "a" / "best.pt").unlink()
    old = StudyStore(tmp_path / "studies", "old")
    old.record_trial({"trial_id": "a", "status": "finished", "metrics": {"test_mse": 0.001},
                      "checkpoint": str(tmp_path / "ckpt" / "a" / "checkpoint.pt")})
    assert run("--model", tmp_path / "studies" / "old", "--input", src, "--output", out) == 2
    assert "predates validation selection; no trial is selected" in capsys.readouterr().err
    assert run("--model", tmp_path / "studies" / "old", "--trial", "a", "--input", src,
               "--output", out, "--device", "cpu") == 0
    assert "has no best.pt" in caplog.text
    with mrcfile.open(out) as m:
        np.testing.assert_allclose(m.data, Trainer.load_checkpoint(later).denoise(_images(6, 2)),
                                   atol=1e-6)
