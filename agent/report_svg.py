"""Small helpers for the figures the review pages draw as inline SVG (and the reports as PNG):
escaping, the verdict colours, a diverging colour scale and text that stays readable on it.

SVG is written with presentation attributes only (``fill="…"``, no ``style``), so the
workspace's Content-Security-Policy (``style-src 'self'``) does not block it.
"""

from __future__ import annotations

import functools
import html

VERDICT_COLOURS = {
    "supported": "#1a7f37",
    "refuted": "#c62828",
    "negligible": "#5b6b7f",
    "inconclusive": "#9a6700",
    "unverified": "#8a3ffc",
    "exploratory": "#66707c",
    "no verdict": "#66707c",
}
"""One colour per verdict (and display status), shared by the forest plot, the circuit figure
and the pages' badges."""
INK = "#1d232b"
MUTED = "#66707c"
LINE = "#d8dde3"


def esc(text: object) -> str:
    """``text`` escaped for SVG/HTML text and attribute values."""
    return html.escape(str(text), quote=True)


def _hex(rgb: tuple[float, float, float]) -> str:
    return "#" + "".join(f"{max(0, min(255, round(c * 255))):02x}" for c in rgb)


_STEPS = 128


def _ramp(end: tuple[float, float, float]) -> list[str]:
    """White → ``end`` in ``_STEPS + 1`` colours (intensity ``t ** 0.8``)."""
    out = []
    for i in range(_STEPS + 1):
        a = (i / _STEPS) ** 0.8
        r, g, b = (1.0 + (e - 1.0) * a for e in end)
        out.append(_hex((r, g, b)))
    return out


_RED, _BLUE = _ramp((0.70, 0.09, 0.17)), _ramp((0.13, 0.40, 0.67))


def diverging(value: float | None, bound: float) -> str:
    """Blue (negative) – white – red (positive) fill for ``value`` on ``[-bound, bound]``; grey
    for a missing value."""
    if value is None or bound <= 0:
        return "#e5e7ea"
    t = max(-1.0, min(1.0, value / bound))
    return (_RED if t > 0 else _BLUE)[round(abs(t) * _STEPS)]


def sequential(value: float | None, bound: float) -> str:
    """White → blue fill for ``value`` on ``[0, bound]``."""
    if value is None or bound <= 0:
        return "#e5e7ea"
    a = max(0.0, min(1.0, value / bound)) ** 0.8
    end = (0.13, 0.40, 0.67)
    r, g, b = (1.0 + (e - 1.0) * a for e in end)
    return _hex((r, g, b))


@functools.lru_cache(maxsize=1024)
def luminance(fill: str) -> float:
    """Relative luminance (WCAG) of a ``#rrggbb`` colour."""
    channels = [int(fill[i : i + 2], 16) / 255 for i in (1, 3, 5)]
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def text_on(fill: str) -> str:
    """Black or white, whichever contrasts more with ``fill`` (WCAG contrast ratio)."""
    lum = luminance(fill)
    return "#000000" if (lum + 0.05) / 0.05 >= 1.05 / (lum + 0.05) else "#ffffff"


def nice_ticks(low: float, high: float, count: int = 4) -> list[float]:
    """About ``count`` round tick values spanning ``[low, high]``."""
    import math

    span = high - low
    if span <= 0:
        return [low]
    raw = span / count
    step = 10 ** math.floor(math.log10(raw))
    for mult in (1, 2, 2.5, 5, 10):
        if mult * step >= raw:
            step *= mult
            break
    first = math.ceil(low / step) * step
    ticks, t = [], first
    while t <= high + step * 1e-9:
        ticks.append(round(t, 12))
        t += step
    return ticks
