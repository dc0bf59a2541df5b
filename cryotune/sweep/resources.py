"""Trial resources fitted to the cluster: Ray Data always keeps a whole CPU.

One node: trial CPUs x concurrent trials <= CPUs - 1. Several nodes: whole trial CPUs, trials
counted node by node (``RAY_NOTES.md`` has the measurements: without a free CPU, Ray Data's
reads hang).

Example::

    from cryotune.sweep.resources import fit_resources
    from cryotune.sweep.spec import load_spec
    fit = fit_resources(load_spec("search_spaces/smoke.yaml"), cpus=[8], gpus=[0])
    print(fit.cpu, fit.concurrent, fit.rule)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from cryotune.errors import BadConfig
from cryotune.sweep.spec import SweepSpec

__all__ = ["Fit", "fit_resources"]


@dataclasses.dataclass(frozen=True)
class Fit:
    """Per-trial resources after the CPU rule, and how many trials run at once.

    Example: three 1-CPU nodes and ``resources.cpu: 0.5`` give
    ``Fit(cpu=1.0, gpu=0.0, concurrent=2, adjusted=True, threads=1, nodes=3)``.
    """

    cpu: float
    gpu: float
    concurrent: int
    adjusted: bool  # True when the trial CPUs differ from the spec's resources.cpu
    threads: int  # torch threads per trial
    nodes: int = 1  # nodes with CPUs; above 1 the rule is applied node by node

    @property
    def rule(self) -> str:
        """The CPU rule that gave this fit, in words (for logs and the dry run)."""
        if self.nodes == 1:
            return "trial CPUs x trials <= CPUs - 1: Ray Data keeps a core"
        return (f"per node over {self.nodes} nodes: whole trial CPUs, trials counted node by "
                "node, one node keeps a whole CPU for Ray Data")


# resources are read once, when the sweep starts
_AT_START = ("trials are fitted to the nodes alive when the sweep starts, so on an autoscaling "
             "cluster start the workers first (min_workers / minReplicas >= 1)")


def fit_resources(spec: SweepSpec, cpus: float | Sequence[float],
                  gpus: float | Sequence[float] = 0) -> Fit:
    """Trial resources and concurrency that always leave Ray Data a whole CPU.

    One node (``cpus`` a number, or a sequence with one node that has CPUs): trial CPUs x
    concurrent trials <= CPUs - 1. With ``max_concurrent`` set the trial CPUs shrink (to a
    fraction below 1 if needed) so that many trials fit; without it, as many trials run as fit.
    On a 1-CPU machine half a core is kept for Data.

    Several nodes (``cpus`` and ``gpus`` per node, e.g. from ``ray.nodes()``): Ray Data's read
    and map tasks need a whole CPU on one node, and half CPUs left free on two nodes are not
    one. So trial CPUs are whole numbers (a fraction is raised to 1, and ``max_concurrent``
    never splits them below 1), a node holds ``floor(node CPUs / trial CPUs)`` trials (with GPUs
    also at most ``floor(node GPUs / trial GPUs)``), and one trial fewer runs when no node
    would keep a whole CPU free. ``max_concurrent`` lowers the trial CPUs, a whole CPU at a
    time, until that many fit, and caps the count.

    Example::

        fit_resources(spec, 2)                    # 1 CPU asked, max_concurrent 2: 0.5 CPU, 2
        fit_resources(spec, [1, 1, 1], [0, 0, 0])  # same spec: 1 CPU, 2 at once

    Raises:
        BadConfig: no node has CPUs, trials ask for more GPUs than any node has, or (several
            nodes) for more CPUs than any node that can hold them has.
    """
    nodes = _nodes(cpus, gpus)
    if not nodes:
        raise BadConfig("Ray has no node with CPUs", "the Ray cluster",
                        f"add a node with CPUs: {_AT_START}")
    gpu = spec.resources.gpu
    if gpu > 0:
        most = max(g for _, g in nodes)
        if most <= 0:
            raise BadConfig(f"trials ask for {gpu:g} GPU but Ray sees none", "resources.gpu",
                            "run on a GPU node, or use --scale cpu / --set resources.gpu=0; "
                            + _AT_START)
        if gpu > most + 1e-9:
            raise BadConfig(f"trials ask for {gpu:g} GPUs but the largest node has {most:g}",
                            "resources.gpu", f"--set resources.gpu={most:g} or less, or "
                            "add larger GPU nodes")
    if len(nodes) == 1:
        return _fit_one(spec, *nodes[0])
    return _fit_several(spec, nodes)


def _nodes(cpus: float | Sequence[float], gpus: float | Sequence[float]) -> list[tuple[float, float]]:
    """(CPUs, GPUs) of the nodes that have CPUs; a number stands for one node."""
    if isinstance(cpus, (int, float)):
        pairs = [(float(cpus), float(gpus))]  # type: ignore[arg-type]
    else:
        per_gpu = [0.0] * len(cpus) if isinstance(gpus, (int, float)) and not gpus else gpus
        if isinstance(per_gpu, (int, float)) or len(per_gpu) != len(cpus):
            raise ValueError(f"{len(cpus)} nodes' CPUs need as many GPU counts, got {gpus!r}")
        pairs = [(float(c), float(g)) for c, g in zip(cpus, per_gpu, strict=True)]
    return [(c, g) for c, g in pairs if c > 0]


def _times(have: float, need: float) -> int:
    """How many times ``need`` fits in ``have`` (``1 // 0.2`` is 4.0 in floats: 5 fit)."""
    return math.floor(have / need + 1e-9)


def _fit_one(spec: SweepSpec, total_cpus: float, total_gpus: float) -> Fit:
    cpu, gpu = spec.resources.cpu, spec.resources.gpu
    spare = total_cpus - 1 if total_cpus >= 2 else total_cpus / 2
    limit = spec.max_concurrent
    adjusted = False
    if limit is None:
        if cpu > spare:
            cpu, adjusted = _ray_quantity(spare), True
        limit = max(1, _times(spare, cpu))
    elif cpu * limit > spare + 1e-9:
        cpu, adjusted = _ray_quantity(spare / limit), True
    if gpu > 0:
        limit = max(1, min(limit, _times(total_gpus, gpu)))
    return Fit(cpu=cpu, gpu=gpu, concurrent=limit, adjusted=adjusted, threads=max(1, int(cpu)))


def _slots(nodes: list[tuple[float, float]], cpu: float, gpu: float) -> int:
    """Trials of whole ``cpu`` that fit at once, node by node, with a whole CPU left on one node.

    Any trial fewer than the nodes hold frees a whole ``cpu >= 1`` on some node.
    """
    held = [min(_times(c, cpu), _times(g, gpu) if gpu > 0 else math.inf) for c, g in nodes]
    free = max(c - k * cpu for (c, _), k in zip(nodes, held, strict=True))
    return max(0, int(sum(held)) - (0 if free >= 1 - 1e-9 else 1))


def _fit_several(spec: SweepSpec, nodes: list[tuple[float, float]]) -> Fit:
    asked, gpu, limit = spec.resources.cpu, spec.resources.gpu, spec.max_concurrent
    usable = [c for c, g in nodes if gpu <= 0 or g >= gpu - 1e-9]
    kind = "GPU node" if gpu > 0 else "node"
    cpu = float(max(1, math.ceil(asked)))
    if cpu > max(usable):
        raise BadConfig(
            f"trials ask for {asked:g} CPUs but the largest {kind} of {len(nodes)} has "
            f"{max(usable):g}", "resources.cpu",
            f"--set resources.cpu={max(1, int(max(usable)))} or less (trials need whole CPUs "
            f"on several nodes), or add larger nodes; {_AT_START}")
    while cpu > 1 and _slots(nodes, cpu, gpu) < (limit or 1):
        cpu -= 1
    slots = _slots(nodes, cpu, gpu)
    if slots < 1:
        raise BadConfig(f"no {kind} can hold a {cpu:g}-CPU trial while a node keeps a whole CPU "
                        "for Ray Data", "resources.cpu",
                        f"add a node with at least {cpu + 1:g} CPUs; {_AT_START}")
    return Fit(cpu=cpu, gpu=gpu, concurrent=min(slots, limit or slots), adjusted=cpu != asked,
               threads=int(cpu), nodes=len(nodes))


def _ray_quantity(x: float) -> float:
    """Ray takes fractions below 1 (to 1e-4) and whole numbers above."""
    return float(int(x)) if x >= 1 else math.floor(x * 1e4) / 1e4
