"""Plain data objects returned by the store (pydantic models, detached from any session)."""

from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

InvestigationStatus = Literal["running", "finished", "interrupted", "failed"]
ExperimentStatus = Literal["pending", "running", "finished", "failed", "interrupted"]
VerdictStatus = Literal["supported", "refuted", "inconclusive"]
Direction = Literal["greater", "less", "two-sided"]
Split = Literal["discovery", "holdout", "all"]
Correction = Literal["none", "holm", "bonferroni"]
ReviewDecision = Literal["accept", "dispute"]
AuditJobState = Literal["queued", "running", "done", "failed", "interrupted"]
ACTIVE_AUDIT_JOB_STATES: tuple[AuditJobState, ...] = ("queued", "running")
"""The states of an audit job that has not ended."""


class Criterion(BaseModel):
    """A hypothesis's pre-registered, checkable prediction — the one criterion of RankScope.

    The hypothesis is supported when ``metric`` (a key of the tool's result metrics) lies beyond
    ``threshold`` in ``direction`` at significance ``alpha`` (after ``correction`` over ``n_tests``
    tests), measured on ``split``. Planners propose it, the store keeps it beside the hypothesis's
    tool call, and the verdict rules read it.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    metric: str = Field(
        description="A metric key of the tool's result, e.g. 'share_moved_predicted'."
    )
    direction: Direction = Field(
        description="'greater': metric > threshold predicted, 'less': below."
    )
    threshold: float
    alpha: float = Field(0.05, gt=0.0, lt=0.5, description="Significance level.")
    split: Split = "discovery"
    correction: Correction = "none"
    n_tests: int = Field(1, ge=1, description="Number of components tested (for the correction).")

    def __str__(self) -> str:
        """The criterion as one line of text, the form every report, page and prompt shows."""
        return (
            f"{self.metric} {self.direction} {self.threshold:g} at alpha {self.alpha:g} on "
            f"{self.split} (correction {self.correction}, {self.n_tests} test(s))"
        )


class _Record(BaseModel):
    model_config = ConfigDict(from_attributes=True, frozen=True)


class InvestigationRecord(_Record):
    id: int
    question: str
    model_id: str
    data_spec: str
    planner: str
    llm_model: str | None
    budget: dict[str, Any]
    status: InvestigationStatus
    created_at: datetime
    finished_at: datetime | None
    report_path: str | None
    config: dict[str, Any]


class InvestigationSummary(InvestigationRecord):
    """An investigation with the counts that ``list`` shows."""

    n_hypotheses: int = 0
    n_experiments: int = 0
    n_verdicts: int = 0


class HypothesisRecord(_Record):
    id: int
    investigation_id: int
    text: str
    rationale: str
    parent_id: int | None
    components: list[str]
    tool: str
    tool_args: dict[str, Any]
    criterion: Criterion
    created_at: datetime
    locked: bool
    exploratory: bool = False
    """A screen or ranking: its call ran once on discovery, it claims nothing, gets no verdict
    and spends no level (see :mod:`rankscope.agent.verdicts`)."""


class ArtifactRecord(_Record):
    id: int
    experiment_id: int
    evidence_id: int | None
    sha256: str
    path: str
    media_type: str
    size: int
    description: str


class EvidenceRecord(_Record):
    id: int
    experiment_id: int
    metrics: dict[str, Any]
    summary: str
    tables: dict[str, Any]
    approximate: bool
    created_at: datetime
    artifacts: list[ArtifactRecord] = Field(default_factory=list)


class ExperimentRecord(_Record):
    id: int
    investigation_id: int
    hypothesis_id: int | None
    tool: str
    tool_version: str
    args: dict[str, Any]
    seed: int | None
    status: ExperimentStatus
    error: str | None
    started_at: datetime | None
    finished_at: datetime | None
    duration_s: float | None
    provenance: dict[str, Any]


class ReviewRecord(_Record):
    id: int
    verdict_id: int
    reviewer: str
    decision: ReviewDecision
    comment: str
    created_at: datetime


class AuditCheck(_Record):
    """One check of an audit: what was checked, on what, and whether it held."""

    subject: str
    check: str
    ok: bool
    detail: str = ""


class AuditJobRecord(_Record):
    id: int
    investigation_id: int
    rerun: bool
    state: AuditJobState
    owner: str
    done: int
    total: int
    findings: list[AuditCheck]
    error: str
    started_at: datetime
    finished_at: datetime | None

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_AUDIT_JOB_STATES

    @property
    def drift(self) -> list[AuditCheck]:
        return [f for f in self.findings if not f.ok]

    @property
    def progress(self) -> str:
        """``done/total steps``, or empty before the first step."""
        return f"{self.done}/{self.total} steps" if self.total else ""

    @property
    def elapsed_s(self) -> float:
        """Seconds from the start to the end, or to now while the job runs."""
        end = self.finished_at or datetime.now(self.started_at.tzinfo)
        return max(0.0, (end - self.started_at).total_seconds())


class VerdictRecord(_Record):
    id: int
    hypothesis_id: int
    status: VerdictStatus
    criterion_result: dict[str, Any]
    cited_evidence_ids: list[int]
    narrative: str
    decided_by: str
    created_at: datetime
    reviews: list[ReviewRecord] = Field(default_factory=list)


class LLMCallRecord(_Record):
    id: int
    investigation_id: int | None
    model: str
    messages: list[Any]
    response: Any
    prompt_tokens: int | None
    completion_tokens: int | None
    latency_s: float | None
    error: str | None
    created_at: datetime


class LLMUsage(BaseModel):
    """Token totals of an investigation's LLM calls (for budgets)."""

    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class ExperimentNode(ExperimentRecord):
    evidence: list[EvidenceRecord] = Field(default_factory=list)


class HypothesisNode(HypothesisRecord):
    experiments: list[ExperimentNode] = Field(default_factory=list)
    verdicts: list[VerdictRecord] = Field(default_factory=list)

    @property
    def latest_verdict(self) -> VerdictRecord | None:
        """The verdict in force (the last recorded), or None before the first."""
        return self.verdicts[-1] if self.verdicts else None


class InvestigationTree(_Record):
    """Everything stored about one investigation, nested for reports and audits.

    ``unlinked_experiments`` are experiments run without a hypothesis (exploration).
    """

    investigation: InvestigationRecord
    hypotheses: list[HypothesisNode] = Field(default_factory=list)
    unlinked_experiments: list[ExperimentNode] = Field(default_factory=list)
    llm_calls: list[LLMCallRecord] = Field(default_factory=list)

    def experiments(self) -> list[ExperimentNode]:
        """All experiments, those of hypotheses first, in id order."""
        nodes = [e for h in self.hypotheses for e in h.experiments] + self.unlinked_experiments
        return sorted(nodes, key=lambda e: e.id)

    def evidence(self) -> dict[int, EvidenceRecord]:
        """All evidence by id."""
        return {ev.id: ev for e in self.experiments() for ev in e.evidence}

    def artifacts(self) -> list[ArtifactRecord]:
        return [a for ev in self.evidence().values() for a in ev.artifacts]


class ArtifactSpec(BaseModel):
    """A local file to store as an artifact of an experiment's evidence."""

    path: Path
    media_type: str
    description: str = ""
