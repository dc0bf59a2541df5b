"""cryotune: hyperparameter studies of robust cryo-EM image denoisers on Ray.

Example::

    import cryotune
    ds = cryotune.open_dataset("data/rnap-32")
    print(ds.manifest["image_shape"], ds.count("train"))

The names a notebook needs: datasets (``open_dataset``), sweeps (``load_spec``, ``SweepSpec``,
``run_sweep``, ``extend_study``), one training run (``train``, ``TrainConfig``), studies (``load_study``,
``Study``; ``Study.compare`` and ``Study.select`` answer with a ``Comparison`` and a
``Selection``), the report (``build_report``), baselines and validation (``run_baselines``,
``validate_study``) and the errors. Heavy stacks (torch, Ray, the report) load only when the
name that needs them is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from cryotune._version import __version__
from cryotune.errors import (
    BadConfig,
    BadInput,
    ChecksumMismatch,
    CryotuneError,
    Diverged,
    MissingExtra,
)

if TYPE_CHECKING:  # pragma: no cover
    from cryotune.config import TrainConfig
    from cryotune.data.store import open_dataset
    from cryotune.report import build_report
    from cryotune.runs.baselines import run_baselines
    from cryotune.runs.sweep import extend_study, run_sweep
    from cryotune.runs.train import train
    from cryotune.runs.validate import validate_study
    from cryotune.study.compare import Comparison
    from cryotune.study.select import Selection
    from cryotune.study.tables import Study, load_study
    from cryotune.sweep.spec import SweepSpec, load_spec

# public name -> module that defines it; imported on first use
_LAZY = {
    "open_dataset": "cryotune.data.store",
    "TrainConfig": "cryotune.config",
    "load_study": "cryotune.study.tables",
    "Study": "cryotune.study.tables",
    "Comparison": "cryotune.study.compare",
    "Selection": "cryotune.study.select",
    "SweepSpec": "cryotune.sweep.spec",
    "load_spec": "cryotune.sweep.spec",
    "run_sweep": "cryotune.runs.sweep",
    "extend_study": "cryotune.runs.sweep",
    "run_baselines": "cryotune.runs.baselines",
    "validate_study": "cryotune.runs.validate",
    "train": "cryotune.runs.train",
    "build_report": "cryotune.report",
}

__all__ = [
    "BadConfig",
    "BadInput",
    "ChecksumMismatch",
    "Comparison",
    "CryotuneError",
    "Diverged",
    "MissingExtra",
    "Selection",
    "Study",
    "SweepSpec",
    "TrainConfig",
    "__version__",
    "build_report",
    "extend_study",
    "load_spec",
    "load_study",
    "open_dataset",
    "run_baselines",
    "run_sweep",
    "train",
    "validate_study",
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
