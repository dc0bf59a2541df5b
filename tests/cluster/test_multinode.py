"""A real two-node Ray cluster on this machine runs the smoke sweep unchanged.

The head (3 logical CPUs, dashboard on 127.0.0.1) and one worker node (2 CPUs) are
``ray start`` child processes that this module owns (``localcluster.py``), with token
authentication on. The sweep runs once through ``--address`` and once through
``ray job submit``; its trial rows must name both nodes, its tables must be complete, and its
two storage forms (a plain shared folder and a ``file://`` URI) must read back and render.
The last test kills the worker node mid-sweep: the sweep finishes on the head, the trials that
were on the worker retried. Only the processes this module started are ever stopped.

Trials ask for whole CPUs (a 1-CPU Ray Data task cannot use two half CPUs on two nodes), and
some node always keeps a whole CPU for Ray Data, the head included once it is alone. Where a
test needs trials on a given node, it holds some of the head's CPUs with an idle actor.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from localcluster import RAY, LocalCluster

from cryotune.study.tables import load_study

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
SPACE = REPO / "search_spaces" / "smoke.yaml"
# The smallest smoke sweep that still puts trials on both nodes: l1_ae, eps 0 and 0.2 (A),
# two seeds = 4 trials.
SHRINK = ["--set", "methods=[{method: l1_ae}]", "--set", "seeds=2"]
N_TRIALS = 4
SWEEP_TIMEOUT_S = 480
SWEEP = [sys.executable, "-m", "cryotune", "sweep"]

# One 1-CPU task pinned to each alive node; each reports the node it ran on and its
# ancestor pids, so the test can tell which `ray start` process tree ran it.
_TASK_ON_EACH_NODE = """
import json, os, sys
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from cryotune._ray import init_ray

def ancestors():
    pid, out = os.getpid(), []
    while pid > 1:
        with open(f"/proc/{pid}/stat") as f:
            pid = int(f.read().rsplit(")", 1)[1].split()[1])
        out.append(pid)
    return out

@ray.remote(num_cpus=1)
def where():
    return ray.get_runtime_context().get_node_id(), ancestors()

init_ray(address=sys.argv[1])
nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
refs = [where.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=False)).remote()
        for n in nodes]
print(json.dumps({"targets": nodes, "ran": ray.get(refs, timeout=120)}))
"""


def sweep_args(name: str, storage: str, *, epochs: int = 1, concurrent: int = 2) -> list[str]:
    return [*SWEEP, str(SPACE), "--storage", storage, "--set", f"name={name}",
            "--set", f"epochs={epochs}", "--set", f"max_concurrent={concurrent}", *SHRINK]


def check_complete(study_uri: str, epochs: int):
    """The study's tables hold every trial, finished, with one history row per epoch, and
    every trial's gallery (read by the driver from the trial's last checkpoint)."""
    study = load_study(study_uri)
    trials, history = study.trials, study.history
    assert len(trials) == N_TRIALS and trials["trial_id"].is_unique
    assert set(trials["status"]) == {"finished"}, trials[["trial_id", "status", "error"]]
    assert (trials["epochs"] == epochs).all()
    assert trials["test_mse"].between(0, 1).all()
    assert set(trials["config.method"]) == {"l1_ae"}
    assert sorted(trials["config.eps"]) == [0, 0, 0.2, 0.2]
    assert sorted(trials["config.seed"]) == [0, 0, 1, 1]
    per_trial = history.groupby("trial_id")["epoch"].apply(sorted).to_dict()
    assert per_trial == {t: list(range(1, epochs + 1)) for t in trials["trial_id"]}
    (name,), (key,) = set(trials["study"]), set(trials["config.dataset"])
    reference = study.dataset_array(name, key, "gallery_noisy")
    assert reference is not None and reference.shape[1:] == (16, 16)
    for trial_id in trials["trial_id"]:
        gallery = study.array(name, trial_id, "gallery")
        assert gallery is not None and gallery.shape == reference.shape, trial_id
        assert np.isfinite(gallery).all()
    return trials


@pytest.fixture(scope="module")
def cluster():
    with LocalCluster(workers=1, head_cpus=3, worker_cpus=2, dashboard=True, cwd=REPO) as c:
        yield c


@pytest.fixture(scope="module")
def node_ids(cluster):
    nodes = cluster.wait_for_nodes(2)
    assert len(nodes) == 2 and sum(n["head"] for n in nodes) == 1
    return {("head" if n["head"] else "worker"): n["node_id"] for n in nodes}


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    """Two storage forms: a plain folder every node sees, and a file:// URI."""
    root = tmp_path_factory.mktemp("storage")
    return {"shared": str(root / "shared"), "uri": (root / "by-uri").as_uri()}


@pytest.fixture(scope="module")
def address_study(cluster, node_ids, studies):
    """The smoke sweep driven from here with ``--address``, into the shared folder.

    With one of the head's 3 CPUs held, 3 one-CPU trials at once fit on neither node alone,
    and a CPU stays free for Ray Data.
    """
    with cluster.holding_head_cpus(1):
        cluster.run([*sweep_args("multinode", studies["shared"], concurrent=3),
                     "--address", cluster.address], cwd=REPO, timeout_s=SWEEP_TIMEOUT_S)
    return f"{studies['shared']}/multinode"


@pytest.fixture(scope="module")
def job_study(cluster, node_ids, studies):
    """The smoke sweep as a Ray job, storage a URI.

    The job runs in the head's working directory (here the repository, in a container image
    its WORKDIR), so the spec path is relative to it. No ``--working-dir``: Ray 2.60 removes a
    job's working_dir package while Tune still runs in it, and ``fit()`` then fails in
    ``os.getcwd()`` (ray-project/ray#52343).
    """
    args = sweep_args("jobsubmit", studies["uri"])
    args[len(SWEEP)] = str(SPACE.relative_to(REPO))
    cluster.run([RAY, "job", "submit", "--address", cluster.dashboard_url, "--", *args],
                timeout_s=SWEEP_TIMEOUT_S)
    return f"{studies['uri']}/jobsubmit"


def test_a_task_runs_on_each_node(cluster, node_ids):
    out = json.loads(cluster.python(_TASK_ON_EACH_NODE, cluster.address).splitlines()[-1])
    assert sorted(out["targets"]) == sorted(node_ids.values())
    assert [node_id for node_id, _ in out["ran"]] == out["targets"]
    # the task pinned to the head ran under the head's `ray start`, the other under the worker's
    for node_id, ancestors in out["ran"]:
        owner = cluster.head if node_id == node_ids["head"] else cluster.workers[0]
        assert owner.proc.pid in ancestors, (node_id, ancestors, owner.proc.pid)


def test_the_dashboard_wants_the_token(cluster):
    def status(token: str | None) -> int:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        request = urllib.request.Request(f"{cluster.dashboard_url}/api/version", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status
        except urllib.error.HTTPError as err:
            return err.code

    assert status(cluster.token) == 200
    assert status(None) == 401
    assert status("0" * 64) in (401, 403)


def test_sweep_through_address_runs_trials_on_both_nodes(address_study, node_ids):
    trials = check_complete(address_study, epochs=1)
    assert set(trials["node_id"]) == set(node_ids.values())


def test_sweep_through_ray_job_submit(job_study, node_ids):
    trials = check_complete(job_study, epochs=1)
    assert set(trials["node_id"]) <= set(node_ids.values())


def test_studies_read_back_from_both_storage_forms_and_report(cluster, address_study, job_study,
                                                             tmp_path):
    shared, by_uri = load_study(address_study), load_study(job_study)
    # the same folder read as a path and as a file:// URI gives the same table
    again = load_study(Path(address_study).as_uri())
    assert again.trials.equals(shared.trials)
    both = load_study(address_study, job_study)
    assert len(both.trials) == len(shared.trials) + len(by_uri.trials) == 2 * N_TRIALS
    assert set(both.trials["study"]) == {"multinode", "jobsubmit"}
    out = tmp_path / "report.html"
    cluster.run([sys.executable, "-m", "cryotune", "report", address_study, job_study,
                 "-o", str(out)], cwd=REPO, timeout_s=300)
    html = out.read_text()
    assert "multinode" in html and "jobsubmit" in html


def test_killing_the_worker_mid_sweep_retries_its_trials_on_the_head(cluster, node_ids, studies):
    """Runs last: it leaves the module's cluster with the head alone.

    With 2 of the head's 3 CPUs held, a trial must start on the worker; once the worker is
    killed they are given back, so the head runs both trials and keeps a CPU for Ray Data.
    """
    worker = cluster.workers[0]
    with cluster.holding_head_cpus(2) as release:
        proc = cluster.spawn([*sweep_args("nodeloss", studies["shared"], epochs=2),
                              "--address", cluster.address], cwd=REPO)
        try:
            # a Tune trial actor is "ray::ImplicitFunc": kill the node once one runs there
            deadline = time.monotonic() + 180
            while not worker.processes("ray::ImplicitFunc") and time.monotonic() < deadline:
                assert proc.poll() is None, cluster.finish(proc, check=False).stderr[-3000:]
                time.sleep(0.2)
            assert worker.processes("ray::ImplicitFunc"), "no trial reached the worker node"
            worker.kill()
            assert worker.pids() == []
            release()
        finally:
            result = cluster.finish(proc, timeout_s=SWEEP_TIMEOUT_S, check=False)
    assert result.returncode == 0, result.stderr[-5000:]
    study = f"{studies['shared']}/nodeloss"
    trials = check_complete(study, epochs=2)
    # Tune keeps each failure's message in the trial folder: the trials that were on the worker
    retried = [t for t in trials["trial_id"] if (Path(study) / t / "error.txt").exists()]
    assert retried, "no trial failed when its node died"
    for trial_id in retried:
        assert (Path(study) / trial_id / "error.txt").read_text().startswith("Failure # 1")
    assert set(trials["node_id"]) == {node_ids["head"]}
    assert cluster.head.proc.poll() is None
