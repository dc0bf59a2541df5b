"""Typed configs loaded from YAML and validated with errors that name the key path.

A config is a dataclass whose fields carry their constraints in ``metadata``:

- ``choices``: the allowed values;
- ``range``: ``(low, high)`` inclusive bounds for numbers (None for an open side);
- ``alias``: the YAML key when it differs from the field name (``lambda`` -> ``lam``).

:func:`from_dict` builds one from a mapping and raises :class:`~cryotune.errors.BadConfig`
with the key path (``methods[2].alpha: 1.5 is outside [-1, 1]``) for unknown keys, wrong types
and out-of-range values.

Example::

    from cryotune.config import TrainConfig, from_dict
    cfg = from_dict(TrainConfig, {"method": "beta_gan", "alpha": 0.5, "beta": 0.5})
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from cryotune import vocab
from cryotune.errors import BadConfig

T = TypeVar("T")

__all__ = ["LEGACY_REDUCTION", "REDUCTIONS", "RUNTIME_FIELDS", "TrainConfig", "check_value", "from_dict", "load_yaml",
           "load_yaml_text", "parse_yaml", "to_dict"]


# Bounds on alias expansion: a spec or manifest of ours uses a handful of anchors at most;
# a document past either bound is refused while it is composed, before anything expands.
MAX_ALIASES = 1000
MAX_EXPANDED_NODES = 1_000_000
# Explicit tags allowed: the plain JSON-like core; everything else (!!python/..., !!binary,
# !!set, custom !tags) is refused.
_CORE_TAGS = frozenset(f"tag:yaml.org,2002:{name}"
                       for name in ("str", "int", "float", "bool", "null", "seq", "map"))


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that refuses explicit tags and counts aliases and expanded nodes while it
    composes, so a billion-laughs document fails at its first oversized node."""

    def __init__(self, stream: str, where: str):
        super().__init__(stream)
        self.where = where
        self.aliases = 0
        self.sizes: dict[int, int] = {}  # id(node) -> nodes it expands to

    def _line(self, event: Any) -> str:
        mark = getattr(event, "start_mark", None)
        return f"{self.where}:{mark.line + 1}" if mark else self.where

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_ALIASES:
                raise BadConfig(f"YAML uses more than {MAX_ALIASES} aliases", self._line(event),
                                "write the values out instead of repeating anchors")
            node = super().compose_node(parent, index)
            if id(node) not in self.sizes:
                raise BadConfig("YAML alias refers to its own enclosing node",
                                self._line(event), "remove the recursive alias")
            return node
        tag = getattr(event, "tag", None)
        if tag not in (None, "!") and tag not in _CORE_TAGS:
            raise BadConfig(f"YAML tag {tag.replace('tag:yaml.org,2002:', '!!')} is not allowed",
                            self._line(event), "remove the tag; plain values only")
        node = super().compose_node(parent, index)
        size = 1
        if isinstance(node, yaml.SequenceNode):
            size += sum(self.sizes[id(child)] for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            size += sum(self.sizes[id(k)] + self.sizes[id(v)] for k, v in node.value)
        if size > MAX_EXPANDED_NODES:
            raise BadConfig(f"YAML aliases expand to more than {MAX_EXPANDED_NODES:,} values",
                            self._line(event), "write the values out or use fewer aliases")
        self.sizes[id(node)] = size
        return node


def parse_yaml(text: str, where: str) -> Any:
    """Parse one YAML document of plain values with the bounded safe loader.

    Args:
        text: the YAML text.
        where: what to name in errors: a file, a URI, ``--set key``.

    Raises:
        BadConfig: invalid YAML, an explicit tag (``!!python/...``), a recursive alias, or
            more than :data:`MAX_ALIASES` aliases or :data:`MAX_EXPANDED_NODES` expanded
            values; one line naming ``where`` and the line.
    """
    loader = _BoundedLoader(text, where)
    try:
        return loader.get_single_data()
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f"{where}:{mark.line + 1}" if mark else where
        problem = " ".join(str(getattr(err, "problem", None) or err).split())
        raise BadConfig(f"invalid YAML ({problem})", at, "fix the YAML syntax") from None
    except RecursionError:
        raise BadConfig("YAML nested too deeply", where, "flatten the document") from None
    finally:
        loader.dispose()


def load_yaml_text(text: str, where: str) -> dict[str, Any]:
    """A YAML mapping from text (an empty document is ``{}``), e.g. a ``spec.yaml`` read
    from a study store through a pyarrow filesystem; ``where`` names it in errors."""
    data = parse_yaml(text, where)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise BadConfig("config must be a mapping of keys to values", where,
                        "write 'key: value' lines at the top level")
    return data


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping with the bounded safe loader; errors name the file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BadConfig("config file not found", str(path), "check the path") from None
    except UnicodeDecodeError:
        raise BadConfig("config is not UTF-8 text", str(path), "save it as UTF-8") from None
    except OSError as err:
        raise BadConfig(f"cannot read config ({err.strerror})", str(path), "check the path") from None
    return load_yaml_text(text, str(path))


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def check_value(value: Any, tp: Any, path: str) -> Any:
    """Check (and gently coerce) ``value`` against the annotation ``tp``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return check_value(value, arg, path)
            except BadConfig as err:
                errors.append(err)
        raise errors[0]
    if origin is typing.Literal:
        if value not in args:
            raise BadConfig(f"{value!r} is not one of {', '.join(map(repr, args))}", path,
                            "use one of the listed values")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise BadConfig(f"expected a list, got {type(value).__name__} {value!r}", path,
                            "write a YAML list, e.g. [a, b]")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise BadConfig(f"expected {len(args)} values, got {len(value)}", path,
                                f"write [{', '.join(_type_name(a) for a in args)}]")
            return tuple(check_value(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
        item = args[0] if args else Any
        out = [check_value(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, Mapping):
            raise BadConfig(f"expected a mapping, got {type(value).__name__}", path,
                            "write 'key: value' lines")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise BadConfig(f"expected a mapping, got {type(value).__name__}", path,
                            "write 'key: value' lines")
        return from_dict(tp, value, path)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise BadConfig(f"expected true or false, got {value!r}", path, "write true or false")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise BadConfig(f"expected an integer, got {value!r}", path, "write a whole number")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            # YAML reads 1e-3 (no dot) as a string
            if isinstance(value, str):
                try:
                    return float(value)
                except ValueError:
                    pass
            raise BadConfig(f"expected a number, got {value!r}", path, "write a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise BadConfig(f"expected a string, got {value!r}", path, "quote the value")
        return value
    return value


def _check_constraints(field: dataclasses.Field, value: Any, path: str) -> None:
    meta = field.metadata
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise BadConfig(f"{value!r} is not one of {', '.join(map(str, choices))}", path,
                        "use one of the listed values")
    bounds = meta.get("range")
    if bounds is not None and value is not None and isinstance(value, (int, float)):
        lo, hi = bounds
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            lo_s = "-inf" if lo is None else f"{lo:g}"
            hi_s = "inf" if hi is None else f"{hi:g}"
            raise BadConfig(f"{value:g} is outside [{lo_s}, {hi_s}]", path,
                            f"choose a value in [{lo_s}, {hi_s}]")


def from_dict(cls: type[T], data: Mapping[str, Any], path: str = "") -> T:
    """Build the dataclass ``cls`` from ``data``, validating every key.

    Args:
        cls: a dataclass type whose fields may carry ``choices``/``range``/``alias`` metadata.
        data: the mapping, typically from YAML.
        path: the key path of ``data`` in its file, for error messages.

    Returns:
        The validated instance. ``cls.__post_init__`` runs last and may raise BadConfig.

    Raises:
        BadConfig: for unknown keys, wrong types and out-of-range values.
    """
    if not isinstance(data, Mapping):
        raise BadConfig(f"expected a mapping, got {type(data).__name__}", path or "config",
                        "write 'key: value' lines")
    hints = typing.get_type_hints(cls)
    by_key = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        by_key[f.metadata.get("alias", f.name)] = f
    kwargs = {}
    for key, value in data.items():
        f = by_key.get(key)
        if f is None:
            known = ", ".join(sorted(by_key))
            raise BadConfig(f"unknown key {key!r}", _join(path, str(key)), f"known keys: {known}")
        key_path = _join(path, key)
        value = check_value(value, hints[f.name], key_path)
        _check_constraints(f, value, key_path)
        kwargs[f.name] = value
    try:
        return cls(**kwargs)
    except BadConfig as err:
        if path and err.where and not err.where.startswith(path):
            err.where = _join(path, err.where)
            err.args = (err.message,)
        raise


def to_dict(obj: Any) -> dict[str, Any]:
    """A dataclass config as a plain mapping with its YAML keys (aliases applied)."""
    out = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            value = to_dict(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[f.metadata.get("alias", f.name)] = value
    return out


# how the GAN generator's l_p term reduces over pixels (TrainConfig.reduction)
REDUCTIONS = ("sum", "mean")
# the reduction of trials recorded before the key existed
LEGACY_REDUCTION = "mean"


def _field(default: Any, **metadata: Any) -> Any:
    return dataclasses.field(default=default, metadata=metadata)


# TrainConfig fields that say where and how fast a run goes, not what it computes: they may
# change on resume, and two trials that differ only in them are the same cell of a study.
RUNTIME_FIELDS = ("epochs", "checkpoint_every", "device", "bf16", "channels_last",
                  "num_threads", "gallery")


@dataclasses.dataclass
class TrainConfig:
    """One denoiser and how Algorithm 1 trains it. Defaults are the paper's where it gives one.

    ``alpha``/``beta`` matter for ``beta_gan`` only, ``lam`` for the GAN methods only (the
    autoencoders minimise mean |G(y) - x|^p alone), ``mu`` for ``wgan_gp`` and ``clip`` for
    ``wgan``; the others ignore them, so one sweep grid can cross methods with parameters.

    ``reduction`` says how the GAN generator's l_p term ``lambda * ||x - G(y)||_p^p`` reduces
    over an N x 1 x H x W batch: ``sum`` over pixels and mean over the batch (the paper's
    Eq. 17, where ``||.||_1`` sums over pixels), or ``mean`` over pixels and batch. Under
    ``mean`` the term is H*W times weaker, so the same weight reads, at H x W pixels::

        lambda_mean = lambda_sum * H * W      (32 px: lambda 10 sum = lambda 10,240 mean)

    The autoencoders always minimise the per-pixel mean: for them the reduction would only
    rescale the whole loss by H*W, which Adam undoes except through its epsilon, and keeping
    the mean keeps their trials identical to those of earlier studies. ``reduction`` is thus
    ignored by ``l1_ae``/``l2_ae`` (their trial rows carry None), like ``lambda``.
    """

    method: str = _field("beta_gan", choices=vocab.METHOD_NAMES)
    alpha: float = _field(0.5, range=(-1.0, 1.0))  # (0.5, 0.5) and (1, 1) were the paper's best
    beta: float = _field(0.5, range=(-1.0, 1.0))
    lam: float = _field(10.0, range=(0.0, None), alias="lambda")  # weight of the l_p term; 0 = pure GAN
    p: int = _field(1, choices=(1, 2))  # GAN + l1 was the paper's best pairing
    # sum: the paper's norm (sum over pixels, mean over the batch); mean: over pixels too, which
    # makes lambda H*W times weaker. The default is the paper's; studies written before this
    # key existed ran mean, and their trial rows read so (cryotune.study.labels.trial_reductions).
    reduction: str = _field("sum", choices=REDUCTIONS)
    arch: str = _field("resnet", choices=("resnet", "conv"))  # conv = Appendix Table 3, no skips
    width: int = _field(32, range=(1, 512))  # channels of the first stage; 32 -> ~1.1M-parameter GAN
    depth: int = _field(2, range=(1, 6))  # stride-2 stages; the image size must divide by 2**depth
    g_norm: str = _field("batch", choices=("batch", "instance", "none"))
    # auto = layer norm for the wgan_gp critic (its penalty is per sample), batch norm otherwise
    d_norm: str = _field("auto", choices=("auto", "batch", "layer", "instance", "none"))
    lr_d: float = _field(1e-3, range=(0.0, None))  # eta_d, Adam
    lr_g: float = _field(1e-2, range=(0.0, None))  # eta_g, Adam
    batch_size: int = _field(20, range=(1, None))  # m
    k_d: int = _field(1, range=(1, None))  # discriminator ascent steps per minibatch
    k_g: int = _field(2, range=(1, None))  # generator descent steps per minibatch
    mu: float = _field(10.0, range=(0.0, None))  # gradient-penalty weight (wgan_gp)
    clip: float = _field(0.01, range=(0.0, None))  # weight-clipping bound c (wgan)
    epochs: int = _field(20, range=(1, None))
    seed: int = _field(0, range=(0, None))  # weights and gradient-penalty draws
    checkpoint_every: int = _field(1, range=(0, None))  # epochs between checkpoints; 0 = last only
    device: str = _field("auto", choices=("auto", "cpu", "cuda"))  # auto = CUDA when present
    bf16: bool = _field(False)  # bfloat16 autocast (CUDA)
    # NHWC memory format; None = on CPU (1.27x a 32 px GAN + l1 step on one core,
    # benchmarks/trial_speed.py), off on CUDA
    channels_last: bool | None = _field(None)
    num_threads: int | None = _field(None, range=(1, None))  # torch CPU threads; None = torch's
    deterministic: bool = _field(False)  # torch.use_deterministic_algorithms, for exact resumes
    gallery: int = _field(8, range=(0, None))  # fixed test images kept for the report

    def __post_init__(self) -> None:
        for name in ("lr_d", "lr_g"):
            if getattr(self, name) <= 0:
                raise BadConfig(f"{getattr(self, name):g} is not positive", name,
                                "use a learning rate > 0, e.g. 1e-3")
        if self.method == "wgan_gp" and self.d_norm == "batch":
            raise BadConfig("the WGAN-GP critic cannot use batch norm (its gradient penalty is "
                            "per sample)", "d_norm", "use layer, instance, none or auto")

    @property
    def adversarial(self) -> bool:
        """True when the method trains a discriminator."""
        return vocab.METHODS[self.method].adversarial

    @property
    def loss_p(self) -> int:
        """The exponent of the reconstruction term: fixed by the name for the autoencoders."""
        fixed = vocab.METHODS[self.method].p
        return self.p if fixed is None else fixed

    @property
    def critic_norm(self) -> str:
        """The discriminator's normalisation with ``auto`` resolved."""
        if self.d_norm != "auto":
            return self.d_norm
        return "layer" if self.method == "wgan_gp" else "batch"
