"""Errors raised by cryotune.

Every error a user can cause is a :class:`CryotuneError`. It carries three parts, so the
command line can print one actionable line::

    error: <what went wrong>, <where: file, key path, row>: <how to fix it>

The tree::

    CryotuneError            root; never raised bare
    ├── BadInput             a data file or argument is unreadable, malformed or inconsistent
    │   └── ChecksumMismatch a dataset shard changed after it was written
    ├── BadConfig            a YAML config or override has an unknown key, a wrong type or a
    │                        value out of range (``where`` is the key path)
    ├── Diverged             training produced a NaN or inf loss or output
    ├── StudyLocked          another process writes the study (its lock names host, pid, since)
    └── MissingExtra         an optional dependency is not installed

``cryotune.cli.main`` turns these into the one ``error:`` line and exit status 2; ``--debug``
shows the traceback instead.

:class:`Terminated` is no user error: the command line raises it from its SIGTERM handler so
that SIGTERM unwinds through the same cleanup as Ctrl-C (it is a ``KeyboardInterrupt``).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "BadConfig",
    "BadInput",
    "ChecksumMismatch",
    "CryotuneError",
    "Diverged",
    "MissingExtra",
    "StudyLocked",
    "Terminated",
]


class CryotuneError(Exception):
    """Root of every error a user can cause.

    Args:
        what: what went wrong, e.g. ``"particle stack is empty"``.
        where: the file, key path, row or index it concerns, e.g. ``"data/p.mrcs"``.
        fix: how to fix it, e.g. ``"pass a stack with at least one image"``.
    """

    def __init__(self, what: str, where: str | None = None, fix: str | None = None):
        self.what = what
        self.where = where
        self.fix = fix
        super().__init__(self.message)

    @property
    def message(self) -> str:
        text = self.what
        if self.where:
            text += f", {self.where}"
        if self.fix:
            text += f": {self.fix}"
        return text

    def __str__(self) -> str:
        return self.message

    def __reduce__(self):  # keep the three parts across pickling (Ray ships errors between processes)
        return (_rebuild, (type(self), self.what, self.where, self.fix, self.__dict__))


def _rebuild(cls, what, where, fix, state):
    err = cls.__new__(cls)
    CryotuneError.__init__(err, what, where, fix)
    err.__dict__.update(state)
    return err


class BadInput(CryotuneError):
    """Raised when a data file or argument is unreadable, malformed or inconsistent."""


class ChecksumMismatch(BadInput):
    """Raised when a dataset shard's sha256 no longer matches its manifest entry."""


class BadConfig(CryotuneError):
    """Raised when a config has an unknown key, a wrong type or an out-of-range value.

    ``where`` is the key path, e.g. ``methods[2].alpha``.
    """


class Diverged(CryotuneError):
    """Raised when training produces a NaN or inf loss or output.

    Attributes:
        epoch: the epoch (0-based) in which the non-finite value appeared.
        last_metrics: the last epoch's finite metrics (empty before the first epoch ends).
    """

    def __init__(self, what: str, where: str | None = None, fix: str | None = None, *,
                 epoch: int = -1, last_metrics: dict[str, Any] | None = None):
        super().__init__(what, where, fix)
        self.epoch = epoch
        self.last_metrics = dict(last_metrics or {})


class MissingExtra(CryotuneError):
    """Raised when a feature needs an optional dependency that is not installed."""

    def __init__(self, feature: str, extra: str, module: str):
        super().__init__(
            f"{feature} needs the optional package '{module}'",
            "not installed",
            f"pip install 'cryotune[{extra}]'",
        )
        self.extra = extra
        self.module = module


class StudyLocked(CryotuneError):
    """Raised when another process holds a study's lock (a sweep, resume, extend, baselines
    or validation writing it).

    Attributes:
        holder: the lock file's record: ``host``, ``pid``, ``since`` (ISO time, UTC) and
            ``command``, as far as they could be read.
    """

    def __init__(self, what: str, where: str | None = None, fix: str | None = None, *,
                 holder: dict[str, Any] | None = None):
        super().__init__(what, where, fix)
        self.holder = dict(holder or {})


class Terminated(KeyboardInterrupt):
    """Raised in the main thread when the process receives SIGTERM (exit status 143).

    A ``KeyboardInterrupt``, so every ``except KeyboardInterrupt`` and cleanup path that
    handles Ctrl-C handles SIGTERM alike; tell the two apart with ``isinstance``.
    """
