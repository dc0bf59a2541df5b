"""Sweep specs: what a study trains, on which data, how it searches and where it runs.

A spec is a YAML file (``search_spaces/*.yaml``) read into a :class:`SweepSpec`. Every key is
checked before Ray starts; an unknown key, a wrong type or an out-of-range value raises
:class:`~cryotune.errors.BadConfig` naming its key path (``methods[2].alpha: 1.5 is outside
[-1, 1]``). The keys::

    name: smoke                     # the study's folder: <storage>/<name>
    dataset:                        # a store path, {path: ...}, {simulate: {...}}, or a list
      simulate: {size: 16, n_train: 200, n_test: 40, snr: [0.1, 0.05]}   # a list of snr = an axis
    methods:                        # each entry: method + TrainConfig keys, fixed or swept
      - method: l1_ae
      - method: beta_gan
        pairs: [[1, 1], [0.5, 0.5]] # (alpha, beta) pairs; or alpha: [...] beta: [...] (crossed)
        lr_g: [1.0e-2, 1.0e-3]      # a list is an axis; {loguniform: [lo, hi]} a range
    lambda: [1, 10]                 # axis for the adversarial methods without their own lambda
    reduction: [sum, mean]          # l_p term over pixels (sum: the paper's); likewise an axis
    eps: [0, 0.1]                   # contamination rate axis; eps 0 runs once, uncontaminated
    contamination: [A, B, C]        # types crossed with every eps > 0
    seeds: 2                        # repeats: 2 -> seeds [0, 1]; or a list
    epochs: 2
    train: {width: 8, batch_size: 20}  # TrainConfig values shared by every trial
    select: {metric: val_mse_median, mode: min}   # the score that picks each trial's best
                                    # epoch and the study's best trial, and that ASHA and Optuna
                                    # optimise: validation only (oracle_val_*: simulated data)
    search: grid                    # grid | random | optuna (with n_trials)
    scheduler: {type: asha, grace_period: 1, reduction_factor: 4}   # or fifo
    resources: {cpu: 1, gpu: 0}     # per trial; fractional gpu packs trials on one GPU
    max_concurrent: null            # null = as many as the CPU rule allows
    storage: studies                # folder or pyarrow URI (s3://...)
    max_failures: 2                 # retries of a trial whose worker died, from its checkpoint
    checkpoint_every: 1             # epochs between checkpoints (0 = last only)
    validate: [fsc, clustering]     # downstream checks after each trial
    scales:                         # named presets of dotted overrides: --scale cpu
      cpu: {dataset.simulate.size: 32, train.width: 16}

Example::

    from cryotune.sweep.spec import load_spec
    spec = load_spec("search_spaces/smoke.yaml", overrides=["epochs=1"])
    print(spec.name, spec.search, [d.key for d in spec.dataset])
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cryotune import vocab
from cryotune.config import from_dict, load_yaml, parse_yaml
from cryotune.errors import BadConfig
from cryotune.sweep.axes import (
    DatasetSpec,
    MethodSpec,
    Range,
    parse_axis,
    parse_datasets,
    parse_methods,
    parse_seeds,
    parse_train,
    train_field,
)

__all__ = [
    "DatasetSpec",
    "MethodSpec",
    "Range",
    "Resources",
    "Scheduler",
    "Select",
    "SweepSpec",
    "apply_overrides",
    "load_spec",
    "spec_from_mapping",
]

SEARCHES = ("grid", "random", "optuna")

def _f(default: Any, **metadata: Any) -> Any:
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass
class Scheduler:
    """Trial scheduler: ``fifo`` runs every trial to the end; ``asha`` stops poor ones early.

    ASHA's rungs fall at ``grace_period * reduction_factor**k`` epochs below ``epochs``; at each
    rung a trial goes on when it is in the best ``1 / reduction_factor`` of the trials recorded
    there so far (the first to arrive always goes on, so small sweeps spend more than the
    fraction suggests). With 9 epochs, factor 2 judges at epochs 1, 2, 4 and 8; factor 4 at 1, 4.
    """

    type: str = _f("fifo", choices=("fifo", "asha"))
    grace_period: int = _f(1, range=(1, None))  # epochs every trial runs before it may stop
    # 4 (Ray's and the ASHA paper's): per started trial, synchronous halving spends
    # 1 + 3/4 + 5/16 = 2.06 of 9 epochs (factor 2: 2.56, through two more noisy early cuts)
    reduction_factor: float = _f(4.0, range=(1.0, None))  # keep 1 / rf of trials at each rung

    def __post_init__(self) -> None:
        if self.reduction_factor <= 1:
            raise BadConfig(f"{self.reduction_factor:g} is not above 1", "reduction_factor",
                            "use a reduction factor > 1, e.g. 2 or 3")


@dataclasses.dataclass
class Select:
    """What a study selects on: each trial's best epoch, the best trial, ASHA's and Optuna's
    objective. Validation only: the test split is reported, never selected on.

    The default, the median over validation images of the per-image MSE, is robust: the
    validation pairs are contaminated like the training pairs (a user cannot clean them), and a
    median ignores the contaminated share of pairs where a mean follows it. ``oracle_val_*``
    scores the same pairs clean, which only a simulation can: it measures how much the robust
    score loses against an oracle.
    """

    metric: str = "val_mse_median"
    mode: str | None = _f(None, choices=("min", "max", None))  # None: by the metric

    def __post_init__(self) -> None:
        if self.metric.startswith("test_") or self.metric in vocab.GOALS:
            raise BadConfig(f"{self.metric!r} is not a validation score: the test split is "
                            "only reported, never selected on", "metric",
                            "select on validation: metric: val_mse_median (or one of "
                            f"{', '.join(vocab.SELECT_METRICS)})")
        if self.metric not in vocab.SELECT_METRICS:
            raise BadConfig(f"{self.metric!r} is not one of {', '.join(vocab.SELECT_METRICS)}",
                            "metric", "use e.g. metric: val_mse_median")
        if self.mode is None:
            self.mode = vocab.goal(self.metric)

    @property
    def oracle(self) -> bool:
        """Selects on the clean validation pairs (simulated data only)."""
        return self.metric.startswith("oracle_val_")


@dataclasses.dataclass
class Resources:
    """What one trial reserves; a fractional ``gpu`` packs several trials on one GPU."""

    cpu: float = _f(1.0, range=(0.0, None))
    gpu: float = _f(0.0, range=(0.0, None))

    def __post_init__(self) -> None:
        if self.cpu <= 0:
            raise BadConfig(f"{self.cpu:g} is not positive", "cpu", "give each trial cpu > 0")
        for name in ("cpu", "gpu"):
            value = getattr(self, name)
            if value > 1 and not float(value).is_integer():
                raise BadConfig(f"{value:g} is above 1 and not a whole number", name,
                                "Ray takes fractions below 1 only: use e.g. 0.5, 1 or 2")


@dataclasses.dataclass
class SweepSpec:
    """A validated sweep; build it with :func:`load_spec` or :func:`spec_from_mapping`.

    After validation ``dataset`` is a list of :class:`DatasetSpec`, ``methods`` a list of
    :class:`MethodSpec`, ``lam`` and ``eps`` lists or a :class:`Range`, ``contamination`` and
    ``seeds`` lists, ``scheduler`` a :class:`Scheduler`; ``raw`` keeps the resolved mapping.
    """

    name: str = _f("")
    dataset: Any = None
    methods: list[Any] = _f([])
    lam: Any = _f(None, alias="lambda")  # None: each method's own or TrainConfig's (10)
    reduction: Any = None  # None: each method's own, train.reduction or TrainConfig's (sum)
    eps: Any = 0.0
    contamination: list[str] | str | None = None
    seeds: int | list[int] = 1
    epochs: int = _f(10, range=(1, None))  # the paper does not state its epochs
    train: dict[str, Any] = _f({})
    select: Select = dataclasses.field(default_factory=Select)
    # the former top-level selection keys: a validation score moves to select, test is refused
    metric: str | None = None
    mode: str | None = _f(None, choices=("min", "max", None))
    search: str = _f("grid", choices=SEARCHES)
    n_trials: int | None = _f(None, range=(1, None))  # random and optuna only
    search_seed: int = _f(0, range=(0, None))
    scheduler: Scheduler | str = "fifo"
    resources: Resources = dataclasses.field(default_factory=Resources)
    max_concurrent: int | None = _f(None, range=(1, None))
    storage: str = "studies"
    max_failures: int = _f(2, range=(0, None))
    checkpoint_every: int = _f(1, range=(0, None))
    validate: list[str] = _f([])
    description: str = ""
    scales: dict[str, Any] = _f({})
    provenance: dict[str, Any] = _f({})  # version, command line; written by the sweep
    raw: dict[str, Any] = dataclasses.field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", self.name or ""):
            raise BadConfig(f"invalid or missing study name {self.name!r}", "name",
                            "use letters, digits, '.', '_' and '-', e.g. name: smoke")
        if isinstance(self.scheduler, str):
            self.scheduler = from_dict(Scheduler, {"type": self.scheduler}, "scheduler")
        self._check_select()
        self.dataset = parse_datasets(self.dataset)
        self.methods = parse_methods(self.methods)
        self.train = parse_train(self.train)
        self.lam = parse_axis(self.lam, "lambda", train_field("lambda")) if self.lam is not None else None
        if self.reduction is not None:
            self.reduction = parse_axis(self.reduction, "reduction", train_field("reduction"))
        self.eps = parse_axis(self.eps, "eps", None, bounds=(0.0, 1.0))
        self.seeds = parse_seeds(self.seeds)
        self._check_contamination()
        self._check_search()
        for i, name in enumerate(self.validate):
            if name not in vocab.VALIDATIONS:
                raise BadConfig(f"{name!r} is not one of {', '.join(vocab.VALIDATIONS)}",
                                f"validate[{i}]", f"use {' and/or '.join(vocab.VALIDATIONS)}")
        if self.scheduler.type == "asha" and self.scheduler.grace_period > self.epochs:
            raise BadConfig(f"grace period {self.scheduler.grace_period} exceeds epochs "
                            f"{self.epochs}", "scheduler.grace_period",
                            "use a grace period <= epochs")

    def _check_select(self) -> None:
        """The former ``metric:``/``mode:`` keys: a test metric is refused, a validation score
        moves to ``select``."""
        if self.metric is None:
            if self.mode is not None:
                raise BadConfig("mode without metric", "mode", "write select: {mode: ...}")
            return
        if self.select != Select():
            raise BadConfig("both metric and select are given", "metric",
                            "keep select: {metric: ..., mode: ...} only")
        if self.metric.startswith("test_") or self.metric in vocab.GOALS:
            raise BadConfig(f"{self.metric!r} selects on the test split, which is only reported",
                            "metric", "remove it: the study selects on validation, "
                            "select: {metric: val_mse_median, mode: min} by default")
        self.select = Select(self.metric, self.mode)
        self.metric = self.mode = None

    def _check_contamination(self) -> None:
        if isinstance(self.contamination, str):
            self.contamination = [self.contamination]
        for i, kind in enumerate(self.contamination or []):
            if kind not in vocab.CONTAMINATION_TYPES:
                raise BadConfig(f"{kind!r} is not one of {', '.join(vocab.CONTAMINATION_TYPES)}",
                                f"contamination[{i}]", "; ".join(
                                    f"{k}: {v}" for k, v in vocab.CONTAMINATION_TYPES.items()))
        top = self.eps.high if isinstance(self.eps, Range) else max(self.eps)
        if top > 0 and not self.contamination:
            raise BadConfig("eps above 0 needs contamination types", "contamination",
                            "add e.g. contamination: [A, B, C]")
        self.contamination = list(self.contamination or [])

    def _check_search(self) -> None:
        if self.search == "grid":
            if self.n_trials is not None:
                raise BadConfig("n_trials is for random and optuna searches", "n_trials",
                                "remove it (a grid runs every combination) or set search: optuna")
            for where, value in self._axes():
                if isinstance(value, Range):
                    raise BadConfig(f"a {value.kind} range needs search: random or optuna",
                                    where, "give a list of values for a grid")
        elif self.n_trials is None:
            raise BadConfig(f"search: {self.search} needs the number of trials", "n_trials",
                            "add e.g. n_trials: 20")

    def _axes(self):
        yield "lambda", self.lam
        yield "eps", self.eps
        for i, m in enumerate(self.methods):
            for key, value in m.params.items():
                yield f"methods[{i}].{key}", value


# -- loading ----------------------------------------------------------------------------------

def load_spec(path: str | Path, *, scale: str | None = None,
              overrides: Sequence[str] = ()) -> SweepSpec:
    """Read a sweep YAML, apply a ``scales`` preset and ``key=value`` overrides, validate.

    Args:
        path: the YAML file.
        scale: a preset name from the file's ``scales`` (e.g. ``cpu``), applied first.
        overrides: ``dotted.key=value`` items (values parsed as YAML), applied in order.

    Returns:
        The validated spec; ``spec.raw`` holds the resolved mapping (for ``spec.yaml``).

    Raises:
        BadConfig: naming the file or the key path.
    """
    raw = load_yaml(path)
    return spec_from_mapping(raw, scale=scale, overrides=overrides, source=str(path))


def spec_from_mapping(raw: Mapping[str, Any], *, scale: str | None = None,
                      overrides: Sequence[str] = (), source: str = "spec") -> SweepSpec:
    """Like :func:`load_spec` for a mapping already in memory."""
    raw = json.loads(json.dumps(dict(raw)))  # a deep copy of plain YAML data
    if scale is not None:
        presets = raw.get("scales") or {}
        if not isinstance(presets, Mapping) or scale not in presets:
            known = ", ".join(presets) if isinstance(presets, Mapping) and presets else "none"
            raise BadConfig(f"no scale preset {scale!r}", f"{source}: scales",
                            f"known presets: {known}")
        preset = presets[scale]
        if not isinstance(preset, Mapping):
            raise BadConfig("a scale preset must map dotted keys to values",
                            f"{source}: scales.{scale}", "write e.g. train.width: 16")
        raw = apply_overrides(raw, [(k, v) for k, v in preset.items()])
    raw = apply_overrides(raw, [_split_override(item) for item in overrides])
    spec = from_dict(SweepSpec, raw)
    spec.raw = raw
    return spec


def _split_override(item: str) -> tuple[str, Any]:
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise BadConfig(f"override {item!r} is not key=value", "--set",
                        "write e.g. --set epochs=2 or --set train.width=16")
    try:
        value = parse_yaml(text, f"--set {key.strip()}")
    except BadConfig as err:
        raise BadConfig(f"override value {text!r} is not valid YAML ({err.what})",
                        f"--set {key.strip()}", "quote strings, write lists as [a, b]") from None
    return key.strip(), value


_KEY_PATH = re.compile(r"[A-Za-z_][\w-]*(\[\d+\])*(\.[A-Za-z_][\w-]*(\[\d+\])*)*")
_TOKEN = re.compile(r"([A-Za-z_][\w-]*)|\[(\d+)\]")


def apply_overrides(raw: Mapping[str, Any], items: Sequence[tuple[str, Any]]) -> dict[str, Any]:
    """Set ``dotted.key[index]`` paths in a copy of ``raw``; missing mappings are created.

    Example: ``apply_overrides(raw, [("dataset.simulate.size", 32), ("methods[0].lr_g", 1e-3)])``.
    """
    out = json.loads(json.dumps(dict(raw)))
    for key, value in items:
        if not _KEY_PATH.fullmatch(key):
            raise BadConfig(f"cannot read the key path {key!r}", "--set",
                            "write dotted keys with optional [index], e.g. methods[0].alpha")
        tokens = [(m.group(1), m.group(2)) for m in _TOKEN.finditer(key)]
        node: Any = out
        for depth, (name, index) in enumerate(tokens):
            last = depth == len(tokens) - 1
            slot: Any = int(index) if index is not None else name
            if index is not None and (not isinstance(node, list) or slot >= len(node)):
                raise BadConfig(f"no list item [{index}] to set", key,
                                "check the list's length in the spec")
            if index is None and not isinstance(node, dict):
                raise BadConfig(f"cannot set {name!r} inside a {type(node).__name__}", key,
                                "set the whole value instead, e.g. --set dataset=...")
            if last:
                node[slot] = value
            elif index is None:
                node = node.setdefault(name, {})
            else:
                node = node[slot]
    return out
