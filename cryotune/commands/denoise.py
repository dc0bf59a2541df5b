"""Denoise a particle stack (MRC/MRCS) or a RELION particle STAR file with a trained model.

The images stream through memory maps, --batch-size at a time, so a stack larger than memory
works. The output stack keeps the input's voxel size. A STAR input gives a STAR output with the
same blocks and columns whose rlnImageName points at a new stack next to it (OUT with the
suffix .mrcs), in the STAR file's particle order. Outputs are written atomically. The model
must have been trained at the images' size. ``--model`` also takes a study: its best trial,
chosen on validation (:meth:`cryotune.study.tables.Study.best`), or ``--trial ID``, applied at
its best validation epoch (``best.pt`` beside the trial's last checkpoint; a study recorded
before validation selection has only the last one, used with a warning).

Example usage:

    cryotune denoise --model runs/l1-gan/model.pt --input particles.mrcs --output denoised.mrcs
    cryotune denoise --model runs/l1-gan/model.pt --input run_data.star --output denoised.star
    cryotune denoise --model studies/paper-fig5-robustness --input run_data.star --output denoised.star
    cryotune denoise --model model.pt --input particles.mrcs --output d.mrcs --device cpu --batch-size 256
"""

from __future__ import annotations

import argparse
import contextlib
import logging
from pathlib import Path

import numpy as np

from cryotune._io import join, resolve
from cryotune.data.mrc import StackWriter, open_stack
from cryotune.data.star import read_particles, stack_image_names, write_particles
from cryotune.errors import BadInput
from cryotune.study.tables import load_study

log = logging.getLogger(__name__)


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True,
                        help="model.pt from 'cryotune train', a sweep checkpoint, or a study folder "
                             "(its best trial)")
    parser.add_argument("--trial", default=None,
                        help="with a study as --model: this trial instead of the best one")
    parser.add_argument("--input", required=True, help="particle stack (.mrcs/.mrc) or .star")
    parser.add_argument("--output", required=True,
                        help=".mrcs for a stack input, .star for a STAR input")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where the model runs (default: CUDA when present)")
    parser.add_argument("--batch-size", type=int, default=64,
                        help="images per forward pass and per read (default 64)")


def _model_path(model: str, trial: str | None) -> str:
    """A checkpoint file: ``model`` itself, or the chosen trial's checkpoint in a study."""
    if not (Path(model).is_dir() or "://" in model):
        if trial is not None:
            raise BadInput("--trial needs a study as --model", model, "pass the study folder")
        return model
    study = load_study(model)
    if trial is None:
        row = study.best(with_model=True)
    else:
        rows = study.trials[study.trials["trial_id"] == trial]
        if rows.empty:
            raise BadInput(f"no trial {trial!r} in the study", model,
                           "see the trial ids with `cryotune query STUDY --all`")
        row = rows.iloc[0]
    last = row.get("checkpoint")
    if not isinstance(last, str):
        raise BadInput(f"trial {row['trial_id']} has no model", model, "choose a finished trial")
    path = _best_checkpoint(last)
    if path == last:
        log.warning("trial %s has no best.pt (recorded before validation selection): using its "
                    "last checkpoint", row["trial_id"])
    log.info("using trial %s, epoch %s (selection score %s): %s", row["trial_id"],
             row.get("best_epoch"), row.get("select_score"), path)
    if "://" in path:  # a remote study: fetch the checkpoint once into a local temporary file
        import tempfile

        import pyarrow.fs as pafs

        fs, remote = pafs.FileSystem.from_uri(path)
        local = Path(tempfile.mkdtemp(prefix="cryotune-model-")) / "checkpoint.pt"
        with fs.open_input_stream(remote) as src, open(local, "wb") as dst:
            dst.write(src.read())
        return str(local)
    return path


def _best_checkpoint(last: str) -> str:
    """The trial's best validation epoch's checkpoint (``best.pt`` beside its last one), or
    ``last`` when there is none."""
    import pyarrow.fs as pafs

    from cryotune.nn.train import BEST_NAME

    folder, _, _ = last.rstrip("/").rpartition("/")
    candidate = join(folder, BEST_NAME) if folder else BEST_NAME
    try:
        fs, local = resolve(candidate)
        found = fs.get_file_info(local).type == pafs.FileType.File
    except (BadInput, OSError):
        found = False
    return candidate if found else last


def _check_paths(src: Path, out: Path) -> bool:
    """Validate the input/output pair; True for a STAR input."""
    star = src.suffix.lower() == ".star"
    if star != (out.suffix.lower() == ".star"):
        raise BadInput(f"{'a STAR' if star else 'an MRC stack'} input needs "
                       f"{'a .star' if star else 'an .mrcs'} output", str(out),
                       "give --output the input's kind of file")
    if out.resolve() == src.resolve():
        raise BadInput("the output would overwrite the input", str(out), "choose another --output")
    if out.parent.exists() and not out.parent.is_dir():
        raise BadInput("output folder is a file", str(out.parent), "choose another --output")
    return star


def main(args: argparse.Namespace) -> int:
    src, out = Path(args.input), Path(args.output)
    star = _check_paths(src, out)
    if args.batch_size < 1:
        raise BadInput(f"--batch-size {args.batch_size} is not positive", "--batch-size",
                       "use 1 or more")

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from cryotune.nn.train import Trainer  # torch: only when a stack is denoised

    trainer = Trainer.load_checkpoint(_model_path(args.model, args.trial), device=args.device)
    shape = trainer.image_shape

    def check_size(stack) -> None:
        if tuple(stack.shape[1:]) != shape:
            raise BadInput(f"the model was trained on {shape[0]}x{shape[1]} images, the stack "
                           f"holds {stack.shape[1]}x{stack.shape[2]}", str(stack.path),
                           "denoise images of the model's size, or train a model at this size")

    if star:
        table = read_particles(src)
        paths, stack_out = table.stacks, out.with_suffix(".mrcs")
        if any(p.resolve() == stack_out.resolve() for p in paths):
            raise BadInput("the output stack would overwrite an input stack", str(stack_out),
                           "choose another --output")
    else:
        table, paths, stack_out = None, [src], out
    with contextlib.ExitStack() as opened:
        sources = [opened.enter_context(open_stack(p, force_stack=star)) for p in paths]
        for s in sources:
            check_size(s)
        n = len(table) if star else sources[0].shape[0]
        pixel_size = sources[0].pixel_size or (table.pixel_size if star else None) or 1.0

        def chunks():
            bs = args.batch_size
            if not star:
                yield from (images for _, images in sources[0].iter_chunks(bs))
                return
            for start in range(0, n, bs):
                ids = table.stack_ids[start:start + bs]
                idx = table.indices[start:start + bs]
                images = np.empty((len(ids), *shape), dtype=np.float32)
                for s in np.unique(ids):
                    images[ids == s] = sources[s].take(idx[ids == s])
                yield images

        progress = Progress(TextColumn("denoise"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn())
        out.parent.mkdir(parents=True, exist_ok=True)  # as other denoisers do: out/ is made
        with progress, StackWriter(stack_out, (n, *shape), pixel_size) as writer:
            task = progress.add_task("denoise", total=n)
            for images in chunks():
                writer.write(trainer.denoise(images, batch_size=args.batch_size))
                progress.advance(task, len(images))
    if star:
        write_particles(out, table, stack_image_names(stack_out, n, relative_to=out.parent))
    print(f"denoised {n} images ({shape[0]}x{shape[1]}, {pixel_size:g} A/px) -> {out}"
          + (f" and {stack_out}" if star else ""))
    return 0
