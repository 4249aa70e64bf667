"""The ledger: the investigation so far, as a planner reads it (compact, no raw tables)."""

from __future__ import annotations

from typing import Any

from rankscope.agent.planners.base import Ledger, LedgerEntry
from rankscope.agent.state import Budget
from rankscope.agent.verdicts import ci_keys, p_keys
from rankscope.experiments_db.records import HypothesisNode, InvestigationRecord
from rankscope.tools.metric_keys import metric_family
from rankscope.tools.registry import all_tools

SUMMARY_CHARS = 1500
KEY_METRICS = 40
TOP_PER_FAMILY = 8
RANKING_ROWS = 20
_NAME_COLUMNS = ("component", "member", "name")
_VALUE_COLUMNS = ("fraction", "fraction_restored", "effect", "score", "value")


def split_of(args: dict[str, Any]) -> str:
    """The split a tool call runs on (``discovery`` for tools without a split argument)."""
    return str(args.get("split", "discovery"))


def key_metrics(metrics: dict[str, Any], metric: str | None = None) -> dict[str, Any]:
    """A compact view of a tool's metrics: the criterion's metric with its CI and p-value first,
    the largest entries of each per-component family, then the scalar metrics."""
    out: dict[str, Any] = {}
    if metric:
        low, high = ci_keys(metric)
        for key in [metric, *low, *high, *p_keys(metric)]:
            if key in metrics:
                out[key] = metrics[key]
    families: dict[str, list[tuple[str, Any]]] = {}
    for key, value in metrics.items():
        family = metric_family(key)
        if family is None:
            if len(out) < KEY_METRICS:
                out.setdefault(key, value)
        else:
            families.setdefault(family, []).append((key, value))
    for items in families.values():
        ranked = sorted(
            items,
            key=lambda kv: -abs(kv[1]) if isinstance(kv[1], int | float) else 0.0,
        )
        for key, value in ranked[:TOP_PER_FAMILY]:
            if len(out) >= KEY_METRICS:
                break
            out.setdefault(key, value)
    return {k: (v if isinstance(v, int | float) or v is None else None) for k, v in out.items()}


def ranking_of(tables: dict[str, Any]) -> list[tuple[str, float | None]]:
    """The rows of a ``ranking`` table as (component, value), in the table's order (best first),
    at most :data:`RANKING_ROWS`; empty when the evidence has none."""
    rows = tables.get("ranking")
    out: list[tuple[str, float | None]] = []
    for row in rows if isinstance(rows, list) else []:
        if not isinstance(row, dict):
            continue
        name = next((row[c] for c in _NAME_COLUMNS if isinstance(row.get(c), str)), None)
        if name is None:
            continue
        value = next((row[c] for c in _VALUE_COLUMNS if isinstance(row.get(c), int | float)), None)
        out.append((name, float(value) if value is not None else None))
        if len(out) >= RANKING_ROWS:
            break
    return out


def ledger_entry(node: HypothesisNode) -> LedgerEntry:
    """One hypothesis as the planner sees it: its call, criterion, status and key numbers."""
    finished = [e for e in node.experiments if e.status == "finished" and e.evidence]
    discovery = next((e for e in finished if split_of(e.args) != "holdout"), None)
    holdout = next((e for e in finished if split_of(e.args) == "holdout"), None)
    status: str
    failed = bool(node.experiments) and all(e.status == "failed" for e in node.experiments)
    if node.exploratory:
        status = "failed" if failed else "exploratory"
    elif node.latest_verdict is not None:
        status = node.latest_verdict.status
    elif failed:
        status = "failed"
    else:
        status = "pending"
    metric = node.criterion.metric
    return LedgerEntry(
        hypothesis_id=node.id,
        hypothesis=node.text,
        tool=node.tool,
        args=node.tool_args,
        criterion=node.criterion,
        components=list(node.components),
        status=status,
        key_metrics=key_metrics(discovery.evidence[0].metrics, metric) if discovery else {},
        summary=(discovery.evidence[0].summary[:SUMMARY_CHARS] if discovery else "")
        + ("" if discovery else "; ".join(e.error or "" for e in node.experiments)),
        evidence_ids=[ev.id for e in finished for ev in e.evidence],
        replication=replication_outcome(node) if holdout else None,
        ranking=ranking_of(discovery.evidence[0].tables) if discovery else [],
    )


def replication_outcome(node: HypothesisNode) -> str | None:
    """The held-out replication as the planner may see it: ``met``, ``contradicted`` or
    ``undetermined`` from the stored verdict, never numbers (None: not decided)."""
    if node.latest_verdict is None:
        return None
    replication = node.latest_verdict.criterion_result.get("replication")
    if not isinstance(replication, dict):
        return None
    outcome = replication.get("outcome")
    return outcome if outcome in ("met", "contradicted", "undetermined") else "undetermined"


def build_ledger(
    investigation: InvestigationRecord,
    model: dict[str, Any],
    entries: list[LedgerEntry],
    feedback: list[str],
    budget: Budget,
    steps: int,
    tool_calls: int,
) -> Ledger:
    """The ledger of an investigation after ``steps`` planner steps and ``tool_calls`` runs:
    ``model`` is the loaded model's description (empty: only its id is known), ``entries`` one
    :func:`ledger_entry` per hypothesis."""
    return Ledger(
        investigation_id=investigation.id,
        question=investigation.question,
        model=model or {"model_id": investigation.model_id},
        data=investigation.data_spec,
        tools=list(all_tools()),
        entries=list(entries),
        feedback=list(feedback),
        steps_left=max(0, budget.max_steps - steps),
        tool_calls_left=max(0, budget.max_tool_calls - tool_calls),
    )
