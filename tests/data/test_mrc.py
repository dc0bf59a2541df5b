"""MRC stacks: permissive reading of files as other programs write them, atomic writing."""

from __future__ import annotations

import tracemalloc

import mrcfile
import numpy as np
import pytest

from cryotune.data.mrc import StackWriter, open_stack, write_stack
from cryotune.errors import BadInput

RNG = np.random.default_rng(7)


def _mrc(path, data, *, voxel=None, stack=None):
    """Write ``data`` with mrcfile as other tools do; ``stack`` picks the space group."""
    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(data)
        if stack is True:
            m.set_image_stack()
        if voxel is not None:
            m.voxel_size = voxel
    return path


def _patch(path, offset, raw: bytes):
    b = bytearray(path.read_bytes())
    b[offset:offset + len(raw)] = raw
    path.write_bytes(bytes(b))


def test_write_stack_round_trip_and_header(tmp_path):
    images = RNG.standard_normal((7, 20, 24)).astype(np.float32)
    out = write_stack(tmp_path / "out.mrcs", images, pixel_size=1.34)
    assert out == tmp_path / "out.mrcs"
    assert [p.name for p in tmp_path.iterdir()] == ["out.mrcs"]  # no temporary left behind
    with mrcfile.open(out) as m:  # strict mode: a standard file
        assert m.header.ispg == 0 and m.header.mz == 1
        np.testing.assert_allclose(m.voxel_size.x, 1.34, rtol=1e-6)
        np.testing.assert_array_equal(m.data, images)
        np.testing.assert_allclose(m.header.dmin, images.min())
        np.testing.assert_allclose(m.header.dmax, images.max())
        np.testing.assert_allclose(m.header.dmean, images.mean(dtype=np.float64), rtol=1e-5)
        np.testing.assert_allclose(m.header.rms, images.std(dtype=np.float64), rtol=1e-5)
    with open_stack(out) as s:
        assert s.shape == (7, 20, 24) and s.pixel_size == pytest.approx(1.34, rel=1e-6)
        np.testing.assert_array_equal(s.read(), images)
        np.testing.assert_array_equal(s.read(2, 5), images[2:5])
        np.testing.assert_array_equal(s.take(np.array([6, 0, 3])), images[[6, 0, 3]])


def test_write_stack_single_image_and_replace(tmp_path):
    path = write_stack(tmp_path / "a.mrcs", np.ones((16, 16)), 2.0)
    write_stack(path, np.zeros((3, 16, 16)), 2.0)
    with open_stack(path) as s:
        assert s.shape == (3, 16, 16)
        assert not s.read().any()


def test_stack_writer_failure_leaves_old_file_and_no_temporary(tmp_path):
    path = write_stack(tmp_path / "keep.mrcs", np.ones((2, 16, 16)), 1.5)
    with pytest.raises(RuntimeError), StackWriter(path, (4, 16, 16), 1.5) as w:
        w.write(np.zeros((2, 16, 16)))
        raise RuntimeError("interrupted")
    with pytest.raises(ValueError, match="only 1 of 4"), StackWriter(path, (4, 16, 16), 1.5) as w:
        w.write(np.zeros((16, 16)))
    assert [p.name for p in tmp_path.iterdir()] == ["keep.mrcs"]
    with open_stack(path) as s:
        assert s.shape == (2, 16, 16) and (s.read() == 1).all()


@pytest.mark.parametrize("voxel, expected", [(0.0, None), (1.0, None), (1.7, 1.7)])
def test_header_pixel_size_zero_and_one_are_unknown(tmp_path, voxel, expected):
    path = _mrc(tmp_path / "p.mrcs", np.zeros((3, 16, 16), np.float32), voxel=voxel, stack=True)
    with open_stack(path) as s:
        assert s.pixel_size == (None if expected is None else pytest.approx(expected, rel=1e-6))


def test_header_without_map_id_and_with_wrong_machine_stamp(tmp_path):
    data = RNG.standard_normal((4, 16, 16)).astype(">f4")  # big-endian data
    path = _mrc(tmp_path / "old.mrcs", data, voxel=2.5, stack=True)
    _patch(path, 208, b"\0\0\0\0")  # no 'MAP ' id string
    _patch(path, 212, bytes([0x44, 0x44, 0, 0]))  # machine stamp says little-endian
    with pytest.raises(ValueError):
        mrcfile.open(path)  # strict readers refuse it
    with open_stack(path) as s:
        assert s.pixel_size == pytest.approx(2.5)
        np.testing.assert_array_equal(s.read(), data.astype(np.float32))


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.uint16, np.float16, np.float32])
def test_integer_and_half_modes_become_float32(tmp_path, dtype):
    data = (RNG.random((3, 17, 17)) * 100).astype(dtype)
    path = _mrc(tmp_path / "m.mrcs", data, stack=True)
    with open_stack(path) as s:
        got = s.read()
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, data.astype(np.float32))


def test_volume_or_stack_rule(tmp_path):
    cube = RNG.standard_normal((16, 16, 16)).astype(np.float32)
    slab = RNG.standard_normal((5, 16, 16)).astype(np.float32)
    # space group 1 (mrcfile's default for 3D data) with nz != nx: a mislabelled stack
    with open_stack(_mrc(tmp_path / "ispg1.mrc", slab)) as s:
        assert s.shape == (5, 16, 16)
    # a cubic .mrc with space group 1 is a real 3D map
    vol = _mrc(tmp_path / "map.mrc", cube)
    with pytest.raises(BadInput, match=r"looks like a 3D volume.*map\.mrc.*--stack"):
        open_stack(vol)
    with open_stack(vol, force_stack=True) as s:  # the override
        np.testing.assert_array_equal(s.read(), cube)
    # the .mrcs extension, or space group 0, says stack even for a cube
    with open_stack(_mrc(tmp_path / "cube.mrcs", cube)) as s:
        assert len(s) == 16
    with open_stack(_mrc(tmp_path / "cube0.mrc", cube, stack=True)) as s:
        assert len(s) == 16
    # a single 2D image is a stack of one
    with open_stack(_mrc(tmp_path / "one.mrc", cube[0])) as s:
        assert s.shape == (1, 16, 16)


def test_bad_files_name_the_file(tmp_path):
    good = _mrc(tmp_path / "good.mrcs", np.zeros((4, 16, 16), np.float32), stack=True)
    raw = good.read_bytes()
    cases = {
        "empty.mrcs": (b"", "empty"),
        "short.mrcs": (raw[:500], "shorter than the 1024-byte header"),
        "text.mrcs": (b"not an image\n" * 200, "unknown data mode"),
        "cut.mrcs": (raw[:-16 * 16 * 4 - 3], "truncated"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(BadInput, match=message) as err:
            open_stack(tmp_path / name)
        assert name in str(err.value)
    complex_path = _mrc(tmp_path / "fft.mrcs", np.zeros((2, 16, 16), np.complex64), stack=True)
    with pytest.raises(BadInput, match=r"complex.*fft\.mrcs"):
        open_stack(complex_path)
    with pytest.raises(BadInput, match=r"not found.*missing\.mrcs"):
        open_stack(tmp_path / "missing.mrcs")
    zero_nz = tmp_path / "zero.mrcs"
    zero_nz.write_bytes(raw)
    _patch(zero_nz, 8, np.int32(0).tobytes())
    with pytest.raises(BadInput, match="nz=0"):
        open_stack(zero_nz)


def test_chunks_cover_the_stack_and_memory_stays_at_one_chunk(tmp_path):
    n, size, rows = 96, 32, 8
    images = RNG.standard_normal((n, size, size)).astype(np.float32)
    path = write_stack(tmp_path / "big.mrcs", images, 1.0)
    chunk_bytes = rows * size * size * 4
    assert images.nbytes >= 10 * chunk_bytes
    sums = [float(images[i:i + rows].sum(dtype=np.float64)) for i in range(0, n, rows)]
    seen = 0
    with open_stack(path) as s:
        tracemalloc.start()
        try:
            for start, chunk in s.iter_chunks(rows):
                assert start == seen and 0 < len(chunk) <= rows
                assert float(chunk.sum()) == pytest.approx(sums[start // rows], rel=1e-4)
                seen += len(chunk)
                del chunk
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert seen == n
    # the memory map is not counted; what is allocated is one chunk (plus small overhead)
    assert peak < 1.5 * chunk_bytes
    with open_stack(path) as s, pytest.raises(IndexError):
        s.read(90, 100)
