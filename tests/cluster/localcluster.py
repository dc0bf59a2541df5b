"""A real multi-node Ray cluster on this machine, owned by one test.

Every node is a ``ray start ... --block`` child process in its own process group, on free
ports of 127.0.0.1, with token authentication on (a fresh random token in the environment,
no token file) and its own small ``--memory`` / ``--object-store-memory``. The test talks to
the cluster only through subprocesses (``python -c``, ``cryotune sweep``, ``ray job submit``),
never with ``ray.init`` in the pytest process, which may hold the session's embedded Ray.

Stopping kills exactly the processes this helper started and their descendants (Ray's
workers run in process groups of their own, so the tree is walked through ``/proc``); it
never uses Ray's stop-everything command, which would end every Ray instance on a shared machine.

Example::

    with LocalCluster(workers=1) as cluster:
        cluster.wait_for_nodes(2)
        print(cluster.python("import ray; print(len(ray.nodes()))"))
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from proctree import alive, descendants

from cryotune._ray import QUIET_ENV

RAY = str(Path(sys.executable).with_name("ray"))
# per node: the logical memory Ray may hand out and the object store (both bytes)
NODE_MEMORY = 2 * 1024**3
NODE_OBJECT_STORE = 256 * 1024**2
_STARTED = "Ray runtime started"

# Connects to the cluster through cryotune's own entry point and prints the alive nodes as
# JSON once there are at least argv[1] of them.
_NODES_PROBE = """
import json, sys, time
import ray
from cryotune._ray import init_ray
init_ray(address=sys.argv[2])
want, deadline = int(sys.argv[1]), time.monotonic() + float(sys.argv[3])
while True:
    nodes = [n for n in ray.nodes() if n["Alive"]]
    if len(nodes) >= want or time.monotonic() > deadline:
        break
    time.sleep(0.5)
print(json.dumps([{"node_id": n["NodeID"], "head": "node:__internal_head__" in n["Resources"],
                   "cpus": n["Resources"].get("CPU", 0)} for n in nodes]))
"""


# Holds argv[2] CPUs of the head with an idle actor pinned there until this driver dies.
_HOLD_HEAD_CPUS = """
import sys, time
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from cryotune._ray import init_ray
init_ray(address=sys.argv[1])
head = next(n["NodeID"] for n in ray.nodes()
            if n["Alive"] and "node:__internal_head__" in n["Resources"])

@ray.remote
class Hold:
    def ready(self):
        return True

hold = Hold.options(num_cpus=float(sys.argv[2]),
                    scheduling_strategy=NodeAffinitySchedulingStrategy(head, soft=False)).remote()
ray.get(hold.ready.remote(), timeout=120)
print("holding", flush=True)
time.sleep(3600)
"""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Node:
    """One ``ray start --block`` child process and everything it started."""

    name: str
    proc: subprocess.Popen
    log: Path
    seen: set[int] = field(default_factory=set)  # pids observed under this node

    def pids(self) -> list[int]:
        """Current and previously seen processes of this node that are still alive."""
        if self.proc.poll() is None:
            self.seen.update([self.proc.pid, *descendants(self.proc.pid)])
        return [p for p in sorted(self.seen | {self.proc.pid}) if alive(p)]

    def kill(self, sig: int = signal.SIGKILL, grace_s: float = 5.0) -> None:
        """Send ``sig`` to this node's process group and tree; SIGKILL what outlives grace_s."""
        pids = self.pids()
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass
        for pid in pids:
            _signal(pid, sig)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(alive(p) for p in pids):
            self.proc.poll()
            time.sleep(0.1)
        for pid in self.pids():
            _signal(pid, signal.SIGKILL)
        try:
            self.proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL was sent
            pass

    def processes(self, title: str) -> list[int]:
        """Live processes of this node whose command line (Ray's process title) has ``title``."""
        found = []
        for pid in self.pids():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if title.encode() in cmdline:
                found.append(pid)
        return found

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return f"--- {self.name} ({self.log}) ---\n" + "\n".join(text[-lines:])


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class LocalCluster:
    """A head node plus ``workers`` worker nodes started with ``ray start``.

    Args:
        workers: worker nodes to start after the head.
        head_cpus, worker_cpus: logical CPUs of the head and of each worker node.
        dashboard: start the head's dashboard (needed by ``ray job submit``) on 127.0.0.1.
        cwd: the nodes' working directory; a Ray job without a working_dir runs in the head's.
        timeout_s: the longest wait for a node or a probe.
    """

    def __init__(self, *, workers: int = 1, head_cpus: int = 1, worker_cpus: int = 1,
                 dashboard: bool = False, cwd: str | Path | None = None,
                 timeout_s: float = 120.0):
        self.n_workers, self.with_dashboard, self.cwd = workers, dashboard, cwd
        self.head_cpus, self.worker_cpus = head_cpus, worker_cpus
        self.timeout_s = timeout_s
        # Ray's socket paths must stay short: a pytest tmp_path is too deep for them.
        self.root = Path(tempfile.mkdtemp(prefix="ctune-", dir="/tmp"))
        self.port = free_port()
        self.dashboard_port = free_port()
        self.token = secrets.token_hex(32)
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("RAY_ADDRESS", "RAY_AUTH_TOKEN"))}
        self.env.update(QUIET_ENV)
        self.env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token, OMP_NUM_THREADS="1")
        self.head: Node | None = None
        self.workers: list[Node] = []

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    # -- lifecycle ------------------------------------------------------------------------
    def __enter__(self) -> LocalCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> LocalCluster:
        """Start the head, then the workers; returns once every node has registered."""
        head_args = ["--head", f"--port={self.port}", f"--ray-client-server-port={free_port()}",
                     f"--dashboard-port={self.dashboard_port}", "--dashboard-host=127.0.0.1",
                     f"--include-dashboard={'true' if self.with_dashboard else 'false'}",
                     f"--temp-dir={self.root}"]
        self.head = self._start_node("head", [*head_args, f"--num-cpus={self.head_cpus}"])
        for _ in range(self.n_workers):
            self.add_worker()
        self.wait_for_nodes(1 + self.n_workers)
        if self.with_dashboard:
            self._wait_for_dashboard()
        return self

    def add_worker(self) -> Node:
        """Start one more worker node joining the head; returns once ``ray start`` is done."""
        node = self._start_node(f"worker{len(self.workers) + 1}",
                                [f"--address={self.address}", f"--num-cpus={self.worker_cpus}"])
        self.workers.append(node)
        return node

    def _start_node(self, name: str, args: list[str], attempts: int = 2) -> Node:
        """Start a node; a second try when it times out registering (Ray waits only 30 s)."""
        cmd = [RAY, "start", *args, "--num-gpus=0",
               "--node-ip-address=127.0.0.1", f"--memory={NODE_MEMORY}",
               f"--object-store-memory={NODE_OBJECT_STORE}", "--disable-usage-stats", "--block"]
        for attempt in range(1, attempts + 1):
            log = self.root / f"{name}-{attempt}.log"
            with open(log, "wb") as out:
                proc = subprocess.Popen(
                    [*cmd, f"--dashboard-agent-listen-port={free_port()}"], env=self.env,
                    cwd=self.cwd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    start_new_session=True)
            node = Node(name, proc, log)
            deadline = time.monotonic() + self.timeout_s
            while _STARTED not in log.read_text(errors="replace"):
                if proc.poll() is not None or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            else:
                return node
            failed = node.tail()
            node.kill()
        raise AssertionError(f"{name} did not start in {attempts} tries\n{failed}")

    def stop(self) -> None:
        """Kill every process this cluster started (workers first) and remove its folder."""
        for node in [*self.workers, *([self.head] if self.head else [])]:
            node.kill(signal.SIGTERM, grace_s=3.0)
        shutil.rmtree(self.root, ignore_errors=True)

    def nodes(self) -> list[Node]:
        return [*([self.head] if self.head else []), *self.workers]

    def logs(self) -> str:
        """The last lines of every node's log, for assertion messages."""
        return "\n".join(node.tail() for node in self.nodes())

    # -- talking to the cluster ----------------------------------------------------------
    def spawn(self, cmd: list[str], *, cwd: str | Path | None = None) -> subprocess.Popen:
        """Start a command with the cluster's token in its environment, in its own session."""
        return subprocess.Popen(cmd, env=self.env, cwd=cwd, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)

    def finish(self, proc: subprocess.Popen, *, timeout_s: float | None = None,
               check: bool = True) -> subprocess.CompletedProcess:
        """Wait for a :meth:`spawn`-ed command; on timeout kill its tree and fail."""
        try:
            out, err = proc.communicate(timeout=timeout_s or self.timeout_s)
        except subprocess.TimeoutExpired:
            for pid in [proc.pid, *descendants(proc.pid)]:
                _signal(pid, signal.SIGKILL)
            out, err = proc.communicate()
            raise AssertionError(f"{proc.args[:4]} timed out\n{err[-3000:]}\n{self.logs()}") from None
        if check and proc.returncode != 0:
            raise AssertionError(f"{proc.args[:4]} exited {proc.returncode}\nstdout:\n{out[-3000:]}"
                                 f"\nstderr:\n{err[-5000:]}\n{self.logs()}")
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def run(self, cmd: list[str], *, timeout_s: float | None = None, cwd: str | Path | None = None,
            check: bool = True) -> subprocess.CompletedProcess:
        """Run a command to its end (see :meth:`spawn` and :meth:`finish`)."""
        return self.finish(self.spawn(cmd, cwd=cwd), timeout_s=timeout_s, check=check)

    def python(self, code: str, *args: str, timeout_s: float | None = None) -> str:
        """Run ``python -c code args...`` against the cluster; returns its stdout."""
        return self.run([sys.executable, "-c", code, *args], timeout_s=timeout_s).stdout

    @contextlib.contextmanager
    def holding_head_cpus(self, cpus: float):
        """Keep ``cpus`` of the head's CPUs taken, so that new work must go elsewhere.

        Yields a function that gives them back early (the driver holding them is killed);
        they are given back at the end in any case.
        """
        proc = self.spawn([sys.executable, "-c", _HOLD_HEAD_CPUS, self.address, str(cpus)])

        def release() -> None:
            for pid in [proc.pid, *descendants(proc.pid)]:
                _signal(pid, signal.SIGKILL)
            proc.wait(timeout=self.timeout_s)

        try:
            line = proc.stdout.readline()
            if line.strip() != "holding":
                release()
                raise AssertionError(f"could not hold {cpus} head CPUs\n{proc.stderr.read()[-3000:]}")
            yield release
        finally:
            if proc.poll() is None:
                release()

    def wait_for_nodes(self, n: int) -> list[dict]:
        """Wait until ``n`` nodes are alive; returns them (node_id, head, cpus)."""
        for node in self.nodes():
            if node.proc.poll() is not None:
                raise AssertionError(f"{node.name} exited {node.proc.returncode}\n{self.logs()}")
        out = self.python(_NODES_PROBE, str(n), self.address, str(self.timeout_s),
                          timeout_s=self.timeout_s + 60)
        nodes = json.loads(out.strip().splitlines()[-1])
        if len(nodes) < n:
            raise AssertionError(f"{len(nodes)} of {n} nodes alive\n{self.logs()}")
        return nodes

    def _wait_for_dashboard(self) -> None:
        request = urllib.request.Request(f"{self.dashboard_url}/api/version",
                                         headers={"Authorization": f"Bearer {self.token}"})
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                with urllib.request.urlopen(request, timeout=5) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"no dashboard at {self.dashboard_url}\n{self.logs()}")
            time.sleep(0.5)
