"""The first schema: investigations, hypotheses with pre-registered criteria, experiments,
evidence, artifacts, verdicts, reviews and LLM calls; a trigger locks a hypothesis's criterion
once an experiment testing it has started.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_CRITERION_COLUMNS = (
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
_LOCK_MESSAGE = "criterion of hypothesis is locked: an experiment testing it has started"
_STARTED = (
    "OLD.locked OR EXISTS (SELECT 1 FROM experiment WHERE experiment.hypothesis_id = OLD.id "
    "AND experiment.status <> 'pending')"
)


def _timestamp(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _criterion_changed(dialect: str) -> str:
    if dialect == "postgresql":
        changes = [
            f"NEW.{c}::text IS DISTINCT FROM OLD.{c}::text"
            if c == "tool_args"
            else f"NEW.{c} IS DISTINCT FROM OLD.{c}"
            for c in _CRITERION_COLUMNS
        ]
    else:
        changes = [f"NEW.{c} IS NOT OLD.{c}" for c in _CRITERION_COLUMNS]
    return " OR ".join([*changes, "(OLD.locked AND NOT NEW.locked)"])


def _create_lock_trigger() -> None:
    dialect = op.get_context().dialect.name
    changed = _criterion_changed(dialect)
    if dialect == "postgresql":
        op.execute(
            f"""
            CREATE FUNCTION hypothesis_criterion_lock() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF ({_STARTED}) AND ({changed}) THEN
                    RAISE EXCEPTION 'criterion of hypothesis % is locked: an experiment testing it '
                        'has started', OLD.id USING ERRCODE = 'check_violation';
                END IF;
                RETURN NEW;
            END
            $$
            """
        )
        op.execute(
            "CREATE TRIGGER hypothesis_criterion_lock BEFORE UPDATE ON hypothesis "
            "FOR EACH ROW EXECUTE FUNCTION hypothesis_criterion_lock()"
        )
    elif dialect == "sqlite":
        op.execute(
            f"""
            CREATE TRIGGER hypothesis_criterion_lock BEFORE UPDATE ON hypothesis
            FOR EACH ROW WHEN ({_STARTED}) AND ({changed})
            BEGIN
                SELECT RAISE(ABORT, '{_LOCK_MESSAGE}');
            END
            """
        )


def _drop_lock_trigger() -> None:
    dialect = op.get_context().dialect.name
    if dialect == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS hypothesis_criterion_lock ON hypothesis")
        op.execute("DROP FUNCTION IF EXISTS hypothesis_criterion_lock()")
    elif dialect == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS hypothesis_criterion_lock")


def upgrade() -> None:
    op.create_table(
        "investigation",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("question", sa.Text(), nullable=False),
        sa.Column("model_id", sa.String(), nullable=False),
        sa.Column("data_spec", sa.String(), nullable=False),
        sa.Column("planner", sa.String(), nullable=False),
        sa.Column("llm_model", sa.String(), nullable=True),
        sa.Column("budget", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        _timestamp("created_at"),
        _timestamp("finished_at", nullable=True),
        sa.Column("report_path", sa.String(), nullable=True),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.CheckConstraint(
            "status IN ('running', 'finished', 'interrupted', 'failed')",
            name=op.f("ck_investigation_status"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_investigation")),
    )
    op.create_table(
        "hypothesis",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("investigation_id", sa.Integer(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("rationale", sa.Text(), nullable=False),
        sa.Column("parent_id", sa.Integer(), nullable=True),
        sa.Column("components", sa.JSON(), nullable=False),
        sa.Column("tool", sa.String(), nullable=False),
        sa.Column("tool_args", sa.JSON(), nullable=False),
        sa.Column("metric", sa.String(), nullable=False),
        sa.Column("direction", sa.String(), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=False),
        sa.Column("alpha", sa.Float(), nullable=False),
        sa.Column("split", sa.String(), nullable=False),
        sa.Column("correction", sa.String(), nullable=False),
        sa.Column("n_tests", sa.Integer(), nullable=False),
        _timestamp("created_at"),
        sa.Column("locked", sa.Boolean(), nullable=False),
        sa.CheckConstraint(
            "direction IN ('greater', 'less', 'two-sided')", name=op.f("ck_hypothesis_direction")
        ),
        sa.CheckConstraint(
            "split IN ('discovery', 'holdout', 'all')", name=op.f("ck_hypothesis_split")
        ),
        sa.CheckConstraint(
            "correction IN ('none', 'holm', 'bonferroni')", name=op.f("ck_hypothesis_correction")
        ),
        sa.CheckConstraint("alpha > 0 AND alpha < 1", name=op.f("ck_hypothesis_alpha")),
        sa.CheckConstraint("n_tests >= 1", name=op.f("ck_hypothesis_n_tests")),
        sa.ForeignKeyConstraint(
            ["investigation_id"],
            ["investigation.id"],
            name=op.f("fk_hypothesis_investigation_id_investigation"),
        ),
        sa.ForeignKeyConstraint(
            ["parent_id"], ["hypothesis.id"], name=op.f("fk_hypothesis_parent_id_hypothesis")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hypothesis")),
    )
    op.create_index(op.f("ix_hypothesis_investigation_id"), "hypothesis", ["investigation_id"])
    op.create_index(op.f("ix_hypothesis_parent_id"), "hypothesis", ["parent_id"])

    op.create_table(
        "experiment",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("investigation_id", sa.Integer(), nullable=False),
        sa.Column("hypothesis_id", sa.Integer(), nullable=True),
        sa.Column("tool", sa.String(), nullable=False),
        sa.Column("tool_version", sa.String(), nullable=False),
        sa.Column("args", sa.JSON(), nullable=False),
        sa.Column("seed", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        _timestamp("started_at", nullable=True),
        _timestamp("finished_at", nullable=True),
        sa.Column("duration_s", sa.Float(), nullable=True),
        sa.Column("provenance", sa.JSON(), nullable=False),
        sa.CheckConstraint(
            "status IN ('pending', 'running', 'finished', 'failed', 'interrupted')",
            name=op.f("ck_experiment_status"),
        ),
        sa.ForeignKeyConstraint(
            ["investigation_id"],
            ["investigation.id"],
            name=op.f("fk_experiment_investigation_id_investigation"),
        ),
        sa.ForeignKeyConstraint(
            ["hypothesis_id"],
            ["hypothesis.id"],
            name=op.f("fk_experiment_hypothesis_id_hypothesis"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_experiment")),
    )
    op.create_index(op.f("ix_experiment_investigation_id"), "experiment", ["investigation_id"])
    op.create_index(op.f("ix_experiment_hypothesis_id"), "experiment", ["hypothesis_id"])

    op.create_table(
        "evidence",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("experiment_id", sa.Integer(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.Column("tables", sa.JSON(), nullable=False),
        sa.Column("approximate", sa.Boolean(), nullable=False),
        _timestamp("created_at"),
        sa.ForeignKeyConstraint(
            ["experiment_id"], ["experiment.id"], name=op.f("fk_evidence_experiment_id_experiment")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_evidence")),
    )
    op.create_index(op.f("ix_evidence_experiment_id"), "evidence", ["experiment_id"])

    op.create_table(
        "artifact",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("experiment_id", sa.Integer(), nullable=False),
        sa.Column("evidence_id", sa.Integer(), nullable=True),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("path", sa.String(), nullable=False),
        sa.Column("media_type", sa.String(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["experiment_id"], ["experiment.id"], name=op.f("fk_artifact_experiment_id_experiment")
        ),
        sa.ForeignKeyConstraint(
            ["evidence_id"], ["evidence.id"], name=op.f("fk_artifact_evidence_id_evidence")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_artifact")),
    )
    op.create_index(op.f("ix_artifact_experiment_id"), "artifact", ["experiment_id"])
    op.create_index(op.f("ix_artifact_evidence_id"), "artifact", ["evidence_id"])
    op.create_index(op.f("ix_artifact_sha256"), "artifact", ["sha256"])

    op.create_table(
        "verdict",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("hypothesis_id", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("criterion_result", sa.JSON(), nullable=False),
        sa.Column("cited_evidence_ids", sa.JSON(), nullable=False),
        sa.Column("narrative", sa.Text(), nullable=False),
        sa.Column("decided_by", sa.String(), nullable=False),
        _timestamp("created_at"),
        sa.CheckConstraint(
            "status IN ('supported', 'refuted', 'inconclusive')", name=op.f("ck_verdict_status")
        ),
        sa.ForeignKeyConstraint(
            ["hypothesis_id"], ["hypothesis.id"], name=op.f("fk_verdict_hypothesis_id_hypothesis")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_verdict")),
    )
    op.create_index(op.f("ix_verdict_hypothesis_id"), "verdict", ["hypothesis_id"])

    op.create_table(
        "llm_call",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("investigation_id", sa.Integer(), nullable=True),
        sa.Column("model", sa.String(), nullable=False),
        sa.Column("messages", sa.JSON(), nullable=False),
        sa.Column("response", sa.JSON(), nullable=True),
        sa.Column("prompt_tokens", sa.Integer(), nullable=True),
        sa.Column("completion_tokens", sa.Integer(), nullable=True),
        sa.Column("latency_s", sa.Float(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        _timestamp("created_at"),
        sa.ForeignKeyConstraint(
            ["investigation_id"],
            ["investigation.id"],
            name=op.f("fk_llm_call_investigation_id_investigation"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_llm_call")),
    )
    op.create_index(op.f("ix_llm_call_investigation_id"), "llm_call", ["investigation_id"])

    op.create_table(
        "review",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("verdict_id", sa.Integer(), nullable=False),
        sa.Column("reviewer", sa.String(), nullable=False),
        sa.Column("decision", sa.String(), nullable=False),
        sa.Column("comment", sa.Text(), nullable=False),
        _timestamp("created_at"),
        sa.CheckConstraint("decision IN ('accept', 'dispute')", name=op.f("ck_review_decision")),
        sa.ForeignKeyConstraint(
            ["verdict_id"], ["verdict.id"], name=op.f("fk_review_verdict_id_verdict")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_review")),
    )
    op.create_index(op.f("ix_review_verdict_id"), "review", ["verdict_id"])

    _create_lock_trigger()


def downgrade() -> None:
    _drop_lock_trigger()
    for table, columns in (
        ("review", ("verdict_id",)),
        ("llm_call", ("investigation_id",)),
        ("verdict", ("hypothesis_id",)),
        ("artifact", ("experiment_id", "evidence_id", "sha256")),
        ("evidence", ("experiment_id",)),
        ("experiment", ("investigation_id", "hypothesis_id")),
        ("hypothesis", ("investigation_id", "parent_id")),
    ):
        for column in columns:
            op.drop_index(op.f(f"ix_{table}_{column}"), table_name=table)
        op.drop_table(table)
    op.drop_table("investigation")
