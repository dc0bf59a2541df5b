"""The CPU rule: trial resources fitted so that Ray Data always keeps a whole CPU."""


import pytest

from cryotune.errors import BadConfig
from cryotune.sweep.resources import Fit, fit_resources
from cryotune.sweep.spec import spec_from_mapping


def _spec(**changes):
    raw = {"name": "t", "dataset": "data/a", "methods": ["l1_ae"], "epochs": 4}
    raw.update(changes)
    return spec_from_mapping(raw)


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
