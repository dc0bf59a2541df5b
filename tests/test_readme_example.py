"""The README's "Your own data" example, run tiny: the commands are read from the README itself.

Each ``cryotune`` line of the section's bash block runs as a real subprocess in a temporary
folder, with the sizes shrunk (24 px, 360 particles, 1 epoch); the report must show the
half-map FSC of the raw and the denoised particles, and denoise must write a STAR file.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import starfile

from cryotune.study.tables import load_study

ROOT = Path(__file__).resolve().parents[1]
# the tiny run: option -> value, and options added to a command
SHRINK = {"--size": "24", "--n-train": "240", "--n-test": "120"}
EXTRA = {"sweep": ["--set", "epochs=1"]}


def readme_commands() -> list[list[str]]:
    """The ``cryotune`` command lines of the README's "Your own data" bash block."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Your own data\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "the README's 'Your own data' section has no bash block"
    return [shlex.split(line) for line in block.group(1).splitlines()
            if line.startswith("cryotune ")]


def _tiny(argv: list[str]) -> list[str]:
    out = [SHRINK.get(argv[i - 1], a) if i else a for i, a in enumerate(argv)]
    out = [str(ROOT / a) if a.startswith("search_spaces/") else a for a in out]
    return out + EXTRA.get(argv[1], [])


def test_readme_lists_the_whole_path():
    names = [argv[1] for argv in readme_commands()]
    assert names == ["simulate", "ingest", "sweep", "report", "denoise"]
    assert "--as-relion" in readme_commands()[0] and "--map" in readme_commands()[1]


@pytest.mark.timeout(900)
def test_readme_example_runs_tiny(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    for argv in readme_commands():
        cmd = [sys.executable, "-m", "cryotune", *_tiny(argv)[1:]]
        done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, f"{shlex.join(argv)}\n{done.stdout}\n{done.stderr}"

    study = load_study(tmp_path / "example/studies/own-data")
    rows = study.trials[study.trials["status"] == "finished"]
    assert len(rows) == 2
    half = pd.to_numeric(rows["fsc_half_res_0143_A"])
    assert half.notna().all() and (half > 0).all()
    assert (rows["fsc_vs_truth"] == 0).all()
    assert pd.to_numeric(rows["fsc_map_res_0143_A"]).notna().all()
    n_test = int(rows["fsc_n_images"].iloc[0])
    assert n_test == round(0.3 * 360)

    html = (tmp_path / "example/own-data-report.html").read_text()
    table = html.split("Half-map FSC without ground truth", 1)[1]
    assert "raw particles" in table and "denoised: " in table
    assert f"{n_test:,}" in table and "biased" in table
    (_, key, ref), = [(s, k, m["validation"]) for (s, k), m in study.datasets.items()]
    raw = ref["noisy"]["fsc_half_res_0143_A"]
    assert f"{raw:.1f}" in table

    star = tmp_path / "example/denoised/particles.star"
    particles = starfile.read(star)["particles"]
    assert len(particles) == 360
    assert particles["rlnImageName"].str.endswith("@particles.mrcs").all()
    assert (star.parent / "particles.mrcs").is_file()
