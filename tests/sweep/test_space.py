"""Trial configs, random and Optuna draws, and Tune's search objects."""

import math

import numpy as np
import optuna

from cryotune.config import TrainConfig
from cryotune.sweep.space import (
    OptunaSpace,
    make_scheduler,
    make_search,
    sample_configs,
    train_config,
    trial_configs,
)
from cryotune.sweep.spec import spec_from_mapping


def _spec(**changes):
    raw = {"name": "t", "dataset": "data/a", "methods": ["l1_ae"], "epochs": 4}
    raw.update(changes)
    return spec_from_mapping(raw)


HPO = dict(
    methods=[{"method": "beta_gan", "alpha": {"uniform": [-1, 1]}, "beta": [0.5, 1],
              "lr_g": {"loguniform": [1e-4, 1e-1]}},
             {"method": "l2_ae", "width": [8, 16]}],
    **{"lambda": {"loguniform": [0.1, 1000]}},
    eps=[0, 0.2], contamination=["A", "B"], seeds=[3, 4], n_trials=60,
)


def test_train_config_round_trips_a_trial_config():
    configs = trial_configs(_spec(methods=[{"method": "beta_gan", "pairs": [[1, -1]]}, "wgan_gp"],
                                  train={"width": 8, "batch_size": 5}, eps=[0.1],
                                  contamination=["C"]), {"a": ("a-1234abcd", 0.05)})
    for c in configs:
        cfg = train_config(c)
        assert isinstance(cfg, TrainConfig)
        assert (cfg.method, cfg.width, cfg.batch_size, cfg.epochs) == (c["method"], 8, 5, 4)
        assert (c["dataset"], c["snr"], c["eps"], c["contamination"]) == ("a-1234abcd", 0.05, 0.1,
                                                                        "C")
    assert (train_config(configs[0]).alpha, train_config(configs[0]).beta) == (1, -1)


def test_random_draws_are_reproducible_and_inside_the_space():
    spec = _spec(search="random", search_seed=7, **HPO)
    a, b = sample_configs(spec), sample_configs(spec)
    assert a == b and len(a) == 60
    assert a != sample_configs(_spec(search="random", search_seed=8, **HPO))
    methods = {c["method"] for c in a}
    assert methods == {"beta_gan", "l2_ae"}
    for c in a:
        assert c["seed"] in (3, 4)
        assert (c["eps"], c["contamination"]) in {(0.0, "none"), (0.2, "A"), (0.2, "B")}
        if c["method"] == "beta_gan":
            assert -1 <= c["alpha"] <= 1 and c["beta"] in (0.5, 1)
            assert 1e-4 <= c["lr_g"] <= 1e-1 and 0.1 <= c["lambda"] <= 1000
        else:
            assert c["width"] in (8, 16) and c["lambda"] is None and c["alpha"] is None
    # log-uniform: the median of log10(lambda) sits near the middle of [-1, 3]
    logs = [math.log10(c["lambda"]) for c in a if c["method"] == "beta_gan"]
    assert abs(np.median(logs) - 1.0) < 1.0


def test_optuna_space_asks_tpe_for_valid_trials():
    spec = _spec(search="optuna", **HPO)
    space = OptunaSpace(spec, {})
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    seen = []
    for _ in range(15):
        trial = study.ask()
        config = space(trial)["t"]
        train_config(config)  # a valid TrainConfig
        seen.append(config)
        study.tell(trial, config["lr_g"] if config["method"] == "beta_gan" else 1.0)
    assert {c["method"] for c in seen} == {"beta_gan", "l2_ae"}
    assert all(-1 <= c["alpha"] <= 1 for c in seen if c["method"] == "beta_gan")


def test_grid_param_space_lists_every_trial():
    spec = _spec(methods=["l1_ae", "l2_ae"], seeds=3)
    space, alg, samples = make_search(spec)
    assert alg is None and samples == 1
    assert list(space["t"]["grid_search"]) == trial_configs(spec)


def test_optuna_search_and_asha_scheduler():
    from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler
    from ray.tune.search.optuna import OptunaSearch

    spec = _spec(search="optuna", scheduler={"type": "asha", "grace_period": 2,
                                             "reduction_factor": 3}, **HPO)
    space, alg, samples = make_search(spec)
    assert space is None and isinstance(alg, OptunaSearch) and samples == 60
    sched = make_scheduler(spec)
    assert isinstance(sched, AsyncHyperBandScheduler)
    # Ray keeps these private; ASHA's early stops are tested end to end in test_run.py
    assert (sched._time_attr, sched._max_t, sched._reduction_factor) == ("epoch", 4, 3)
    assert isinstance(make_scheduler(_spec()), FIFOScheduler)


def test_asha_and_optuna_optimise_the_validation_score_never_test():
    spec = _spec(search="optuna", scheduler={"type": "asha", "grace_period": 1}, **HPO)
    sched, (_, alg, _) = make_scheduler(spec), make_search(spec)
    # Ray keeps these private: what ASHA compares at its rungs and what TPE minimises
    assert (sched._metric, sched._mode) == ("val_mse_median", "min")
    assert (alg.metric, alg.mode) == ("val_mse_median", "min")
    psnr = _spec(search="optuna", select={"metric": "val_psnr"},
                 scheduler={"type": "asha", "grace_period": 1}, **HPO)
    assert (make_scheduler(psnr)._metric, make_scheduler(psnr)._mode) == ("val_psnr", "max")
    assert make_search(psnr)[1].mode == "max"
