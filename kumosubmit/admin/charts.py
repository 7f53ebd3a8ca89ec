"""Bar charts as plain SVG, drawn on the server: no script, no library, no request more.

A chart is one ``<svg>`` element the template puts inline: one column per bucket,
stacked by series, with a ``<title>`` per column for the figures on hover, a
scale line at the top value, and labels along the bottom. Everything that comes
from data is escaped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape


@dataclass(frozen=True)
class Series:
    key: str
    label: str
    colour: str


@dataclass(frozen=True)
class Column:
    """One bucket: its label on the axis (or ""), its hover title, and a value per series."""

    label: str
    title: str
    values: dict[str, int]


def _nice_top(value: int) -> int:
    """The scale's top: the value rounded up to 1, 2 or 5 times a power of ten."""
    if value <= 0:
        return 1
    magnitude = 1
    while magnitude * 10 <= value:
        magnitude *= 10
    for step in (1, 2, 5, 10):
        if value <= step * magnitude:
            return step * magnitude
    return 10 * magnitude


def bar_chart(
    columns: Sequence[Column],
    series: Sequence[Series],
    *,
    title: str,
    width: int = 720,
    height: int = 160,
) -> str:
    """A stacked bar chart of ``columns`` as an SVG element with an accessible name."""
    left, bottom, top_pad = 44, 18, 8
    plot_w, plot_h = width - left - 4, height - bottom - top_pad
    top = _nice_top(max((sum(c.values.get(s.key, 0) for s in series) for c in columns), default=0))
    step = plot_w / max(len(columns), 1)
    bar_w = max(step - 1, 1)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" aria-label="{escape(title)}" '
        f'class="chart" font-family="sans-serif" font-size="10">',
        f"<title>{escape(title)}</title>",
        f'<line x1="{left}" y1="{top_pad}" x2="{width - 4}" y2="{top_pad}" stroke="#ccc" />',
        f'<line x1="{left}" y1="{top_pad + plot_h}" x2="{width - 4}" y2="{top_pad + plot_h}" '
        f'stroke="#888" />',
        f'<text x="{left - 4}" y="{top_pad + 4}" text-anchor="end" fill="currentColor">'
        f"{top:,}</text>",
        f'<text x="{left - 4}" y="{top_pad + plot_h}" text-anchor="end" '
        f'fill="currentColor">0</text>',
    ]
    for index, column in enumerate(columns):
        x = left + index * step
        y = top_pad + plot_h
        figures = ", ".join(f"{s.label} {column.values.get(s.key, 0):,}" for s in series)
        parts.append(f"<g><title>{escape(column.title)}: {escape(figures)}</title>")
        for s in series:
            value = column.values.get(s.key, 0)
            if value <= 0:
                continue
            h = value / top * plot_h
            y -= h
            parts.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{h:.1f}" '
                f'fill="{escape(s.colour)}" />'
            )
        # An invisible full-height target, so the hover title works on empty hours too.
        parts.append(
            f'<rect x="{x:.1f}" y="{top_pad}" width="{bar_w:.1f}" height="{plot_h}" '
            f'fill="transparent" /></g>'
        )
        if column.label:
            parts.append(
                f'<text x="{x + bar_w / 2:.1f}" y="{height - 4}" text-anchor="middle" '
                f'fill="currentColor">{escape(column.label)}</text>'
            )
    parts.append("</svg>")
    return "".join(parts)


def legend(series: Sequence[Series]) -> str:
    """The series' colours and names, as HTML for beside a chart."""
    items = "".join(
        f'<li><svg width="10" height="10" aria-hidden="true"><rect width="10" height="10" '
        f'fill="{escape(s.colour)}" /></svg> {escape(s.label)}</li>'
        for s in series
    )
    return f'<ul class="chart-legend">{items}</ul>'
