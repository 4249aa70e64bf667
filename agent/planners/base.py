"""The planner contract shared by the LLM planner and the protocol planner.

A planner reads a compact ``Ledger`` of the investigation so far and returns either a
``Proposal`` (a hypothesis, its pre-registered criterion and the tool call that tests it) or a
``Stop``. It never sets a verdict: verdicts come from ``rankscope.agent.verdicts`` applied to stored evidence.
It may write the narrative of a verdict (``narrate``); citations in it are checked by the graph.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Direction = Literal["greater", "less", "two-sided"]
Correction = Literal["none", "holm", "bonferroni"]


class Criterion(BaseModel):
    """A pre-registered, checkable prediction about one metric of a tool's result."""

    model_config = ConfigDict(extra="forbid")

    metric: str = Field(
        description="A metric key of the tool's result, e.g. 'share_moved_predicted'."
    )
    direction: Direction = Field(
        description="'greater': metric > threshold predicted, 'less': below."
    )
    threshold: float
    alpha: float = Field(0.05, gt=0.0, lt=0.5, description="Significance level.")
    split: Literal["discovery", "holdout", "all"] = "discovery"
    correction: Correction = "none"
    n_tests: int = Field(1, ge=1, description="Number of components tested (for the correction).")


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
    """pending, supported, refuted, inconclusive, failed."""
    key_metrics: dict[str, float | int | None] = Field(default_factory=dict)
    summary: str = ""
    evidence_ids: list[int] = Field(default_factory=list)
    replication: dict[str, float | int | None] | None = None


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
