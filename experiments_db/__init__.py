"""The evidence store: investigations, hypotheses, experiments, evidence, artifacts and verdicts.

It knows SQLModel/SQLAlchemy/alembic and nothing of torch, the tools or the agent. Open it with
:func:`open_store`; every query returns plain pydantic records.
"""

from rankscope.experiments_db.artifacts import ArtifactStore, StoredFile, default_artifact_root
from rankscope.experiments_db.bundle import export_investigation, import_bundle
from rankscope.experiments_db.engine import (
    ENV_DB_URL,
    create_db_engine,
    database_url,
    downgrade_database,
    mask_url,
    open_store,
    upgrade_database,
)
from rankscope.experiments_db.errors import (
    ArtifactError,
    ArtifactIntegrityError,
    ArtifactMissingError,
    BundleError,
    CriterionLockedError,
    DatabaseURLError,
    EvidenceWriteError,
    ExperimentStateError,
    NotFoundError,
    SchemaVersionError,
    StoreError,
    UnknownEvidenceError,
)
from rankscope.experiments_db.provenance import Provenance, capture_provenance
from rankscope.experiments_db.records import (
    ArtifactRecord,
    ArtifactSpec,
    AuditCheck,
    AuditJobRecord,
    Criterion,
    EvidenceRecord,
    ExperimentNode,
    ExperimentRecord,
    HypothesisNode,
    HypothesisRecord,
    InvestigationRecord,
    InvestigationSummary,
    InvestigationTree,
    LLMCallRecord,
    LLMUsage,
    ReviewRecord,
    VerdictRecord,
)
from rankscope.experiments_db.repository import Store

__all__ = [
    "ENV_DB_URL",
    "ArtifactError",
    "ArtifactIntegrityError",
    "ArtifactMissingError",
    "ArtifactRecord",
    "AuditCheck",
    "AuditJobRecord",
    "ArtifactSpec",
    "ArtifactStore",
    "BundleError",
    "Criterion",
    "CriterionLockedError",
    "DatabaseURLError",
    "EvidenceRecord",
    "EvidenceWriteError",
    "ExperimentNode",
    "ExperimentRecord",
    "ExperimentStateError",
    "HypothesisNode",
    "HypothesisRecord",
    "InvestigationRecord",
    "InvestigationSummary",
    "InvestigationTree",
    "LLMCallRecord",
    "LLMUsage",
    "NotFoundError",
    "Provenance",
    "ReviewRecord",
    "SchemaVersionError",
    "Store",
    "StoreError",
    "StoredFile",
    "UnknownEvidenceError",
    "VerdictRecord",
    "capture_provenance",
    "create_db_engine",
    "database_url",
    "default_artifact_root",
    "downgrade_database",
    "export_investigation",
    "import_bundle",
    "mask_url",
    "open_store",
    "upgrade_database",
]
