"""The planner contract shared by the LLM planner and the protocol planner.

A planner reads a compact ``Ledger`` of the investigation so far and returns either a
``Proposal`` (a hypothesis, its pre-registered criterion and the tool call that tests it) or a
``Stop``. It never sets a verdict: verdicts come from ``rankscope.agent.verdicts`` applied to stored evidence.
It may write the narrative of a verdict (``narrate``); citations in it are checked by the graph.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from rankscope.experiments_db.records import Criterion

__all__ = ["Criterion", "Ledger", "LedgerEntry", "Narrative", "Planner", "Proposal", "Stop"]


class Proposal(BaseModel):
    """A hypothesis with its criterion and the tool call that tests it."""

    model_config = ConfigDict(extra="forbid")

    hypothesis: str
    rationale: str = ""
    tool: str
    args: dict[str, Any] = Field(default_factory=dict)
    criterion: Criterion
    components: list[str] = Field(default_factory=list)
    parent_hypothesis_id: int | None = None
    exploratory: bool = Field(
        False,
        description="An exploratory step (a screen, a ranking, a description of roles): the "
        "call runs once on the discovery split, its evidence is recorded and may rank what to "
        "test next, but it claims nothing — no verdict, no p-value, no held-out replication, no "
        "level spent. Its criterion only names the estimate it reports (stored two-sided at 0).",
    )


class Stop(BaseModel):
    """The planner has nothing more to test."""

    reason: str


class LedgerEntry(BaseModel):
    """One hypothesis as the planner sees it: compact, no raw tables."""

    hypothesis_id: int
    hypothesis: str
    tool: str
    args: dict[str, Any]
    criterion: Criterion
    components: list[str] = Field(default_factory=list)
    status: str = "pending"
    """pending, supported, refuted, inconclusive, failed, or exploratory (a screen or ranking
    that claims nothing: its key metrics are discovery numbers to rank by, never a finding)."""
    key_metrics: dict[str, float | int | None] = Field(default_factory=dict)
    summary: str = ""
    evidence_ids: list[int] = Field(default_factory=list)
    replication: str | None = None
    """The held-out replication's outcome (met, contradicted, undetermined), never its numbers;
    None: not run."""
    ranking: list[tuple[str, float | None]] = Field(default_factory=list)
    """The components the discovery call ranked, best first, with the value it ranked them by
    (a ``ranking`` table's rows, e.g. the ``circuit`` tool's; at most 20); empty for others."""


class Ledger(BaseModel):
    """The investigation so far, as the planner reads it."""

    investigation_id: int
    question: str
    model: dict[str, Any]
    data: str
    tools: list[str]
    entries: list[LedgerEntry] = Field(default_factory=list)
    feedback: list[str] = Field(default_factory=list)
    """Messages for the planner: rejected calls, validation errors, repeated proposals."""
    steps_left: int
    tool_calls_left: int


class Narrative(BaseModel):
    text: str
    cited_evidence_ids: list[int] = Field(default_factory=list)


class Planner(ABC):
    """Proposes the next experiment; explains verdicts; never decides them."""

    name: str

    @abstractmethod
    def propose(self, ledger: Ledger) -> Proposal | Stop:
        """The next hypothesis to test, or Stop."""

    def narrate(self, ledger: Ledger, entry: LedgerEntry) -> Narrative:
        """A short narrative of a decided hypothesis; the default cites its own evidence."""
        numbers = ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in list(entry.key_metrics.items())[:6]
        )
        return Narrative(
            text=f"{entry.hypothesis} — {entry.status} ({numbers}).",
            cited_evidence_ids=list(entry.evidence_ids),
        )
