"""The layer × head heatmap of a per-component table, drawn by the review page as inline SVG.

Cells are coloured on a diverging scale around 0 and labelled in black or white, whichever
contrasts more with the cell; the hypothesis's pre-registered components and the components
confirmed anywhere in the investigation are outlined; each cell's tooltip gives the tool's own
pair-level CI, p and n (labelled as the tool's: no verdict reads them); cells at or beyond the
SESOI of the hypothesis's metric carry a dot.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from markupsafe import Markup

from rankscope.agent.report_facts import fmt, num
from rankscope.agent.report_svg import INK, MUTED, diverging, esc, text_on
from rankscope.experiments_db.records import EvidenceRecord

HEAD = re.compile(r"^L(\d+)\.H(\d+)$")
MIN_CELLS = 4
VALUE_COLUMNS = ("effect", "fraction", "fraction_restored")
"""The column drawn when the hypothesis's metric names none of the table's (in this order)."""


@dataclass(frozen=True)
class Cell:
    component: str
    layer: int
    head: int
    value: float | None
    low: float | None
    high: float | None
    p_value: float | None
    n: float | None


@dataclass
class Heatmap:
    table: str
    column: str
    cells: dict[tuple[int, int], Cell]
    layers: int
    heads: int
    prereg: frozenset[str]
    confirmed: frozenset[str]
    confidence: float | None
    sesoi: float | None
    null: float

    def beyond_sesoi(self, cell: Cell) -> bool:
        return (
            self.sesoi is not None
            and cell.value is not None
            and abs(cell.value - self.null) >= self.sesoi
        )


def heatmap_of(
    ev: EvidenceRecord,
    *,
    metric: str = "",
    prereg: Collection[str] = (),
    confirmed: Collection[str] = (),
    confidence: float | None = None,
    result: Mapping[str, Any] | None = None,
) -> Heatmap | None:
    """A heatmap of the evidence's per-head table (``effects``), or None when it has none."""
    for name, rows in ev.tables.items():
        if not isinstance(rows, list) or not rows or not isinstance(rows[0], dict):
            continue
        if "component" not in rows[0]:
            continue
        heads = [r for r in rows if isinstance(r, dict) and HEAD.match(str(r.get("component")))]
        if len(heads) < MIN_CELLS:
            continue
        wanted = metric.split("[", 1)[0]
        candidates = [wanted, *VALUE_COLUMNS]
        column = next(
            (c for c in candidates if c and any(num(r.get(c)) is not None for r in heads)), ""
        )
        if not column:
            continue
        cells: dict[tuple[int, int], Cell] = {}
        for r in heads:
            m = HEAD.match(str(r["component"]))
            assert m is not None
            layer, head = int(m.group(1)), int(m.group(2))
            cells[(layer, head)] = Cell(
                str(r["component"]),
                layer,
                head,
                num(r.get(column)),
                num(r.get("ci_low")),
                num(r.get("ci_high")),
                num(r.get("p_value")),
                num(r.get("n")),
            )
        same_metric = bool(result) and column == wanted
        return Heatmap(
            table=name,
            column=column,
            cells=cells,
            layers=max(layer for layer, _ in cells) + 1,
            heads=max(head for _, head in cells) + 1,
            prereg=frozenset(prereg),
            confirmed=frozenset(confirmed),
            confidence=confidence,
            sesoi=num(result.get("sesoi")) if same_metric and result else None,
            null=(num(result.get("null_value")) or 0.0) if same_metric and result else 0.0,
        )
    return None


_CW, _CH, _X0, _Y0 = 52, 28, 40, 24


def label_power(bound: float) -> int:
    """The power of ten the cell labels are written in, so that the largest reads 1–99."""
    if bound <= 0 or bound >= 0.1:
        return 0
    return -int(math.floor(math.log10(bound)))


def cell_label(value: float | None, power: int) -> str:
    if value is None:
        return ""
    if power == 0:
        return f"{value:.2f}"
    return f"{value * 10**power:.1f}"


def heatmap_svg(hm: Heatmap) -> Markup:
    """The heatmap as inline SVG with a per-cell tooltip."""
    width, height = _X0 + _CW * hm.heads + 8, _Y0 + _CH * hm.layers + 8
    values = [abs(c.value) for c in hm.cells.values() if c.value is not None]
    bound = max(values) if values else 1.0
    power = label_power(bound)
    level = f"{hm.confidence * 100:g} % " if hm.confidence else ""
    out = [
        f'<svg class="heatmap" role="img" aria-label="layer by head heatmap of {esc(hm.column)}" '
        f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        'xmlns="http://www.w3.org/2000/svg" font-family="system-ui, sans-serif" font-size="11">'
    ]
    for head in range(hm.heads):
        out.append(
            f'<text x="{_X0 + _CW * head + _CW / 2}" y="{_Y0 - 8}" text-anchor="middle" '
            f'fill="{MUTED}">H{head}</text>'
        )
    for layer in range(hm.layers):
        out.append(
            f'<text x="{_X0 - 6}" y="{_Y0 + _CH * layer + _CH / 2 + 4}" text-anchor="end" '
            f'fill="{MUTED}">L{layer}</text>'
        )
    outlines: list[str] = []
    column = esc(hm.column)
    # component names match HEAD (L<n>.H<n>) and numbers print as digits: nothing else to escape
    for (layer, head), cell in sorted(hm.cells.items()):
        x, y = _X0 + _CW * head, _Y0 + _CH * layer
        fill = diverging(cell.value, bound)
        ci = f" [{fmt(cell.low, 3)}, {fmt(cell.high, 3)}]" if cell.low is not None else ""
        tip = (
            f"{cell.component}: {column} {fmt(cell.value)}{ci} (tool&#x27;s own pair-level "
            f"{level}CI), p = {fmt(cell.p_value, 2)}, n = {fmt(cell.n)} pairs"
        )
        prereg, confirmed = cell.component in hm.prereg, cell.component in hm.confirmed
        beyond = hm.beyond_sesoi(cell)
        if prereg or confirmed or beyond:
            marks = [
                ("pre-registered", prereg),
                ("confirmed", confirmed),
                ("beyond the SESOI", beyond),
            ]
            tip += " — " + ", ".join(m for m, on in marks if on)
        classes = "cell" + (" prereg" if prereg else "") + (" confirmed" if confirmed else "")
        colour = text_on(fill)
        out.append(
            f'<g class="{classes}" data-component="{cell.component}">'
            f"<title>{tip}</title>"
            f'<rect x="{x}" y="{y}" width="{_CW}" height="{_CH}" fill="{fill}" stroke="#ffffff"/>'
            f'<text x="{x + _CW / 2}" y="{y + _CH / 2 + 4}" text-anchor="middle" '
            f'fill="{colour}">{cell_label(cell.value, power)}</text>'
            + (
                f'<circle cx="{x + _CW - 5}" cy="{y + 5}" r="2.5" fill="{colour}"/>'
                if beyond
                else ""
            )
            + "</g>"
        )
        if confirmed:
            outlines.append(
                f'<rect class="outline-confirmed" x="{x + 1.5}" y="{y + 1.5}" width="{_CW - 3}" '
                f'height="{_CH - 3}" fill="none" stroke="#1a7f37" stroke-width="3"/>'
            )
        if prereg:
            outlines.append(
                f'<rect class="outline-prereg" data-component="{cell.component}" '
                f'x="{x + 1}" y="{y + 1}" width="{_CW - 2}" height="{_CH - 2}" fill="none" '
                f'stroke="{INK}" stroke-width="3"/>'
                f'<rect x="{x + 3.5}" y="{y + 3.5}" width="{_CW - 7}" height="{_CH - 7}" '
                'fill="none" stroke="#ffffff" stroke-width="1"/>'
            )
    out += outlines
    out.append("</svg>")
    return Markup("".join(out))


def heatmap_caption(hm: Heatmap, evidence_id: int) -> str:
    """What the heatmap shows, its outlines and where its numbers come from."""
    values = [abs(c.value) for c in hm.cells.values() if c.value is not None]
    power = label_power(max(values) if values else 1.0)
    unit = f" (labels in units of 10^-{power})" if power else ""
    parts = [
        f"Column {hm.column} of table {hm.table} (E{evidence_id}), layer × head{unit}; red "
        "positive, blue negative"
    ]
    if hm.prereg:
        parts.append("black outline: pre-registered " + ", ".join(sorted(hm.prereg)))
    if hm.confirmed:
        parts.append("green outline: confirmed " + ", ".join(sorted(hm.confirmed)))
    if hm.sesoi is not None:
        parts.append(f"dot: at or beyond the SESOI {hm.sesoi:g}")
    parts.append("hover a cell for the tool's own pair-level CI, p and n (no verdict reads them)")
    return "; ".join(parts) + "."
