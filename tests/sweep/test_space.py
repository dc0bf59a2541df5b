"""Trial configs, random and Optuna draws, Tune's search objects and the CPU rule."""

import math

import numpy as np
import optuna
import pytest

from cryotune.config import TrainConfig
from cryotune.errors import BadConfig
from cryotune.sweep.space import (
    Fit,
    OptunaSpace,
    fit_resources,
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


@pytest.mark.parametrize(
    ("cpus", "gpus", "cpu", "gpu", "limit", "expected"),
    [
        # total CPUs, GPUs, asked cpu, gpu, max_concurrent -> (cpu, concurrent, adjusted)
        (2, 0, 1, 0, 2, (0.5, 2, True)),  # max_concurrent = CPU count: half a core each
        (2, 0, 1, 0, None, (1.0, 1, False)),
        (16, 0, 2, 0, None, (2.0, 7, False)),  # floor(15 / 2)
        (16, 0, 4, 0, 4, (3.0, 4, True)),  # 15 / 4 = 3.75 -> 3 (Ray: whole numbers above 1)
        (3, 0, 1, 0, 4, (0.5, 4, True)),
        (1, 0, 1, 0, None, (0.5, 1, True)),  # one core: half for Data
        (16, 1, 2, 0.25, None, (2.0, 4, False)),  # four trials fill the GPU
        (16, 2, 1, 0.5, 2, (1.0, 2, False)),
        (16, 1, 1, 0.2, None, (1.0, 5, False)),  # 5 per GPU (1 // 0.2 is 4.0 in floats)
    ],
)
def test_cpu_rule_keeps_a_core_for_ray_data(cpus, gpus, cpu, gpu, limit, expected):
    spec = _spec(resources={"cpu": cpu, "gpu": gpu}, max_concurrent=limit)
    fit = fit_resources(spec, cpus, gpus)
    assert (fit.cpu, fit.concurrent, fit.adjusted) == expected
    assert fit.cpu * fit.concurrent <= max(cpus - 1, cpus / 2)
    assert fit.threads == max(1, int(fit.cpu))


def test_gpu_trials_without_a_gpu_fail_before_start():
    with pytest.raises(BadConfig) as info:
        fit_resources(_spec(resources={"gpu": 0.25}), 8, 0)
    assert info.value.where == "resources.gpu" and "--scale cpu" in info.value.fix
    assert "autoscaling" in info.value.fix  # resources are read when the sweep starts
    with pytest.raises(BadConfig) as info:
        fit_resources(_spec(resources={"gpu": 0.25}), [4, 4], [0, 0])
    assert info.value.where == "resources.gpu"


def test_one_node_among_cpu_less_nodes_keeps_the_one_node_rule():
    # a head started with --num-cpus=0 runs no trial and no Ray Data task: one node counts
    spec = _spec(resources={"cpu": 1}, max_concurrent=2)
    assert fit_resources(spec, [0, 2], [0, 0]) == fit_resources(spec, 2, 0)
    assert fit_resources(spec, [0, 2]).nodes == 1


def _free_whole_cpu_wherever_tune_puts_them(nodes, fit):
    """Every placement of fit.concurrent trials that the nodes can hold leaves some node a
    whole free CPU (checked by brute force over the per-node trial counts)."""
    import itertools

    cpus, gpus = zip(*nodes, strict=True)
    room = [min(int(c // fit.cpu), int(g / fit.gpu + 1e-9) if fit.gpu else 99)
            for c, g in nodes]
    placements = [k for k in itertools.product(*(range(r + 1) for r in room))
                  if sum(k) == fit.concurrent]
    assert placements, "the trials do not fit at all"
    return all(max(c - n * fit.cpu for c, n in zip(cpus, k, strict=True)) >= 1
               for k in placements)


@pytest.mark.parametrize(
    ("cpus", "gpus", "cpu", "gpu", "limit", "expected"),
    [
        # node CPUs, node GPUs, asked cpu, gpu, max_concurrent -> (cpu, concurrent, adjusted)
        # three 1-CPU nodes: half CPUs would leave every node 0.5 free; whole ones, one node 1
        ([1, 1, 1], [0, 0, 0], 0.5, 0, None, (1.0, 2, True)),
        ([1, 1, 1], [0, 0, 0], 1, 0, 3, (1.0, 2, False)),  # one node: (0.66 CPU, 3)
        ([1, 1, 1], [0, 0, 0], 0.5, 0, 4, (1.0, 2, True)),
        # mixed nodes, 4 + 1 CPUs
        ([4, 1], [0, 0], 1, 0, None, (1.0, 4, False)),  # 4 + 1 trials, one fewer
        ([4, 1], [0, 0], 2, 0, None, (2.0, 2, False)),  # the 1-CPU node stays free for Data
        ([4, 1], [0, 0], 4, 0, None, (4.0, 1, False)),
        ([4, 1], [0, 0], 4, 0, 3, (1.0, 3, True)),  # max_concurrent lowers whole CPUs
        ([4, 1], [0, 0], 0.5, 0, 8, (1.0, 4, True)),  # ... never below 1; 4 at once, not 8
        ([3, 3], [0, 0], 2, 0, None, (2.0, 2, False)),  # each node keeps a CPU: none dropped
        # GPU nodes: 0.25 GPU packs 4 trials per GPU
        ([8, 8], [1, 1], 1, 0.25, None, (1.0, 8, False)),
        ([8, 8], [1, 1], 2, 0.25, None, (2.0, 7, False)),  # 4 + 4 would fill both nodes' CPUs
        ([0, 8, 8], [0, 1, 1], 2, 0.25, None, (2.0, 7, False)),  # a 0-CPU head counts no node
        ([8, 2], [0, 1], 1, 0.25, None, (1.0, 2, False)),  # GPU trials fit the GPU node's CPUs
        ([8, 8], [1, 1], 0.5, 0.2, None, (1.0, 10, True)),  # 5 per GPU (1 // 0.2 is 4.0)
    ],
)
def test_several_nodes_give_whole_trial_cpus_counted_node_by_node(cpus, gpus, cpu, gpu, limit,
                                                                  expected):
    spec = _spec(resources={"cpu": cpu, "gpu": gpu}, max_concurrent=limit)
    fit = fit_resources(spec, cpus, gpus)
    assert (fit.cpu, fit.concurrent, fit.adjusted) == expected
    assert fit.gpu == gpu and fit.threads == int(fit.cpu) and fit.nodes == sum(c > 0 for c in cpus)
    assert "per node" in fit.rule and "whole" in fit.rule
    nodes = [(c, g) for c, g in zip(cpus, gpus, strict=True) if c > 0]
    assert _free_whole_cpu_wherever_tune_puts_them(nodes, fit)


def test_the_old_cluster_total_rule_leaves_no_node_a_whole_cpu():
    # what the check above catches: 0.5-CPU trials, 4 at once, on three 1-CPU nodes
    old = Fit(cpu=0.5, gpu=0, concurrent=4, adjusted=True, threads=1, nodes=3)
    assert not _free_whole_cpu_wherever_tune_puts_them([(1, 0)] * 3, old)


def test_one_node_rule_is_named_without_per_node():
    fit = fit_resources(_spec(max_concurrent=2), 2)
    assert fit.nodes == 1 and fit.rule == "trial CPUs x trials <= CPUs - 1: Ray Data keeps a core"


@pytest.mark.parametrize(("cpus", "gpus", "resources", "where", "words"), [
    ([4, 2], [0, 0], {"cpu": 8}, "resources.cpu", ["8 CPUs", "largest node of 2 has 4",
                                                   "--set resources.cpu=4"]),
    ([8, 2], [0, 1], {"cpu": 4, "gpu": 0.5}, "resources.cpu", ["4 CPUs", "largest GPU node",
                                                               "has 2", "resources.cpu=2"]),
    ([2, 2], [1, 1], {"gpu": 2}, "resources.gpu", ["2 GPUs", "largest node has 1"]),
    (16, 1, {"gpu": 2}, "resources.gpu", ["2 GPUs", "largest node has 1"]),  # one node too
])
def test_a_trial_larger_than_any_node_is_refused_with_the_fix(cpus, gpus, resources, where,
                                                              words):
    with pytest.raises(BadConfig) as info:
        fit_resources(_spec(resources=resources), cpus, gpus)
    assert info.value.where == where
    for word in words:
        assert word in str(info.value), str(info.value)


def test_no_node_with_cpus_is_refused():
    with pytest.raises(BadConfig) as info:
        fit_resources(_spec(), [0], [1])
    assert "no node with CPUs" in info.value.what and "autoscaling" in info.value.fix


def test_study_paths_for_folders_and_uris(tmp_path, monkeypatch):
    from cryotune.sweep.run import study_paths

    monkeypatch.chdir(tmp_path)
    assert study_paths(_spec(storage="studies")) == (str(tmp_path / "studies"),
                                                      str(tmp_path / "studies" / "t"))
    assert study_paths(_spec(storage=f"file://{tmp_path}/s"))[1] == f"{tmp_path}/s/t"
    assert study_paths(_spec(storage="s3://lab/studies/")) == ("s3://lab/studies/",
                                                               "s3://lab/studies/t")
