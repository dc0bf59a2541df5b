"""The parts of a sweep spec: datasets, method entries and their axes, each checked against
:class:`~cryotune.config.TrainConfig` and ``simulate()`` with errors naming the key path.

An axis is a fixed value, a list of values (a grid axis, or the choices of a random or Optuna
search) or a :class:`Range` (``{uniform: [lo, hi]}``, ``{loguniform: [lo, hi]}``) that only
``random`` and ``optuna`` searches sample.

Example::

    from cryotune.sweep.axes import parse_methods
    methods = parse_methods([{"method": "beta_gan", "pairs": [[1, 1], [0.5, 0.5]]}])
    print(methods[0].pairs)
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryotune import vocab
from cryotune.config import TrainConfig, check_value, from_dict
from cryotune.data.ctf import CTFParams
from cryotune.errors import BadConfig

__all__ = [
    "OWN_PLACE",
    "RANGE_KINDS",
    "DatasetSpec",
    "MethodSpec",
    "Range",
    "check_train_value",
    "parse_axis",
    "parse_datasets",
    "parse_methods",
    "parse_seeds",
    "parse_train",
    "train_field",
]

RANGE_KINDS = ("uniform", "loguniform")
# TrainConfig keys that a sweep sets in one place of its own, never in train: or a method
OWN_PLACE = {
    "epochs": "the top-level epochs key",
    "seed": "the top-level seeds key",
    "checkpoint_every": "the top-level checkpoint_every key",
}
# keys of simulate() that are not dataset parameters
_SIMULATE_NOT_KEYS = ("out", "overwrite", "progress", "command")


@dataclasses.dataclass(frozen=True)
class Range:
    """A continuous range searched by ``random`` or ``optuna``: ``{loguniform: [1e-4, 1e-1]}``."""

    kind: str
    low: float
    high: float


@dataclasses.dataclass
class DatasetSpec:
    """One dataset of the study: a store ``path`` or the keyword arguments of ``simulate``.

    ``key`` names it in the study (``config.dataset``): ``name`` when given, else the store's
    folder name, or ``sim<size>-snr<snr>-<hash of the simulate arguments>``.
    """

    path: str | None = None
    simulate: dict[str, Any] | None = None
    name: str | None = None

    @property
    def key(self) -> str:
        if self.name:
            return self.name
        if self.path is not None:
            return Path(self.path).name
        digest = hashlib.sha256(json.dumps(self.simulate, sort_keys=True).encode()).hexdigest()
        size = self.simulate.get("size")
        return f"sim{size if size is not None else ''}-snr{self.simulate['snr']:g}-{digest[:8]}"

    @property
    def snr(self) -> float | None:
        """The target SNR of a simulated dataset; None for a store (read its manifest)."""
        return None if self.simulate is None else float(self.simulate["snr"])


@dataclasses.dataclass
class MethodSpec:
    """One entry of ``methods``: a method and its TrainConfig values (lists are axes).

    ``params`` maps YAML keys to a list of values (one for a fixed value) or a :class:`Range`;
    ``pairs`` holds (alpha, beta) pairs swept together.
    """

    method: str
    params: dict[str, list[Any] | Range]
    pairs: list[tuple[float, float]] | None = None

    @property
    def adversarial(self) -> bool:
        return vocab.METHODS[self.method].adversarial


def train_field(key: str) -> dataclasses.Field:
    for f in dataclasses.fields(TrainConfig):
        if f.metadata.get("alias", f.name) == key:
            return f
    known = ", ".join(sorted(f.metadata.get("alias", f.name) for f in dataclasses.fields(TrainConfig)))
    raise KeyError(known)


def check_train_value(key: str, value: Any, where: str, method: str | None = None) -> Any:
    """Validate one TrainConfig value (type and range), reporting ``where``."""
    mapping = {key: value} if method is None or key == "method" else {"method": method, key: value}
    try:
        cfg = from_dict(TrainConfig, mapping)
    except BadConfig as err:
        raise BadConfig(err.what, where, err.fix) from None
    f = train_field(key)
    return getattr(cfg, f.name)


def parse_axis(value: Any, where: str, field: dataclasses.Field | None, *,
          bounds: tuple[float, float] | None = None, method: str | None = None) -> list | Range:
    """A fixed value, a list of values or a range, each value checked."""
    key = field.metadata.get("alias", field.name) if field is not None else None

    def check(v: Any, at: str) -> Any:
        if field is not None:
            return check_train_value(key, v, at, method)
        v = check_value(v, float, at)
        lo, hi = bounds
        if not lo <= v <= hi:
            raise BadConfig(f"{v:g} is outside [{lo:g}, {hi:g}]", at,
                            f"choose a value in [{lo:g}, {hi:g}]")
        return v

    if isinstance(value, Mapping):
        if len(value) != 1 or next(iter(value)) not in RANGE_KINDS:
            raise BadConfig(f"a range is one of {', '.join(RANGE_KINDS)}", where,
                            "write e.g. {loguniform: [0.1, 1000]}")
        kind, ends = next(iter(value.items()))
        numeric = field is None or field.type in (float, "float")
        if not numeric:
            raise BadConfig(f"{key} takes values, not a range", where, "give a list of values")
        if not isinstance(ends, (list, tuple)) or len(ends) != 2:
            raise BadConfig("a range needs [low, high]", f"{where}.{kind}", "write [low, high]")
        low, high = (check(v, f"{where}.{kind}[{i}]") for i, v in enumerate(ends))
        if not low < high:
            raise BadConfig(f"low {low:g} is not below high {high:g}", f"{where}.{kind}",
                            "write [low, high] with low < high")
        if kind == "loguniform" and low <= 0:
            raise BadConfig(f"a log-uniform range needs low > 0, got {low:g}", f"{where}.{kind}",
                            "use a positive low end, e.g. [0.1, 1000]")
        return Range(kind, float(low), float(high))
    if isinstance(value, (list, tuple)):
        if not value:
            raise BadConfig("empty list", where, "give at least one value")
        return [check(v, f"{where}[{i}]") for i, v in enumerate(value)]
    return [check(value, where)]


def parse_seeds(value: Any) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise BadConfig(f"{value} repeats", "seeds", "use seeds: N >= 1, or a list of seeds")
        return list(range(value))
    seeds = check_value(value, list[int], "seeds")
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise BadConfig(f"seeds {seeds} must be distinct whole numbers >= 0", "seeds",
                        "write e.g. seeds: [0, 1, 2] or seeds: 3")
    return seeds


def parse_train(train: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in train.items():
        if key in OWN_PLACE:
            raise BadConfig(f"{key} is not set in train", f"train.{key}", f"use {OWN_PLACE[key]}")
        if key in ("method", "alpha", "beta", "lambda"):
            raise BadConfig(f"{key} is not set in train", f"train.{key}",
                            "set it in a methods entry (or the top-level lambda axis)")
        try:
            train_field(key)
        except KeyError as known:
            raise BadConfig(f"unknown key {key!r}", f"train.{key}",
                            f"known keys: {known.args[0]}") from None
        out[key] = check_train_value(key, value, f"train.{key}")
    if out:  # cross-field checks (e.g. d_norm with method) happen per trial
        from_dict(TrainConfig, out, "train")
    return out


def parse_methods(entries: Any) -> list[MethodSpec]:
    if not entries:
        raise BadConfig("no methods", "methods", "list at least one, e.g. - method: l1_ae")
    out = []
    for i, entry in enumerate(entries):
        where = f"methods[{i}]"
        if isinstance(entry, str):
            entry = {"method": entry}
        if not isinstance(entry, Mapping) or "method" not in entry:
            raise BadConfig("a methods entry needs a method", where,
                            "write e.g. - method: beta_gan")
        method = check_train_value("method", entry["method"], f"{where}.method")
        params: dict[str, list | Range] = {}
        pairs = None
        for key, value in entry.items():
            at = f"{where}.{key}"
            if key == "method":
                continue
            if key == "pairs":
                pairs = parse_pairs(value, at, method)
                continue
            if key in OWN_PLACE:
                raise BadConfig(f"{key} is not set per method", at, f"use {OWN_PLACE[key]}")
            try:
                field = train_field(key)
            except KeyError as known:
                raise BadConfig(f"unknown key {key!r}", at,
                                f"known keys: method, pairs, {known.args[0]}") from None
            params[key] = parse_axis(value, at, field, method=method)
        if pairs is not None and ({"alpha", "beta"} & set(params)):
            raise BadConfig("pairs and alpha/beta together", f"{where}.pairs",
                            "give either pairs: [[a, b], ...] or alpha and beta")
        if method != "beta_gan" and (pairs is not None or {"alpha", "beta"} & set(params)):
            raise BadConfig(f"alpha and beta belong to beta_gan, not {method}", where,
                            "remove them, or use method: beta_gan (js_gan is (0, 0))")
        out.append(MethodSpec(method, params, pairs))
    return out


def parse_pairs(value: Any, where: str, method: str) -> list[tuple[float, float]]:
    if not isinstance(value, (list, tuple)) or not value:
        raise BadConfig("pairs must be a list of [alpha, beta]", where,
                        "write e.g. pairs: [[1, 1], [0.5, 0.5]]")
    out = []
    for i, pair in enumerate(value):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise BadConfig(f"expected [alpha, beta], got {pair!r}", f"{where}[{i}]",
                            "write two numbers, e.g. [0.5, 0.5]")
        a = check_train_value("alpha", pair[0], f"{where}[{i}].alpha", method)
        b = check_train_value("beta", pair[1], f"{where}[{i}].beta", method)
        out.append((a, b))
    return out


def _simulate_keys() -> set[str]:
    from cryotune.data.simulate import simulate

    return set(inspect.signature(simulate).parameters) - set(_SIMULATE_NOT_KEYS)


def parse_datasets(value: Any) -> list[DatasetSpec]:
    if value is None:
        raise BadConfig("no dataset", "dataset",
                        "give a store path or a simulate: block, e.g. dataset: data/rnap-32")
    items = value if isinstance(value, list) else [value]
    out: list[DatasetSpec] = []
    for i, item in enumerate(items):
        where = f"dataset[{i}]" if isinstance(value, list) else "dataset"
        if isinstance(item, str):
            item = {"path": item}
        ds = from_dict(DatasetSpec, item, where)
        if (ds.path is None) == (ds.simulate is None):
            raise BadConfig("give exactly one of path and simulate", where,
                            "write dataset: PATH or dataset: {simulate: {...}}")
        if ds.simulate is None:
            out.append(ds)
            continue
        known = _simulate_keys()
        for key in ds.simulate:
            if key not in known:
                raise BadConfig(f"unknown key {key!r}", f"{where}.simulate.{key}",
                                f"known keys: {', '.join(sorted(known))}")
        ctf = ds.simulate.get("ctf")
        if ctf is True or isinstance(ctf, Mapping):  # true: the default microscope
            ds.simulate["ctf"] = dataclasses.asdict(
                from_dict(CTFParams, {} if ctf is True else ctf, f"{where}.simulate.ctf"))
        elif ctf not in (None, False):
            raise BadConfig(f"expected true, false or a mapping, got {ctf!r}",
                            f"{where}.simulate.ctf", "write ctf: true or ctf: {voltage_kv: 300}")
        else:
            ds.simulate.pop("ctf", None)
        for key in ("size", "n_train", "n_test"):
            if key in ds.simulate:
                n = check_value(ds.simulate[key], int, f"{where}.simulate.{key}")
                if n < (16 if key == "size" else 1):
                    raise BadConfig(f"{n} is too small", f"{where}.simulate.{key}",
                                    "use size >= 16 and at least 1 image per split")
        snrs = ds.simulate.get("snr")
        if snrs is None:
            raise BadConfig("a simulated dataset needs its SNR", f"{where}.simulate.snr",
                            "add e.g. snr: 0.1 (or a list of values, an axis)")
        for j, snr in enumerate(snrs if isinstance(snrs, list) else [snrs]):
            at = f"{where}.simulate.snr" + (f"[{j}]" if isinstance(snrs, list) else "")
            snr = check_value(snr, float, at)
            if snr <= 0:
                raise BadConfig(f"SNR {snr:g} is not positive", at, "use an SNR > 0, e.g. 0.1")
            name = f"{ds.name}-snr{snr:g}" if ds.name and isinstance(snrs, list) else ds.name
            out.append(DatasetSpec(simulate={**ds.simulate, "snr": snr}, name=name))
    keys = [d.key for d in out]
    for key in keys:
        if keys.count(key) > 1:
            raise BadConfig(f"two datasets named {key!r}", "dataset",
                            "give them distinct names: {path: ..., name: ...}")
    return out
