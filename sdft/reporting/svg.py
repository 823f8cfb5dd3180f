"""Line charts as inline SVG for the run page: curves with standard-error bars and bands, horizontal reference
lines, shaded bands and marked points, drawn from the numbers alone, so the page needs no script and no image file
to show them. Colours of the axes and text come from the page's stylesheet (light and dark)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from html import escape

WIDTH, HEIGHT = 640, 300
LEFT, RIGHT, TOP, BOTTOM = 56, 18, 16, 42
#: one colour per run or curve, distinct on light and dark backgrounds (Okabe and Ito's palette without black)
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442")
#: the stroke pattern of each kind of horizontal line, in the chart and in its legend
DASHES = {"base": "6 4", "ceiling": "2 3", "limit": "8 3 2 3"}

Point = tuple[float, float, float | None]


@dataclass(frozen=True)
class Series:
    """One curve: its (x, y, standard error or None) points, label and colour, and the points to mark.

    Attributes:
        label: the legend text.
        points: (x, y, standard error or None), in x order.
        colour: the stroke colour.
        chosen: the x of the chosen point (a star and a vertical line), or None.
        rejected: x -> why that point was rejected (a cross, the reason in its tooltip).
        faint: drawn thin and pale without markers (a noisy curve beneath its smoothed line).
    """

    label: str
    points: Sequence[Point]
    colour: str
    chosen: float | None = None
    rejected: Mapping[float, str] = field(default_factory=dict)
    faint: bool = False


@dataclass(frozen=True)
class Level:
    """A horizontal line across the chart: the base model's value, a ceiling, a rule's limit (``kind``)."""

    value: float
    label: str
    kind: str


@dataclass(frozen=True)
class Band:
    """A shaded horizontal band from ``low`` to ``high`` (the selection rule's tie band)."""

    low: float
    high: float
    label: str


@dataclass(frozen=True)
class Frame:
    """The chart's data ranges and its drawing area, mapping data to SVG coordinates."""

    x_range: tuple[float, float]
    y_range: tuple[float, float]

    def x(self, value: float) -> float:
        low, high = self.x_range
        return LEFT + (value - low) / (high - low) * (WIDTH - LEFT - RIGHT)

    def y(self, value: float) -> float:
        low, high = self.y_range
        return HEIGHT - BOTTOM - (value - low) / (high - low) * (HEIGHT - TOP - BOTTOM)


# -- scales -----------------------------------------------------------------------------------------------------


def padded_range(values: Sequence[float], fraction: float) -> tuple[float, float]:
    """(low, high) around ``values`` with ``fraction`` of their span added on each side; a span of zero is widened.

    Args:
        values: the numbers to cover (at least one).
        fraction: the margin on each side, as a fraction of the span.
    """
    low, high = min(values), max(values)
    margin = (high - low) * fraction if high > low else max(abs(low) * 0.1, 1e-3)
    return low - margin, high + margin


def nice_ticks(low: float, high: float, count: int = 6) -> list[float]:
    """Round tick values (1, 2 or 5 times a power of ten apart) inside ``[low, high]``, about ``count`` of them.

    Args:
        low: the bottom of the range.
        high: the top of the range (above ``low``).
        count: the number of ticks wanted.
    """
    raw = (high - low) / max(count, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(multiple * power for multiple in (1, 2, 5, 10) if multiple * power >= raw)
    first = math.ceil(low / step - 1e-9)
    return [round(index * step, 12) for index in range(first, math.floor(high / step + 1e-9) + 1)]


def tick_decimals(ticks: Sequence[float]) -> int:
    """The fewest decimals that write every tick exactly, e.g. 2 for 0.5, 0.75, 1 (at most 6).

    Args:
        ticks: the ticks of an axis.
    """
    exact = (decimals for decimals in range(7) if all(abs(round(tick, decimals) - tick) < 1e-9 for tick in ticks))
    return next(exact, 6)


def x_ticks(series: Sequence[Series], x_range: tuple[float, float]) -> list[float]:
    """The x positions to label: the data's own x values when there are ten or fewer, else round values.

    Args:
        series: the chart's curves.
        x_range: the chart's x range.
    """
    values = sorted({x for line in series if not line.faint for x, _, _ in line.points})
    return values if 1 < len(values) <= 10 else nice_ticks(*x_range, count=6)


# -- drawing ----------------------------------------------------------------------------------------------------


def axes_svg(frame: Frame, xs: Sequence[float], x_label: str) -> list[str]:
    """Horizontal grid lines with their labels, the x ticks and the x-axis label.

    Args:
        frame: the chart's frame.
        xs: the x ticks.
        x_label: the x-axis label.
    """
    parts = []
    y_ticks = nice_ticks(*frame.y_range)
    for value in y_ticks:
        y = frame.y(value)
        parts.append(f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>')
        parts.append(f'<text class="tick" x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">')
        parts.append(f"{value:.{tick_decimals(y_ticks)}f}</text>")
    bottom = HEIGHT - BOTTOM
    parts.append(f'<line class="axis" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{bottom}" y2="{bottom}"/>')
    for value in xs:
        x = frame.x(value)
        parts.append(f'<line class="axis" x1="{x:.1f}" x2="{x:.1f}" y1="{bottom}" y2="{bottom + 4}"/>')
        parts.append(f'<text class="tick" x="{x:.1f}" y="{bottom + 17}" text-anchor="middle">')
        parts.append(f"{value:.{tick_decimals(xs)}f}</text>")
    middle = (LEFT + WIDTH - RIGHT) / 2
    parts.append(f'<text class="label" x="{middle:.1f}" y="{HEIGHT - 6}" text-anchor="middle">{escape(x_label)}</text>')
    return parts


def guides_svg(frame: Frame, levels: Sequence[Level], bands: Sequence[Band]) -> list[str]:
    """The shaded bands and the horizontal reference lines, each with its label as a tooltip.

    Args:
        frame: the chart's frame.
        levels: the horizontal lines.
        bands: the shaded bands.
    """
    parts = []
    for band in bands:
        top, bottom = frame.y(band.high), frame.y(band.low)
        parts.append(
            f'<rect class="band" x="{LEFT}" y="{top:.1f}" width="{WIDTH - LEFT - RIGHT}" '
            f'height="{bottom - top:.1f}"><title>{escape(band.label)}</title></rect>'
        )
    for level in levels:
        y = frame.y(level.value)
        parts.append(
            f'<line class="level {level.kind}" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" '
            f'stroke-dasharray="{DASHES.get(level.kind, "4 4")}"><title>{escape(level.label)}</title></line>'
        )
    return parts


def errors_svg(frame: Frame, line: Series) -> list[str]:
    """The standard error of each point: a pale band through the points and a bar with caps at each.

    Args:
        frame: the chart's frame.
        line: the curve.
    """
    points = [(x, y, se) for x, y, se in line.points if se is not None]
    if not points:
        return []
    upper = [f"{frame.x(x):.1f},{frame.y(y + se):.1f}" for x, y, se in points]
    lower = [f"{frame.x(x):.1f},{frame.y(y - se):.1f}" for x, y, se in reversed(points)]
    parts = [f'<polygon class="se-band" fill="{line.colour}" points="{" ".join(upper + lower)}"/>']
    bars = []
    for x, y, se in points:
        left, right, top, bottom = frame.x(x) - 3, frame.x(x) + 3, frame.y(y + se), frame.y(y - se)
        middle = frame.x(x)
        bars.append(
            f"M{middle:.1f} {top:.1f}V{bottom:.1f}M{left:.1f} {top:.1f}H{right:.1f}M{left:.1f} {bottom:.1f}H{right:.1f}"
        )
    parts.append(f'<path class="se-bar" stroke="{line.colour}" d="{"".join(bars)}"/>')
    return parts


def point_svg(frame: Frame, line: Series, point: Point) -> str:
    """One point: a dot, a star when chosen, a cross when rejected; its value (and why) as a tooltip.

    Args:
        frame: the chart's frame.
        line: the curve the point belongs to.
        point: (x, y, standard error or None).
    """
    x, y, se = point
    cx, cy = frame.x(x), frame.y(y)
    text = f"{line.label}: {x:g} → {y:.3f}" + (f" ± {se:.3f}" if se is not None else "")
    if x == line.chosen:
        title = escape(text + " (chosen)")
        return (
            f'<g class="chosen-point"><circle cx="{cx:.1f}" cy="{cy:.1f}" r="9" stroke="{line.colour}"/>'
            f'<text x="{cx:.1f}" y="{cy + 4.5:.1f}" text-anchor="middle" fill="{line.colour}">★</text>'
            f"<title>{title}</title></g>"
        )
    if x in line.rejected:
        title = escape(f"{text} (rejected: {line.rejected[x]})")
        return (
            f'<path class="rejected-point" d="M{cx - 4:.1f} {cy - 4:.1f}l8 8m0 -8l-8 8" stroke="{line.colour}">'
            f"<title>{title}</title></path>"
        )
    dot = f'<circle class="dot" cx="{cx:.1f}" cy="{cy:.1f}" r="3" fill="{line.colour}">'
    return f"{dot}<title>{escape(text)}</title></circle>"


def series_svg(frame: Frame, line: Series) -> list[str]:
    """A curve: its standard errors, its line, its points, and a vertical line at its chosen point.

    Args:
        frame: the chart's frame.
        line: the curve.
    """
    path = " ".join(f"{frame.x(x):.1f},{frame.y(y):.1f}" for x, y, _ in line.points)
    kind = "faint" if line.faint else "line"
    parts = [] if line.faint else errors_svg(frame, line)
    if line.chosen is not None:
        x = frame.x(line.chosen)
        parts.append(
            f'<line class="chosen-line" stroke="{line.colour}" x1="{x:.1f}" x2="{x:.1f}" '
            f'y1="{TOP}" y2="{HEIGHT - BOTTOM}"/>'
        )
    parts.append(f'<polyline class="{kind}" stroke="{line.colour}" points="{path}"/>')
    if not line.faint and len(line.points) <= 60:
        parts += [point_svg(frame, line, point) for point in line.points]
    return parts


def legend_html(series: Sequence[Series], levels: Sequence[Level], bands: Sequence[Band], chosen: str) -> str:
    """The chart's legend as an HTML list (it wraps with the page): curves, reference lines, bands, marks.

    Args:
        series: the curves (listed when there are several).
        levels: the horizontal lines.
        bands: the shaded bands.
        chosen: what the starred points are, e.g. ``chosen``.
    """
    items = []
    shown = [line for line in series if not line.faint]
    if len(shown) > 1 or any(line.points and line.points[0][2] is not None for line in shown):
        for line in shown:
            errors = " ± standard error" if any(se is not None for _, _, se in line.points) else ""
            swatch = f'<line x1="1" x2="23" y1="6" y2="6" stroke="{line.colour}" stroke-width="2.5"/>'
            items.append((swatch, line.label + errors))
    for level in levels:
        dash = DASHES.get(level.kind, "4 4")
        swatch = f'<line class="level {level.kind}" x1="1" x2="23" y1="6" y2="6" stroke-dasharray="{dash}"/>'
        items.append((swatch, level.label))
    items += [('<rect class="band" x="1" y="1" width="22" height="10"/>', band.label) for band in bands]
    if any(line.chosen is not None for line in shown):
        items.append(('<text x="12" y="10.5" text-anchor="middle" class="star">★</text>', chosen))
    if any(line.rejected for line in shown):
        items.append(('<path class="cross" d="M8 2l8 8m0 -8l-8 8"/>', "rejected (hover for why)"))
    rows = [
        f'<li><svg class="swatch" viewBox="0 0 24 12" aria-hidden="true">{swatch}</svg>{escape(text)}</li>'
        for swatch, text in items
    ]
    return f'<ul class="legend">{"".join(rows)}</ul>' if rows else ""


def line_chart(
    title: str,
    series: Sequence[Series],
    levels: Sequence[Level] = (),
    bands: Sequence[Band] = (),
    x_label: str = "step",
    chosen: str = "chosen",
) -> str:
    """A ``<figure>`` holding an SVG line chart of ``series`` with its legend; empty when there is nothing to draw.

    Args:
        title: the caption above the chart.
        series: the curves, drawn in order (faint ones first, to stay beneath).
        levels: horizontal reference lines.
        bands: shaded horizontal bands.
        x_label: the x-axis label.
        chosen: what the starred points are, in the legend.
    """
    series = [line for line in series if line.points]
    if not series:
        return ""
    xs = [x for line in series for x, _, _ in line.points]
    ys = [y + sign * (se or 0) for line in series for _, y, se in line.points for sign in (-1, 1)]
    ys += [level.value for level in levels] + [value for band in bands for value in (band.low, band.high)]
    frame = Frame(padded_range(xs, 0.03), padded_range(ys, 0.08))
    parts = axes_svg(frame, x_ticks(series, frame.x_range), x_label) + guides_svg(frame, levels, bands)
    for line in sorted(series, key=lambda line: not line.faint):
        parts += series_svg(frame, line)
    svg = f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}">{"".join(parts)}</svg>'
    caption = f"<figcaption>{escape(title)}</figcaption>"
    return f'<figure class="chart">{caption}{svg}{legend_html(series, levels, bands, chosen)}</figure>'
