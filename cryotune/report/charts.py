"""Figures as inline SVG (line charts with error bars) and images as PNG data URIs.

No plotting library and no external file: the report stays one self-contained HTML file.

Example::

    from cryotune.report.charts import Series, line_chart, png_data_uri
    svg = line_chart([Series("l1", [0, .1], [1e-3, 2e-3], [1e-4, 1e-4])], "eps", "test MSE")
    uri = png_data_uri(image)      # image: 2D float array in [0, 1]
"""

from __future__ import annotations

import base64
import math
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from cryotune.report.html import esc

__all__ = ["PALETTE", "Series", "line_chart", "png_data_uri"]

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
           "#17becf", "#7f7f7f", "#bcbd22")


@dataclass
class Series:
    """One line: points (x, y) with optional symmetric error bars ``err``; ``line`` False
    draws the points alone (a scatter)."""

    label: str
    x: Sequence[float]
    y: Sequence[float]
    err: Sequence[float] | None = None
    dashed: bool = False
    color: str | None = None
    extra: dict = field(default_factory=dict)
    line: bool = True


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if not math.isfinite(lo) or not math.isfinite(hi):
        return []
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=raw)
    start = math.ceil(lo / step) * step
    return [start + i * step for i in range(int((hi - start) / step + 1e-9) + 1)]


def _fmt_tick(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) < 1e-2 or abs(v) >= 1e4:
        return f"{v:.1e}".replace("e-0", "e-")
    return f"{v:.3g}"


def line_chart(
    series: Sequence[Series],
    x_label: str,
    y_label: str,
    *,
    title: str = "",
    log_x: bool = False,
    log_y: bool = False,
    width: int = 440,
    height: int = 300,
    hline: tuple[float, str] | None = None,
) -> str:
    """An SVG line chart; every label is escaped. ``hline`` draws a dashed reference line."""
    pts = [(x, y, e) for s in series for x, y, e in
           zip(s.x, s.y, s.err if s.err is not None else [0.0] * len(s.x), strict=True)
           if y is not None and math.isfinite(y) and math.isfinite(x)]
    if not pts:
        return ""
    fx = (lambda v: math.log10(v)) if log_x else (lambda v: v)
    fy = (lambda v: math.log10(v)) if log_y else (lambda v: v)
    xs = [fx(p[0]) for p in pts if not log_x or p[0] > 0]
    e_ok = [(p[1], p[2] if p[2] and math.isfinite(p[2]) else 0.0) for p in pts]
    lo_y = [y - e for y, e in e_ok]
    hi_y = [y + e for y, e in e_ok]
    if log_y:
        floor = min(y for y, _ in e_ok if y > 0) / 2  # once, not once per point
        lo_y = [fy(max(v, floor)) for v in lo_y]
        hi_y = [fy(v) for v in hi_y if v > 0]
    if hline is not None:
        lo_y.append(fy(hline[0]))
        hi_y.append(fy(hline[0]))
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(lo_y), max(hi_y)
    if x1 == x0:
        x0, x1 = x0 - 0.5, x1 + 0.5
    pad = (y1 - y0) * 0.08 or abs(y1) * 0.1 or 1.0
    y0, y1 = y0 - pad, y1 + pad
    ml, mr, mt, mb = 62, 12, 26 if title else 10, 40
    legend_h = 16 * len(series)
    w, h = width, height + legend_h
    pw, ph = w - ml - mr, height - mt - mb

    def sx(v):
        return ml + (fx(v) - x0) / (x1 - x0) * pw

    def sy(v):
        return mt + (1 - (fy(v) - y0) / (y1 - y0)) * ph

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img">']
    if title:
        out.append(f'<text x="{ml}" y="16" font-weight="600">{esc(title)}</text>')
    out.append(f'<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" fill="none" stroke="#99a"/>')
    for t in _ticks(y0, y1):
        yy = mt + (1 - (t - y0) / (y1 - y0)) * ph
        label = _fmt_tick(10 ** t if log_y else t)
        out.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="#eceff4"/>')
        out.append(f'<text x="{ml - 4}" y="{yy + 4:.1f}" text-anchor="end">{esc(label)}</text>')
    xticks = sorted({p[0] for p in pts}) if len({p[0] for p in pts}) <= 8 else None
    for t in xticks or _ticks(x0, x1):
        xx = sx(t) if xticks else ml + (t - x0) / (x1 - x0) * pw
        label = _fmt_tick(t if (xticks or not log_x) else 10 ** t)
        out.append(f'<text x="{xx:.1f}" y="{mt + ph + 14}" text-anchor="middle">{esc(label)}</text>')
    out.append(f'<text x="{ml + pw / 2}" y="{mt + ph + 32}" text-anchor="middle">{esc(x_label)}</text>')
    out.append(f'<text transform="translate(14 {mt + ph / 2}) rotate(-90)" text-anchor="middle">{esc(y_label)}</text>')
    if hline is not None:
        yy = sy(hline[0])
        out.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="#555" stroke-dasharray="5 4"/>')
        out.append(f'<text x="{ml + pw - 4}" y="{yy - 4:.1f}" text-anchor="end">{esc(hline[1])}</text>')
    for i, s in enumerate(series):
        color = s.color or PALETTE[i % len(PALETTE)]
        errs = s.err if s.err is not None else [None] * len(s.x)
        good = [(x, y, e) for x, y, e in zip(s.x, s.y, errs, strict=True)
                if y is not None and math.isfinite(y) and (not log_y or y > 0) and (not log_x or x > 0)]
        if not good:
            continue
        dash = ' stroke-dasharray="6 3"' if s.dashed else ""
        path = " ".join(f"{'M' if j == 0 else 'L'}{sx(x):.1f},{sy(y):.1f}" for j, (x, y, _) in enumerate(good))
        if s.line:
            out.append(f'<path d="{path}" fill="none" stroke="{color}" stroke-width="1.6"{dash}/>')
        for x, y, e in good:
            out.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.6" fill="{color}"/>')
            if e is not None and math.isfinite(e) and e > 0:
                lo = y - e if not log_y or y - e > 0 else y / 2
                out.append(f'<line x1="{sx(x):.1f}" x2="{sx(x):.1f}" y1="{sy(lo):.1f}" y2="{sy(y + e):.1f}" stroke="{color}"/>')
        ly = height + 16 * i + 4
        if s.line:
            out.append(f'<line x1="{ml}" x2="{ml + 18}" y1="{ly}" y2="{ly}" stroke="{color}" stroke-width="2"{dash}/>')
        else:
            out.append(f'<circle cx="{ml + 9}" cy="{ly}" r="3" fill="{color}"/>')
        out.append(f'<text x="{ml + 24}" y="{ly + 4}">{esc(s.label)}</text>')
    out.append("</svg>")
    return "".join(out)


def png_data_uri(image: np.ndarray, *, lo: float | None = None, hi: float | None = None) -> str:
    """A grayscale 8-bit PNG of a 2D array as a ``data:`` URI.

    Values map linearly from [lo, hi] (default: the 1st and 99th percentiles) to [0, 255].
    """
    a = np.asarray(image, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"expected a 2D image, got shape {a.shape}")
    finite = a[np.isfinite(a)]
    if lo is None:
        lo = float(np.percentile(finite, 1)) if finite.size else 0.0
    if hi is None:
        hi = float(np.percentile(finite, 99)) if finite.size else 1.0
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    u8 = np.clip(np.nan_to_num((a - lo) * scale), 0, 255).astype(np.uint8)
    h, w = u8.shape
    raw = b"".join(b"\x00" + u8[r].tobytes() for r in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))
    return "data:image/png;base64," + base64.b64encode(png).decode()
