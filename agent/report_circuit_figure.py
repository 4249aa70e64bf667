"""The circuit figure: members as nodes shaded by the fraction each carries, path-patching edges
with theirs (SVG for the pages, PNG for the reports)."""

from __future__ import annotations

import io

from markupsafe import Markup

from rankscope.agent.report_circuit import LAYER_OF, OUTPUT, Circuit
from rankscope.agent.report_facts import fmt
from rankscope.agent.report_svg import INK, MUTED, esc, sequential, text_on


def _layout(c: Circuit) -> tuple[dict[str, tuple[float, float]], float, float]:
    by_layer: dict[int, list[str]] = {}
    for m in c.members:
        match = LAYER_OF.match(m)
        by_layer.setdefault(int(match.group(1)) if match else -1, []).append(m)
    columns = sorted(by_layer)
    tallest = max((len(v) for v in by_layer.values()), default=1)
    width = 60 + 150 * (len(columns) + 1)
    height = 40 + 54 * max(tallest, 1)
    pos: dict[str, tuple[float, float]] = {}
    for ci, layer in enumerate(columns):
        names = by_layer[layer]
        for ri, name in enumerate(names):
            pos[name] = (70 + 150 * ci, 20 + (height - 40) * (ri + 0.5) / len(names))
    pos[OUTPUT] = (70 + 150 * len(columns), height / 2)
    return pos, width, height


def _fills(c: Circuit) -> dict[str, str]:
    """Each node's fill: members shaded by the absolute value they carry (on the largest), the
    output node plain."""
    bound = max((abs(v) for v in c.member_values.values()), default=1.0) or 1.0
    fills = {OUTPUT: "#f4f6f8"}
    for name in c.members:
        value = c.member_values.get(name)
        fills[name] = sequential(abs(value) if value is not None else None, bound)
    return fills


def circuit_svg(c: Circuit) -> Markup:
    """Members as nodes (by layer) with their fractions; path-patching edges with theirs."""
    if not c.members:
        return Markup("")
    pos, width, height = _layout(c)
    fills = _fills(c)
    out = [
        f'<svg class="circuit" role="img" aria-label="circuit of {c.k} {c.kind}" '
        f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        'xmlns="http://www.w3.org/2000/svg" font-family="system-ui, sans-serif" font-size="11">'
    ]
    for e in c.edges:
        (x1, y1), (x2, y2) = pos[e.sender], pos[e.receiver]
        out.append(
            f'<g class="edge"><title>{esc(e.sender)} → {esc(e.receiver)}: {esc(fmt(e.value))}'
            f'</title><line x1="{x1 + 48}" y1="{y1}" x2="{x2 - 48}" y2="{y2}" stroke="{INK}" '
            f'stroke-width="1.5"/><text x="{(x1 + x2) / 2}" y="{(y1 + y2) / 2 - 4}" '
            f'text-anchor="middle" fill="{MUTED}">{esc(fmt(e.value, 2))}</text></g>'
        )
    for name in [*c.members, OUTPUT]:
        x, y = pos[name]
        value = c.member_values.get(name)
        fill = fills[name]
        text = "score" if name == OUTPUT else name
        sub = "" if name == OUTPUT else fmt(value, 2)
        role = c.roles.get(name, "")
        out.append(
            f'<g class="node" data-component="{esc(name)}"><title>{esc(name)}: '
            f"{esc(c.member_value_name or 'value')} {esc(fmt(value))}"
            f"{esc(' — ' + role) if role else ''}</title>"
            f'<rect x="{x - 48}" y="{y - 18}" width="96" height="36" rx="6" fill="{fill}" '
            f'stroke="{INK}"/><text x="{x}" y="{y - 3}" text-anchor="middle" '
            f'fill="{text_on(fill)}" font-weight="600">{esc(text)}</text>'
            f'<text x="{x}" y="{y + 12}" text-anchor="middle" fill="{text_on(fill)}">'
            f"{esc(sub)}</text></g>"
        )
    out.append("</svg>")
    return Markup("".join(out))


def circuit_png(c: Circuit) -> bytes | None:
    """The circuit figure as a PNG for the reports."""
    if not c.members:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pos, width, height = _layout(c)
    fig, ax = plt.subplots(figsize=(width / 90, height / 90), dpi=140)
    fills = _fills(c)
    for e in c.edges:
        (x1, y1), (x2, y2) = pos[e.sender], pos[e.receiver]
        ax.annotate("", (x2 - 48, y2), (x1 + 48, y1), arrowprops={"arrowstyle": "->"})
        ax.text((x1 + x2) / 2, (y1 + y2) / 2 - 10, fmt(e.value, 2), ha="center", fontsize=7)
    for name in [*c.members, OUTPUT]:
        x, y = pos[name]
        value = c.member_values.get(name)
        fill = fills[name]
        ax.add_patch(plt.Rectangle((x - 48, y - 18), 96, 36, facecolor=fill, edgecolor=INK))
        label = "score" if name == OUTPUT else f"{name}\n{fmt(value, 2)}"
        ax.text(x, y, label, ha="center", va="center", fontsize=8, color=text_on(fill))
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.axis("off")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()
