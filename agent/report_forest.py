"""The forest plot of an investigation's hypotheses: per hypothesis the engine's estimate with its
CI (level stated per row), the pre-registered threshold and the SESOI band around the null,
discovery and held-out side by side, the verdict as colour.

Hypotheses measure different quantities (a share of pairs, a fraction of an effect, a score
change), so rows are grouped by metric and each group has its own axis. The page draws the plot as
inline SVG with a title, a description and a data table (:func:`forest_svg`); the report and the
static export carry a PNG (:func:`forest_png`).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from markupsafe import Markup

from rankscope.agent.report_facts import (
    Interval,
    Unverified,
    discovery_of,
    display_status,
    fmt,
    holdout_of,
    is_exploratory,
    is_negligible,
    level_note,
    num,
    safe_settings,
)
from rankscope.agent.report_svg import INK, LINE, MUTED, VERDICT_COLOURS, esc, nice_ticks
from rankscope.experiments_db.records import InvestigationTree
from rankscope.tools.metric_keys import try_parse_metric_key


@dataclass
class ForestRow:
    """One hypothesis in the forest plot."""

    node_id: int
    label: str
    text: str
    metric: str
    direction: str
    threshold: float
    effective: float | None
    null: float | None
    sesoi: float | None
    status: str
    """The display status; ``negligible`` for a refutation by equivalence."""
    discovery: Interval | None
    holdout: Interval | None
    level: str
    """Where the CI level comes from (:func:`level_note`)."""

    @property
    def colour(self) -> str:
        return VERDICT_COLOURS.get(self.status, MUTED)

    def summary(self) -> str:
        side = {"greater": ">", "less": "<"}.get(self.direction, "≠")
        parts = [f"{self.label} ({self.status}): {self.metric} {side} {self.threshold:g}"]
        for iv in (self.discovery, self.holdout):
            if iv is not None:
                parts.append(f"{iv.split} {iv.text()} ({iv.level_text() or 'no CI'})")
        if self.sesoi:
            parts.append(f"SESOI ± {self.sesoi:g} around {fmt(self.null)}")
        return "; ".join(parts)


@dataclass
class ForestGroup:
    """Rows measured on one metric, drawn on one axis."""

    name: str
    rows: list[ForestRow] = field(default_factory=list)

    def bounds(self) -> tuple[float, float]:
        points: list[float] = []
        for r in self.rows:
            points += [r.threshold] + [v for v in (r.effective,) if v is not None]
            if r.null is not None and r.sesoi is not None:
                points += [r.null - r.sesoi, r.null + r.sesoi]
            for iv in (r.discovery, r.holdout):
                if iv is not None:
                    points += [v for v in (iv.value, iv.low, iv.high) if v is not None]
        low, high = min(points), max(points)
        pad = (high - low) * 0.06 or abs(high) * 0.1 or 1.0
        return low - pad, high + pad


@dataclass
class Forest:
    groups: list[ForestGroup]
    left_out: list[str]
    """Labels of hypotheses with no estimate to draw (and why)."""

    @property
    def rows(self) -> list[ForestRow]:
        return [r for g in self.groups for r in g.rows]


def forest(
    tree: InvestigationTree, names: Mapping[int, str], unverified: Mapping[int, Unverified]
) -> Forest:
    """The forest plot's rows, grouped by metric (exploratory steps claim nothing: left out)."""
    multiplicity = safe_settings(tree.investigation).policy.multiplicity
    groups: dict[str, ForestGroup] = {}
    left_out: list[str] = []
    for node in tree.hypotheses:
        verdict = node.latest_verdict
        label = names[node.id]
        if is_exploratory(node):
            left_out.append(f"{label} (exploratory step: no claim)")
            continue
        disc = discovery_of(verdict)
        if verdict is None or disc is None:
            left_out.append(f"{label} ({'no verdict' if verdict is None else 'no estimate'})")
            continue
        result = verdict.criterion_result
        status = display_status(node, unverified)
        if status == "refuted" and is_negligible(verdict):
            status = "negligible"
        parsed = try_parse_metric_key(node.criterion.metric)
        group = parsed.name if parsed is not None else node.criterion.metric
        groups.setdefault(group, ForestGroup(group)).rows.append(
            ForestRow(
                node_id=node.id,
                label=label,
                text=node.text,
                metric=node.criterion.metric,
                direction=node.criterion.direction,
                threshold=node.criterion.threshold,
                effective=num(result.get("effective_threshold")),
                null=num(result.get("null_value")),
                sesoi=num(result.get("sesoi")),
                status=status,
                discovery=disc,
                holdout=holdout_of(verdict),
                level=level_note(result, multiplicity),
            )
        )
    return Forest(list(groups.values()), left_out)


# -- SVG ----------------------------------------------------------------------------------------

_W, _LABEL, _PLOT0, _PLOT1, _NUM, _VERDICT = 1000, 8, 300, 630, 645, 915
_ROW, _HEAD, _AXIS, _TOP = 36, 22, 28, 30


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def forest_svg(plot: Forest) -> Markup:
    """The forest plot as accessible inline SVG (empty markup when nothing can be drawn)."""
    if not plot.rows:
        return Markup("")
    height = _TOP + sum(_HEAD + _ROW * len(g.rows) + _AXIS for g in plot.groups) + 36
    out = [
        f'<svg class="forest" role="img" aria-labelledby="forest-title forest-desc" '
        f'viewBox="0 0 {_W} {height}" width="{_W}" height="{height}" '
        f'xmlns="http://www.w3.org/2000/svg" font-family="system-ui, sans-serif" font-size="12">',
        f'<title id="forest-title">Forest plot of {len(plot.rows)} hypotheses</title>',
        '<desc id="forest-desc">' + esc(" | ".join(r.summary() for r in plot.rows)) + "</desc>",
        f'<text x="{_LABEL}" y="18" font-weight="600" fill="{INK}">hypothesis</text>',
        f'<text x="{_PLOT0}" y="18" font-weight="600" fill="{INK}">estimate and CI '
        "(● discovery, ■ held-out)</text>",
        f'<text x="{_NUM}" y="18" font-weight="600" fill="{INK}">discovery · held-out</text>',
        f'<text x="{_VERDICT}" y="18" font-weight="600" fill="{INK}">verdict</text>',
    ]
    y = _TOP
    for group in plot.groups:
        low, high = group.bounds()

        def x(v: float, low: float = low, high: float = high) -> float:
            return _PLOT0 + (v - low) / (high - low) * (_PLOT1 - _PLOT0)

        out.append(
            f'<text x="{_LABEL}" y="{y + 15}" font-weight="600" fill="{MUTED}">'
            f"{esc(group.name)}</text>"
        )
        y += _HEAD
        top = y
        for row in group.rows:
            out.append(_svg_row(row, y, x))
            y += _ROW
        ticks = nice_ticks(low, high)
        out.append(f'<line x1="{_PLOT0}" x2="{_PLOT1}" y1="{y}" y2="{y}" stroke="{MUTED}"/>')
        for t in ticks:
            out.append(
                f'<line x1="{x(t):.1f}" x2="{x(t):.1f}" y1="{y}" y2="{y + 4}" stroke="{MUTED}"/>'
                f'<text x="{x(t):.1f}" y="{y + 16}" text-anchor="middle" font-size="10" '
                f'fill="{MUTED}">{esc(fmt(t, 3))}</text>'
            )
        out.append(
            f'<line x1="{_PLOT0}" x2="{_PLOT0}" y1="{top}" y2="{y}" stroke="{LINE}"/>'
            f'<line x1="{_PLOT1}" x2="{_PLOT1}" y1="{top}" y2="{y}" stroke="{LINE}"/>'
        )
        y += _AXIS
    out.append(
        f'<text x="{_LABEL}" y="{y + 12}" font-size="11" fill="{MUTED}">grey band: SESOI around '
        "the null · dashed: pre-registered threshold · dotted: threshold tested after the SESOI "
        "· % : the CI's level</text>"
        f'<text x="{_LABEL}" y="{y + 27}" font-size="11" fill="{MUTED}">colour: verdict — green '
        "supported, red refuted, grey-blue negligible, amber inconclusive, violet unverified"
        "</text>"
    )
    out.append("</svg>")
    return Markup("".join(out))


def _svg_row(row: ForestRow, y: float, scale: Callable[[float], float]) -> str:
    mid = y + _ROW / 2
    parts = [
        f'<g class="forest-row" data-hypothesis="{esc(row.label)}" data-verdict="{esc(row.status)}">',
        f"<title>{esc(row.summary())}. CI level: {esc(row.level or 'not stated')}</title>",
        f'<rect x="0" y="{y}" width="{_W}" height="{_ROW}" fill="#ffffff" fill-opacity="0"/>',
    ]
    if row.null is not None and row.sesoi:
        x0, x1 = scale(row.null - row.sesoi), scale(row.null + row.sesoi)
        parts.append(
            f'<rect x="{x0:.1f}" y="{y + 2}" width="{x1 - x0:.1f}" height="{_ROW - 4}" '
            'fill="#e3e6ea"/>'
        )
    if row.null is not None:
        xn = scale(row.null)
        parts.append(
            f'<line x1="{xn:.1f}" x2="{xn:.1f}" y1="{y + 2}" y2="{y + _ROW - 2}" stroke="#9aa3ad"/>'
        )
    xt = scale(row.threshold)
    parts.append(
        f'<line x1="{xt:.1f}" x2="{xt:.1f}" y1="{y + 2}" y2="{y + _ROW - 2}" stroke="{INK}" '
        'stroke-dasharray="4 3"/>'
    )
    if row.effective is not None and abs(row.effective - row.threshold) > 1e-12:
        xe = scale(row.effective)
        parts.append(
            f'<line x1="{xe:.1f}" x2="{xe:.1f}" y1="{y + 2}" y2="{y + _ROW - 2}" stroke="{INK}" '
            'stroke-dasharray="1 2"/>'
        )
    for iv, dy, square in ((row.discovery, -6, False), (row.holdout, 6, True)):
        if iv is None or iv.value is None:
            continue
        cy = mid + dy
        if iv.low is not None and iv.high is not None:
            parts.append(
                f'<line x1="{scale(iv.low):.1f}" x2="{scale(iv.high):.1f}" y1="{cy}" y2="{cy}" '
                f'stroke="{row.colour}" stroke-width="2.5"/>'
            )
        cx = scale(iv.value)
        parts.append(
            f'<rect x="{cx - 4:.1f}" y="{cy - 4}" width="8" height="8" fill="{row.colour}"/>'
            if square
            else f'<circle cx="{cx:.1f}" cy="{cy}" r="4.5" fill="{row.colour}"/>'
        )
    disc = row.discovery.text(3) if row.discovery else "—"
    if row.discovery is not None and row.discovery.level is not None:
        disc += f"  ·  {row.discovery.level * 100:.2f} %"
    held = row.holdout.text(3) if row.holdout else "not run"
    parts += [
        f'<text x="{_LABEL}" y="{mid + 4}" fill="{INK}"><tspan font-weight="700">'
        f"{esc(row.label)}</tspan> {esc(_short(row.text, 40))}</text>",
        f'<text x="{_NUM}" y="{mid - 3}" font-size="11" fill="{INK}">{esc(disc)}</text>',
        f'<text x="{_NUM}" y="{mid + 11}" font-size="11" fill="{MUTED}">{esc(held)}</text>',
        f'<text x="{_VERDICT}" y="{mid + 4}" font-weight="600" fill="{row.colour}">'
        f"{esc(row.status)}</text>",
        "</g>",
    ]
    return "".join(parts)


# -- PNG ----------------------------------------------------------------------------------------


def forest_png(plot: Forest) -> bytes | None:
    """The forest plot as a PNG for the reports (None when nothing can be drawn)."""
    if not plot.rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    heights = [len(g.rows) + 0.8 for g in plot.groups]
    inches = 1.3 + 0.42 * sum(heights)
    fig, axes = plt.subplots(
        len(plot.groups),
        1,
        figsize=(11, inches),
        dpi=100,
        gridspec_kw={"height_ratios": heights},
        squeeze=False,
    )
    for ax, group in zip(axes[:, 0], plot.groups, strict=True):
        low, high = group.bounds()
        n = len(group.rows)
        for i, row in enumerate(group.rows):
            y = n - 1 - i
            if row.null is not None and row.sesoi:
                ax.fill_betweenx(
                    [y - 0.45, y + 0.45],
                    row.null - row.sesoi,
                    row.null + row.sesoi,
                    color="#e3e6ea",
                )
            if row.null is not None:
                ax.plot([row.null] * 2, [y - 0.45, y + 0.45], color="#9aa3ad", lw=0.8)
            ax.plot([row.threshold] * 2, [y - 0.45, y + 0.45], "--", color=INK, lw=1)
            if row.effective is not None and abs(row.effective - row.threshold) > 1e-12:
                ax.plot([row.effective] * 2, [y - 0.45, y + 0.45], ":", color=INK, lw=1)
            for iv, dy, marker in ((row.discovery, 0.15, "o"), (row.holdout, -0.15, "s")):
                if iv is None or iv.value is None:
                    continue
                if iv.has_ci:
                    ax.plot([iv.low, iv.high], [y + dy] * 2, color=row.colour, lw=2.2)
                ax.plot([iv.value], [y + dy], marker, color=row.colour, ms=6)
            numbers = (row.discovery.text(3) if row.discovery else "—") + (
                f" · held-out {row.holdout.text(3)}" if row.holdout else ""
            )
            if row.discovery is not None and row.discovery.level is not None:
                numbers += f" ({row.discovery.level * 100:.2f} % CI)"
            ax.annotate(
                f"{numbers}  {row.status}",
                xy=(1.01, y),
                xycoords=("axes fraction", "data"),
                va="center",
                fontsize=8,
                color=row.colour,
            )
        ax.set_xlim(low, high)
        ax.set_ylim(-0.7, n - 0.3)
        ax.set_yticks(
            range(n), [f"{r.label} {_short(r.text, 34)}" for r in reversed(group.rows)], fontsize=8
        )
        ax.set_title(group.name, fontsize=9, loc="left")
        ax.tick_params(axis="x", labelsize=8)
    fig.text(
        0.01,
        0.12 / inches,
        "● discovery, ■ held-out: engine's query-level CI at each hypothesis's level; grey band: "
        "SESOI around the null; dashed: pre-registered threshold; colour: verdict",
        fontsize=7,
        color=MUTED,
    )
    fig.subplots_adjust(
        left=0.27, right=0.6, top=1 - 0.4 / inches, bottom=0.75 / inches, hspace=0.9
    )
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()
