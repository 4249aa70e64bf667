"""Investigation reports: one Markdown file (figures beside it) and one self-contained HTML file.

Both are rendered from the same blocks, built from the stored investigation only: the question;
each hypothesis with its pre-registration, verdict, evidence (numbers, experiment and evidence
ids, figures) and replication; what stays open; the planner, the LLM and the budget used. Figures
come from the content-addressed artifact store and are verified against their sha256 on read; the
HTML embeds them as base64 PNG, so it needs no other file.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rankscope.agent.planners.intents import NOT_FOLLOWED_UP
from rankscope.agent.review_state import verdict_label
from rankscope.agent.settings import settings_of
from rankscope.experiments_db.errors import ArtifactError
from rankscope.experiments_db.records import ExperimentNode, HypothesisNode, InvestigationTree
from rankscope.experiments_db.repository import Store

MAX_SUMMARY = 1200
SHOWN_METRICS = 12
_OPEN, _CLOSE = "\ue000", "\ue001"
"""Private-use marks around data text (LLM replies, hypotheses, questions, names) inside a block's
text: the Markdown renderer escapes what is between them, the HTML renderer only HTML-escapes it."""
_DATA_SPAN = re.compile(f"{_OPEN}(.*?){_CLOSE}", re.DOTALL)
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()<>#+!|~&-])")


def _d(value: object) -> str:
    """``value`` as data text: never rendered as Markdown, so it cannot open a heading, a link,
    an image or raw HTML (newlines become spaces)."""
    text = str(value).replace(_OPEN, "").replace(_CLOSE, "")
    return f"{_OPEN}{text}{_CLOSE}"


def _plain(text: str) -> str:
    """``text`` without the data marks."""
    return text.replace(_OPEN, "").replace(_CLOSE, "")


def _md(text: str) -> str:
    """Markdown for a block's text: structure kept, each data span escaped onto one line."""
    return _DATA_SPAN.sub(lambda m: _MD_SPECIAL.sub(r"\\\1", " ".join(m.group(1).split())), text)


@dataclass
class Figure:
    caption: str
    data: bytes
    media_type: str
    name: str


@dataclass
class Block:
    kind: str
    """heading, para, table, figure, code, list."""
    text: str = ""
    level: int = 2
    rows: list[list[str]] = field(default_factory=list)
    items: list[str] = field(default_factory=list)
    figure: Figure | None = None


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if value is None:
        return "—"
    return str(value)


def _split(exp: ExperimentNode) -> str:
    return str(exp.args.get("split", "—"))


def _ci(result: dict[str, Any] | None) -> str:
    if not result:
        return "—"
    value = _fmt(result.get("value"))
    if result.get("ci_low") is not None:
        value += f" [{_fmt(result['ci_low'])}, {_fmt(result['ci_high'])}]"
    if result.get("p_value") is not None:
        value += f", p={_fmt(result['p_value'])}"
    return value


def _metrics_rows(metrics: dict[str, Any], metric: str) -> list[list[str]]:
    from rankscope.agent.ledger import key_metrics

    shown = list(key_metrics(metrics, metric).items())[:SHOWN_METRICS]
    return [[k, _fmt(v)] for k, v in shown]


def _hypothesis_blocks(store: Store, node: HypothesisNode, problems: list[str]) -> list[Block]:
    c = node.criterion
    verdict = node.latest_verdict
    status = verdict_label(verdict)
    blocks = [Block("heading", f"H{node.id} — {status}: {_d(node.text)}", level=3)]
    prereg = [
        f"tool {_d(node.tool)} with arguments {_d(node.tool_args)}",
        f"criterion: `{c}`",
        f"pre-registered at {node.created_at:%Y-%m-%d %H:%M:%S} UTC"
        + (f"; follows H{node.parent_id}" if node.parent_id else ""),
    ]
    if node.components:
        prereg.append(f"components: {_d(', '.join(node.components))}")
    if node.rationale:
        prereg.append(f"rationale: {_d(node.rationale)}")
    blocks += [Block("para", "**Pre-registration**"), Block("list", items=prereg)]
    if verdict:
        result = verdict.criterion_result
        replication = result.get("replication")
        items = [
            f"verdict: **{status}** (decided by {_d(verdict.decided_by)})",
            f"reason: {_d(result.get('reason', ''))}",
            f"discovery: {_ci(result)} (corrected alpha {_fmt(result.get('corrected_alpha'))})",
            f"replication (held-out): {_ci(replication)}"
            + (f" — {replication.get('outcome')}" if replication else " — not run"),
            f"cited evidence: {', '.join(f'E{i}' for i in verdict.cited_evidence_ids) or 'none'}",
        ]
        items += [f"note: {_d(n)}" for n in result.get("notes", [])]
        items += [
            f"review by {_d(r.reviewer)}: {r.decision}"
            + (f" — {_d(r.comment)}" if r.comment else "")
            for r in verdict.reviews
        ]
        blocks += [Block("para", "**Verdict**"), Block("list", items=items)]
        if verdict.narrative:
            blocks.append(Block("para", f"*Narrative:* {_d(verdict.narrative)}"))
    for exp in node.experiments:
        head = (
            f"Experiment {exp.id}: `{exp.tool}` v{exp.tool_version}, split {_split(exp)}, "
            f"seed {exp.seed}, {exp.status}"
            + (f", {exp.duration_s:.1f} s" if exp.duration_s is not None else "")
        )
        blocks.append(Block("para", f"**{head}**"))
        if exp.error:
            blocks.append(Block("para", f"error: {_d(exp.error)}"))
        prov = exp.provenance
        if prov:
            blocks.append(
                Block(
                    "para",
                    f"provenance: model {_d(prov.get('model_id'))} (weights "
                    f"{str(prov.get('weights_hash'))[:12]}…), dataset "
                    f"{str(prov.get('dataset_hash'))[:12]}…, code {prov.get('code_version')}, "
                    f"device {prov.get('device')}",
                )
            )
        for ev in exp.evidence:
            flag = " (approximate)" if ev.approximate else ""
            blocks.append(Block("para", f"Evidence E{ev.id}{flag}:"))
            blocks.append(
                Block("table", rows=[["metric", "value"], *_metrics_rows(ev.metrics, c.metric)])
            )
            if ev.summary:
                blocks.append(Block("code", ev.summary[:MAX_SUMMARY]))
            for art in ev.artifacts:
                if not art.media_type.startswith("image/"):
                    continue
                try:
                    data = store.read_artifact(art)
                except ArtifactError as err:
                    problems.append(f"artifact {art.id} of E{ev.id}: {err}")
                    blocks.append(Block("para", f"figure missing or corrupted: {_d(err)}"))
                    continue
                suffix = Path(art.path).suffix or ".png"
                blocks.append(
                    Block(
                        "figure",
                        figure=Figure(
                            caption=f"{_d(art.description or 'figure')} (E{ev.id}, sha256 "
                            f"{art.sha256[:12]}…)",
                            data=data,
                            media_type=art.media_type,
                            name=f"{art.sha256}{suffix}",
                        ),
                    )
                )
    return blocks


def _effect(result: dict[str, Any]) -> str:
    """An effect in the units of its metric: mean over queries with its CI and counts."""
    value, low, high = result.get("value"), result.get("ci_low"), result.get("ci_high")
    if not isinstance(value, int | float):
        return "no estimate"
    ci = f" (CI {_fmt(low)} to {_fmt(high)})" if isinstance(low, int | float) else ""
    return (
        f"{result.get('metric')} = {_fmt(value)}{ci} over {result.get('n_queries', 0)} queries, "
        f"{result.get('n_pairs', 0)} pairs"
    )


def findings(tree: InvestigationTree) -> list[str]:
    """The rule-computed findings: what is supported (with effect sizes), refuted or negligible,
    and what stayed inconclusive and why — read from the stored verdicts only."""
    supported, refuted, negligible, open_items = [], [], [], []
    for node in tree.hypotheses:
        v = node.latest_verdict
        if v is None:
            continue
        result = v.criterion_result
        reason = str(result.get("reason", ""))
        line = f"H{node.id}: {_d(node.text)} — {_d(_effect(result))}"
        if v.status == "supported":
            supported.append(line)
        elif v.status == "refuted" and reason.startswith("negligible"):
            negligible.append(line)
        elif v.status == "refuted":
            refuted.append(f"{line}; {_d(reason)}")
        else:
            open_items.append(f"H{node.id}: {_d(node.text)} — {_d(reason)}")
    items = [f"**Supported:** {s}" for s in supported]
    items += [f"**Negligible (refuted, effect within the SESOI):** {s}" for s in negligible]
    items += [f"**Refuted:** {s}" for s in refuted]
    items += [f"**Inconclusive:** {s}" for s in open_items]
    notes = settings_of(tree.investigation).notes
    items += [f"**Screened:** {_d(n)}" for n in notes if n.startswith(NOT_FOLLOWED_UP)]
    return items or ["no hypothesis was decided"]


def build_blocks(store: Store, tree: InvestigationTree) -> tuple[list[Block], list[str]]:
    """The report's blocks and the problems met (unreadable artifacts)."""
    inv = tree.investigation
    problems: list[str] = []
    usage = store.llm_usage(inv.id)
    blocks = [
        Block("heading", f"RankScope investigation {inv.id}", level=1),
        Block("para", f"**Question:** {_d(inv.question)}"),
        Block(
            "list",
            items=[
                f"model: {_d(inv.model_id)} "
                f"(weights {str(settings_of(inv).model.get('weights_hash'))[:12]}…)",
                f"data: {_d(inv.data_spec)}",
                f"planner: {_d(inv.planner)} ({_d(settings_of(inv).planner_why)})",
                f"LLM: {_d(inv.llm_model or 'none')} — {usage.calls} call(s), "
                f"{usage.prompt_tokens} prompt + {usage.completion_tokens} completion tokens",
                "budget: " + ", ".join(f"{k}={v}" for k, v in inv.budget.items()),
                f"status: {inv.status}; started {inv.created_at:%Y-%m-%d %H:%M:%S} UTC"
                + (
                    f", finished {inv.finished_at:%Y-%m-%d %H:%M:%S} UTC" if inv.finished_at else ""
                ),
            ],
        ),
        Block("heading", "Findings", level=2),
        Block("list", items=findings(tree)),
        Block("heading", "Statistical policy", level=2),
        Block("list", items=[_d(line) for line in settings_of(inv).policy.describe()]),
        Block("heading", "Verdicts", level=2),
    ]
    rows = [["hypothesis", "verdict", "criterion", "discovery", "held-out", "level spent"]]
    for node in tree.hypotheses:
        v = node.latest_verdict
        result = v.criterion_result if v else {}
        rows.append(
            [
                f"H{node.id}: {_d(node.text)}",
                verdict_label(v),
                str(node.criterion),
                _ci(result) if v else "—",
                _ci(result.get("replication")) if v else "—",
                _fmt(result.get("level_spent")) if v else "—",
            ]
        )
    blocks.append(Block("table", rows=rows))
    blocks.append(Block("heading", "Hypotheses and evidence", level=2))
    for node in tree.hypotheses:
        blocks += _hypothesis_blocks(store, node, problems)
    open_items = []
    for node in tree.hypotheses:
        v = node.latest_verdict
        if v is None:
            open_items.append(f"H{node.id} has no verdict: {_d(node.text)}")
        elif v.status == "inconclusive":
            open_items.append(
                f"H{node.id} is inconclusive: {_d(v.criterion_result.get('reason', ''))}"
            )
    for exp in tree.experiments():
        if exp.status in ("failed", "interrupted"):
            open_items.append(
                f"experiment {exp.id} ({_d(exp.tool)}) {exp.status}: {_d(exp.error or '')}"
            )
    open_items += [_d(note) for note in settings_of(inv).notes]
    open_items += [_d(problem) for problem in problems]
    blocks.append(Block("heading", "What stays open", level=2))
    blocks.append(Block("list", items=open_items or ["nothing"]))
    return blocks, problems


def _md_cell(text: str) -> str:
    return _md(text.replace("|", "\\|").replace("\n", " "))


def render_markdown(blocks: list[Block], figure_dir: Path, figure_prefix: str) -> str:
    out: list[str] = []
    for block in blocks:
        if block.kind == "heading":
            out.append(f"{'#' * block.level} {_md(block.text)}\n")
        elif block.kind == "para":
            out.append(_md(block.text) + "\n")
        elif block.kind == "list":
            out.append("\n".join(f"- {_md(item)}" for item in block.items) + "\n")
        elif block.kind == "code":
            out.append("```text\n" + _plain(block.text).replace("```", "ʼʼʼ") + "\n```\n")
        elif block.kind == "table" and block.rows:
            header, *body = block.rows
            out.append("| " + " | ".join(_md_cell(c) for c in header) + " |")
            out.append("|" + "---|" * len(header))
            out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in body]
            out.append("")
        elif block.kind == "figure" and block.figure:
            figure_dir.mkdir(parents=True, exist_ok=True)
            (figure_dir / block.figure.name).write_bytes(block.figure.data)
            caption = _md(block.figure.caption)
            out.append(f"![{caption}]({figure_prefix}/{block.figure.name})\n\n*{caption}*\n")
    return "\n".join(out)


_CSS = """body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;
color:#222}table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;
padding:.25em .5em;text-align:left;vertical-align:top}pre{background:#f6f6f6;padding:.5em;
overflow-x:auto;white-space:pre-wrap}img{max-width:100%}figure{margin:1em 0}"""


def _inline(text: str) -> str:
    """Escape text, then render **bold**, *italic* and `code` spans outside data spans."""
    out: list[str] = []
    for i, part in enumerate(re.split(f"{_OPEN}(.*?){_CLOSE}", text, flags=re.DOTALL)):
        escaped = html.escape(part)
        if i % 2 == 0:
            escaped = re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)
            escaped = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", escaped)
            escaped = re.sub(r"\*([^*]+)\*", r"<em>\1</em>", escaped)
        out.append(escaped)
    return "".join(out)


def render_html(blocks: list[Block], title: str) -> str:
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
    ]
    for block in blocks:
        if block.kind == "heading":
            out.append(f"<h{block.level}>{html.escape(_plain(block.text))}</h{block.level}>")
        elif block.kind == "para":
            out.append(f"<p>{_inline(block.text)}</p>")
        elif block.kind == "list":
            out.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in block.items) + "</ul>")
        elif block.kind == "code":
            out.append(f"<pre>{html.escape(_plain(block.text))}</pre>")
        elif block.kind == "table" and block.rows:
            header, *body = block.rows
            out.append(
                "<table><tr>"
                + "".join(f"<th>{html.escape(_plain(c))}</th>" for c in header)
                + "</tr>"
            )
            for row in body:
                out.append("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>")
            out.append("</table>")
        elif block.kind == "figure" and block.figure:
            data = base64.b64encode(block.figure.data).decode("ascii")
            out.append(
                f'<figure><img alt="{html.escape(_plain(block.figure.caption))}" '
                f'src="data:{block.figure.media_type};base64,{data}">'
                f"<figcaption>{html.escape(_plain(block.figure.caption))}</figcaption></figure>"
            )
    out.append("</body></html>")
    return "\n".join(out)


def write_reports(
    store: Store, investigation_id: int, out_dir: Path, html_path: Path | None = None
) -> tuple[Path, Path]:
    """Write ``report.md`` (figures in ``figures/``) into ``out_dir`` and the HTML report
    (``html_path``, default ``out_dir/report.html``); return both paths."""
    tree = store.investigation_tree(investigation_id)
    blocks, _problems = build_blocks(store, tree)
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    md_path = out_dir / "report.md"
    md_path.write_text(render_markdown(blocks, out_dir / "figures", "figures"), encoding="utf-8")
    html_path = Path(html_path).resolve() if html_path else out_dir / "report.html"
    html_path.parent.mkdir(parents=True, exist_ok=True)
    title = f"RankScope investigation {investigation_id}"
    html_path.write_text(render_html(blocks, title), encoding="utf-8")
    return md_path, html_path
