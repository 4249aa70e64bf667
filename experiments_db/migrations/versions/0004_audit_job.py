"""Audit jobs started from `rankscope serve`: state, progress and findings kept in the store, so
that a restart loses none and a dead server's jobs can be marked interrupted.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "audit_job",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("investigation_id", sa.Integer(), nullable=False),
        sa.Column("rerun", sa.Boolean(), nullable=False),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("owner", sa.String(), nullable=False),
        sa.Column("done", sa.Integer(), nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("findings", sa.JSON(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "state IN ('queued', 'running', 'done', 'failed', 'interrupted')",
            name=op.f("ck_audit_job_state"),
        ),
        sa.ForeignKeyConstraint(
            ["investigation_id"],
            ["investigation.id"],
            name=op.f("fk_audit_job_investigation_id_investigation"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_job")),
    )
    op.create_index(op.f("ix_audit_job_investigation_id"), "audit_job", ["investigation_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_audit_job_investigation_id"), table_name="audit_job")
    op.drop_table("audit_job")
