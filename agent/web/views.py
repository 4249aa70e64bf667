"""What the templates show, computed from the stored investigation (no HTML here, except the
figures drawn as SVG by :mod:`rankscope.agent.report_forest`, :mod:`~rankscope.agent.report_heatmap`
and :mod:`~rankscope.agent.report_circuit`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rankscope.agent.report_facts import (
    NO_VERDICT,
    Interval,
    Unverified,
    claim_text,
    deciding_p,
    discovery_of,
    display_status,
    fmt,
    holdout_of,
    is_negligible,
    labels,
    level_note,
    metric_cells,
    num,
    relabel,
    safe_settings,
    table_columns,
    unverified_of,
)
from rankscope.agent.review_state import ReviewState, review_state
from rankscope.experiments_db.records import (
    ArtifactRecord,
    HypothesisNode,
    InvestigationSummary,
    InvestigationTree,
)

INLINE_IMAGES = ("image/png", "image/jpeg", "image/gif", "image/webp")
"""Media types shown inline; anything else (SVG and HTML included) is served as a download."""
VERDICT_ORDER = ("unverified", "supported", "refuted", "inconclusive", "exploratory", NO_VERDICT)
SHOWN_METRICS = 16
SHOWN_ROWS = 200
"""Rows of a stored table on the investigation page; the evidence page shows every row."""
RUN_CONTROL_ARGS = frozenset(
    {
        "seed",
        "split",
        "n_pairs",
        "holdout_fraction",
        "split_seed",
        "batch_size",
        "model_batch_size",
        "confidence",
        "n_bootstrap",
        "engine",
        "n_docs",
        "docs_per_query",
        "max_tokens_per_doc",
        "max_positions",
        "epochs",
        "lr",
        "folds",
    }
)
"""Tool arguments that set how much data or compute a run uses, not what it tests: compare
ignores them when it pairs hypotheses (everything else — axiom, variant, components, edits,
tokens, direction … — is part of the test)."""


def status_of(node: HypothesisNode) -> str:
    verdict = node.latest_verdict
    return verdict.status if verdict else NO_VERDICT


def state_of(node: HypothesisNode) -> ReviewState | None:
    verdict = node.latest_verdict
    return review_state(verdict) if verdict else None


@dataclass
class Facts:
    """What every page of one investigation reads: numbering, unverified verdicts, the policy's
    multiplicity procedure and the components confirmed anywhere in it."""

    names: dict[int, str]
    unverified: dict[int, Unverified]
    multiplicity: str
    confirmed: frozenset[str]

    @classmethod
    def of(cls, tree: InvestigationTree) -> Facts:
        unverified = unverified_of(tree)
        confirmed = frozenset(
            c
            for n in tree.hypotheses
            if n.id not in unverified and status_of(n) == "supported"
            for c in n.components
        )
        return cls(
            labels(tree),
            unverified,
            safe_settings(tree.investigation).policy.multiplicity,
            confirmed,
        )

    def label(self, hypothesis_id: int | None) -> str:
        if hypothesis_id is None:
            return ""
        return self.names.get(hypothesis_id, f"#{hypothesis_id}")

    def status(self, node: HypothesisNode) -> str:
        return display_status(node, self.unverified)

    def relabel(self, text: str) -> str:
        return relabel(text, self.names)

    def level(self, result: Mapping[str, Any]) -> str:
        return level_note(result, self.multiplicity)


@dataclass
class Finding:
    """One line of the Findings table: a hypothesis and its latest verdict's quantity."""

    node: HypothesisNode
    label: str
    status: str
    """The display status (``unverified`` for an imported verdict that did not re-derive)."""
    claim: str
    """Metric, direction and threshold."""
    discovery: Interval | None
    holdout: Interval | None
    level: str
    """Where the discovery CI's level comes from."""
    p: str
    """The deciding test's p-value, named (empty for a screening step)."""
    reason: str
    state: ReviewState | None
    unverified: Unverified | None = None
    negligible: bool = False

    @property
    def effect(self) -> str:
        """One line: the claim and the engine's estimates (for the sweep page)."""
        if self.discovery is None:
            return "—"
        text = f"{self.claim}: {self.discovery.text()}"
        if self.holdout is not None and self.holdout.value is not None:
            text += f"; held-out {self.holdout.text()}"
        return text


def findings(tree: InvestigationTree, facts: Facts | None = None) -> list[Finding]:
    """Hypotheses by display status (unverified first, then supported, refuted, inconclusive,
    exploratory steps, none), each with the engine's estimate of its claim."""
    facts = facts or Facts.of(tree)
    rows = []
    for node in tree.hypotheses:
        verdict = node.latest_verdict
        result = verdict.criterion_result if verdict else {}
        rows.append(
            Finding(
                node=node,
                label=facts.label(node.id),
                status=facts.status(node),
                claim=claim_text(node),
                discovery=discovery_of(verdict),
                holdout=holdout_of(verdict),
                level=facts.level(result) if verdict else "",
                p=deciding_p(node),
                reason=facts.relabel(str(result.get("reason", ""))),
                state=state_of(node),
                unverified=facts.unverified.get(node.id),
                negligible=is_negligible(verdict),
            )
        )
    return sorted(rows, key=lambda f: (VERDICT_ORDER.index(f.status), f.node.id))


def metric_rows(
    metrics: dict[str, Any], metric: str, limit: int | None = SHOWN_METRICS
) -> list[Any]:
    """The evidence's metrics with the tool's own CI bounds folded into ``x [lo, hi]`` cells;
    the criterion's metric leads. ``limit=None``: every metric."""
    cells = metric_cells(metrics, metric)
    return cells if limit is None else cells[:limit]


@dataclass
class TableView:
    """A stored table as header and rows of (text, sort key) cells, CI columns folded."""

    header: list[str]
    rows: list[list[tuple[str, str]]]
    total: int


def table_view(value: Any, limit: int | None = SHOWN_ROWS) -> TableView | None:
    """A stored table (a list of dicts, or of lists) as a :class:`TableView`; ``None`` if neither.
    ``limit``: the rows shown (None: all)."""
    if not isinstance(value, list) or not value:
        return None
    if all(isinstance(r, dict) for r in value):
        names = list(dict.fromkeys(k for r in value for k in r))
        rows_in = [[r.get(k) for k in names] for r in value]
    elif all(isinstance(r, list) for r in value):
        width = max(len(r) for r in value)
        names = [str(i) for i in range(width)]
        rows_in = [list(r) + [None] * (width - len(r)) for r in value]
    else:
        return None
    columns = table_columns(names)
    header = [name + (" [CI]" if low is not None else "") for name, _, low, _ in columns]
    shown = rows_in if limit is None else rows_in[:limit]
    rows = []
    for r in shown:
        cells = []
        for _, i, low, high in columns:
            text = fmt(r[i])
            if low is not None and high is not None and r[low] is not None:
                text += f" [{fmt(r[low])}, {fmt(r[high])}]"
            key = num(r[i])
            cells.append((text, repr(key) if key is not None else str(r[i] or "")))
        rows.append(cells)
    return TableView(header, rows, len(value))


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


# -- compare ------------------------------------------------------------------------------------


def comparison_key(node: HypothesisNode) -> str:
    """What a hypothesis tests: its tool, its scientific arguments (axiom, variant, components,
    edits, tokens … — every argument but :data:`RUN_CONTROL_ARGS`), its metric and direction."""
    args = {k: v for k, v in node.tool_args.items() if k not in RUN_CONTROL_ARGS}
    c = node.criterion
    parts = [node.tool, c.metric, c.direction, ",".join(sorted(node.components))]
    parts += [f"{k}={v!r}" for k, v in sorted(args.items())]
    return "|".join(parts)


def describe_test(node: HypothesisNode) -> str:
    """The test in words: ``behavioural_test TFC1/append, share_moved_predicted greater``."""
    args = node.tool_args
    what = "/".join(str(args[k]) for k in ("axiom", "variant") if args.get(k))
    extra = ", ".join(
        f"{k} {'+'.join(map(str, v)) if isinstance(v, list) else v}"
        for k, v in args.items()
        if k in ("components", "edits", "tokens") and v
    )
    bits = [node.tool, what, extra, f"{node.criterion.metric} {node.criterion.direction}"]
    return " · ".join(b for b in bits if b)


@dataclass
class Aligned:
    """One row of a comparison: the same test in investigation A and B (either may be absent)."""

    a: HypothesisNode | None
    b: HypothesisNode | None
    status_a: str = ""
    status_b: str = ""
    test: str = ""
    est_a: Interval | None = field(default=None)
    est_b: Interval | None = field(default=None)

    @property
    def paired(self) -> bool:
        return self.a is not None and self.b is not None

    @property
    def agree(self) -> bool:
        return (
            self.paired
            and self.status_a == self.status_b
            and "unverified"
            not in (
                self.status_a,
                self.status_b,
            )
        )

    @property
    def difference(self) -> float | None:
        """B's estimate minus A's (same metric by construction)."""
        if self.est_a is None or self.est_b is None:
            return None
        if self.est_a.value is None or self.est_b.value is None:
            return None
        return self.est_b.value - self.est_a.value

    @property
    def overlap(self) -> str:
        """Whether the two CIs overlap: ``yes``, ``no`` or ``—``."""
        a, b = self.est_a, self.est_b
        if a is None or b is None or not a.has_ci or not b.has_ci:
            return "—"
        assert a.low is not None and a.high is not None and b.low is not None and b.high is not None
        return "yes" if a.low <= b.high and b.low <= a.high else "no"


def _estimate(node: HypothesisNode) -> Interval | None:
    verdict = node.latest_verdict
    held = holdout_of(verdict)
    return held if held is not None and held.value is not None else discovery_of(verdict)


def align(a: InvestigationTree, b: InvestigationTree) -> list[Aligned]:
    """Pair the hypotheses of two investigations that run the same test (:func:`comparison_key`), in
    order; the rest stand alone. Each row carries both verdicts (unverified shown as such) and the
    engine's estimates (held-out when replicated, else discovery)."""
    facts_a, facts_b = Facts.of(a), Facts.of(b)
    right = list(b.hypotheses)
    rows: list[Aligned] = []
    for node in a.hypotheses:
        match = next((r for r in right if comparison_key(r) == comparison_key(node)), None)
        if match is not None:
            right.remove(match)
        rows.append(Aligned(node, match))
    rows += [Aligned(None, node) for node in right]
    for row in rows:
        if row.a is not None:
            row.status_a, row.est_a = facts_a.status(row.a), _estimate(row.a)
        if row.b is not None:
            row.status_b, row.est_b = facts_b.status(row.b), _estimate(row.b)
        row.test = describe_test(row.a or row.b)  # type: ignore[arg-type]
    return rows


def compare_summary(rows: list[Aligned]) -> list[tuple[str, str, int]]:
    """Verdict by verdict: (A's verdict, B's verdict, how many paired tests), then the tests
    only one side ran."""
    counts: dict[tuple[str, str], int] = {}
    for row in rows:
        key = (row.status_a or "not tested", row.status_b or "not tested")
        counts[key] = counts.get(key, 0) + 1
    order = {s: i for i, s in enumerate((*VERDICT_ORDER, "not tested"))}
    return sorted(
        ((x, y, n) for (x, y), n in counts.items()),
        key=lambda t: (t[0] == "not tested" or t[1] == "not tested", order[t[0]], order[t[1]]),
    )
