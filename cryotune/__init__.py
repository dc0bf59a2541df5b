"""cryotune: hyperparameter studies of robust cryo-EM image denoisers on Ray.

Example::

    import cryotune
    ds = cryotune.open_dataset("data/rnap-32")
    print(ds.manifest["image_shape"], ds.count("train"))

Heavy stacks (torch, Ray) load only when the name that needs them is used.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _package_version
from typing import TYPE_CHECKING, Any

from cryotune.errors import (
    BadConfig,
    BadInput,
    ChecksumMismatch,
    CryotuneError,
    Diverged,
    MissingExtra,
)

try:
    __version__ = _package_version("cryotune")
except PackageNotFoundError:  # a source tree that is not installed
    __version__ = "0+unknown"

if TYPE_CHECKING:  # pragma: no cover
    from cryotune.config import TrainConfig
    from cryotune.data.store import open_dataset
    from cryotune.results import Study, load_study

# public name -> module that defines it; imported on first use
_LAZY = {
    "open_dataset": "cryotune.data.store",
    "TrainConfig": "cryotune.config",
    "load_study": "cryotune.results",
    "Study": "cryotune.results",
}

__all__ = [
    "BadConfig",
    "BadInput",
    "ChecksumMismatch",
    "CryotuneError",
    "Diverged",
    "MissingExtra",
    "Study",
    "TrainConfig",
    "load_study",
    "open_dataset",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'cryotune' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
