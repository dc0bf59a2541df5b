"""Extending a grid study: the union spec, the fixed-setting check and the cell diff.

A grid study's cells are the trial configs of its spec (:func:`cryotune.sweep.space.trial_configs`).
Extending it with another spec makes each grid axis the union of the study's values and the
spec's, in that order: ``methods`` (an entry with the same method and keys as a study entry
merges into it, its lists joined; another entry is added), ``lambda``, ``reduction``, ``eps``,
``contamination`` and ``seeds``. The extended study is the grid of that union spec, so a
seed added to a study runs with every method, eps and type the study holds.

Every other setting that shapes a trial (``dataset``, ``epochs``, ``train``, ``select``,
``scheduler``, ``search``, ``checkpoint_every``, ``validate``) must be the same; a change is
refused naming the key and both values. How trials run (``resources``, ``max_concurrent``,
``max_failures``) may change: the spec's values apply to the new trials.

Trials are told apart by :func:`cell_key`, a canonical form of the trial config that the
study's ``config.*`` columns rebuild; a row missing a key added since reads as the value
its trial ran with (:data:`LEGACY` where that differs from today's default, else the default).

Example::

    from cryotune.sweep.extend import cell_key, union_spec
    union, added = union_spec(stored_spec_yaml, load_spec("more-seeds.yaml"))
    done = {cell_key(c) for c in study_rows_as_configs}
    new = [c for c in trial_configs(union) if cell_key(c) not in done]
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd

from cryotune.config import LEGACY_REDUCTION, RUNTIME_FIELDS, TrainConfig, to_dict
from cryotune.errors import BadConfig
from cryotune.sweep.space import ignored_keys
from cryotune.sweep.spec import SweepSpec, spec_from_mapping

__all__ = [
    "AXES",
    "FIXED",
    "LEGACY",
    "cell_key",
    "new_cells",
    "row_configs",
    "trial_index",
    "union_spec",
]

# the grid axes an extension may grow
AXES = ("methods", "lambda", "reduction", "eps", "contamination", "seeds")
# settings that shape every trial: an extension keeps them
FIXED = ("dataset", "epochs", "train", "select", "search", "n_trials", "search_seed",
         "scheduler", "checkpoint_every", "validate")
# trial-config values of rows recorded before their key existed, where they differ from
# TrainConfig's default today
LEGACY = {"reduction": LEGACY_REDUCTION}
_MISSING = object()
_DEFAULTS = to_dict(TrainConfig())


def _plain(value: Any) -> Any:
    """A JSON-comparable scalar: numpy scalars unwrapped, NaN as None, numbers as floats."""
    if hasattr(value, "item") and not isinstance(value, (list, tuple, dict, str)):
        value = value.item()
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return None if isinstance(value, float) and math.isnan(value) else float(value)
    if isinstance(value, (list, tuple)):
        return str([_plain(v) for v in value])
    return value


def cell_key(config: Mapping[str, Any]) -> str:
    """The canonical key of a trial config: equal for the same cell whether the config comes
    from the grid or from a study row (``config.*`` columns without the prefix).

    Values a method ignores are dropped, as are the fields that say how a trial runs, not
    what it computes (:data:`cryotune.config.RUNTIME_FIELDS`: threads, memory format, device;
    epochs, a fixed setting); numbers compare as floats, and a TrainConfig key a row lacks
    reads as :data:`LEGACY` or TrainConfig's default.
    """
    flat: dict[str, Any] = {}

    def walk(mapping: Mapping[str, Any], prefix: str) -> None:
        for key, value in mapping.items():
            if isinstance(value, Mapping):
                walk(value, f"{prefix}{key}.")
            else:
                flat[f"{prefix}{key}"] = _plain(value)

    walk(config, "")
    flat = {k: v for k, v in flat.items() if v is not None and k not in RUNTIME_FIELDS}
    for key, default in {**_DEFAULTS, **LEGACY}.items():
        if key not in RUNTIME_FIELDS:
            flat.setdefault(key, _plain(default))
    method = flat.get("method")
    if isinstance(method, str):
        try:
            for key in ignored_keys(method):
                flat.pop(key, None)
        except KeyError:  # not a learned method (a baseline's row): never a grid cell
            pass
    return json.dumps(flat, sort_keys=True)


def row_configs(trials: pd.DataFrame) -> list[dict[str, Any]]:
    """The trial config of each study row, from its ``config.*`` columns."""
    cols = [c for c in trials.columns if c.startswith("config.")]
    return [{c.removeprefix("config."): v for c, v in row.items()}
            for row in trials[cols].to_dict("records")]


def new_cells(configs: Iterable[Mapping[str, Any]], done: Iterable[str]) -> list[dict[str, Any]]:
    """The configs whose cell no trial holds, each cell once, in grid order."""
    seen = set(done)
    out = []
    for config in configs:
        key = cell_key(config)
        if key not in seen:
            seen.add(key)
            out.append(dict(config))
    return out


def trial_index(trial_id: str) -> int | None:
    """``trial_00012`` -> 12; None for a trial id of another form (a baseline's)."""
    match = re.fullmatch(r"trial_(\d+)", str(trial_id))
    return int(match.group(1)) if match else None


# -- the union spec ---------------------------------------------------------------------------

def _as_list(value: Any) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _join(old: list, new: list) -> list:
    return old + [v for v in new if v not in old]


def _seeds(value: Any) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        return list(range(value))
    return _as_list(value)


def _entry(entry: Any) -> dict[str, Any]:
    return {"method": entry} if isinstance(entry, str) else dict(entry)


def _join_methods(old: list, new: list) -> tuple[list, list]:
    """The union of two ``methods`` lists, and the entries it added or grew."""
    out = [_entry(e) for e in old]
    changed = []
    for entry in map(_entry, new):
        if entry in out:
            continue
        for i, have in enumerate(out):
            if have["method"] == entry["method"] and set(have) == set(entry):
                merged = {k: (v if k == "method" or v == entry[k] else
                              _join(_as_list(v), _as_list(entry[k])))
                          for k, v in have.items()}
                out[i] = merged
                changed.append(merged)
                break
        else:
            out.append(entry)
            changed.append(entry)
    return out, changed


def _first_diff(old: Any, new: Any, path: str) -> tuple[str, Any, Any] | None:
    """The first key path where two raw values differ, with both values."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        for key in list(old) + [k for k in new if k not in old]:
            found = _first_diff(old.get(key, _MISSING), new.get(key, _MISSING), f"{path}.{key}")
            if found:
                return found
        return None
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            found = _first_diff(a, b, f"{path}[{i}]")
            if found:
                return found
        return None
    return None if old == new else (path, old, new)


def _show(value: Any) -> str:
    return "unset" if value is _MISSING else json.dumps(value, default=str)


def _refuse(path: str, old: Any, new: Any) -> BadConfig:
    return BadConfig(f"{path} is {_show(old)} in the study and {_show(new)} in the spec (an "
                     f"extension grows only the grid axes: {', '.join(AXES)})", path,
                     f"keep {_show(old)} to extend this study, or start a new study with "
                     "--set name=...")


def _as_raw(raw: Mapping[str, Any], key: str, parsed: Any) -> Any:
    """A spec key as written, or its parsed value when unset; a setting parsed into a
    dataclass (scheduler, select) as its mapping, whichever way it was written."""
    if dataclasses.is_dataclass(parsed):
        return dataclasses.asdict(parsed)
    if key in raw:
        return raw[key]
    if isinstance(parsed, list):
        return [dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for v in parsed]
    return parsed


def _effective_train(raw: Mapping[str, Any]) -> dict[str, Any]:
    return {**_DEFAULTS, **dict(raw.get("train") or {})}


def _check_fixed(old: SweepSpec, new: SweepSpec) -> None:
    if old.search != "grid" or new.search != "grid":
        which = old.search if old.search != "grid" else new.search
        raise BadConfig(f"only a grid study can be extended, and this one searches by {which}",
                        "search", "start a new study for more random or optuna trials (a "
                        "grid's missing cells are well defined, a search's are not)")
    a, b = old.raw, new.raw
    train_old, train_new = _effective_train(a), _effective_train(b)
    for key in train_old:
        if train_old[key] != train_new.get(key):
            raise _refuse(f"train.{key}", train_old[key], train_new.get(key))
    for key in FIXED:
        if key == "train":
            continue
        if getattr(old, key) == getattr(new, key):
            continue
        found = _first_diff(_as_raw(a, key, getattr(old, key)),
                            _as_raw(b, key, getattr(new, key)), key)
        if found is None:  # the same setting written two ways (e.g. metric: for select:)
            found = (key, str(getattr(old, key)), str(getattr(new, key)))
        raise _refuse(*found)


def union_spec(stored: Mapping[str, Any], spec: SweepSpec, *, legacy_reduction: bool = False
               ) -> tuple[SweepSpec, dict[str, Any]]:
    """The study's spec grown by ``spec``'s axes.

    Args:
        stored: the study's ``spec.yaml`` (its ``provenance`` is kept).
        spec: the extension; its ``name`` and ``storage`` name the study.
        legacy_reduction: the study's adversarial trials ran before ``reduction`` existed
            (per-pixel mean) and its spec names no reduction: the stored spec is read with
            ``train.reduction: mean``, the convention its trials ran.

    Returns:
        The union spec (its ``raw`` is the new ``spec.yaml``, provenance included) and what
        it added: axis -> new values (``methods``: the entries added or grown).

    Raises:
        BadConfig: a setting other than the grid axes differs (naming the key and both
            values), or either spec is not a grid search.
    """
    raw_old = {k: v for k, v in stored.items() if k != "provenance"}
    if legacy_reduction:
        raw_old["train"] = {**dict(raw_old.get("train") or {}), "reduction": LEGACY_REDUCTION}
    old = spec_from_mapping(raw_old, source="the study's spec.yaml")
    _check_fixed(old, spec)
    raw_new = spec.raw
    union = {**raw_old, **{k: v for k, v in raw_new.items() if k not in AXES + FIXED}}
    union.pop("provenance", None)
    added: dict[str, Any] = {}
    methods, changed = _join_methods(list(raw_old.get("methods") or []),
                                     list(raw_new.get("methods") or []))
    union["methods"] = methods
    if changed:
        added["methods"] = changed
    train = _effective_train(raw_old)
    defaults = {"lambda": _DEFAULTS["lambda"], "reduction": train["reduction"], "eps": 0.0}
    for key in ("lambda", "reduction", "eps", "contamination", "seeds"):
        a, b = raw_old.get(key), raw_new.get(key)
        if key == "seeds":
            a, b = _seeds(1 if a is None else a), _seeds(1 if b is None else b)
        elif a is None and b is None:
            continue
        else:  # an axis left out reads as its default value
            a = _as_list(a) or _as_list(defaults.get(key))
            b = _as_list(b) or _as_list(defaults.get(key))
        joined = _join(a, b)
        union[key] = joined
        if joined != a:
            added[key] = [v for v in joined if v not in a]
    union["provenance"] = dict(stored.get("provenance") or {})
    out = spec_from_mapping({k: v for k, v in union.items() if k != "provenance"},
                            source="the extended spec")
    out.raw = {**out.raw, "provenance": union["provenance"]}
    return out, added
