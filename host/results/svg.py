"""Inline SVG charts for the HTML report, generated here: no script, no network at view time.

Three shapes: ``dots`` (one row per category, every rep a dot, the mean a tick), ``bars`` (horizontal
bars with an optional ± whisker and labelled reference lines) and ``scatter`` (points with a
``<title>`` hover and the Pareto front as a line). Axes and marks are ``<path>`` elements, so a
rendered chart always has non-empty paths (what the Chromium test checks).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from html import escape

WIDTH = 760
LABEL_W = 300  # left column for category labels
RIGHT = 90  # room for value labels
ROW_H = 22
TOP, BOTTOM = 10, 34


@dataclass(frozen=True)
class Series:
    label: str
    values: list[float]
    mean: float | None = None
    note: str = ""  # shown after the label, e.g. "emulated"


@dataclass(frozen=True)
class Bar:
    label: str
    value: float
    err: float | None = None
    text: str = ""  # printed right of the bar (default: the value)
    muted: bool = False  # drawn grey (e.g. not measured on its board)


@dataclass(frozen=True)
class Point:
    x: float
    y: float
    label: str
    title: str = ""


@dataclass(frozen=True)
class Ref:
    value: float
    label: str


@dataclass
class _Frame:
    vmax: float
    rows: int
    unit: str
    top: int = TOP
    parts: list[str] = field(default_factory=list)

    @property
    def height(self) -> int:
        return self.top + self.rows * ROW_H + BOTTOM

    def x(self, v: float) -> float:
        return LABEL_W + (WIDTH - LABEL_W - RIGHT) * (v / self.vmax if self.vmax else 0)

    def y(self, i: int) -> float:
        return self.top + i * ROW_H + ROW_H / 2


def nice_max(v: float) -> tuple[float, float]:
    """An axis end >= v on a 1/2/5 step grid, and its step."""
    if v <= 0 or not math.isfinite(v):
        return 1.0, 0.2
    raw = v / 5
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    return step * math.ceil(v / step - 1e-9), step


def _fmt(v: float) -> str:
    return f"{v:.0f}" if abs(v) >= 100 or v == int(v) else f"{v:.3g}"


def _axis(f: _Frame) -> None:
    end, step = nice_max(f.vmax)
    f.vmax = end
    y0, y1 = f.top, f.top + f.rows * ROW_H
    f.parts.append(f'<path class="axis" d="M{LABEL_W} {y0}V{y1}H{WIDTH - RIGHT}"/>')
    n = round(end / step)
    for k in range(n + 1):
        v = k * step
        x = f.x(v)
        if k:
            f.parts.append(f'<path class="grid" d="M{x:.1f} {y0}V{y1}"/>')
        f.parts.append(f'<text x="{x:.1f}" y="{y1 + 14}" text-anchor="middle">{_fmt(v)}</text>')
    f.parts.append(f'<text x="{(LABEL_W + WIDTH - RIGHT) / 2:.0f}" y="{y1 + 29}" text-anchor="middle" '
                   f'class="unit">{escape(f.unit)}</text>')


MAX_LABEL = 48  # characters that fit LABEL_W at 11 px; longer labels are cut, the whole one is the hover


def _label(f: _Frame, i: int, text: str) -> None:
    short = text if len(text) <= MAX_LABEL else "…" + text[-(MAX_LABEL - 1):]
    f.parts.append(f'<text x="{LABEL_W - 6}" y="{f.y(i) + 4:.1f}" text-anchor="end">{escape(short)}'
                   f'<title>{escape(text)}</title></text>')


def _svg(f: _Frame, title: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{f.height}" '
            f'viewBox="0 0 {WIDTH} {f.height}" role="img" aria-label="{escape(title)}"><title>{escape(title)}</title>'
            + "".join(f.parts) + "</svg>")


def dots(series: list[Series], *, unit: str, title: str) -> str:
    """Every rep a dot (hover: its value), the mean a vertical tick."""
    top = max((v for s in series for v in s.values + ([s.mean] if s.mean is not None else [])), default=0.0)
    f = _Frame(top * 1.05, len(series), unit)
    _axis(f)
    for i, s in enumerate(series):
        _label(f, i, s.label + (f" ({s.note})" if s.note else ""))
        y = f.y(i)
        for k, v in enumerate(s.values):
            f.parts.append(f'<circle class="rep" cx="{f.x(v):.1f}" cy="{y:.1f}" r="4">'
                           f'<title>{escape(s.label)} rep {k + 1}: {v:.3g} {escape(unit)}</title></circle>')
        if s.mean is not None:
            x = f.x(s.mean)
            f.parts.append(f'<path class="mean" d="M{x:.1f} {y - 8:.1f}V{y + 8:.1f}"><title>mean {s.mean:.3g} '
                           f'{escape(unit)}</title></path>')
            f.parts.append(f'<text x="{WIDTH - RIGHT + 6}" y="{y + 4:.1f}">{s.mean:.4g}</text>')
    return _svg(f, title)


def bars(items: list[Bar], *, unit: str, title: str, refs: list[Ref] = ()) -> str:
    """Horizontal bars (``path`` rectangles), ± whiskers, vertical reference lines with their labels."""
    top = max([b.value + (b.err or 0) for b in items] + [r.value for r in refs] + [0.0])
    f = _Frame(top * 1.05, len(items), unit, TOP + 13 * len(refs))
    _axis(f)
    x0 = LABEL_W
    for i, b in enumerate(items):
        _label(f, i, b.label)
        y, x = f.y(i), f.x(b.value)
        f.parts.append(f'<path class="bar{" muted" if b.muted else ""}" d="M{x0} {y - 7:.1f}H{x:.1f}V{y + 7:.1f}'
                       f'H{x0}Z"><title>{escape(b.label)}: {escape(b.text or _fmt(b.value))}</title></path>')
        if b.err:
            lo, hi = f.x(max(b.value - b.err, 0)), f.x(b.value + b.err)
            f.parts.append(f'<path class="err" d="M{lo:.1f} {y:.1f}H{hi:.1f}M{lo:.1f} {y - 4:.1f}V{y + 4:.1f}'
                           f'M{hi:.1f} {y - 4:.1f}V{y + 4:.1f}"/>')
        f.parts.append(f'<text x="{max(x, f.x(b.value + (b.err or 0))) + 4:.1f}" y="{y + 4:.1f}">'
                       f'{escape(b.text or _fmt(b.value))}</text>')
    for k, r in enumerate(refs):  # each label on its own line above the bars
        x, y = f.x(r.value), TOP + 13 * k
        f.parts.append(f'<path class="ref" d="M{x:.1f} {y}V{f.top + f.rows * ROW_H}"><title>{escape(r.label)}</title></path>')
        anchor = ("end", x - 3) if x > WIDTH - RIGHT - 160 else ("start", x + 3)  # keep the label inside the chart
        f.parts.append(f'<text class="reflabel" x="{anchor[1]:.1f}" y="{y + 9}" text-anchor="{anchor[0]}">'
                       f'{escape(r.label)}</text>')
    return _svg(f, title)


def pareto_front(points: list[Point]) -> list[Point]:
    """Points no other point beats on both axes (smaller x and smaller y), by x."""
    front, best = [], math.inf
    for p in sorted(points, key=lambda p: (p.x, p.y)):
        if p.y < best:
            front.append(p)
            best = p.y
    return front


def scatter(points: list[Point], *, x_unit: str, y_unit: str, title: str) -> str:
    """Points (hover: ``title``) with the Pareto front (lower-left is better) as a line."""
    h, left, w, top = 330, 70, WIDTH - 90, TOP + 16
    xmax, xstep = nice_max(max((p.x for p in points), default=1) * 1.08)
    ylo = min((p.y for p in points), default=1.0)
    yhi = max((p.y for p in points), default=1.0)
    ylo = math.floor(ylo * 20) / 20 if yhi > ylo else ylo - 0.05
    yspan, ystep = nice_max((yhi - ylo) * 1.1 or 0.1)

    def px(v: float) -> float:
        return left + (w - left) * v / xmax

    def py(v: float) -> float:
        return top + (h - top - 40) * (1 - (v - ylo) / yspan)

    parts = [f'<path class="axis" d="M{left} {top}V{py(ylo):.1f}H{w}"/>']
    for k in range(round(xmax / xstep) + 1):
        parts.append(f'<text x="{px(k * xstep):.1f}" y="{py(ylo) + 14:.1f}" text-anchor="middle">{_fmt(k * xstep)}</text>')
    for k in range(round(yspan / ystep) + 1):
        v = ylo + k * ystep
        parts.append(f'<path class="grid" d="M{left} {py(v):.1f}H{w}"/>'
                     f'<text x="{left - 4}" y="{py(v) + 4:.1f}" text-anchor="end">{v:.3g}</text>')
    parts.append(f'<text x="{(left + w) / 2:.0f}" y="{h - 8}" text-anchor="middle" class="unit">{escape(x_unit)}</text>'
                 f'<text x="{left}" y="{TOP + 2}" text-anchor="middle" class="unit">{escape(y_unit)}</text>')
    front = pareto_front(points)
    if len(front) > 1:
        parts.append('<path class="front" d="M' + "L".join(f"{px(p.x):.1f} {py(p.y):.1f}" for p in front) + '"/>')
    for p in points:
        on = p in front
        parts.append(f'<circle class="pt{" on" if on else ""}" cx="{px(p.x):.1f}" cy="{py(p.y):.1f}" r="5">'
                     f'<title>{escape(p.title or p.label)}</title></circle>'
                     f'<text x="{px(p.x) + 7:.1f}" y="{py(p.y) - 6:.1f}" class="pl">{escape(p.label)}</text>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{h}" viewBox="0 0 {WIDTH} {h}" '
            f'role="img" aria-label="{escape(title)}"><title>{escape(title)}</title>' + "".join(parts) + "</svg>")
