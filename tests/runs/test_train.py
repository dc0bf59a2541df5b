"""One training run from Python and the CLI's path: the same config and seed give the sweep
trial's own history, on a real local Ray."""

import dataclasses

import numpy as np
import pytest

import cryotune
from cryotune.nn.train import Trainer
from cryotune.runs.sweep import run_sweep
from cryotune.study.tables import load_study
from cryotune.sweep.space import train_config, trial_configs

pytestmark = [pytest.mark.usefixtures("ray_session"), pytest.mark.timeout(300)]
SAME = ("train_mse", "g_rec", "val_mse", "val_mse_median", "test_mse", "test_psnr", "test_ssim")


def test_a_run_repeats_its_sweep_trial(make_spec, toy_store, tmp_path):
    spec = make_spec(methods=["l1_ae"], eps=[0.2], contamination=["A"], seeds=[3],
                     resources={"cpu": 1}, max_concurrent=1)
    outcome = run_sweep(spec)
    assert outcome.counts == {"finished": 1}
    swept = load_study(outcome.study).history.sort_values("epoch")
    (trial,) = trial_configs(spec)
    config = dataclasses.replace(train_config(trial), num_threads=1)  # a 1-CPU trial's threads
    seen = []
    history = cryotune.train(config, toy_store, eps=trial["eps"],
                             contamination=trial["contamination"], out=tmp_path / "run",
                             on_epoch=seen.append)
    assert [r["epoch"] for r in history] == [1, 2] and seen == history
    for name in SAME:
        assert [r[name] for r in history] == pytest.approx(list(swept[name]), rel=1e-6), name
    model = Trainer.load_checkpoint(tmp_path / "run" / "model.pt")
    gallery = np.load(tmp_path / "run" / "gallery.npz")
    assert model.epoch == 2 and gallery["denoised"].shape == (4, 16, 16)
    for name in ("history.csv", "checkpoint.pt", "best.pt"):
        assert (tmp_path / "run" / name).is_file(), name


def test_refusals(toy_store, tmp_path):
    config = cryotune.TrainConfig(method="l2_ae", width=4, depth=1, epochs=1)
    with pytest.raises(cryotune.BadInput, match="nothing to resume"):
        cryotune.train(config, toy_store, out=tmp_path / "none", resume=True)
    with pytest.raises(cryotune.BadConfig, match="outside"):
        cryotune.train(config, toy_store, eps=1.5)
