"""The Jinja2 environment (autoescaped) and the context of the investigation page."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from rankscope.agent.review_state import review_state, verdict_label
from rankscope.agent.web import views
from rankscope.agent.web.links import Links
from rankscope.experiments_db.records import InvestigationTree
from rankscope.experiments_db.repository import Store

HERE = Path(__file__).parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"


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
        fmt=views.fmt,
        effect=views.effect,
        status_of=views.status_of,
        state_of=views.state_of,
        metric_rows=views.metric_rows,
        table_view=views.table_view,
        is_inline_image=views.is_inline_image,
        message_text=views.message_text,
        response_text=views.response_text,
        review_state=review_state,
        verdict_label=verdict_label,
    )
    return env


def investigation_context(store: Store, tree: InvestigationTree, links: Links) -> dict[str, Any]:
    """What ``investigation.html`` needs, for the server and the static export alike."""
    return {
        "tree": tree,
        "inv": tree.investigation,
        "findings": views.findings(tree),
        "usage": store.llm_usage(tree.investigation.id),
        "links": links,
    }
