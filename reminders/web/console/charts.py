"""Charts drawn on the server as inline SVG: no script, no network, readable without colour
(every series also has a table beside it on the page)."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

PALETTE = ("#2563eb", "#16a34a", "#d97706", "#9333ea", "#dc2626", "#0891b2", "#4b5563")
CHANNEL_COLOURS = {"email": "#2563eb", "sms": "#16a34a", "whatsapp": "#d97706"}
STATUS_COLOURS = {
    "pending": "#2563eb",
    "claimed": "#2563eb",
    "sent": "#16a34a",
    "in_doubt": "#d97706",
    "failed": "#dc2626",
    "expired": "#6b7280",
    "cancelled": "#6b7280",
    "planned": "#93c5fd",
}


@dataclass(frozen=True)
class Series:
    name: str
    values: Sequence[float | None]  # one per x label; None draws a gap
    colour: str


def _fmt(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".")


def nice_top(value: float, ticks: int = 4) -> float:
    """The smallest round number >= ``value`` that splits into ``ticks`` round steps."""
    if value <= 0:
        return float(ticks)
    raw = value / ticks
    magnitude = 10.0 ** math.floor(math.log10(raw))
    step: float = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    if value >= ticks and step < 1:
        step = 1
    return step * ticks


def line_chart(
    labels: Sequence[str],
    series: Sequence[Series],
    *,
    title: str,
    y_max: float | None = None,
    y_label: Callable[[float], str] = _fmt,
    width: int = 720,
    height: int = 280,
) -> Markup:
    """Lines (with dots) over the x ``labels``, y from 0, the title written above."""
    left, right, top, bottom = 52, 32, 40, 58
    plot_w, plot_h = width - left - right, height - top - bottom
    top_value = y_max or nice_top(max([v for s in series for v in s.values if v is not None] + [0]))
    step = plot_w / max(len(labels) - 1, 1)

    def x(i: int) -> float:
        return left + i * step if len(labels) > 1 else left + plot_w / 2

    def y(v: float) -> float:
        return top + plot_h - (v / top_value) * plot_h

    parts = [
        _frame(width, height, title),
        f'<text x="0" y="16" class="title">{escape(title)}</text>',
    ]
    for k in range(5):
        value = top_value * k / 4
        parts.append(
            f'<line x1="{left}" x2="{width - right}" y1="{y(value):.1f}" y2="{y(value):.1f}" '
            f'class="grid"/><text x="{left - 6}" y="{y(value) + 4:.1f}" text-anchor="end">'
            f"{escape(y_label(value))}</text>"
        )
    every = max(1, math.ceil(len(labels) / 10))
    for i, label in enumerate(labels):
        if i % every == 0:
            parts.append(
                f'<text x="{x(i):.1f}" y="{height - bottom + 18}" text-anchor="middle">'
                f"{escape(label)}</text>"
            )
    for s in series:
        parts.append(_polyline([(x(i), y(v)) for i, v in enumerate(s.values) if v is not None], s))
    parts.append(_legend(series, left, height - 12))
    return Markup("".join(parts) + "</svg>")  # noqa: S704 - every piece above is escaped


def _frame(width: int, height: int, title: str) -> str:
    return (
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">'
        f"<title>{escape(title)}</title>"
    )


def _polyline(points: list[tuple[float, float]], s: Series) -> str:
    if not points:
        return ""
    path = " ".join(f"{px:.1f},{py:.1f}" for px, py in points)
    dots = "".join(
        f'<circle cx="{px:.1f}" cy="{py:.1f}" r="3" fill="{s.colour}"/>' for px, py in points
    )
    return f'<polyline points="{path}" fill="none" stroke="{s.colour}" stroke-width="2"/>{dots}'


def _legend(series: Sequence[Series], left: int, baseline: int) -> str:
    parts, offset = [], left
    for s in series:
        parts.append(
            f'<rect x="{offset}" y="{baseline - 9}" width="12" height="12" fill="{s.colour}"/>'
            f'<text x="{offset + 16}" y="{baseline + 1}">{escape(s.name)}</text>'
        )
        offset += 28 + 7 * len(s.name)
    return "".join(parts)


@dataclass(frozen=True)
class Mark:
    """A dated point on a timeline: a step, a treatment, today."""

    day: dt.date
    label: str
    colour: str = "#1f2937"


def timeline(
    start: dt.date,
    window: tuple[dt.date, dt.date, dt.date],
    marks: Sequence[Mark],
    *,
    title: str,
    names: tuple[str, str, str] = ("open", "target", "close"),
    day_label: Callable[[dt.date], str] = dt.date.isoformat,
    width: int = 760,
    height: int = 230,
) -> Markup:
    """A date axis from ``start`` past the window's close: the window shaded, its edges and
    target named below the axis, each mark a dot with its label above (staggered)."""
    end = max([window[2], *(m.day for m in marks)]) + dt.timedelta(days=7)
    first = min([start, *(m.day for m in marks)]) - dt.timedelta(days=3)
    span = max((end - first).days, 1)
    pad, axis = 24, 120

    def x(day: dt.date) -> float:
        return pad + (day - first).days / span * (width - 2 * pad)

    def anchor(at: float) -> str:
        return "start" if at < 70 else "end" if at > width - 70 else "middle"

    opens, closes = x(window[0]), x(window[2])
    parts = [
        _frame(width, height, title),
        f'<rect x="{opens:.1f}" y="{axis - 14}" width="{closes - opens:.1f}" height="28" '
        f'class="window"/>',
        f'<line x1="{pad}" x2="{width - pad}" y1="{axis}" y2="{axis}" class="axis"/>',
    ]
    for row, (day, name) in zip((0, 2, 0), zip(window, names, strict=True), strict=True):
        at, below = x(day), axis + 34 + row * 16
        parts.append(
            f'<line x1="{at:.1f}" x2="{at:.1f}" y1="{axis - 18}" y2="{below - 12}" class="edge"/>'
            f'<text x="{at:.1f}" y="{below}" text-anchor="{anchor(at)}" class="small">'
            f"{escape(name)} · {escape(day_label(day))}</text>"
        )
    for i, mark in enumerate(sorted(marks, key=lambda m: m.day)):
        at, level = x(mark.day), axis - 30 - (i % 3) * 26
        parts.append(
            f'<line x1="{at:.1f}" x2="{at:.1f}" y1="{level + 4}" y2="{axis}" '
            f'stroke="{mark.colour}" class="stem"/><circle cx="{at:.1f}" cy="{axis}" r="5" '
            f'fill="{mark.colour}"/><text x="{at:.1f}" y="{level}" '
            f'text-anchor="{anchor(at)}">{escape(mark.label)}</text>'
        )
    return Markup("".join(parts) + "</svg>")  # noqa: S704 - every piece above is escaped
