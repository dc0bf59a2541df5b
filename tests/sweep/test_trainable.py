"""The Tune trainable on real Ray: results equal to the plain epoch loop, no thread left when stopped."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from cryotune.config import TrainConfig, to_dict
from cryotune.nn.train import Trainer
from cryotune.sweep.space import train_config
from cryotune.sweep.trainable import HISTORY_FILE, run_trial

pytestmark = [pytest.mark.usefixtures("ray_session"), pytest.mark.timeout(300)]
KEYS = ("d_loss", "g_adv", "g_rec", "train_mse", "test_mse", "test_psnr", "test_ssim")


def trial_config(seed: int, epochs: int) -> dict:
    cfg = TrainConfig(method="beta_gan", width=4, depth=1, batch_size=16, epochs=epochs,
                      seed=seed, gallery=4, checkpoint_every=1)
    return {"dataset": "toy", "snr": 0.5, "eps": 0.2, "contamination": "C", **to_dict(cfg)}


def plain_loop(pipe, trial: dict, epochs: int) -> list[dict]:
    """The trial's epochs with one train_batches call per epoch, in this process."""
    trainer = Trainer(dataclasses.replace(train_config(trial), num_threads=1), pipe.image_shape)
    out = []
    for epoch in range(epochs):
        record = trainer.train_epoch(pipe.train_batches(
            epoch, batch_size=16, eps=trial["eps"], kind=trial["contamination"], seed=trial["seed"]))
        record.update(trainer.evaluate(pipe.test_batches(batch_size=16)))
        out.append(record)
    return out


def test_a_stopped_trial_leaves_no_thread_and_results_match_the_plain_loop(toy_store, tmp_path):
    from ray import tune

    from cryotune.data.pipeline import DataPipeline

    pipe = DataPipeline.from_store(toy_store)
    probes = tmp_path / "probes"
    probes.mkdir()

    def probed(config, **kwargs):  # travels by value; notes the threads left when the trial ends
        import os

        try:
            run_trial(config, **kwargs)
        finally:
            names = [t.name for t in threading.enumerate()]
            probe = Path(config["probes"], f"seed-{config['t']['seed']}.json")
            Path(f"{probe}.tmp").write_text(json.dumps({"pid": os.getpid(), "threads": names}))
            os.replace(f"{probe}.tmp", probe)  # whole, for the driver polling for it

    trials = [trial_config(0, epochs=4), trial_config(1, epochs=2)]
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(probed, pipelines={"toy": pipe},
                                                 gallery={"toy": pipe.test_arrays()["noisy"][:4]},
                                                 threads=1, gpu_share=0.0), {"cpu": 1}),
        param_space={"t": tune.grid_search(trials), "probes": str(probes)},
        tune_config=tune.TuneConfig(max_concurrent_trials=1, reuse_actors=True),
        # stops the 4-epoch trial after its second report, as ASHA would at a rung
        run_config=tune.RunConfig(storage_path=str(tmp_path / "tune"), verbose=0,
                                  stop={"training_iteration": 2}))
    results = {r.config["t"]["seed"]: r for r in tuner.fit()}
    assert all(r.error is None for r in results.values())

    # a stopped trial's actor writes its probe as it unwinds, which may be after fit() returns
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not all(
            (probes / f"seed-{seed}.json").exists() for seed in (0, 1)):
        time.sleep(0.1)
    seen = {seed: json.loads((probes / f"seed-{seed}.json").read_text()) for seed in (0, 1)}
    assert seen[0]["pid"] == seen[1]["pid"]  # the second trial ran in the stopped one's actor
    for probe in seen.values():
        left = [n for n in probe["threads"] if n.startswith("cryotune-prefetch") or n == "iter_threaded"]
        assert left == []

    for seed, trial in enumerate(trials):  # bit for bit the plain loop's numbers
        with results[seed].checkpoint.as_directory() as folder:
            history = json.loads(Path(folder, HISTORY_FILE).read_text())
        assert [r["epoch"] for r in history] == [1, 2]
        for got, expected in zip(history, plain_loop(pipe, trial, 2), strict=True):
            assert {k: got[k] for k in KEYS} == {k: expected[k] for k in KEYS}


def test_a_trial_reports_its_best_validation_epoch_and_keeps_its_checkpoint(toy_store, tmp_path):
    from ray import tune

    from cryotune.data.pipeline import DataPipeline
    from cryotune.data.store import open_dataset
    from cryotune.nn.train import BEST_NAME

    class Reports(tune.Callback):  # every report the driver receives, per trial seed
        seen: dict = {}

        def on_trial_result(self, iteration, trials, trial, result, **info):
            self.seen.setdefault(trial.config["t"]["seed"], []).append(result)

    pipe = DataPipeline.from_store(toy_store)
    good = {**trial_config(0, epochs=3), "method": "l1_ae"}
    diverging = {**trial_config(1, epochs=3), "lr_g": 1e30, "lr_d": 1e30}
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(run_trial, pipelines={"toy": pipe},
                                                 gallery={"toy": pipe.test_arrays()["noisy"][:4]},
                                                 threads=1, gpu_share=0.0), {"cpu": 1}),
        param_space={"t": tune.grid_search([good, diverging])},
        tune_config=tune.TuneConfig(max_concurrent_trials=1),
        run_config=tune.RunConfig(storage_path=str(tmp_path / "tune"), verbose=0,
                                  callbacks=[Reports()]))
    results = {r.config["t"]["seed"]: r for r in tuner.fit()}
    assert all(r.error is None for r in results.values())

    result = results[0]
    last = result.metrics
    with result.checkpoint.as_directory() as folder:
        history = json.loads(Path(folder, HISTORY_FILE).read_text())
        best = Trainer.load_checkpoint(Path(folder, BEST_NAME))
    assert [r["epoch"] for r in history] == [1, 2, 3]
    for record in history:  # validation (contaminated), oracle (clean) and test, every epoch
        assert {"val_mse", "val_mse_median", "oracle_val_mse", "test_mse", "test_mse_median"} <= set(record)
        assert record["val_images"] == open_dataset(toy_store).count("val") == 10
    medians = [r["val_mse_median"] for r in history]
    best_epoch = int(np.argmin(medians)) + 1
    assert last["best_epoch"] == best_epoch and last["select_score"] == min(medians)
    for key in ("test_mse", "test_psnr", "test_ssim"):
        assert last[f"{key}_at_best"] == history[best_epoch - 1][key]
    assert best.epoch == best_epoch  # best.pt is that epoch's checkpoint
    reports = Reports.seen[0]  # each report carries its epoch's validation and test scores
    assert [r["val_mse_median"] for r in reports] == medians
    assert [r["test_mse"] for r in reports] == [r["test_mse"] for r in history]
    assert [r["best_epoch"] for r in reports] == [int(np.argmin(medians[:e])) + 1 for e in (1, 2, 3)]
    test = open_dataset(toy_store).read("test", ["noisy", "clean"])
    noisy_mse = np.square(test["noisy"].astype(np.float64) - test["clean"]).mean(axis=(1, 2)).mean()
    assert last["noisy_test_mse"] == pytest.approx(noisy_mse, rel=1e-9)
    assert last["diverged"] == (last["test_mse_at_best"] > noisy_mse)

    gone = results[1].metrics  # NaN losses: one last report, diverged, scores NaN
    assert gone["diverged"] is True and gone["epoch"] == 1 and "non-finite" in gone["error"]
    assert np.isnan(gone["test_mse"]) and np.isnan(gone["val_mse_median"]) and gone["best_epoch"] == 0
