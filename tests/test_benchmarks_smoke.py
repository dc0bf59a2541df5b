"""The new benchmarks' --smoke presets run end to end (tiny sizes, no timing asserts).

Each script is imported from the repository's benchmarks/ folder and its ``main(["--smoke"])``
run in this process, against the session's Ray; a smoke run prints its record and writes no
report, which is checked too.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(scope="module")
def scripts():
    sys.path.insert(0, str(BENCHMARKS))
    yield importlib.import_module
    sys.path.remove(str(BENCHMARKS))


def run_smoke(scripts, name: str, capsys) -> dict:
    reports = BENCHMARKS.parent / "reports" / "benchmarks"
    before = {p: p.stat().st_mtime_ns for p in reports.glob("*")}
    assert scripts(name).main(["--smoke"]) == 0
    assert {p: p.stat().st_mtime_ns for p in reports.glob("*")} == before  # prints only
    out = capsys.readouterr().out
    return json.loads(out[out.index("{\n"):])


def test_common_section_writer_keeps_other_sections(scripts, tmp_path):
    common = scripts("_common")
    path = tmp_path / "B.md"
    common.write_section(path, "<!-- a -->\none\n<!-- /a -->", "<!-- a -->", "<!-- /a -->")
    common.write_section(path, "<!-- b -->\ntwo\n<!-- /b -->", "<!-- b -->", "<!-- /b -->")
    common.write_section(path, "<!-- a -->\nthree\n<!-- /a -->", "<!-- a -->", "<!-- /a -->")
    assert path.read_text() == "# Benchmarks\n\n<!-- a -->\nthree\n<!-- /a -->\n\n<!-- b -->\ntwo\n<!-- /b -->\n"
    facts = common.machine(extras=("no-such-distribution",))
    assert facts["cores"] >= 1 and len(facts["load_average"]) == 3
    assert facts["extras"] == {"no-such-distribution": None}


def test_study_scale_smoke(scripts, capsys):
    report = run_smoke(scripts, "study_scale", capsys)
    r = report["results"]
    assert r["trials"] == 201  # 200 written in bulk + one through record_trial
    assert r["history_rows"] == 201 * report["epochs"]
    assert r["render_chars"] > 0


def test_pipeline_headroom_smoke(scripts, capsys, ray_session):
    report = run_smoke(scripts, "pipeline_headroom", capsys)
    r = report["results"]
    for name in ("pipeline_parquet", "pipeline_mrc", "pipeline_materialized"):
        assert r[name]["images_per_s"] > 0 and r[name]["headroom"] > 0
    assert 0 <= r["trainer_on_pipeline"]["data_wait"] <= 1


def test_sweep_efficiency_smoke(scripts, capsys, ray_session):
    report = run_smoke(scripts, "sweep_efficiency", capsys)
    r = report["results"]
    assert r["configs"] == 2 and r["grid_trial_epochs"] == 2  # 2 configs x 1 epoch
    assert 0 < r["asha_trial_epochs"] <= r["grid_trial_epochs"]
    assert r["fraction"] == pytest.approx(r["asha_trial_epochs"] / r["grid_trial_epochs"], abs=1e-3)


def test_trainer_overhead_smoke(scripts, capsys, ray_session):
    report = run_smoke(scripts, "trainer_overhead", capsys)
    (r,) = report["results"]
    assert r["size"] == 16 and r["images"] == 40
    for clock in ("wall", "cpu"):
        assert r[f"ratio_{clock}"] == pytest.approx(
            r[f"trial_images_per_s_{clock}"] / r[f"bare_images_per_s_{clock}"], rel=1e-2)
