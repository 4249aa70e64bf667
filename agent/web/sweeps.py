"""The sweeps of the review workspace: the investigations a sweep tagged (``config.sweep``),
grouped by sweep and by cell, each with its status and rule-computed Findings."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from rankscope.agent.web.views import Finding, findings
from rankscope.experiments_db.records import InvestigationSummary
from rankscope.experiments_db.repository import Store

VERDICTS = ("supported", "refuted", "inconclusive", "no verdict")


@dataclass
class SweepOverview:
    """One sweep in the list: how many cells and investigations, by status."""

    sweep_id: str
    cells: int
    investigations: int
    statuses: Counter[str] = field(default_factory=Counter)
    models: list[str] = field(default_factory=list)
    last_created: Any = None


@dataclass
class CellRow:
    """One cell of a sweep and its investigation (the first, if a cell has several)."""

    key: str
    model: str
    question: str
    seed: Any
    planner: str
    investigation: InvestigationSummary
    duplicates: list[int]
    """Ids of further investigations of the same cell (a sweep should leave none)."""
    verdicts: dict[str, int]
    findings: list[Finding]


def _tag(inv: InvestigationSummary) -> dict[str, Any] | None:
    tag = inv.config.get("sweep") if isinstance(inv.config, dict) else None
    return tag if isinstance(tag, dict) and isinstance(tag.get("id"), str) else None


def tagged(store: Store) -> dict[str, list[tuple[dict[str, Any], InvestigationSummary]]]:
    """Every sweep's investigations (with their tags) by sweep id, oldest first."""
    out: dict[str, list[tuple[dict[str, Any], InvestigationSummary]]] = {}
    for inv in store.list_investigations():
        tag = _tag(inv)
        if tag is not None:
            out.setdefault(tag["id"], []).append((tag, inv))
    for rows in out.values():
        rows.sort(key=lambda row: row[1].id)
    return out


def list_sweeps(store: Store) -> list[SweepOverview]:
    """The sweeps found in the store, newest first."""
    overviews = []
    for sweep_id, rows in tagged(store).items():
        invs = [inv for _, inv in rows]
        overviews.append(
            SweepOverview(
                sweep_id=sweep_id,
                cells=len({str(tag.get("cell")) for tag, _ in rows}),
                investigations=len(invs),
                statuses=Counter(inv.status for inv in invs),
                models=sorted({str(tag.get("model", inv.model_id)) for tag, inv in rows}),
                last_created=max(inv.created_at for inv in invs),
            )
        )
    return sorted(overviews, key=lambda o: o.last_created, reverse=True)


def sweep_rows(store: Store, sweep_id: str) -> list[CellRow] | None:
    """The cells of ``sweep_id`` in the order they were started; None if no such sweep."""
    rows = tagged(store).get(sweep_id)
    if rows is None:
        return None
    by_cell: dict[str, list[tuple[dict[str, Any], InvestigationSummary]]] = {}
    for tag, inv in rows:
        by_cell.setdefault(str(tag.get("cell")), []).append((tag, inv))
    out = []
    for key, cell in by_cell.items():
        tag, inv = cell[0]
        listed = findings(store.investigation_tree(inv.id, include_llm_calls=False))
        out.append(
            CellRow(
                key=key,
                model=str(tag.get("model", inv.model_id)),
                question=str(tag.get("question", inv.question)),
                seed=tag.get("seed", ""),
                planner=str(tag.get("planner", inv.planner)),
                investigation=inv,
                duplicates=[other.id for _, other in cell[1:]],
                verdicts={kind: sum(f.status == kind for f in listed) for kind in VERDICTS},
                findings=listed,
            )
        )
    return out
