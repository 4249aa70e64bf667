"""The SQL schema of the evidence store, as SQLModel table models.

No ``from __future__ import annotations`` here: SQLModel reads the annotations at class creation.
JSON columns hold plain data; to change one, assign a new dict or list (in-place mutation is not
tracked). Every change to this module needs a new alembic revision in ``migrations/versions``.
"""

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    MetaData,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy import false as sql_false
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import registry
from sqlmodel import Field, SQLModel

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

INVESTIGATION_STATUSES = ("running", "finished", "interrupted", "failed")
EXPERIMENT_STATUSES = ("pending", "running", "finished", "failed", "interrupted")
VERDICT_STATUSES = ("supported", "refuted", "inconclusive")
DIRECTIONS = ("greater", "less", "two-sided")
SPLITS = ("discovery", "holdout", "all")
CORRECTIONS = ("none", "holm", "bonferroni")
REVIEW_DECISIONS = ("accept", "dispute")
AUDIT_JOB_STATES = ("queued", "running", "done", "failed", "interrupted")
CHAIN_VERSION = 2
"""The record chain new investigations get (migration 0006): 2 links the investigation row (its
question, model, data, settings and policy) as well as its hypotheses, evidence and verdicts.
``investigation.chain_version`` is 1 for an investigation recorded with the chain of migration
0003 (no investigation link) and 0 for one recorded before any chain."""
CRITERION_COLUMNS = (
    "tool",
    "tool_args",
    "metric",
    "direction",
    "threshold",
    "alpha",
    "split",
    "correction",
    "n_tests",
)


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and always returned timezone-aware (SQLite keeps no offset)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _one_of(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _json(nullable: bool = False) -> Any:
    return Field(default_factory=dict, sa_column=Column(JSON, nullable=nullable))


def _json_list() -> Any:
    return Field(default_factory=list, sa_column=Column(JSON, nullable=False))


class StoreBase(
    SQLModel, registry=registry(metadata=MetaData(naming_convention=NAMING_CONVENTION))
):
    """Base of the store's tables; they live in their own metadata, apart from other SQLModels."""

    # Set by SQLAlchemy on each table model; declared so that the type checker knows it.
    __table__: ClassVar[Table]


metadata = StoreBase.metadata


class Investigation(StoreBase, table=True):
    __tablename__ = "investigation"
    __table_args__ = (CheckConstraint(_one_of("status", INVESTIGATION_STATUSES), name="status"),)

    id: int | None = Field(default=None, primary_key=True)
    question: str = Field(sa_type=Text)
    model_id: str
    data_spec: str
    planner: str
    llm_model: str | None = None
    budget: dict[str, Any] = _json()
    status: str = "running"
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    report_path: str | None = None
    config: dict[str, Any] = _json()
    chain_version: int = Field(default=CHAIN_VERSION, sa_column_kwargs={"server_default": "0"})
    """Which record chain the store kept for this investigation (:data:`CHAIN_VERSION`): an
    investigation recorded with a chain whose links are gone fails its audit."""


class Hypothesis(StoreBase, table=True):
    __tablename__ = "hypothesis"
    __table_args__ = (
        CheckConstraint(_one_of("direction", DIRECTIONS), name="direction"),
        CheckConstraint(_one_of("split", SPLITS), name="split"),
        CheckConstraint(_one_of("correction", CORRECTIONS), name="correction"),
        CheckConstraint("alpha > 0 AND alpha < 1", name="alpha"),
        CheckConstraint("n_tests >= 1", name="n_tests"),
    )

    id: int | None = Field(default=None, primary_key=True)
    investigation_id: int = Field(foreign_key="investigation.id", index=True)
    text: str = Field(sa_type=Text)
    rationale: str = Field(default="", sa_type=Text)
    parent_id: int | None = Field(default=None, foreign_key="hypothesis.id", index=True)
    components: list[str] = _json_list()
    tool: str
    tool_args: dict[str, Any] = _json()
    metric: str
    direction: str
    threshold: float
    alpha: float = 0.05
    split: str = "discovery"
    correction: str = "none"
    n_tests: int = 1
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    locked: bool = False
    exploratory: bool = Field(default=False, sa_column_kwargs={"server_default": sql_false()})
    """A screen or ranking that claims nothing (migration 0005): no verdict, no level spent."""


class Experiment(StoreBase, table=True):
    __tablename__ = "experiment"
    __table_args__ = (CheckConstraint(_one_of("status", EXPERIMENT_STATUSES), name="status"),)

    id: int | None = Field(default=None, primary_key=True)
    investigation_id: int = Field(foreign_key="investigation.id", index=True)
    hypothesis_id: int | None = Field(default=None, foreign_key="hypothesis.id", index=True)
    tool: str
    tool_version: str
    args: dict[str, Any] = _json()
    seed: int | None = None
    status: str = "pending"
    error: str | None = Field(default=None, sa_type=Text)
    started_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    duration_s: float | None = None
    provenance: dict[str, Any] = _json()


class Evidence(StoreBase, table=True):
    __tablename__ = "evidence"

    id: int | None = Field(default=None, primary_key=True)
    experiment_id: int = Field(foreign_key="experiment.id", index=True)
    metrics: dict[str, Any] = _json()
    summary: str = Field(default="", sa_type=Text)
    tables: dict[str, Any] = _json()
    approximate: bool = False
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class Artifact(StoreBase, table=True):
    __tablename__ = "artifact"

    id: int | None = Field(default=None, primary_key=True)
    experiment_id: int = Field(foreign_key="experiment.id", index=True)
    evidence_id: int | None = Field(default=None, foreign_key="evidence.id", index=True)
    sha256: str = Field(max_length=64, index=True)
    path: str
    media_type: str
    size: int = Field(sa_type=BigInteger)
    description: str = Field(default="", sa_type=Text)


class Verdict(StoreBase, table=True):
    __tablename__ = "verdict"
    __table_args__ = (CheckConstraint(_one_of("status", VERDICT_STATUSES), name="status"),)

    id: int | None = Field(default=None, primary_key=True)
    hypothesis_id: int = Field(foreign_key="hypothesis.id", index=True)
    status: str
    criterion_result: dict[str, Any] = _json()
    cited_evidence_ids: list[int] = _json_list()
    narrative: str = Field(default="", sa_type=Text)
    decided_by: str
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class LLMCall(StoreBase, table=True):
    __tablename__ = "llm_call"

    id: int | None = Field(default=None, primary_key=True)
    investigation_id: int | None = Field(default=None, foreign_key="investigation.id", index=True)
    model: str
    messages: list[Any] = _json_list()
    response: Any | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_s: float | None = None
    error: str | None = Field(default=None, sa_type=Text)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class Review(StoreBase, table=True):
    __tablename__ = "review"
    __table_args__ = (CheckConstraint(_one_of("decision", REVIEW_DECISIONS), name="decision"),)

    id: int | None = Field(default=None, primary_key=True)
    verdict_id: int = Field(foreign_key="verdict.id", index=True)
    reviewer: str
    decision: str
    comment: str = Field(default="", sa_type=Text)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class AuditJob(StoreBase, table=True):
    """An audit started from ``rankscope serve`` (migration 0004): its state, progress and, when
    done, every check's outcome, so that a restarted server (or another one on the same store)
    shows it; ``owner`` (host:pid) lets a server mark the jobs of a dead one ``interrupted``."""

    __tablename__ = "audit_job"
    __table_args__ = (CheckConstraint(_one_of("state", AUDIT_JOB_STATES), name="state"),)

    id: int | None = Field(default=None, primary_key=True)
    investigation_id: int = Field(foreign_key="investigation.id", index=True)
    rerun: bool
    state: str = "queued"
    owner: str
    done: int = 0
    total: int = 0
    findings: list[Any] = _json_list()
    error: str = Field(default="", sa_type=Text)
    started_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class RecordLink(StoreBase, table=True):
    """One link of an investigation's record chain (migration 0003): the sha256 of a record's
    content as the store wrote it, chained to the previous link, so that ``rankscope audit``
    detects a record changed, replaced or deleted afterwards (:mod:`.chain`)."""

    __tablename__ = "record_link"
    __table_args__ = (UniqueConstraint("investigation_id", "seq"),)

    id: int | None = Field(default=None, primary_key=True)
    investigation_id: int = Field(foreign_key="investigation.id", index=True)
    seq: int
    kind: str = Field(max_length=16)
    record_id: int
    digest: str = Field(max_length=64)
    chain: str = Field(max_length=64)
    key_id: str | None = Field(default=None, max_length=64)
    """The signing key's id (migration 0006; None: the link is not signed)."""
    signature: str | None = Field(default=None, max_length=128)
    """The ed25519 signature (hex) of the link's chain value by that key."""


TABLE_NAMES = tuple(metadata.tables)
