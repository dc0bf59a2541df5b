"""A study's history folder: per-trial part files, their write order, reading and compaction.

``<study>/history.parquet/`` holds one row a (trial, epoch) in two kinds of Parquet files::

    part-<seq>-<trial>.parquet    one trial's whole history, written as the trial ended
    compacted-<seq>.parquet       many trials' histories, merged by :func:`compact`

Each row carries ``write_seq``: the writer's counter when its trial was recorded, one higher
than any number already in the folder's file names (a compacted file's name holds a number
higher than every row it merged). A trial recorded again (a retried trial re-records its whole
history) gets a higher number, so :func:`read_history` keeps, per trial, the rows of its
highest ``write_seq`` only, whatever mix of parts and compacted files it finds. A compaction
writes its file whole (a temporary hidden name renamed; one PUT on an object store) before it
deletes what it merged, so a crash leaves at worst a hidden temporary file, which no reader
opens, or a compacted file beside parts it merged, whose rows then count once. Version-1 parts
(``<trial>.parquet``, no ``write_seq``) read as ``write_seq`` 0.

Example::

    import pyarrow.fs as pafs
    fs, folder = pafs.LocalFileSystem(), "/data/studies/smoke/history.parquet"
    table = read_history(fs, folder)           # a pyarrow Table, or None
    compact(fs, folder, seq=1 + last_seq(history_files(fs, folder)))
"""

from __future__ import annotations

import io
import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from cryotune._io import atomic_write
from cryotune.errors import BadInput

__all__ = ["HISTORY_ROW_GROUP", "SEQ", "compact", "history_files", "last_seq", "part_name",
           "read_history"]

SEQ = "write_seq"
# ~650 trials of 100 epochs a row group: whole-study reads use every core, and a reader that
# wants a few trials can skip the rest by row-group statistics (rows are sorted by trial)
HISTORY_ROW_GROUP = 1 << 16
_SEQ_NAME = re.compile(r"(?:part|compacted)-(\d+)(?:-.*)?\.parquet")


def part_name(seq: int, safe_trial_id: str) -> str:
    """The file name of a trial's part written with counter ``seq``."""
    return f"part-{seq:012d}-{safe_trial_id}.parquet"


def history_files(fs: pafs.FileSystem, folder: str) -> list[pafs.FileInfo]:
    """The folder's history files (hidden and temporary ones left out), oldest first."""
    if fs.get_file_info(folder).type != pafs.FileType.Directory:
        return []
    files = [i for i in fs.get_file_info(pafs.FileSelector(folder))
             if i.type == pafs.FileType.File and i.base_name.endswith(".parquet")
             and not i.base_name.startswith((".", "_"))]
    return sorted(files, key=lambda i: (_seq_of(i.base_name), i.base_name))


def last_seq(files: list[pafs.FileInfo]) -> int:
    """The highest write counter in ``files``' names (0 when none has one)."""
    return max((_seq_of(f.base_name) for f in files), default=0)


def _seq_of(name: str) -> int:
    found = _SEQ_NAME.fullmatch(name)
    return int(found.group(1)) if found else 0


def read_history(fs: pafs.FileSystem, folder: str, *, with_files: bool = False):
    """A study's history: each trial's rows of its highest ``write_seq``, one row an epoch,
    sorted by trial and epoch.

    Reads every part and compacted file (their columns unified: a metric that only some trials
    report is null in the others). Files that a compaction deletes while they are being read
    are read again from its merged file.

    Args:
        fs, folder: the history folder (``<study>/history.parquet``).
        with_files: also return the paths read.

    Returns:
        A ``pyarrow.Table`` (``(table, paths)`` with ``with_files``), or None when there is no
        history.

    Raises:
        BadInput: a history file is unreadable.
    """
    for attempt in range(3):
        files = [f.path for f in history_files(fs, folder)]
        if not files:
            return None
        try:
            table = _read_files(fs, files)
            break
        except (pa.ArrowInvalid, OSError) as err:
            gone = [p for p in files if fs.get_file_info(p).type == pafs.FileType.NotFound]
            if not gone or attempt == 2:
                raise BadInput(f"unreadable study history ({err})", folder,
                               "restore the file, or rerun the sweep with --resume") from None
    if len(files) > 1:  # one file is sorted already: a compacted file, or one trial's part
        table = _newest(table)
    return (table, files) if with_files else table


def compact(fs: pafs.FileSystem, folder: str, seq: int,
            metadata: dict[bytes, bytes] | None = None) -> tuple[int, int]:
    """Merge the folder's history files into ``compacted-<seq>.parquet``.

    The merged file keeps each trial's newest rows, sorted by trial and epoch, in row groups of
    :data:`HISTORY_ROW_GROUP` rows; it appears whole before the files it merged are deleted.
    Files written meanwhile stay. Temporary files a crashed writer left are removed first: call
    it from the study's one writer.

    Args:
        fs, folder: the history folder.
        seq: the writer's next counter, higher than every one in the folder.
        metadata: extra Parquet schema metadata for the merged file.

    Returns:
        ``(files merged, rows written)``; ``(0, 0)`` when there were fewer than two files.

    Raises:
        BadInput: a history file is unreadable (nothing is changed).
    """
    for info in fs.get_file_info(pafs.FileSelector(folder)):
        if info.type == pafs.FileType.File and info.base_name.startswith(".") \
                and info.base_name.endswith(".tmp"):
            _delete(fs, info.path)
    merged = read_history(fs, folder, with_files=True)
    if merged is None or len(merged[1]) < 2:
        return 0, 0
    table, files = merged
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), **(metadata or {})})
    target = f"{folder}/compacted-{seq:012d}.parquet"
    sink = io.BytesIO()
    pq.write_table(table, sink, row_group_size=HISTORY_ROW_GROUP)
    atomic_write(target, sink.getvalue(), fs=fs)
    for path in files:
        if path != target:
            _delete(fs, path)
    return len(files), table.num_rows


def _delete(fs: pafs.FileSystem, path: str) -> None:
    try:
        fs.delete_file(path)
    except FileNotFoundError:
        pass  # another reader's retry or a finished cleanup got there first


def _read_files(fs: pafs.FileSystem, paths: list[str]) -> pa.Table:
    import pyarrow.dataset as pads

    factory = pads.FileSystemDatasetFactory(fs, paths, pads.ParquetFileFormat())
    # every file's schema, not the first one's: GAN trials add d_loss, g_adv, ...
    schema = factory.inspect(promote_options="permissive", fragments=None)
    table = factory.finish(schema).to_table()
    if SEQ not in table.column_names:
        return table.append_column(SEQ, pa.array(np.zeros(table.num_rows, np.int64)))
    if table[SEQ].null_count == 0:
        return table
    index = table.schema.get_field_index(SEQ)
    return table.set_column(index, SEQ, pc.fill_null(table[SEQ], 0))


def _newest(table: pa.Table) -> pa.Table:
    """Per trial, the rows of its highest ``write_seq``, one row a (trial, epoch), sorted by
    trial and epoch."""
    if table.num_rows == 0:
        return table
    # on integer codes and numpy: Arrow's group-by and sort are slow over a table of one chunk
    # a part file
    ids = pc.dictionary_encode(table["trial_id"].combine_chunks())
    rank = np.empty(len(ids.dictionary), np.int64)
    rank[pc.sort_indices(ids.dictionary).to_numpy()] = np.arange(len(ids.dictionary))
    trial = rank[ids.indices.to_numpy()]  # a trial's place in trial_id order
    epoch, seq = table["epoch"].to_numpy(), table[SEQ].to_numpy()
    order = np.lexsort((seq, epoch, trial))
    trial, epoch, seq = trial[order], epoch[order], seq[order]
    starts = np.flatnonzero(np.r_[True, trial[1:] != trial[:-1]])
    newest = np.repeat(np.maximum.reduceat(seq, starts), np.diff(np.r_[starts, len(seq)]))
    keep = seq == newest
    # rows twice with the same write_seq (a crash between a compaction's rename and its
    # deletes) are alike: keep one
    keep[1:] &= ~((trial[1:] == trial[:-1]) & (epoch[1:] == epoch[:-1]) & (seq[1:] == seq[:-1]))
    return table.take(order[keep])
