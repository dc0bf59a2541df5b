"""From a :class:`~cryotune.sweep.spec.SweepSpec` to trial configs and Ray Tune's search objects.

A trial config is a flat, JSON-friendly mapping: ``dataset`` (the dataset's key), ``snr``,
``eps``, ``contamination`` (``none`` at eps 0) and every TrainConfig value under its YAML key,
with the values a method ignores set to None (``alpha``/``beta`` outside ``beta_gan``,
``lambda`` and ``reduction`` for the autoencoders, ``mu`` outside ``wgan_gp``, ``clip`` outside
``wgan``) and ``p`` the exponent actually used. These mappings become the study's ``config.*``
columns.

The grid is, per dataset and method entry, the product of the entry's lists (``pairs`` as one
axis), the ``lambda`` and ``reduction`` axes (adversarial methods without their own), the
contamination settings (eps 0 once, each eps > 0 with each type) and the seeds; the trial count
is the sum of those products. ``random`` draws ``n_trials`` of these (ranges sampled) with ``search_seed``;
``optuna`` asks Optuna's TPE for them, one choice at a time. Trial resources are fitted to the
cluster by :mod:`cryotune.sweep.resources`.

Example::

    from cryotune.sweep.spec import load_spec
    from cryotune.sweep.space import trial_configs
    configs = trial_configs(load_spec("search_spaces/smoke.yaml"))
    print(len(configs), configs[0]["method"])
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np

from cryotune import vocab
from cryotune.config import TrainConfig, from_dict, to_dict
from cryotune.sweep.spec import DatasetSpec, MethodSpec, Range, SweepSpec

__all__ = [
    "DATA_KEYS",
    "OptunaSpace",
    "ignored_keys",
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
    for name in ignored_keys(cfg.method):
        out[name] = None
    out["p"] = cfg.loss_p
    key, snr = datasets.get(ds.key, (ds.key, ds.snr))
    return {"dataset": key, "snr": snr, "eps": float(eps),
            "contamination": kind if eps > 0 else "none", **out}


def ignored_keys(method: str) -> tuple[str, ...]:
    """The TrainConfig keys ``method`` ignores: None in its trial configs."""
    out = []
    if method != "beta_gan":
        out += ["alpha", "beta"]
    if not vocab.METHODS[method].adversarial:
        out += ["lambda", "reduction"]
    if method != "wgan_gp":
        out.append("mu")
    if method != "wgan":
        out.append("clip")
    return tuple(out)


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
    if m.adversarial and "reduction" not in m.params and spec.reduction is not None:
        axes.append((("reduction",), [(v,) for v in spec.reduction]))
    return axes


def trial_configs(spec: SweepSpec, datasets: Datasets | None = None) -> list[dict]:
    """The full grid, or ``n_trials`` random draws for ``search: random``.

    Args:
        spec: a validated spec.
        datasets: for each spec dataset (by :attr:`DatasetSpec.key`), its key in the study
            (:func:`cryotune.study.store.dataset_key` of its manifest) and its SNR; without it
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
    if m.adversarial and "reduction" not in m.params and spec.reduction is not None:
        values["reduction"] = _pick(draw, "reduction", spec.reduction)
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
    optuna asks TPE for each trial (``search_alg``, ``num_samples = n_trials``), which it
    scores by the study's validation selection score (``spec.select``), never by test.
    """
    from ray import tune

    if spec.search == "optuna":
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        alg = OptunaSearch(space=OptunaSpace(spec, datasets or {}), metric=spec.select.metric,
                           mode=spec.select.mode, sampler=optuna.samplers.TPESampler(seed=spec.search_seed))
        return None, alg, spec.n_trials
    return {"t": tune.grid_search(trial_configs(spec, datasets))}, None, 1


def make_scheduler(spec: SweepSpec):
    """FIFO, or ASHA over epochs (``max_t`` = epochs) with the spec's grace period and factor,
    judging trials at its rungs by the study's validation selection score (``spec.select``)."""
    from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler

    if spec.scheduler.type == "fifo":
        return FIFOScheduler()
    return AsyncHyperBandScheduler(time_attr="epoch", metric=spec.select.metric,
                                   mode=spec.select.mode, max_t=spec.epochs,
                                   grace_period=spec.scheduler.grace_period,
                                   reduction_factor=spec.scheduler.reduction_factor)
