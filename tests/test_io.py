"""Atomic writes and study locations, on real files and real pyarrow filesystems."""

import os
import stat

import pyarrow.fs as pafs
import pytest

from cryotune._io import atomic_write, join, resolve, storage_root, study_location
from cryotune.errors import BadInput


def test_atomic_write_replaces_whole_files_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "out.txt"
    atomic_write(path, "one")
    atomic_write(path, b"two", fsync=True)
    assert path.read_text() == "two"
    assert os.listdir(tmp_path) == ["out.txt"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # as open() would give


def test_atomic_write_through_a_pyarrow_filesystem(tmp_path):
    fs = pafs.LocalFileSystem()
    atomic_write(f"{tmp_path}/t.bin", b"\x00\x01", fs=fs)
    assert (tmp_path / "t.bin").read_bytes() == b"\x00\x01"
    mock = pafs._MockFileSystem()  # pyarrow's in-memory filesystem: one PUT, no rename
    mock.create_dir("bucket")
    atomic_write("bucket/t.bin", b"abc", fs=mock)
    with mock.open_input_stream("bucket/t.bin") as f:
        assert f.read() == b"abc"


def test_a_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "out.txt"
    atomic_write(path, "old")
    with pytest.raises(TypeError):
        atomic_write(path, 3.5)  # not bytes: nothing replaced, nothing left behind
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["out.txt"]


def test_study_locations(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert study_location("studies/smoke") == (str(tmp_path / "studies"), "smoke")
    assert study_location("smoke/") == (str(tmp_path), "smoke")
    assert study_location("s3://lab/studies/smoke") == ("s3://lab/studies", "smoke")
    with pytest.raises(BadInput):
        study_location("s3://bucket")
    assert storage_root("studies") == str(tmp_path / "studies")
    assert storage_root(f"file://{tmp_path}/s/") == f"{tmp_path}/s"
    assert storage_root("s3://lab/studies/") == "s3://lab/studies"
    assert join("s3://lab/studies/", "t") == "s3://lab/studies/t"
    fs, path = resolve("studies")
    assert isinstance(fs, pafs.LocalFileSystem) and path == str(tmp_path / "studies")
    with pytest.raises(BadInput, match="cannot open storage URI"):
        resolve("nosuchscheme://x/y")
