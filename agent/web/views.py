"""What the templates show, computed from the stored investigation (no HTML here)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rankscope.agent.ledger import key_metrics
from rankscope.agent.review_state import ReviewState, review_state
from rankscope.experiments_db.records import (
    ArtifactRecord,
    HypothesisNode,
    InvestigationSummary,
    InvestigationTree,
)

INLINE_IMAGES = ("image/png", "image/jpeg", "image/gif", "image/webp")
"""Media types shown inline; anything else (SVG and HTML included) is served as a download."""
VERDICT_ORDER = ("supported", "refuted", "inconclusive", "no verdict")
SHOWN_METRICS = 16


def fmt(value: Any) -> str:
    """A number to 4 significant digits; ``None`` as a dash; anything else as text."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    if value is None:
        return "—"
    return str(value)


def effect(result: dict[str, Any] | None) -> str:
    """``value [ci_low, ci_high], p=…`` from a criterion result."""
    if not result:
        return "—"
    text = fmt(result.get("value"))
    if result.get("ci_low") is not None:
        text += f" [{fmt(result['ci_low'])}, {fmt(result.get('ci_high'))}]"
    elif isinstance(result.get("ci"), list) and len(result["ci"]) == 2:
        text += f" [{fmt(result['ci'][0])}, {fmt(result['ci'][1])}]"
    p = result.get("p_value", result.get("p"))
    if p is not None:
        text += f", p={fmt(p)}"
    return text


def status_of(node: HypothesisNode) -> str:
    verdict = node.latest_verdict
    return verdict.status if verdict else "no verdict"


def state_of(node: HypothesisNode) -> ReviewState | None:
    verdict = node.latest_verdict
    return review_state(verdict) if verdict else None


@dataclass
class Finding:
    """One line of the Findings section: a hypothesis and its latest verdict."""

    node: HypothesisNode
    status: str
    effect: str
    reason: str
    state: ReviewState | None


def findings(tree: InvestigationTree) -> list[Finding]:
    """Hypotheses by verdict (supported, refuted, inconclusive, none), each with its effect."""
    rows = []
    for node in tree.hypotheses:
        verdict = node.latest_verdict
        result = verdict.criterion_result if verdict else {}
        rows.append(
            Finding(
                node=node,
                status=status_of(node),
                effect=effect(result) if verdict else "—",
                reason=str(result.get("reason", "")),
                state=state_of(node),
            )
        )
    return sorted(rows, key=lambda f: (VERDICT_ORDER.index(f.status), f.node.id))


def metric_rows(metrics: dict[str, Any], metric: str) -> list[tuple[str, str]]:
    """The evidence metrics worth showing first (the criterion's metric leads)."""
    shown = list(key_metrics(metrics, metric).items())[:SHOWN_METRICS]
    return [(k, fmt(v)) for k, v in shown]


def table_view(value: Any) -> tuple[list[str], list[list[str]]] | None:
    """A stored table (a list of dicts, or of lists) as header and rows; ``None`` if neither."""
    if not isinstance(value, list) or not value:
        return None
    if all(isinstance(r, dict) for r in value):
        header = list(dict.fromkeys(k for r in value for k in r))
        return header, [[fmt(r.get(k)) for k in header] for r in value]
    if all(isinstance(r, list) for r in value):
        width = max(len(r) for r in value)
        return [str(i) for i in range(width)], [[fmt(c) for c in r] for r in value]
    return None


def is_inline_image(artifact: ArtifactRecord) -> bool:
    return artifact.media_type in INLINE_IMAGES


def artifact_filename(artifact: ArtifactRecord) -> str:
    """The content-addressed file name an export gives the artifact."""
    return artifact.sha256 + (Path(artifact.path).suffix or ".bin")


def message_text(message: Any) -> tuple[str, str]:
    """An LLM message as (role, text)."""
    if isinstance(message, dict):
        content = message.get("content")
        if not isinstance(content, str):
            content = repr(content) if content is not None else ""
        if message.get("tool_calls"):
            content += ("\n" if content else "") + f"tool calls: {message['tool_calls']}"
        return str(message.get("role", "?")), content
    return "?", str(message)


def response_text(response: Any) -> str:
    """The assistant's reply in a stored chat-completions response."""
    if isinstance(response, dict):
        try:
            message = response["choices"][0]["message"]
        except (KeyError, IndexError, TypeError):
            return str(response)
        return message_text(message)[1]
    return "" if response is None else str(response)


@dataclass
class ListFilter:
    """The query parameters of the investigations list."""

    q: str = ""
    status: str = ""
    planner: str = ""
    model: str = ""
    review: str = ""

    def keeps(self, inv: InvestigationSummary, overview: dict[str, int]) -> bool:
        text = f"{inv.question} {inv.model_id} {inv.planner} {inv.llm_model or ''}".lower()
        if self.q and not all(word in text for word in self.q.lower().split()):
            return False
        if self.status and inv.status != self.status:
            return False
        if self.planner and inv.planner != self.planner:
            return False
        if self.model and self.model.lower() not in inv.model_id.lower():
            return False
        return not self.review or overview.get(self.review, 0) > 0


def claim_key(node: HypothesisNode) -> str:
    """The words of a hypothesis's claim, lower-cased, for matching across investigations."""
    return " ".join(re.findall(r"\w+", node.text.lower()))


def call_key(node: HypothesisNode) -> str:
    """What a hypothesis tests: its tool, metric, direction and components."""
    c = node.criterion
    return "|".join([node.tool, c.metric, c.direction, *sorted(node.components)])


@dataclass
class Aligned:
    """One row of a comparison: the same claim in investigation A and B (either may be absent)."""

    a: HypothesisNode | None
    b: HypothesisNode | None
    matched_by: str = ""
    agree: bool = field(init=False)

    def __post_init__(self) -> None:
        self.agree = bool(self.a and self.b and status_of(self.a) == status_of(self.b))


def align(a: InvestigationTree, b: InvestigationTree) -> list[Aligned]:
    """Pair the hypotheses of two investigations by claim text, then by what they test."""
    left = list(a.hypotheses)
    right = list(b.hypotheses)
    rows: list[Aligned] = []
    for how, key in (("claim", claim_key), ("test", call_key)):
        for node in list(left):
            match = next((r for r in right if key(r) == key(node)), None)
            if match is not None:
                rows.append(Aligned(node, match, how))
                left.remove(node)
                right.remove(match)
    rows += [Aligned(node, None) for node in left]
    rows += [Aligned(None, node) for node in right]
    return rows
