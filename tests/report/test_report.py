import re
from html.parser import HTMLParser

import numpy as np
import pytest

from cryotune.report import build_report, render
from cryotune.study.store import StudyStore
from cryotune.study.tables import load_study

METHODS = [
    {"method": "l2_ae", "p": 2},
    {"method": "l1_ae", "p": 1},
    {"method": "beta_gan", "alpha": 0.5, "beta": 0.5, "lambda": 10.0, "p": 1, "reduction": "sum"},
    {"method": "wgan_gp", "lambda": 10.0, "p": 1, "reduction": "sum"},
]


def make_study(root, name="s", *, trial_name=lambda i: f"t{i:03d}", seeds=(0, 1, 2), extra_config=None):
    """A study with the shape a robustness sweep writes: methods x types x eps x seeds."""
    store = StudyStore(root, name)
    store.write_spec({"name": name, "epochs": 3})
    rng = np.random.default_rng(0)
    clean = rng.random((3, 16, 16)).astype(np.float32)
    store.write_dataset("d0", {"name": "sim", "kind": "simulated", "image_shape": [16, 16],
                               "pixel_size": 4.0, "snr": 0.1, "snr_measured": 0.1,
                               "splits": {"train": {"count": 100}, "test": {"count": 20}}},
                        {"gallery_clean": clean, "gallery_noisy": clean + rng.normal(0, 1, clean.shape)})
    i = 0
    expected = {}
    for m in METHODS:
        for ctype in ("A", "B", "C"):
            for eps in (0.0, 0.2):
                if eps == 0 and ctype != "A":
                    continue
                for seed in seeds:
                    # l2 degrades under A, everything else is robust
                    base = 3e-3 if m["method"] != "l2_ae" else 3.2e-3
                    mse = base * (4.0 if (m["method"] == "l2_ae" and ctype == "A" and eps > 0) else 1.0)
                    mse *= 1 + 0.01 * rng.standard_normal()
                    tid = trial_name(i)
                    i += 1
                    config = {**m, "eps": eps, "contamination": ctype if eps else "none",
                              "seed": seed, "dataset": "d0", "snr": 0.1, **(extra_config or {})}
                    store.record_trial(
                        {"trial_id": tid, "status": "finished", "epochs": 3, "wall_s": 2.0,
                         "config": config,
                         "metrics": {"test_mse": mse, "test_psnr": -10 * np.log10(mse), "test_ssim": 0.8}},
                        [{"epoch": e, "train_mse": mse * (3 - e), "test_mse": mse * (3 - e)} for e in range(3)],
                    )
                    store.write_array(tid, "gallery", np.clip(clean + 0.01, 0, 1))
                    expected.setdefault((m["method"], ctype if eps else "none", eps), []).append(mse)
    store.record_trial({"trial_id": "bad", "status": "error", "error": "worker died",
                        "config": {"method": "l1_ae", "eps": 0.0}})
    return root / name, expected


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.attrs = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs.extend(attrs)


def test_report_sections_and_numbers(tmp_path):
    path, expected = make_study(tmp_path)
    html = render(load_study(path))
    for anchor in ("overview", "table1", "fig5", "fig2", "gallery", "summary"):
        assert f'id="{anchor}"' in html
    # Table 1's l2-AE mean at eps 0 equals the mean over seeds of the recorded MSE
    l2 = np.mean(expected[("l2_ae", "none", 0.0)])
    assert f"{l2:.2e}".replace("e-0", "e-") in html
    # the findings are computed: l2 degrades under type A
    assert re.search(r"Type A.*most degraded ℓ2-AE", html)
    assert "ℓ1 autoencoder beats the ℓ2 one" in html
    # Table 2 and 4 say what is missing
    assert "Needs finished (alpha, beta)-GAN trials" in html
    assert "worker died" in html


def test_report_is_self_contained(tmp_path):
    path, _ = make_study(tmp_path)
    out = build_report(load_study(path), tmp_path / "r.html")
    html = out.read_text()
    parser = _Collector()
    parser.feed(html)
    assert "script" not in parser.tags
    for name, value in parser.attrs:
        if name in ("src", "href"):
            assert value.startswith(("data:", "#")), value
    assert "Content-Security-Policy" in html
    assert not list(tmp_path.glob(".r.html*"))  # no temporary file left


@pytest.mark.parametrize("evil", ["<script>alert(1)</script>", '"><img src=x onerror=alert(1)>'])
def test_hostile_strings_are_escaped(tmp_path, evil):
    path, _ = make_study(tmp_path, trial_name=lambda i: f"{evil}{i}", seeds=(0,),
                         extra_config={"note": evil})
    StudyStore(tmp_path, "s").record_trial({"trial_id": evil, "status": "error", "error": evil,
                                            "config": {"method": evil}})
    html = render(load_study(path), title=evil)
    parser = _Collector()
    parser.feed(html)
    assert "script" not in parser.tags
    assert all(not name.startswith("on") for name, _ in parser.attrs)
    assert "<script>alert" not in html and "<img src=x" not in html


def test_empty_study_says_what_is_missing(tmp_path):
    StudyStore(tmp_path, "e").record_trial({"trial_id": "x", "status": "error", "error": "boom"})
    html = render(load_study(tmp_path / "e"))
    assert html.count('class="missing"') >= 5


def _section(html, anchor):
    start = html.index(f'id="{anchor}"')
    nxt = re.search(r'<section|<h2 id=', html[start + 10:])
    return html[start:start + 10 + (nxt.start() if nxt else len(html))]


def test_merged_ablation_studies_stay_in_their_tables(tmp_path):
    """A lambda ablation and an (alpha, beta) grid merged with a robustness study: their eps = 0
    rows go to Tables 4 and 2 and stay out of Table 1 and Fig. 5."""
    path, expected = make_study(tmp_path)
    store = StudyStore(tmp_path, "ablation")
    store.write_spec({"name": "ablation", "epochs": 3})
    variants = [{"alpha": 0.5, "beta": 0.5, "lambda": lam} for lam in (0.1, 1000.0)]
    variants += [{"alpha": -1.0, "beta": -1.0, "lambda": 10.0}]
    for i, v in enumerate(variants):
        config = {"method": "beta_gan", "p": 1, "reduction": "sum", **v, "eps": 0.0,
                  "contamination": "none",
                  "seed": 0, "dataset": "d0", "snr": 0.1}
        store.record_trial({"trial_id": f"a{i}", "status": "finished", "epochs": 3, "config": config,
                            "metrics": {"test_mse": 5e-3 + i * 1e-4, "test_psnr": 23.0, "test_ssim": 0.7}})
    html = render(load_study(path, tmp_path / "ablation"))
    table1, table2 = _section(html, "table1"), _section(html, "table2")
    table4, fig5 = _section(html, "table4"), _section(html, "fig5")
    assert "λ=0.1" not in table1 and "(-1,-1)" not in table1 and "(0.5,0.5)-GAN + ℓ1" in table1
    assert "(-1,-1)-GAN + ℓ1" in table2 and "λ=" not in table2
    assert "(-1,-1)" not in fig5 and "λ=" not in fig5
    # Table 4: lambda 0.1, 10 (from the robustness study) and 1000, then the l1-AE limit
    assert ">0.1<" in table4 and ">1000<" in table4 and "∞ (ℓ1-AE)" in table4
    l1 = np.mean(expected[("l1_ae", "none", 0.0)])
    assert f"{l1:.2e}".replace("e-0", "e-") in table4


# -- in real headless Chromium: it renders, shows content, logs nothing, fetches nothing --

def _not_blank(img):
    gray = img[..., :3].mean(axis=2)
    return (gray < 200).mean() > 0.01 and gray.std() > 10


def test_report_renders_in_chromium(tmp_path, chromium):
    path, _ = make_study(tmp_path)
    out = build_report(load_study(path), tmp_path / "report.html")
    result = chromium(out, tmp_path)
    assert _not_blank(result["screenshot"])
    assert result["console"] == []
    assert result["requests"] == []


def test_checker_sees_page_requests_and_console(tmp_path, chromium):
    # the same checks catch a page that fetches and logs: they can fail
    page = tmp_path / "bad.html"
    page.write_text('<html><body><h1>x</h1><img src="http://example.invalid/a.png">'
                    '<script>console.error("boom")</script></body></html>')
    result = chromium(page, tmp_path)
    assert any("example.invalid" in u for u in result["requests"])
    assert any("boom" in line for line in result["console"])
    assert not _not_blank(np.full((10, 10, 3), 255, np.uint8))


def test_a_trial_of_an_unknown_method_is_left_out_with_a_warning(tmp_path, caplog):
    # a study holding only a method this version does not know (no eps column at all)
    store = StudyStore(tmp_path, "u")
    store.record_trial({"trial_id": "w", "status": "finished", "epochs": 3,
                        "config": {"method": "magic_ae", "seed": 0},
                        "metrics": {"test_mse": 1e-3}}, [{"epoch": 1, "test_mse": 1e-3}])
    out = build_report(load_study(tmp_path / "u"), tmp_path / "u.html")
    assert "1 trial of unknown method 'magic_ae' left out of the comparisons" in caplog.text
    assert "Needs finished trials at eps = 0" in out.read_text()
