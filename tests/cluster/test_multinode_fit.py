"""A sweep on three 1-CPU nodes gets whole trial CPUs and finishes.

The cluster is a head and two worker nodes of one logical CPU each (``localcluster.py``).
``max_concurrent: 3`` on its 3 CPUs would, fitted to the cluster's total, give trials of
0.6667 CPU: one fits on each node, every node keeps 0.3333 CPU free and no node has the whole
CPU a Ray Data read task needs, so the sweep would wait forever. Fitted node by node, trials
take 1 CPU and 2 run at once, leaving one node free for Ray Data. Tune's own record of each
trial's reservation (its experiment state) must say 1 CPU.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from localcluster import LocalCluster

from cryotune.study.tables import load_study

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
SPACE = REPO / "search_spaces" / "smoke.yaml"
SWEEP_TIMEOUT_S = 480  # a hang shows as this timeout

# Each trial's resource request as Tune saved it in the experiment state (no Ray started).
_TRIAL_RESOURCES = """
import json, sys
from ray import tune
from cryotune.sweep.recorder import study_trial_id
trials = tune.ExperimentAnalysis(sys.argv[1]).trials
print(json.dumps({study_trial_id(t): t.placement_group_factory.required_resources
                  for t in trials}))
"""


def test_one_cpu_nodes_get_whole_cpu_trials_and_the_sweep_finishes(tmp_path):
    storage = tmp_path / "studies"
    with LocalCluster(workers=2, head_cpus=1, worker_cpus=1, cwd=REPO) as cluster:
        nodes = cluster.wait_for_nodes(3)
        assert sorted(n["cpus"] for n in nodes) == [1, 1, 1]
        # l1_ae at eps 0 and 0.2 (A), two seeds: 4 trials, 1 epoch each
        result = cluster.run(
            [sys.executable, "-m", "cryotune", "sweep", str(SPACE), "--address", cluster.address,
             "--storage", str(storage), "--set", "name=onecpu", "--set", "epochs=1",
             "--set", "methods=[{method: l1_ae}]", "--set", "seeds=2",
             "--set", "resources.cpu=1", "--set", "max_concurrent=3"],
            cwd=REPO, timeout_s=SWEEP_TIMEOUT_S)
        resources = json.loads(cluster.python(_TRIAL_RESOURCES, str(storage / "onecpu"))
                               .splitlines()[-1])
    assert "trials get 1 CPU each (asked 1), 2 at once (max_concurrent 3)" in result.stderr
    assert "per node over 3 nodes" in result.stderr
    trials = load_study(storage / "onecpu").trials
    assert len(trials) == 4 and set(trials["status"]) == {"finished"}, trials
    assert (trials["epochs"] == 1).all()
    assert set(trials["node_id"]) <= {n["node_id"] for n in nodes}
    assert sorted(resources) == sorted(trials["trial_id"])
    for trial_id, request in resources.items():
        assert request.get("CPU") == 1.0, (trial_id, request)
