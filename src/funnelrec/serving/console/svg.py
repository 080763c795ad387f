"""Small server-rendered SVG plots for the console: no plotting library on the request path and
no JavaScript chart code in the page (a plot is markup the browser draws, and a test can read).

Each function returns an SVG string (`Markup`, so Jinja does not escape it); labels are escaped.
Coordinates are computed here; styling comes from console.css classes (`.bar`, `.ci`, …).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

from markupsafe import Markup

PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7", "#9c755f",
           "#bab0ac")


def _fmt(x: float) -> str:
    if x == 0 or not math.isfinite(x):
        return "0" if x == 0 else str(x)
    return f"{x:.3g}" if abs(x) < 1000 else f"{x:,.0f}"


def bars(labels: Sequence[str], series: dict[str, Sequence[float]], *, width: int = 640, height: int = 220,
         title: str = "", log: bool = False) -> Markup:
    """Grouped vertical bars: one group per label, one bar per series (a legend when > 1)."""
    n, k = len(labels), max(1, len(series))
    values = [float(v) for vs in series.values() for v in vs]
    top = max([v for v in values if math.isfinite(v)] + [1e-12])
    scale = (lambda v: math.log10(1 + v) / math.log10(1 + top)) if log else (lambda v: v / top)
    left, bottom, head = 8, 34, 34 if title else 16
    plot_h = height - bottom - head
    group_w = (width - 2 * left) / max(n, 1)
    bar_w = min(48.0, max(2.0, group_w * 0.8 / k))
    every = max(1, math.ceil(34 / group_w))  # label every n-th group when they would overlap
    out = [f'<svg class="plot" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img">']
    if title:
        out.append(f'<text class="title" x="{left}" y="15">{escape(title)}</text>')
    for s, (name, vs) in enumerate(series.items()):
        color = PALETTE[s % len(PALETTE)]
        for i, v in enumerate(vs):
            v = float(v) if math.isfinite(float(v)) else 0.0
            h = plot_h * scale(max(v, 0.0))
            x = left + i * group_w + group_w * 0.1 + s * bar_w
            y = head + plot_h - h
            out.append(f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{bar_w - 1:.1f}" height="{h:.1f}" '
                       f'fill="{color}"><title>{escape(labels[i])} · {escape(name)}: {_fmt(v)}</title></rect>')
            if k <= 2 and i % every == 0:
                out.append(f'<text class="val" x="{x + bar_w / 2:.1f}" y="{y - 3:.1f}">{_fmt(v)}</text>')
    for i, lab in enumerate(labels):
        if i % every:
            continue
        x = left + i * group_w + group_w * 0.1 + k * bar_w / 2
        out.append(f'<text class="lab" x="{x:.1f}" y="{height - bottom + 14}">{escape(str(lab)[:18])}</text>')
    if len(series) > 1:
        x = left
        for s, name in enumerate(series):
            out.append(f'<rect x="{x}" y="{height - 12}" width="10" height="10" fill="{PALETTE[s % len(PALETTE)]}"/>'
                       f'<text class="leg" x="{x + 14}" y="{height - 3}">{escape(name)}</text>')
            x += 14 + 8 * len(name) + 16
    out.append("</svg>")
    return Markup("".join(out))


def histogram(uppers: Sequence[float], cumulative: Sequence[int], *, width: int = 420, height: int = 150,
              title: str = "") -> Markup:
    """A Prometheus-style histogram (cumulative counts per upper bound `le`, +Inf last) drawn as
    the count in each bucket; buckets above the last non-empty one are left out."""
    counts = [c - (cumulative[i - 1] if i else 0) for i, c in enumerate(cumulative)]
    last = max([i for i, c in enumerate(counts) if c > 0] + [0])
    labels = [("≤" + _fmt(u)) if math.isfinite(u) else "+Inf" for u in uppers][: last + 1]
    return bars(labels, {"requests": counts[: last + 1]}, width=width, height=height, title=title)


def forest(rows: Sequence[tuple[str, float, float, float]], *, width: int = 640, title: str = "",
           unit: str = "%") -> Markup:
    """Point estimates with confidence intervals, one row each (label, estimate, lo, hi), around a
    zero line: green when the interval is above 0, red below, grey across it."""
    rows = [r for r in rows if all(math.isfinite(v) for v in r[1:])]
    height = 28 + 24 * max(len(rows), 1) + 20
    lab_w = 190
    lo = min([r[2] for r in rows] + [0.0])
    hi = max([r[3] for r in rows] + [0.0])
    span = (hi - lo) or 1.0
    lo, hi = lo - 0.05 * span, hi + 0.05 * span

    def x(v: float) -> float:
        return lab_w + (width - lab_w - 12) * (v - lo) / (hi - lo)

    out = [f'<svg class="plot" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img">']
    if title:
        out.append(f'<text class="title" x="4" y="15">{escape(title)}</text>')
    out.append(f'<line class="zero" x1="{x(0):.1f}" y1="22" x2="{x(0):.1f}" y2="{height - 18}"/>')
    for i, (label, est, a, b) in enumerate(rows):
        y = 36 + 24 * i
        color = "#2e7d32" if a > 0 else "#c62828" if b < 0 else "#757575"
        out.append(f'<text class="rowlab" x="4" y="{y + 4}">{escape(label)}</text>'
                   f'<line class="ci" x1="{x(a):.1f}" y1="{y}" x2="{x(b):.1f}" y2="{y}" stroke="{color}"/>'
                   f'<circle cx="{x(est):.1f}" cy="{y}" r="4" fill="{color}"><title>{escape(label)}: '
                   f'{_fmt(est)}{unit} [{_fmt(a)}, {_fmt(b)}]</title></circle>')
    out.append(f'<text class="lab start" x="{x(lo):.1f}" y="{height - 4}">{_fmt(lo)}{unit}</text>'
               f'<text class="lab end" x="{x(hi):.1f}" y="{height - 4}">{_fmt(hi)}{unit}</text>')
    if x(0) - x(lo) > 40 and x(hi) - x(0) > 40:
        out.append(f'<text class="lab" x="{x(0):.1f}" y="{height - 4}">0</text>')
    out.append("</svg>")
    return Markup("".join(out))


def allocation(n_buckets: int, arms: Sequence[tuple[str, str, int, int, int]], *, width: int = 640) -> Markup:
    """A layer's buckets [0, n_buckets) as one strip: each arm (experiment, variant, start, end,
    live buckets) a block coloured by experiment, its live prefix solid and the reserved rest
    hatched-light; free buckets (the layer's baseline) white."""
    h = 34
    out = [f'<svg class="plot alloc" viewBox="0 0 {width} {h + 16}" width="{width}" height="{h + 16}" role="img">',
           f'<rect x="0" y="0" width="{width}" height="{h}" fill="#fff" stroke="#999"/>']
    colors: dict[str, str] = {}
    for exp, variant, start, end, live in arms:
        c = colors.setdefault(exp, PALETTE[len(colors) % len(PALETTE)])
        x0, x1 = width * start / n_buckets, width * end / n_buckets
        xl = width * (start + live) / n_buckets
        out.append(f'<rect x="{x0:.1f}" y="0" width="{x1 - x0:.1f}" height="{h}" fill="{c}" opacity="0.25"/>'
                   f'<rect x="{x0:.1f}" y="0" width="{xl - x0:.1f}" height="{h}" fill="{c}">'
                   f'<title>{escape(exp)} · {escape(variant)}: buckets [{start}, {end}), {live} live</title></rect>'
                   f'<line x1="{x0:.1f}" y1="0" x2="{x0:.1f}" y2="{h}" stroke="#fff"/>')
        if x1 - x0 > 40:
            out.append(f'<text class="arm" x="{(x0 + x1) / 2:.1f}" y="{h / 2 + 4}">{escape(variant)}</text>')
    out.append(f'<text class="lab" x="2" y="{h + 13}">0</text>'
               f'<text class="lab end" x="{width - 2}" y="{h + 13}">{n_buckets}</text></svg>')
    return Markup("".join(out))


def lines(xs: Sequence[str], series: dict[str, Sequence[float]], *, width: int = 640, height: int = 220,
          title: str = "") -> Markup:
    """One polyline per series over categorical x positions (e.g. recall@10, @200, @total per
    channel); a legend below."""
    left, right, head, bottom = 40, 28, 22, 40
    vals = [float(v) for vs in series.values() for v in vs if v is not None and math.isfinite(float(v))]
    top = max(vals + [1e-12])
    pw, ph = width - left - right, height - head - bottom

    def pt(i: int, v: float) -> tuple[float, float]:
        return left + pw * (i / max(len(xs) - 1, 1)), head + ph * (1 - v / top)

    out = [f'<svg class="plot" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img">']
    if title:
        out.append(f'<text class="title" x="4" y="15">{escape(title)}</text>')
    out.append(f'<line class="axis" x1="{left}" y1="{head + ph}" x2="{left + pw}" y2="{head + ph}"/>'
               f'<text class="lab end" x="{left - 4}" y="{head + 8}">{_fmt(top)}</text>')
    for i, lab in enumerate(xs):
        x, _ = pt(i, 0)
        out.append(f'<text class="lab" x="{x:.1f}" y="{head + ph + 14}">{escape(lab)}</text>')
    for s, (name, vs) in enumerate(series.items()):
        c = PALETTE[s % len(PALETTE)]
        pts = [pt(i, float(v)) for i, v in enumerate(vs) if v is not None]
        out.append(f'<polyline fill="none" stroke="{c}" stroke-width="2" points="'
                   + " ".join(f"{a:.1f},{b:.1f}" for a, b in pts) + '"/>')
        out += [f'<circle cx="{a:.1f}" cy="{b:.1f}" r="3" fill="{c}"><title>{escape(name)}</title></circle>'
                for a, b in pts]
    x = left
    for s, name in enumerate(series):
        out.append(f'<rect x="{x}" y="{height - 12}" width="10" height="10" fill="{PALETTE[s % len(PALETTE)]}"/>'
                   f'<text class="leg" x="{x + 14}" y="{height - 3}">{escape(name)}</text>')
        x += 14 + 7 * len(name) + 14
    out.append("</svg>")
    return Markup("".join(out))
