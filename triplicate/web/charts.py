"""Plots as inline SVG, drawn on the server: no script, nothing fetched, readable on a phone.

Each function returns one ``<svg>`` element (a string) that scales to its
container's width. Points are (x, y) with x in Unix seconds.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from html import escape

WIDTH, HEIGHT = 640.0, 220.0
LEFT, RIGHT, TOP, BOTTOM = 56.0, 16.0, 26.0, 28.0
PALETTE = ("#2b6cb0", "#c05621", "#2f855a", "#6b46c1", "#b83280", "#4a5568")


def _scale(low: float, high: float, start: float, end: float) -> tuple[float, float]:
    span = (high - low) or 1.0
    return (end - start) / span, start - low * (end - start) / span


def _ticks(low: float, high: float, count: int = 4) -> list[float]:
    if high <= low:
        return [low]
    step = (high - low) / count
    return [low + step * index for index in range(count + 1)]


def _date(seconds: float) -> str:
    return time.strftime("%d %b", time.gmtime(seconds))


def chart(title: str, series: dict[str, Sequence[Sequence[float]]], x_range: tuple[float, float],
          y_label: str, format_y: object = None, kind: str = "points") -> str:
    """An SVG plot of ``series`` (name -> [(x, y), ...]) over ``x_range``; ``kind`` is "points"
    (a dot per value) or "bars" (one bar per value, for per-day totals). Returns the element."""
    formatter = format_y if callable(format_y) else (lambda value: f"{value:.0f}")
    values = [point[1] for points in series.values() for point in points]
    low_y, high_y = 0.0, max(values, default=1.0) or 1.0
    x_scale, x_offset = _scale(x_range[0], x_range[1], LEFT, WIDTH - RIGHT)
    y_scale, y_offset = _scale(low_y, high_y * 1.05, HEIGHT - BOTTOM, TOP)
    parts = [(f'<svg class="chart" viewBox="0 0 {WIDTH:.0f} {HEIGHT:.0f}" role="img" '
              f'aria-label="{escape(title)}" data-points="{len(values)}">'), f"<title>{escape(title)}</title>"]
    for tick in _ticks(low_y, high_y):
        y = tick * y_scale + y_offset
        parts.append(f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>'
                     f'<text class="axis" x="{LEFT - 4}" y="{y + 4:.1f}" text-anchor="end">'
                     f"{escape(str(formatter(tick)))}</text>")
    x_ticks = _ticks(*x_range)
    for index, tick in enumerate(x_ticks):
        x = tick * x_scale + x_offset
        anchor = "end" if index == len(x_ticks) - 1 else "start" if index == 0 else "middle"
        parts.append(f'<text class="axis" x="{x:.1f}" y="{HEIGHT - 8}" text-anchor="{anchor}">{_date(tick)}</text>')
    parts.append(f'<text class="axis" x="4" y="12">{escape(y_label)}</text>')
    bar_width = max(2.0, 86400 * x_scale * 0.8 / max(1, len(series)))
    for index, (name, points) in enumerate(series.items()):
        colour = PALETTE[index % len(PALETTE)]
        parts.append(f'<g class="series" data-name="{escape(name)}" fill="{colour}">')
        for x_value, y_value in points:
            x, y = x_value * x_scale + x_offset, y_value * y_scale + y_offset
            label = f"{escape(name)}: {escape(str(formatter(y_value)))} ({_date(x_value)})"
            if kind == "bars":
                left = x + index * bar_width
                parts.append(f'<rect x="{left:.1f}" y="{y:.1f}" width="{bar_width:.1f}" '
                             f'height="{max(0.5, HEIGHT - BOTTOM - y):.1f}"><title>{label}</title></rect>')
            else:
                parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3"><title>{label}</title></circle>')
        parts.append("</g>")
    parts.append("</svg>")
    legend = "".join(f'<span class="key"><i style="background:{PALETTE[index % len(PALETTE)]}"></i>'
                     f"{escape(name)}</span>" for index, name in enumerate(series))
    empty = "" if values else '<p class="muted">nothing recorded in this period</p>'
    return f'<figure><figcaption>{escape(title)}</figcaption>{"".join(parts)}<div class="legend">{legend}</div>' \
           f"{empty}</figure>"
