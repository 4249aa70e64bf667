"""Investigation reports: one Markdown file (figures beside it) and one self-contained HTML file.

Both are rendered (:mod:`rankscope.agent.report_render`) from the same blocks, built from the
stored investigation only: the question and the rule-written answer
(:mod:`rankscope.agent.report_answer`) with the circuit figure when a circuit was tested; the forest
plot of the hypotheses (:mod:`rankscope.agent.report_forest`); the Findings; the statistical
policy; the verdicts with the engine's query-level estimates and where each CI level comes from;
each hypothesis with its pre-registration, verdict, evidence (numbers with the tool's own CIs
labelled as such, experiment and evidence ids, figures) and replication; what stays open; the
planner, the LLM and the budget used. Hypotheses are numbered H1 … within the investigation (their
store ids are given for ``rankscope review``). Figures come from the content-addressed artifact
store and are verified against their sha256 on read.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from rankscope.agent.planners.intents import NOT_FOLLOWED_UP
from rankscope.agent.report_answer import Answer, answer
from rankscope.agent.report_circuit import circuit_of
from rankscope.agent.report_circuit_figure import circuit_png
from rankscope.agent.report_facts import (
    Interval,
    Unverified,
    claim_text,
    deciding_p,
    discovery_of,
    fmt,
    holdout_of,
    is_exploratory,
    is_negligible,
    labels,
    level_note,
    metric_cells,
    relabel,
    safe_settings,
    unverified_of,
)
from rankscope.agent.report_forest import forest, forest_png
from rankscope.agent.report_render import Block, Figure, render_html, render_markdown
from rankscope.agent.report_render import data as _d
from rankscope.agent.review_state import verdict_label
from rankscope.experiments_db.errors import ArtifactError
from rankscope.experiments_db.records import (
    ArtifactRecord,
    ExperimentNode,
    HypothesisNode,
    InvestigationTree,
)
from rankscope.experiments_db.repository import Store

MAX_SUMMARY = 1200
SHOWN_METRICS = 12

__all__ = ["Block", "Figure", "build_blocks", "findings", "write_reports"]


class _Context:
    """What every block of one report reads: the tree, numbering, unverified verdicts."""

    def __init__(self, store: Store, tree: InvestigationTree) -> None:
        self.store, self.tree = store, tree
        self.names = labels(tree)
        self.unverified: Mapping[int, Unverified] = unverified_of(tree)
        self.multiplicity = safe_settings(tree.investigation).policy.multiplicity
        self.problems: list[str] = []

    def status(self, node: HypothesisNode) -> str:
        """The verdict as the report shows it: never a verdict when it is unverified."""
        if node.id in self.unverified:
            u = self.unverified[node.id]
            return f"UNVERIFIED (the bundle claims {u.claimed}; its evidence gives {u.rederived})"
        if node.latest_verdict is None and is_exploratory(node):
            return "exploratory step (no claim)"
        return verdict_label(node.latest_verdict)

    def label(self, node: HypothesisNode) -> str:
        return self.names[node.id]

    def figure(self, art: ArtifactRecord, caption: str) -> Block:
        try:
            payload = self.store.read_artifact(art)
        except ArtifactError as err:
            self.problems.append(f"artifact {art.id}: {err}")
            return Block("para", f"figure missing or corrupted: {_d(err)}")
        suffix = Path(art.path).suffix or ".png"
        return Block(
            "figure",
            figure=Figure(
                caption=f"{_d(caption)} (sha256 {art.sha256[:12]}…)",
                data=payload,
                media_type=art.media_type,
                name=f"{art.sha256}{suffix}",
            ),
        )


def _interval(iv: Interval | None) -> str:
    if iv is None:
        return "—"
    level = f" ({iv.level_text()})" if iv.level_text() else ""
    return f"{iv.text()}{level}, {iv.n_queries} queries, {iv.n_pairs} pairs"


def _effect(node: HypothesisNode) -> str:
    """The verdict's quantity: metric, direction and threshold, and the engine's estimates."""
    disc, held = discovery_of(node.latest_verdict), holdout_of(node.latest_verdict)
    text = f"claim {claim_text(node)}"
    if disc is not None:
        text += f"; discovery {disc.text()}" + (f" ({disc.level_text()})" if disc.level else "")
    if held is not None and held.value is not None:
        text += f"; held-out {held.text()}"
    return text


def findings(tree: InvestigationTree) -> list[str]:
    """The rule-computed findings: what is supported (with effect sizes), refuted or negligible,
    unverified, and what stayed inconclusive and why — read from the stored verdicts only."""
    names, unverified = labels(tree), unverified_of(tree)
    groups: dict[str, list[str]] = {k: [] for k in ("unv", "sup", "neg", "ref", "inc", "exp")}
    for node in tree.hypotheses:
        v = node.latest_verdict
        head = f"{names[node.id]}: {_d(node.text)}"
        if node.id in unverified:
            u = unverified[node.id]
            groups["unv"].append(
                f"{head} — the bundle claims {u.claimed}; its own evidence gives {u.rederived}"
            )
        elif v is None:
            if is_exploratory(node):
                groups["exp"].append(head)
            continue
        elif v.status == "supported":
            groups["sup"].append(f"{head} — {_effect(node)}")
        elif is_negligible(v):
            groups["neg"].append(f"{head} — {_effect(node)}")
        elif v.status == "refuted":
            reason = relabel(str(v.criterion_result.get("reason", "")), names)
            groups["ref"].append(f"{head} — {_effect(node)}; {_d(reason)}")
        else:
            reason = relabel(str(v.criterion_result.get("reason", "")), names)
            groups["inc"].append(f"{head} — {_d(reason)}")
    titles = {
        "unv": "UNVERIFIED (imported; not shown as a verdict)",
        "sup": "Supported",
        "neg": "Negligible (refuted, effect within the SESOI)",
        "ref": "Refuted",
        "inc": "Inconclusive",
        "exp": "Exploratory step (claims nothing)",
    }
    items = [f"**{titles[k]}:** {line}" for k, lines in groups.items() for line in lines]
    notes = safe_settings(tree.investigation).notes
    items += [f"**Screened:** {_d(n)}" for n in notes if n.startswith(NOT_FOLLOWED_UP)]
    return items or ["no hypothesis was decided"]


def _answer_blocks(ctx: _Context, result: Answer) -> list[Block]:
    kinds = {
        "supported": "Supported",
        "refuted": "Refuted",
        "negligible": "Negligible",
        "undecided": "Undecided",
        "unverified": "UNVERIFIED",
        "screen": "Screen",
        "components": "Localisation",
        "circuit": "Circuit",
    }
    items = []
    for line in result.lines:
        refs = ", ".join(label for label, _ in line.refs)
        items.append(f"**{kinds[line.kind]}**{' ' + refs if refs else ''}: {_d(line.text)}")
    blocks = [
        Block("heading", "Answer", level=2),
        Block("para", f"*Written by rules from the verdicts, not by the LLM.* {_d(result.lead)}"),
        Block("list", items=items or ["nothing to report yet"]),
    ]
    circuit = circuit_of(ctx.tree, ctx.unverified)
    if circuit is not None:
        png = circuit_png(circuit)
        if png is not None:
            name = f"circuit-{circuit.experiment_id}.png"
            caption = (
                f"Circuit of experiment {circuit.experiment_id}: members with their "
                f"{circuit.member_value_name or 'values'}"
                + ("; path-patching edges with theirs" if circuit.edges else "")
            )
            blocks.append(Block("figure", figure=Figure(_d(caption), png, "image/png", name)))
        if circuit.curve is not None:
            blocks.append(ctx.figure(circuit.curve, f"faithfulness curve (E{circuit.evidence_id})"))
        if circuit.json is not None:
            blocks.append(
                Block(
                    "para",
                    f"circuit.json: artifact {circuit.json.id}, sha256 "
                    f"`{circuit.json.sha256[:16]}`",
                )
            )
    return blocks


def _forest_blocks(ctx: _Context) -> list[Block]:
    plot = forest(ctx.tree, ctx.names, ctx.unverified)
    png = forest_png(plot)
    if png is None:
        return []
    caption = (
        "Forest plot: each hypothesis's estimate with its query-level CI (● discovery, ■ "
        "held-out; levels in the Verdicts table), pre-registered threshold (dashed), SESOI band "
        "around the null (grey), verdict as colour"
        + (f"; not drawn: {', '.join(plot.left_out)}" if plot.left_out else "")
    )
    return [Block("figure", figure=Figure(_d(caption), png, "image/png", "forest.png"))]


def _verdict_rows(ctx: _Context) -> tuple[list[list[str]], list[str]]:
    rows = [["hypothesis", "verdict", "claim", "discovery (query-level)", "held-out", "CI level"]]
    notes: list[str] = []
    for node in ctx.tree.hypotheses:
        v = node.latest_verdict
        result = v.criterion_result if v else {}
        note = level_note(result, ctx.multiplicity) if v else ""
        if note:
            notes.append(f"{ctx.label(node)}: {note}")
        disc, held = discovery_of(v), holdout_of(v)
        rows.append(
            [
                f"{ctx.label(node)}: {_d(node.text)}",
                ctx.status(node),
                claim_text(node),
                disc.text() if disc else "—",
                held.text() if held and held.value is not None else "—",
                disc.level_text() if disc and disc.level_text() else "—",
            ]
        )
    return rows, notes


def _hypothesis_blocks(ctx: _Context, node: HypothesisNode) -> list[Block]:
    c = node.criterion
    verdict = node.latest_verdict
    inv_id = ctx.tree.investigation.id
    blocks = [Block("heading", f"{ctx.label(node)} — {ctx.status(node)}: {_d(node.text)}", level=3)]
    prereg = [
        f"store id {node.id} (`rankscope review {inv_id} {node.id}`)",
        f"tool {_d(node.tool)}; claim {claim_text(node)} at alpha {c.alpha:g} on {c.split}",
        f"pre-registered at {node.created_at:%Y-%m-%d %H:%M:%S} UTC"
        + (f"; follows {ctx.names.get(node.parent_id, '?')}" if node.parent_id else ""),
    ]
    if is_exploratory(node):
        prereg.append("exploratory step: runs once on discovery, claims nothing, spends no level")
    if node.components:
        prereg.append(f"components: {_d(', '.join(node.components))}")
    if node.rationale:
        prereg.append(f"rationale: {_d(node.rationale)}")
    blocks += [Block("para", "**Pre-registration**"), Block("list", items=prereg)]
    if node.tool_args:
        args = [["argument", "value"]] + [[_d(k), _d(fmt(v))] for k, v in node.tool_args.items()]
        blocks.append(Block("table", rows=args))
    if verdict:
        result = verdict.criterion_result
        disc, held = discovery_of(verdict), holdout_of(verdict)
        note = level_note(result, ctx.multiplicity)
        items = [
            f"verdict: **{ctx.status(node)}** (decided by {_d(verdict.decided_by)})",
            f"reason: {_d(relabel(str(result.get('reason', '')), ctx.names))}",
            f"discovery (engine, query-level): {_interval(disc)}",
            "replication (held-out): "
            + (f"{_interval(held)} — {held.outcome}" if held else "not run"),
        ]
        if note:
            items.append(f"CI level: {note}")
        if deciding_p(node):
            items.append(f"deciding test: {deciding_p(node)}")
        items.append(
            "cited evidence: " + (", ".join(f"E{i}" for i in verdict.cited_evidence_ids) or "none")
        )
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
        blocks += _experiment_blocks(ctx, exp, c.metric)
    return blocks


def _experiment_blocks(ctx: _Context, exp: ExperimentNode, metric: str) -> list[Block]:
    head = (
        f"Experiment {exp.id}: `{exp.tool}` v{exp.tool_version}, split "
        f"{exp.args.get('split', '—')}, seed {exp.seed}, {exp.status}"
        + (f", {exp.duration_s:.1f} s" if exp.duration_s is not None else "")
    )
    blocks = [Block("para", f"**{head}**")]
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
        cells = metric_cells(ev.metrics, metric)[:SHOWN_METRICS]
        rows = [["metric", "value [tool's own pair-level CI]"]]
        rows += [[_d(cell.key), cell.text()] for cell in cells]
        blocks.append(Block("table", rows=rows))
        if ev.summary:
            blocks.append(Block("code", ev.summary[:MAX_SUMMARY]))
        for art in ev.artifacts:
            if art.media_type.startswith("image/"):
                blocks.append(ctx.figure(art, f"{art.description or 'figure'} (E{ev.id})"))
    return blocks


def build_blocks(store: Store, tree: InvestigationTree) -> tuple[list[Block], list[str]]:
    """The report's blocks and the problems met (unreadable artifacts)."""
    ctx = _Context(store, tree)
    inv = tree.investigation
    settings = safe_settings(inv)
    usage = store.llm_usage(inv.id)
    blocks = [
        Block("heading", f"RankScope investigation {inv.id}", level=1),
        Block("para", f"**Question:** {_d(inv.question)}"),
    ]
    blocks += _answer_blocks(ctx, answer(tree, ctx.names, ctx.unverified))
    blocks += _forest_blocks(ctx)
    blocks.append(
        Block(
            "list",
            items=[
                f"model: {_d(inv.model_id)} "
                f"(weights {str(settings.model.get('weights_hash'))[:12]}…)",
                f"data: {_d(inv.data_spec)}",
                f"planner: {_d(inv.planner)} ({_d(settings.planner_why)})",
                f"LLM: {_d(inv.llm_model or 'none')} — {usage.calls} call(s), "
                f"{usage.prompt_tokens} prompt + {usage.completion_tokens} completion tokens",
                "budget: " + ", ".join(f"{k}={v}" for k, v in inv.budget.items()),
                f"status: {inv.status}; started {inv.created_at:%Y-%m-%d %H:%M:%S} UTC"
                + (
                    f", finished {inv.finished_at:%Y-%m-%d %H:%M:%S} UTC" if inv.finished_at else ""
                ),
            ],
        )
    )
    blocks += [
        Block("heading", "Findings", level=2),
        Block("list", items=findings(tree)),
        Block("heading", "Statistical policy", level=2),
        Block("list", items=[_d(line) for line in settings.policy.describe()]),
        Block("heading", "Verdicts", level=2),
    ]
    rows, notes = _verdict_rows(ctx)
    blocks.append(Block("table", rows=rows))
    if notes:
        blocks.append(Block("para", "CI levels (the engine's, per hypothesis):"))
        blocks.append(Block("list", items=notes))
    blocks.append(Block("heading", "Hypotheses and evidence", level=2))
    for node in tree.hypotheses:
        blocks += _hypothesis_blocks(ctx, node)
    blocks.append(Block("heading", "What stays open", level=2))
    blocks.append(Block("list", items=_open_items(ctx) or ["nothing"]))
    return blocks, ctx.problems


def _open_items(ctx: _Context) -> list[str]:
    items: list[str] = []
    for node in ctx.tree.hypotheses:
        v = node.latest_verdict
        if node.id in ctx.unverified:
            items.append(f"{ctx.label(node)} is {ctx.status(node)}")
        elif v is None and not is_exploratory(node):
            items.append(f"{ctx.label(node)} has no verdict: {_d(node.text)}")
        elif v is not None and v.status == "inconclusive":
            reason = relabel(str(v.criterion_result.get("reason", "")), ctx.names)
            items.append(f"{ctx.label(node)} is inconclusive: {_d(reason)}")
    for exp in ctx.tree.experiments():
        if exp.status in ("failed", "interrupted"):
            items.append(
                f"experiment {exp.id} ({_d(exp.tool)}) {exp.status}: {_d(exp.error or '')}"
            )
    items += [_d(note) for note in safe_settings(ctx.tree.investigation).notes]
    items += [_d(problem) for problem in ctx.problems]
    return items


def write_reports(
    store: Store, investigation_id: int, out_dir: Path, html_path: Path | None = None
) -> tuple[Path, Path]:
    """Write ``report.md`` (figures in ``figures/``) into ``out_dir`` and the HTML report
    (``html_path``, default ``out_dir/report.html``); return both paths. The report ends with the
    record chain's head; the files' sha256 are recorded for ``rankscope audit``."""
    from rankscope.agent.integrity import anchor_text, record_report

    tree = store.investigation_tree(investigation_id)
    blocks, _problems = build_blocks(store, tree)
    blocks += [
        Block("heading", "Record chain"),
        Block("para", anchor_text(store, investigation_id)),
    ]
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    md_path = out_dir / "report.md"
    md_path.write_text(render_markdown(blocks, out_dir / "figures", "figures"), encoding="utf-8")
    html_path = Path(html_path).resolve() if html_path else out_dir / "report.html"
    html_path.parent.mkdir(parents=True, exist_ok=True)
    title = f"RankScope investigation {investigation_id}"
    html_path.write_text(render_html(blocks, title), encoding="utf-8")
    figures = [out_dir / "figures" / b.figure.name for b in blocks if b.figure is not None]
    record_report(store, investigation_id, [md_path, html_path, *figures])
    return md_path, html_path
