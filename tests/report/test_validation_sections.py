"""The validation sections of the report: FSC, volumes, type A volumes, clustering scatter."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from cryotune.data.simulate import simulate
from cryotune.report import build_report, render
from cryotune.report.validation_sections import scatter_chart
from cryotune.study.store import StudyStore, dataset_key
from cryotune.study.tables import load_study
from cryotune.validate.record import record_references, record_trial_validation
from cryotune.validate.reference import load_reference, validate_images

SECTIONS = ("fsc", "volumes", "volumes-a", "clustering")


def _section(html: str, anchor: str) -> str:
    return re.search(rf'<section id="{anchor}">(.*?)</section>', html, re.S).group(1)


@pytest.fixture(scope="module")
def study_path(tmp_path_factory):
    """A study of four trials whose 'denoised' images are clean/noisy blends, validated."""
    tmp = tmp_path_factory.mktemp("valreport")
    data = simulate(tmp / "sim", size=32, n_train=20, n_test=120, snr=0.1, conformations=3)
    ref = load_reference(data)
    manifest = json.loads((data / "manifest.json").read_text())
    key = dataset_key(manifest)
    store = StudyStore(tmp, "val")
    record_references(store, key, manifest,
                      {n: validate_images(ref, getattr(ref, n)) for n in ("clean", "noisy")})
    trials = [("t0", "l2_ae", 0.0, 0.3), ("t1", "beta_gan", 0.0, 0.8),
              ("t2", "l2_ae", 0.2, 0.1), ("t3", "beta_gan", 0.2, 0.6)]
    for trial_id, method, eps, w in trials:
        images = w * ref.clean + (1 - w) * ref.noisy
        result = validate_images(ref, images)
        row = {"trial_id": trial_id, "status": "finished", "epochs": 1,
               "config": {"method": method, "alpha": 0.5, "beta": 0.5, "lambda": 10, "p": 1,
                          "eps": eps, "contamination": "A", "dataset": key, "seed": 0},
               "metrics": {"test_mse": float(((images - ref.clean) ** 2).mean())}}
        row["validation"] = record_trial_validation(store, trial_id, result)
        store.record_trial(row)
    return tmp / "val"


def test_sections_show_the_validation(study_path):
    html = render(load_study(study_path))
    fsc = _section(html, "fsc")
    assert fsc.count("<svg") == 1 and "0.143" in fsc
    for name in ("clean", "noisy", "ℓ2-AE", "(0.5,0.5)-GAN + ℓ1"):
        assert esc_in(name, fsc)
    assert _section(html, "volumes").count("<img") == 4 * 4  # clean, noisy, two methods
    typea = _section(html, "volumes-a")
    assert "best robust" in typea and typea.count("<img") == 2 * 4 and "ε = 0.2" in typea
    clustering = _section(html, "clustering")
    assert clustering.count("<svg") == 4 and "accuracy (view cone)" in clustering
    # the table's resolutions are the stored columns
    trials = load_study(study_path).trials.set_index("trial_id")
    assert f"{trials.loc['t1', 'fsc_res_0143_A']:.1f}" in fsc


def esc_in(name: str, html: str) -> bool:
    from cryotune.report.html import esc

    return esc(name) in html


def test_sections_say_what_is_missing(tmp_path):
    store = StudyStore(tmp_path, "plain")
    store.record_trial({"trial_id": "a", "status": "finished", "config": {"method": "l2_ae"},
                        "metrics": {"test_mse": 0.1}})
    html = render(load_study(tmp_path / "plain"))
    for anchor in SECTIONS:
        assert 'class="missing"' in _section(html, anchor), anchor
    store.record_trial({"trial_id": "a", "status": "finished", "config": {"method": "l2_ae"},
                        "metrics": {"test_mse": 0.1},
                        "validation": {"validate_needs": "needs poses"}})
    assert "needs poses" in _section(render(load_study(tmp_path / "plain")), "fsc")


def test_scatter_escapes_and_places_points():
    svg = scatter_chart(np.array([[0.0, 0.0], [1.0, 1.0], [np.nan, 0]]), np.array([0, 1, 1]),
                        title="<b>&", size=120)
    assert "&lt;b&gt;&amp;" in svg and "<b>" not in svg
    circles = re.findall(r'<circle cx="([\d.]+)" cy="([\d.]+)" r="2.8"', svg)
    assert len(circles) == 2  # the NaN point is left out
    (x0, y0), (x1, y1) = [(float(a), float(b)) for a, b in circles]
    assert x0 < x1 and y0 > y1  # y grows upwards
    assert scatter_chart(np.zeros((0, 2)), np.zeros(0)) == ""


def test_validation_sections_render_in_chromium(study_path, tmp_path, chromium):
    out = build_report(load_study(study_path), tmp_path / "report.html")
    result = chromium(out, tmp_path)
    gray = result["screenshot"][..., :3].mean(axis=2)
    assert (gray < 200).mean() > 0.01 and gray.std() > 10
    assert result["console"] == []
    assert result["requests"] == []
