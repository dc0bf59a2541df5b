"""HTML building blocks: escaping, tables, the page shell. Every string from a study passes
through :func:`esc` before it reaches the page.

Example::

    from cryotune.report.html import esc, table
    html = table(["method", "MSE"], [[esc("<l2>"), "1.0e-3"]])
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence

__all__ = ["esc", "fmt", "page", "section", "table"]

# No script, no network: a Content-Security-Policy that allows only inline styles and data:
# images, so even a string that escaped escaping could not run or fetch anything.
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d2330;background:#fff}
main{max-width:1200px;margin:0 auto;padding:24px 32px 64px}
h1{font-size:24px;margin:0 0 4px}h2{font-size:19px;margin:36px 0 8px;border-bottom:1px solid #dde2ea;padding-bottom:4px}
h3{font-size:15px;margin:20px 0 6px}
p.sub{color:#5a6478;margin:0 0 16px}
nav a{margin-right:14px;color:#2456b3;text-decoration:none}
table{border-collapse:collapse;margin:8px 0 16px;font-variant-numeric:tabular-nums}
th,td{border:1px solid #dde2ea;padding:4px 8px;text-align:right;white-space:nowrap}
th{background:#f3f5f9;font-weight:600}td.l,th.l{text-align:left}
td.paper{color:#6b7280;font-style:italic}
.missing{color:#8a5a00;background:#fff8e6;border:1px solid #f3dfa6;padding:8px 12px;border-radius:4px}
.note{color:#5a6478;font-size:13px}
.finding{margin:4px 0}
.gallery{display:grid;gap:10px;grid-template-columns:repeat(auto-fill,minmax(110px,1fr))}
.gallery figure{margin:0;text-align:center}.gallery img{width:100%;image-rendering:pixelated;border:1px solid #ccd}
.gallery figcaption{font-size:12px;color:#374151;word-break:break-word}
.figs{display:flex;flex-wrap:wrap;gap:16px}
pre{background:#f6f8fa;padding:10px;overflow:auto;font-size:12px;max-height:360px}
details{margin:6px 0}
svg text{font:11px system-ui,sans-serif;fill:#1d2330}
"""


def esc(value: object) -> str:
    """HTML-escape any value (quotes included), for text and attribute positions alike."""
    return html.escape(str(value), quote=True)


def fmt(value: object, kind: str = "g") -> str:
    """Format a metric: ``e`` gives 3.01e-3 style, ``f2`` two decimals, ``g`` general."""
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return esc(value)
    if v != v:  # NaN
        return "–"
    if kind == "e":
        return f"{v:.2e}".replace("e-0", "e-").replace("e+0", "e")
    if kind.startswith("f"):
        return f"{v:.{int(kind[1:] or 2)}f}"
    return f"{v:.4g}"


def table(header: Sequence[str], rows: Iterable[Sequence[str]], *, left: int = 1,
          header_rows: Sequence[Sequence[tuple[str, int]]] = ()) -> str:
    """An HTML table from already-escaped cells; the first ``left`` columns align left.

    ``header_rows`` are extra header rows above ``header``, as (escaped text, colspan) pairs.
    """
    out = ["<table>"]
    for extra in header_rows:
        out.append("<tr>" + "".join(f'<th colspan="{span}">{text}</th>' for text, span in extra) + "</tr>")
    out.append("<tr>" + "".join(
        f'<th class="l">{h}</th>' if i < left else f"<th>{h}</th>" for i, h in enumerate(header)) + "</tr>")
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            cls = ' class="l"' if i < left else ""
            if isinstance(cell, tuple):  # (html, css class)
                cell, extra = cell
                cls = f' class="{extra}{" l" if i < left else ""}"'
            cells.append(f"<td{cls}>{cell}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2>\n{body}\n</section>'


def missing(text: str) -> str:
    return f'<p class="missing">{esc(text)}</p>'


def page(title: str, subtitle: str, sections: Sequence[tuple[str, str, str]]) -> str:
    """The whole self-contained document: inline CSS, inline SVG and data: images only."""
    nav = " ".join(f'<a href="#{esc(a)}">{esc(t)}</a>' for a, t, _ in sections)
    body = "\n".join(section(a, t, b) for a, t, b in sections)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{esc(title)}</title><style>{_CSS}</style></head>\n<body><main>"
        f"<h1>{esc(title)}</h1><p class=\"sub\">{esc(subtitle)}</p><nav>{nav}</nav>\n{body}\n"
        "</main></body></html>\n"
    )
