"""The Tune trainable on real Ray: results equal to the plain epoch loop, no thread left when stopped."""

from __future__ import annotations

import dataclasses
import json
import threading
from pathlib import Path

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
            Path(config["probes"], f"seed-{config['t']['seed']}.json").write_text(
                json.dumps({"pid": os.getpid(), "threads": names}))

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
