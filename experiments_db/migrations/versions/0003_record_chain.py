"""The record chain: one `record_link` row per hypothesis, criterion change, evidence and verdict
the store writes, each holding the sha256 of the record's content and a hash chained to the
previous link of its investigation, so that `rankscope audit` detects records changed, replaced or
deleted afterwards.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "record_link",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("investigation_id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("record_id", sa.Integer(), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("chain", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["investigation_id"],
            ["investigation.id"],
            name=op.f("fk_record_link_investigation_id_investigation"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_record_link")),
        sa.UniqueConstraint(
            "investigation_id", "seq", name=op.f("uq_record_link_investigation_id")
        ),
    )
    op.create_index(op.f("ix_record_link_investigation_id"), "record_link", ["investigation_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_record_link_investigation_id"), table_name="record_link")
    op.drop_table("record_link")
