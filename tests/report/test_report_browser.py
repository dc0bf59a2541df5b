"""The report in real headless Chromium: it renders, shows content, logs nothing, fetches nothing."""

import numpy as np
from test_report import make_study

from cryotune.report import build_report
from cryotune.results import load_study


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
