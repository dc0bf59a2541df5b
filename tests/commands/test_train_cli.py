"""``cryotune train`` on a tiny real dataset store: outputs, resume, contamination, errors."""

from __future__ import annotations

import csv
import os
import shlex
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from cryotune import cli
from cryotune.commands import train as command
from cryotune.data.contamination import contaminated_mask
from cryotune.data.store import DatasetWriter
from cryotune.nn.train import Trainer

SIZE, N_TRAIN, N_TEST = 16, 60, 20
TIMING = ("epoch_s", "images_per_s")


@pytest.fixture(autouse=True)
def main(monkeypatch):
    """cli.main with only this command registered, so the test does not depend on the others."""
    monkeypatch.setattr(cli, "COMMANDS", ("train",))
    return cli.main


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:SIZE, :SIZE].astype(np.float32)
    n = N_TRAIN + N_TEST
    c = rng.uniform(4, SIZE - 4, size=(n, 2, 1, 1))
    clean = np.exp(-((xx - c[:, 0]) ** 2 + (yy - c[:, 1]) ** 2) / 8).astype(np.float32)
    noisy = (clean + rng.normal(0, 0.3, clean.shape)).astype(np.float32)
    out = tmp_path_factory.mktemp("data") / "blobs"
    with DatasetWriter(out, name="blobs", kind="simulated", image_shape=(SIZE, SIZE),
                       pixel_size=2.0) as w:
        w.add("train", id=np.arange(N_TRAIN), clean=clean[:N_TRAIN], noisy=noisy[:N_TRAIN])
        w.add("test", id=np.arange(N_TRAIN, n), clean=clean[N_TRAIN:], noisy=noisy[N_TRAIN:])
        w.commit()
    return out


def _config(tmp_path, **values):
    cfg = {"method": "beta_gan", "lambda": 10, "width": 4, "epochs": 2, "batch_size": 20,
           "num_threads": 1, "deterministic": True, "gallery": 3, **values}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _history(out):
    with open(out / "history.csv") as f:
        return [{k: float(v) for k, v in row.items() if k not in TIMING} for row in csv.DictReader(f)]


@pytest.fixture
def restore_determinism():
    before = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(before)


def test_train_writes_history_model_and_gallery(main, dataset, tmp_path, capsys,
                                                restore_determinism):
    out = tmp_path / "run"
    assert main(["train", str(_config(tmp_path)), "--dataset", str(dataset),
                 "--out", str(out)]) == 0
    rows = _history(out)
    assert [r["epoch"] for r in rows] == [1, 2]
    trainer = Trainer.load_checkpoint(out / "model.pt")
    assert trainer.epoch == 2 and trainer.config.method == "beta_gan"
    assert [r["test_mse"] for r in rows] == pytest.approx([r["test_mse"] for r in trainer.history])
    gallery = np.load(out / "gallery.npz")
    assert gallery["denoised"].shape == (3, SIZE, SIZE)
    np.testing.assert_allclose(gallery["denoised"], trainer.denoise(gallery["noisy"]), atol=1e-6)
    assert "0 contaminated" in capsys.readouterr().out


def test_resume_continues_exactly(main, dataset, tmp_path, restore_determinism):
    cfg = _config(tmp_path)
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main(["train", str(cfg), "--dataset", str(dataset), "--out", str(straight)]) == 0
    assert main(["train", str(cfg), "--dataset", str(dataset), "--out", str(split),
                 "--epochs", "1"]) == 0
    assert main(["train", str(cfg), "--dataset", str(dataset), "--out", str(split),
                 "--resume"]) == 0
    assert _history(split) == _history(straight)


def test_contamination_count(main, dataset, tmp_path, capsys, restore_determinism):
    cfg = _config(tmp_path, epochs=1, seed=4)
    assert main(["train", str(cfg), "--dataset", str(dataset), "--out", str(tmp_path / "r"),
                 "--eps", "0.3", "--contamination", "C"]) == 0
    expected = int(contaminated_mask(np.arange(N_TRAIN), 0.3, 4).sum())
    assert f"{expected} contaminated, type C, eps 0.3" in capsys.readouterr().out


@pytest.mark.parametrize("values,text", [
    ({"alpha": 1.5}, "key alpha: choose a value in [-1, 1]"),
    ({"lambda": -1}, "key lambda: choose a value in [0, inf]"),
    ({"method": "gan"}, "key method: use one of the listed values"),
    ({"batch_size": 0}, "key batch_size: choose a value in [1, inf]"),
    ({"eps": 2}, "outside [0, 1]"),
])
def test_bad_configs_give_one_error_line(main, dataset, tmp_path, capsys, values, text):
    assert main(["train", str(_config(tmp_path, **values)), "--dataset", str(dataset)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and text in err


def test_python_m_cryotune_exits_2(dataset, tmp_path):
    """The real entry point, every command registered."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "cryotune", "train", str(_config(tmp_path, **{"lambda": -1})),
         "--dataset", str(dataset)], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=120)
    assert result.returncode == 2
    assert result.stderr == (f"error: -1 is outside [0, inf], {tmp_path / 'cfg.yaml'} key lambda: "
                             "choose a value in [0, inf]\n")


def test_help_examples_parse():
    parser = cli.build_parser()
    doc = command.__doc__
    examples = [line.strip() for line in doc.split("Example usage:")[1].splitlines()
                if line.strip()]
    assert len(examples) == 3
    for line in examples:
        argv = shlex.split(line)
        assert argv[:2] == ["cryotune", "train"]
        args = parser.parse_args(argv[1:])
        assert args.config.endswith(".yaml") and args.dataset


def test_existing_run_and_missing_checkpoint_are_refused(main, dataset, tmp_path, capsys):
    out = tmp_path / "run"
    (out).mkdir()
    cfg = str(_config(tmp_path))
    assert main(["train", cfg, "--dataset", str(dataset), "--out", str(out), "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err
    (out / "checkpoint.pt").write_bytes(b"")
    assert main(["train", cfg, "--dataset", str(dataset), "--out", str(out)]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(["train", cfg, "--out", str(out)]) == 2
    assert "no dataset given" in capsys.readouterr().err
