"""From a :class:`~cryotune.sweep.spec.SweepSpec` to trial configs and Ray Tune's search objects.

A trial config is a flat, JSON-friendly mapping: ``dataset`` (the dataset's key), ``snr``,
``eps``, ``contamination`` (``none`` at eps 0) and every TrainConfig value under its YAML key,
with the values a method ignores set to None (``alpha``/``beta`` outside ``beta_gan``,
``lambda`` for the autoencoders, ``mu`` outside ``wgan_gp``, ``clip`` outside ``wgan``) and
``p`` the exponent actually used. These mappings become the study's ``config.*`` columns.

The grid is, per dataset and method entry, the product of the entry's lists (``pairs`` as one
axis), the ``lambda`` axis (adversarial methods without their own lambda), the contamination
settings (eps 0 once, each eps > 0 with each type) and the seeds; the trial count is the sum of
those products. ``random`` draws ``n_trials`` of these (ranges sampled) with ``search_seed``;
``optuna`` asks Optuna's TPE for them, one choice at a time.

Example::

    from cryotune.sweep.spec import load_spec
    from cryotune.sweep.space import trial_configs
    configs = trial_configs(load_spec("search_spaces/smoke.yaml"))
    print(len(configs), configs[0]["method"])
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from cryotune.config import TrainConfig, from_dict, to_dict
from cryotune.errors import BadConfig
from cryotune.sweep.spec import DatasetSpec, MethodSpec, Range, SweepSpec

__all__ = [
    "DATA_KEYS",
    "Fit",
    "OptunaSpace",
    "fit_resources",
    "make_scheduler",
    "make_search",
    "sample_configs",
    "train_config",
    "trial_configs",
]

# trial-config keys that are not TrainConfig values
DATA_KEYS = ("dataset", "snr", "eps", "contamination")
# spec dataset key -> (the dataset's key in the study, its SNR)
Datasets = Mapping[str, tuple[str, "float | None"]]


# -- one trial --------------------------------------------------------------------------------

def _trial(spec: SweepSpec, ds: DatasetSpec, index: int, values: Mapping[str, Any],
           eps: float, kind: str, seed: int, datasets: Datasets) -> dict[str, Any]:
    m = spec.methods[index]
    train = {**spec.train, **values, "method": m.method, "epochs": spec.epochs, "seed": seed,
             "checkpoint_every": spec.checkpoint_every}
    cfg = from_dict(TrainConfig, train, f"methods[{index}]")
    out = to_dict(cfg)
    if cfg.method != "beta_gan":
        out["alpha"] = out["beta"] = None
    if not cfg.adversarial:
        out["lambda"] = None
    if cfg.method != "wgan_gp":
        out["mu"] = None
    if cfg.method != "wgan":
        out["clip"] = None
    out["p"] = cfg.loss_p
    key, snr = datasets.get(ds.key, (ds.key, ds.snr))
    return {"dataset": key, "snr": snr, "eps": float(eps),
            "contamination": kind if eps > 0 else "none", **out}


def train_config(trial: Mapping[str, Any]) -> TrainConfig:
    """The TrainConfig of a trial config (data keys and ignored None values dropped)."""
    return from_dict(TrainConfig, {k: v for k, v in trial.items()
                                   if k not in DATA_KEYS and v is not None})


def _eps_settings(spec: SweepSpec) -> list[tuple[float, str]]:
    zero = [(0.0, "none")] if 0 in spec.eps else []
    return zero + [(e, k) for e in spec.eps if e > 0 for k in spec.contamination]


def _method_axes(spec: SweepSpec, m: MethodSpec) -> list[tuple[tuple[str, ...], list]]:
    """(keys, values) axes of one method entry; pairs set alpha and beta together."""
    axes: list[tuple[tuple[str, ...], list]] = []
    if m.pairs is not None:
        axes.append((("alpha", "beta"), list(m.pairs)))
    for key, values in m.params.items():
        axes.append(((key,), [(v,) for v in values]))
    if m.adversarial and "lambda" not in m.params and spec.lam is not None:
        axes.append((("lambda",), [(v,) for v in spec.lam]))
    return axes


def trial_configs(spec: SweepSpec, datasets: Datasets | None = None) -> list[dict]:
    """The full grid, or ``n_trials`` random draws for ``search: random``.

    Args:
        spec: a validated spec.
        datasets: for each spec dataset (by :attr:`DatasetSpec.key`), its key in the study
            (:func:`cryotune.results.dataset_key` of its manifest) and its SNR; without it
            (a dry run) the spec's own names and SNRs are used.

    Returns:
        One trial config per trial, in a stable order.

    Raises:
        BadConfig: a combination TrainConfig rejects (named by its ``methods[i]`` path).
    """
    datasets = datasets or {}
    if spec.search == "random":
        return sample_configs(spec, datasets)
    if spec.search != "grid":
        raise ValueError(f"search {spec.search!r} asks for its trials during the sweep")
    out = []
    for ds in spec.dataset:
        for index, m in enumerate(spec.methods):
            axes = _method_axes(spec, m)
            for combo in itertools.product(*(values for _, values in axes)):
                values = {k: v for (keys, _), vs in zip(axes, combo, strict=True)
                          for k, v in zip(keys, vs, strict=True)}
                for eps, kind in _eps_settings(spec):
                    for seed in spec.seeds:
                        out.append(_trial(spec, ds, index, values, eps, kind, seed, datasets))
    return out


# -- random and optuna draws ------------------------------------------------------------------

class _Draw(Protocol):
    def index(self, name: str, n: int) -> int: ...
    def uniform(self, name: str, low: float, high: float, log: bool) -> float: ...


class _RandomDraw:
    def __init__(self, rng: np.random.Generator):
        self.rng = rng

    def index(self, name: str, n: int) -> int:
        return int(self.rng.integers(n))

    def uniform(self, name: str, low: float, high: float, log: bool) -> float:
        if log:
            return float(math.exp(self.rng.uniform(math.log(low), math.log(high))))
        return float(self.rng.uniform(low, high))


class _OptunaDraw:
    def __init__(self, trial: Any):
        self.trial = trial

    def index(self, name: str, n: int) -> int:
        return int(self.trial.suggest_categorical(name, list(range(n))))

    def uniform(self, name: str, low: float, high: float, log: bool) -> float:
        return float(self.trial.suggest_float(name, low, high, log=log))


def _pick(draw: _Draw, name: str, axis: list | Range) -> Any:
    if isinstance(axis, Range):
        return draw.uniform(name, axis.low, axis.high, axis.kind == "loguniform")
    return axis[draw.index(name, len(axis))] if len(axis) > 1 else axis[0]


def _draw_trial(spec: SweepSpec, draw: _Draw, datasets: Datasets) -> dict:
    ds = _pick(draw, "dataset", list(spec.dataset))
    index = _pick(draw, "method", list(range(len(spec.methods))))
    m = spec.methods[index]
    values: dict[str, Any] = {}
    if m.pairs is not None:
        values["alpha"], values["beta"] = _pick(draw, f"m{index}.pairs", list(m.pairs))
    for key, axis in m.params.items():
        values[key] = _pick(draw, f"m{index}.{key}", axis)
    if m.adversarial and "lambda" not in m.params and spec.lam is not None:
        values["lambda"] = _pick(draw, "lambda", spec.lam)
    if isinstance(spec.eps, Range):
        eps = _pick(draw, "eps", spec.eps)
        kind = _pick(draw, "contamination", spec.contamination)
    else:
        eps, kind = _pick(draw, "eps_setting", _eps_settings(spec))
    seed = _pick(draw, "seed", spec.seeds)
    return _trial(spec, ds, index, values, eps, kind, seed, datasets)


def sample_configs(spec: SweepSpec, datasets: Datasets | None = None) -> list[dict]:
    """``spec.n_trials`` random draws, reproducible from ``spec.search_seed``."""
    draw = _RandomDraw(np.random.default_rng(spec.search_seed))
    return [_draw_trial(spec, draw, datasets or {}) for _ in range(spec.n_trials)]


class OptunaSpace:
    """Optuna's define-by-run space for a spec; returns the trial config under ``t``.

    A plain class (not a closure) so Tune can pickle it into its experiment state.
    """

    def __init__(self, spec: SweepSpec, datasets: Datasets):
        self.spec = spec
        self.datasets = dict(datasets)

    def __call__(self, trial: Any) -> dict[str, Any]:
        return {"t": _draw_trial(self.spec, _OptunaDraw(trial), self.datasets)}


# -- Ray Tune objects -------------------------------------------------------------------------

def make_search(spec: SweepSpec, datasets: Datasets | None = None):
    """``(param_space, search_alg, num_samples)`` for the Tuner.

    Grid and random searches list their trial configs up front (``{"t": grid_search(...)}``);
    optuna asks TPE for each trial (``search_alg``, ``num_samples = n_trials``).
    """
    from ray import tune

    if spec.search == "optuna":
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        alg = OptunaSearch(space=OptunaSpace(spec, datasets or {}), metric=spec.metric,
                           mode=spec.mode, sampler=optuna.samplers.TPESampler(seed=spec.search_seed))
        return None, alg, spec.n_trials
    return {"t": tune.grid_search(trial_configs(spec, datasets))}, None, 1


def make_scheduler(spec: SweepSpec):
    """FIFO, or ASHA over epochs (``max_t`` = epochs) with the spec's grace period and factor."""
    from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler

    if spec.scheduler.type == "fifo":
        return FIFOScheduler()
    return AsyncHyperBandScheduler(time_attr="epoch", max_t=spec.epochs,
                                   grace_period=spec.scheduler.grace_period,
                                   reduction_factor=spec.scheduler.reduction_factor)


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
