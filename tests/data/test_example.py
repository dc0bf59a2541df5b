"""The RELION project of ``cryotune simulate --as-relion``: its files read back as RELION's."""

from __future__ import annotations

import mrcfile
import numpy as np
import pytest
from blobmaps import correlation, reference_projection

from cryotune import cli
from cryotune.data.example import write_relion_example
from cryotune.data.geometry import relion_euler_to_matrix
from cryotune.data.ingest import StarSource
from cryotune.data.star import read_particles
from cryotune.errors import BadInput


@pytest.mark.parametrize("size", [17, 20])
def test_particles_are_the_map_at_the_star_poses_origins_and_ctf(tmp_path, size):
    paths = write_relion_example(tmp_path / "p", size=size, n=6, snr=1e8, seed=2, stack_rows=4)
    with mrcfile.open(paths["map"]) as mrc:
        volume = mrc.data.copy()
        assert mrc.voxel_size.x == pytest.approx(paths["pixel_size"], abs=1e-4)
    table = read_particles(paths["star"])
    assert len(table) == 6 and len(table.stacks) == 2
    assert table.pixel_size == pytest.approx(paths["pixel_size"])
    with StarSource(table) as source:
        images = source.read()
    ctf = table.ctf_rows
    for i in range(6):
        A = relion_euler_to_matrix(*table.poses[i])
        # independent real-space projection, translated by -origin, times the CTF
        expected = reference_projection(volume, A, shift=table.shifts_px[i])
        expected = ctf[i:i + 1].apply(expected[None], table.pixel_size)[0]
        assert correlation(images[i], expected) > 0.98  # box-edge and Nyquist-disc losses
    assert np.abs(table.shifts_px).max() <= 1.5 + 1e-6 and (table.shifts_px < 0).any()


def test_the_cli_flag_writes_a_relion_project(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "COMMANDS", ("simulate",))
    out = tmp_path / "relion"
    argv = ["simulate", str(out), "--as-relion", "--size", "16", "--n-train", "8", "--n-test",
            "4", "--snr", "0.2"]
    assert cli.main(argv) == 0
    assert "12 particles with poses and CTF" in capsys.readouterr().out
    assert len(read_particles(out / "particles.star")) == 12
    assert cli.main(argv) == 2  # exists: one error line
    assert "already exists" in capsys.readouterr().err
    assert cli.main([*argv, "--overwrite", "--conformations", "3"]) == 2
    with pytest.raises(BadInput, match="positive SNR"):
        write_relion_example(tmp_path / "x", snr=0)
