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

import numpy as np
import pytest

from cryotune.study.store import StudyStore
from cryotune.study.tables import load_study

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


def test_common_record_and_reports(scripts, tmp_path, capsys):
    common = scripts("_common")
    facts = {"cpu": "Xeon", "cores": 2, "os": "Linux", "python": "3.11.7", "torch": "2.13.0",
             "load_average": [1.0, 0.5, 0.25], "extras": {"bm3d": "4.0.3", "aspire": None}}
    assert common.machine_line(facts, end=[3.0, 2.0, 1.0], note="busy") == (
        "Machine: Xeon, 2 cores, Linux; Python 3.11.7, torch 2.13.0, bm3d 4.0.3, aspire not "
        "installed. Load average at start 1.0, 0.5, 0.25, at end 3.0, 2.0, 1.0 (busy).")
    report = common.record("x_throughput", common.machine(), figure=Path("a"))
    assert list(report)[:3] == ["benchmark", "created", "machine"] and report["figure"] == Path("a")

    def markdown(r):
        return common.section("x", ["## x", f"figure {r['figure']}"])

    assert common.finish("x", report, markdown, smoke=True, folder=tmp_path) == 0
    assert json.loads(capsys.readouterr().out)["figure"] == "a" and not list(tmp_path.iterdir())
    common.write_section(tmp_path / "BENCHMARKS.md", "<!-- y -->\nother\n<!-- /y -->",
                         "<!-- y -->", "<!-- /y -->")
    for _ in range(2):  # the second run replaces the section in place
        common.finish("x", report, markdown, smoke=False, folder=tmp_path)
    assert json.loads((tmp_path / "x.json").read_text())["benchmark"] == "x_throughput"
    assert (tmp_path / "BENCHMARKS.md").read_text() == (
        "# Benchmarks\n\n<!-- y -->\nother\n<!-- /y -->\n\n"
        "<!-- x:begin -->\n## x\nfigure a\n<!-- x:end -->\n")


@pytest.mark.parametrize("name, record", [
    ("simulate_throughput", "simulate"), ("reconstruct_throughput", "reconstruct"),
    ("baselines_throughput", "baselines"), ("train_throughput", "train_throughput"),
    ("sweep_efficiency", "sweep_efficiency"), ("project_throughput", "project"),
    ("selection_gap", "selection_gap"), ("project_stream", "project_stream")])
def test_sections_render_from_the_committed_records(scripts, name, record):
    """Each script's section renders from its last full run and replaces its own markers."""
    reports = BENCHMARKS.parent / "reports" / "benchmarks"
    text = scripts(name).markdown(json.loads((reports / f"{record}.json").read_text()))
    lines = text.splitlines()
    current = (reports / "BENCHMARKS.md").read_text()
    assert lines[0] in current and lines[-1] in current and lines[0] != lines[-1]
    assert lines[1].startswith("## ") and lines[-2].startswith("Machine: ")


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
    lo, hi = r["until_found_range"]  # 1 epoch: the first trial to end is a full-length one
    assert 1 <= lo <= r["until_found_trial_epochs"] <= hi <= r["asha_trial_epochs"]
    assert report["replay"]["total"]["mean"] == 1.0 and report["replay"]["found_share"] == 1.0


def test_selection_gap_smoke(scripts, capsys, ray_session):
    report = run_smoke(scripts, "selection_gap", capsys)
    r = report["results"]
    assert r["trials"] == 2 and r["recorded_best_epoch_agrees"]  # the study's own picks
    assert set(r["rules"]) == {"robust", "oracle", "mean"}
    for rule in r["rules"].values():
        assert rule["trials"] == 2 and rule["config"] in r["configs"]
        assert rule["test_mse_given_up_mean"] >= 0  # the truth's epoch has the lowest test MSE
    assert "| robust: val_mse_median" in scripts("selection_gap").markdown(report)


def test_sweep_replay_runs_rays_asha(scripts):
    """One trial at a time, grace 1, factor 4, 9 epochs: a trial worse at epoch 1 than those
    before it stops there; a trial with no rival at a rung goes on."""
    bench = scripts("sweep_efficiency")
    spec = bench.load_spec(bench.SPACE, overrides=["scheduler=asha", "epochs=9"])
    curves = np.repeat(np.array([[1.0], [2.0], [3.0], [4.0]]), 9, axis=1)  # config 0 best
    ones = np.ones((4, 9))
    first = np.array([True, False, False, False])
    assert bench.replay(spec, curves, ones, first, [0, 1, 2, 3], 1) == (9 + 3, 9)
    assert bench.replay(spec, curves, ones, ~first, [0, 1, 2, 3], 1) == (12, None)
    assert bench.replay(spec, curves, ones, first, [3, 2, 1, 0], 1) == (36, 36)
    # two at once, config 1 twice as fast: it runs 9 epochs by t = 4.5, config 0 4 of its own;
    # configs 2 and 3 then stop at the first rung
    short = ones.copy()
    short[1] = 0.5
    assert bench.replay(spec, curves, short, ~first, [0, 1, 2, 3], 2) == (9 + 9 + 1 + 1, 9 + 4)


def test_sweep_epoch_ends_split_trial_spans(scripts, tmp_path):
    bench = scripts("sweep_efficiency")
    store = StudyStore(tmp_path, "s")
    store.record_trial({"trial_id": "a", "status": "finished", "started_at": 0.0,
                        "ended_at": 10.0, "config": {"method": "l1_ae"}},
                       [{"epoch": 1, "epoch_s": 2.0, "test_mse": 0.2},
                        {"epoch": 2, "epoch_s": 3.0, "test_mse": 0.1}])
    ends = bench.epoch_ends(load_study(tmp_path / "s"))
    assert ends[["end", "end_min", "end_max"]].to_numpy().tolist() == [[4, 2, 7], [10, 5, 10]]


def test_trainer_overhead_smoke(scripts, capsys, ray_session):
    report = run_smoke(scripts, "trainer_overhead", capsys)
    (r,) = report["results"]
    assert r["size"] == 16 and r["images"] == 40
    for clock in ("wall", "cpu"):
        assert r[f"ratio_{clock}"] == pytest.approx(
            r[f"trial_images_per_s_{clock}"] / r[f"bare_images_per_s_{clock}"], rel=1e-2)


def test_project_throughput_smoke(scripts, capsys):
    report = run_smoke(scripts, "project_throughput", capsys)
    assert [r["size"] for r in report["results"]] == [32, 48]
    assert all(r["projections_per_s_cpu"] > 0 for r in report["results"])
    streams = report["streamed"]
    assert [r["particles"] for r in streams] == [40, 160]
    assert all(r["peak_rss_mb"] > 0 for r in streams)


def test_project_stream_smoke(scripts, capsys):
    report = run_smoke(scripts, "project_stream", capsys)
    r = report["result"]
    assert (r["size"], r["particles"]) == (32, 2000) and r["finite"]
    assert [s["particles"] for s in r["samples"]] == [512, 1024, 1536, 2000]
    assert all(s["VmHWM"] >= r["setup"]["VmHWM"] for s in r["samples"])


def test_trial_speed_smoke(scripts, capsys):
    report = run_smoke(scripts, "trial_speed", capsys)
    variants = [r["variant"] for r in report["results"]]
    assert variants == ["eager", "channels_last", "fused_adam", "threads_2"]
    assert all(r["images_per_s"] > 0 and r["first_epoch_s"] > 0 for r in report["results"])
    assert 0 < report["shares"]["d_step_share"] < 1 and report["evaluate_images"] == 40
