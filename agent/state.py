"""The investigation graph's typed state and budget.

The state is plain JSON (dicts, lists, strings, numbers) so that checkpoints hold data only, never
objects to re-create. ``InvestigationState`` is what LangGraph checkpoints after every node;
``PendingProposal`` is an accepted planner proposal waiting to be pre-registered;
``HypothesisInFlight`` is the hypothesis being tested (discovery, then held-out replication).
"""

from __future__ import annotations

from typing import Any, Literal, NotRequired, TypedDict

from pydantic import BaseModel, Field

NODES_PER_STEP = 10
"""Graph nodes one planner step may visit (plan, preregister, run, record, assess, replicate …)."""

Phase = Literal["discovery", "holdout"]


class Budget(BaseModel):
    """Explicit limits of one investigation."""

    max_steps: int = Field(12, ge=1, description="Planner proposals (accepted or rejected).")
    max_tool_calls: int = Field(24, ge=1, description="Experiments run, replications included.")
    max_tokens: int | None = Field(200_000, ge=1, description="LLM tokens (prompt + completion).")
    max_minutes: float = Field(30.0, gt=0, description="Wall time of the graph, across resumes.")
    max_repeats: int = Field(3, ge=1, description="Repeated proposals tolerated before stopping.")
    max_invalid: int = Field(3, ge=1, description="Consecutive rejected proposals before stopping.")

    def recursion_limit(self) -> int:
        """The LangGraph recursion limit: every step may visit each node of one cycle."""
        return self.max_steps * NODES_PER_STEP + 10


class PendingProposal(TypedDict):
    """A validated planner proposal, before it is pre-registered."""

    hypothesis: str
    rationale: str
    tool: str
    args: dict[str, Any]
    criterion: dict[str, Any]
    components: list[str]
    parent_hypothesis_id: int | None
    fingerprint: str
    exploratory: NotRequired[bool]
    """An exploratory step: run once on discovery, recorded, never decided."""


class HypothesisInFlight(TypedDict, total=False):
    """The hypothesis under test; per-phase maps are keyed by ``Phase``."""

    hypothesis_id: int
    phase: Phase
    tool: str
    args: dict[str, Any]
    criterion: dict[str, Any]
    components: list[str]
    text: str
    results: dict[str, dict[str, Any]]
    """Phase → ``SplitResult`` as JSON."""
    experiments: dict[str, int]
    evidence: dict[str, int]
    errors: dict[str, str]
    skipped: dict[str, str]
    seed_only_replication: bool
    exploratory_of: int | None
    """The earlier hypothesis that already ran this call (None: confirmatory)."""


class InvestigationState(TypedDict, total=False):
    """The checkpointed graph state."""

    investigation_id: int
    steps: int
    tool_calls: int
    elapsed_s: float
    feedback: list[str]
    fingerprints: dict[str, int]
    """Proposal fingerprint → the hypothesis id it was pre-registered as."""
    repeats: int
    invalid_streak: int
    proposal: PendingProposal | None
    current: HypothesisInFlight | None
    stop_reason: str | None
    report_path: str | None


def initial_state(investigation_id: int) -> InvestigationState:
    return InvestigationState(
        investigation_id=investigation_id,
        steps=0,
        tool_calls=0,
        elapsed_s=0.0,
        feedback=[],
        fingerprints={},
        repeats=0,
        invalid_streak=0,
        proposal=None,
        current=None,
        stop_reason=None,
        report_path=None,
    )
