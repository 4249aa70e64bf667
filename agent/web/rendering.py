"""The Jinja2 environment (autoescaped) and the contexts of the investigation's pages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from markupsafe import Markup

from rankscope.agent.report_answer import answer
from rankscope.agent.report_circuit import circuit_of
from rankscope.agent.report_circuit_figure import circuit_svg
from rankscope.agent.report_facts import (
    claim_text,
    deciding_p,
    discovery_of,
    fmt,
    holdout_of,
    is_exploratory,
)
from rankscope.agent.report_forest import forest, forest_svg
from rankscope.agent.report_heatmap import heatmap_caption, heatmap_of, heatmap_svg
from rankscope.agent.review_state import review_state, verdict_label
from rankscope.agent.web import views
from rankscope.agent.web.links import Links
from rankscope.experiments_db.records import EvidenceRecord, HypothesisNode, InvestigationTree
from rankscope.experiments_db.repository import Store

HERE = Path(__file__).parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"


def heatmap(
    ev: EvidenceRecord,
    node: HypothesisNode | None,
    facts: views.Facts | None,
    confidence: Any = None,
) -> tuple[Markup, str] | None:
    """The evidence's layer × head heatmap (SVG) and its caption, or None."""
    result = node.latest_verdict.criterion_result if node and node.latest_verdict else None
    prereg: list[str] = list(node.components) if node else []
    members, k = (node.tool_args.get("members"), node.tool_args.get("k")) if node else (None, None)
    if not prereg and isinstance(members, list):  # a circuit claim names its members so
        prereg = [str(m) for m in (members[:k] if isinstance(k, int) and k > 0 else members)]
    hm = heatmap_of(
        ev,
        metric=node.criterion.metric if node else "",
        prereg=prereg,
        confirmed=facts.confirmed if facts else (),
        confidence=confidence if isinstance(confidence, int | float) else None,
        result=result,
    )
    if hm is None:
        return None
    return heatmap_svg(hm), heatmap_caption(hm, ev.id)


def environment() -> Environment:
    """Templates with autoescaping always on: every stored or LLM-written string is escaped."""
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals.update(
        fmt=fmt,
        status_of=views.status_of,
        state_of=views.state_of,
        metric_rows=views.metric_rows,
        table_view=views.table_view,
        is_inline_image=views.is_inline_image,
        message_text=views.message_text,
        response_text=views.response_text,
        review_state=review_state,
        verdict_label=verdict_label,
        heatmap=heatmap,
        discovery_of=discovery_of,
        holdout_of=holdout_of,
        claim_text=claim_text,
        deciding_p=deciding_p,
        is_exploratory=is_exploratory,
    )
    return env


def tree_context(tree: InvestigationTree) -> dict[str, Any]:
    """What every page of one investigation passes its macros: the tree and its facts."""
    return {"tree": tree, "inv": tree.investigation, "facts": views.Facts.of(tree)}


def investigation_context(store: Store, tree: InvestigationTree, links: Links) -> dict[str, Any]:
    """What ``investigation.html`` needs, for the server and the static export alike."""
    context = tree_context(tree)
    facts: views.Facts = context["facts"]
    plot = forest(tree, facts.names, facts.unverified)
    circuit = circuit_of(tree, facts.unverified)
    return {
        **context,
        "findings": views.findings(tree, facts),
        "answer": answer(tree, facts.names, facts.unverified),
        "forest": plot,
        "forest_svg": forest_svg(plot),
        "circuit": circuit,
        "circuit_svg": circuit_svg(circuit) if circuit else Markup(""),
        "usage": store.llm_usage(tree.investigation.id),
        "links": links,
    }
