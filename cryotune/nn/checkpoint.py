"""The trainer's checkpoint file: atomic writes, safe loading, and the RNG states it carries.

A checkpoint is one ``torch.save`` mapping of plain types and tensors only, so that
``torch.load(weights_only=True)`` reads it without running pickled code::

    format            "cryotune.checkpoint"
    format_version    1
    cryotune_version  the writer's version
    config            the TrainConfig as a plain dict (YAML keys: "lambda", not "lam")
    image_shape       [H, W]
    epoch             epochs completed
    history           list of per-epoch metric dicts (what ``train`` returned so far)
    generator, discriminator        state_dicts (discriminator None for l1_ae/l2_ae)
    opt_g, opt_d                    Adam state_dicts (opt_d None for l1_ae/l2_ae)
    rng               {"torch": ByteTensor, "cuda": [ByteTensor] , "numpy": {...}, "python": [...]}

Example::

    from cryotune.nn.checkpoint import read_checkpoint
    ckpt = read_checkpoint("runs/demo/model.pt")
    print(ckpt["epoch"], ckpt["config"]["method"])
"""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cryotune._io import atomic_write
from cryotune._version import __version__
from cryotune.errors import BadInput

__all__ = ["FORMAT", "FORMAT_VERSION", "read_checkpoint", "rng_state", "set_rng_state",
           "write_checkpoint"]

FORMAT = "cryotune.checkpoint"
FORMAT_VERSION = 1
_KEYS = ("config", "image_shape", "epoch", "history", "generator", "discriminator", "opt_g",
         "opt_d", "rng")


def rng_state() -> dict[str, Any]:
    """The torch (CPU and CUDA), numpy-global and python RNG states as weights_only-safe types."""
    np_state = np.random.get_state(legacy=False)
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured (CUDA states only where CUDA is present)."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    npst = state["numpy"]
    np.random.set_state({
        "bit_generator": npst["bit_generator"],
        "state": {"key": npst["key"].numpy().astype(np.uint32), "pos": npst["pos"]},
        "has_gauss": npst["has_gauss"],
        "gauss": npst["gauss"],
    })
    random.setstate(state["python"])


def write_checkpoint(payload: dict[str, Any], path: str | Path) -> Path:
    """Write ``payload`` (the keys above, without the format stamps) to ``path`` atomically.

    The file is written to a temporary sibling, flushed to disk, then renamed over ``path``:
    a reader sees the old checkpoint or the new one, never a half-written file.

    Args:
        payload: the checkpoint contents (plain types and tensors).
        path: the destination file.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stamped = {"format": FORMAT, "format_version": FORMAT_VERSION,
               "cryotune_version": __version__, **payload}
    buf = io.BytesIO()
    torch.save(stamped, buf)
    atomic_write(path, buf.getvalue(), fsync=True)
    return path


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load and check a checkpoint with ``torch.load(weights_only=True)`` onto the CPU.

    Raises:
        BadInput: when the file is missing, is not a cryotune checkpoint, or comes from a newer
            cryotune.
    """
    path = Path(path)
    if not path.is_file():
        raise BadInput("model file not found", str(path), "check the path")
    fix = "pass a model.pt or checkpoint.pt written by 'cryotune train' or a sweep"
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many kinds for foreign files; none of them is ours
        raise BadInput(f"not a cryotune model file ({type(err).__name__})", str(path),
                       fix) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise BadInput("not a cryotune model file (no cryotune checkpoint header)", str(path), fix)
    if ckpt.get("format_version", 0) > FORMAT_VERSION:
        raise BadInput(f"written by a newer cryotune ({ckpt.get('cryotune_version')}) in checkpoint "
                       f"format {ckpt['format_version']}", str(path), "upgrade cryotune")
    missing = [k for k in _KEYS if k not in ckpt]
    if missing:
        raise BadInput(f"incomplete cryotune checkpoint (missing {', '.join(missing)})",
                       str(path), fix)
    return ckpt
