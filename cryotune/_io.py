"""Plumbing every writer and reader shares: atomic writes, and where a study lives.

A study is a folder ``<root>/<name>``: ``root`` a local folder, ``file://`` path or any pyarrow
filesystem URI (``s3://bucket/studies``). :func:`study_location` splits a study's folder or URI
into the two, :func:`resolve` turns a path or URI into a pyarrow filesystem and a path in it.

Example::

    from cryotune._io import atomic_write, study_location
    atomic_write("out/report.html", "<html>...</html>")
    study_location("s3://lab/studies/smoke")   # ("s3://lab/studies", "smoke")
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs

from cryotune.errors import BadInput

__all__ = ["atomic_write", "join", "resolve", "storage_root", "study_location"]


def atomic_write(path: str | Path, data: bytes | str, *, fs: pafs.FileSystem | None = None,
                 fsync: bool = False) -> None:
    """Write ``data`` so that a reader sees the old file or the new one, never half of one.

    Locally the bytes go to a hidden temporary sibling (``.<name>.<random>.tmp``, a name every
    reader of a store skips) that is renamed over ``path``; the file gets the permissions a
    plain ``open()`` would give it. On an object store a single PUT is atomic by itself.

    Args:
        path: the destination (a local path, or a path in ``fs``).
        data: the contents; text is written as UTF-8.
        fs: a pyarrow filesystem; None (or a local one) writes to the local disk.
        fsync: flush the file to the disk before the rename (checkpoints).
    """
    raw = data.encode() if isinstance(data, str) else data
    if fs is not None and not isinstance(fs, pafs.LocalFileSystem):
        with fs.open_output_stream(str(path)) as out:
            out.write(raw)
        return
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would hide shared files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def resolve(uri: str | Path) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and the path in it for a local path or a URI.

    Raises:
        BadInput: the URI's scheme or bucket cannot be opened.
    """
    text = str(uri)
    if "://" in text:
        try:
            return pafs.FileSystem.from_uri(text)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as err:
            raise BadInput(f"cannot open storage URI ({err})", text,
                           "use a local folder, file://, s3:// or gs:// URI") from None
    return pafs.LocalFileSystem(), str(Path(text).expanduser().resolve())


def join(*parts: str) -> str:
    """Path parts joined with ``/`` (pyarrow paths and URIs alike); empty parts are skipped."""
    return "/".join(p.rstrip("/") for p in parts if p)


def storage_root(root: str | Path) -> str:
    """A storage root as the study store names it: local folders absolute (``file://``
    dropped), other URIs as given."""
    text = str(root)
    if text.startswith("file://"):
        text = text[len("file://"):]
    if "://" not in text:
        text = str(Path(text).expanduser().resolve())
    return text.rstrip("/") or "/"


def study_location(study: str | Path) -> tuple[str, str]:
    """``(storage root, name)`` of a study's folder or URI: ``studies/smoke`` gives
    ``(<abs>/studies, "smoke")``; a bare name lies in the current folder.

    Raises:
        BadInput: the path names no folder (``/`` or an empty string).
    """
    text = str(study).rstrip("/")
    if "://" in text:
        root, _, name = text.rpartition("/")
        if not name or root.endswith(":/"):
            raise BadInput("a study URI needs a folder name", str(study),
                           "pass <storage>/<name>, e.g. s3://bucket/studies/smoke")
        return root, name
    if not text:
        raise BadInput("no study folder given", repr(str(study)), "pass <storage>/<name>")
    path = Path(text).expanduser().resolve()
    return str(path.parent), path.name
