"""The record chain covers the investigation row and can be signed: `investigation.chain_version`
says which chain the store kept for an investigation (so that deleting its links is detected),
and each `record_link` may carry an ed25519 signature of its chain value with the id of the key
that made it. Investigations that already have links get version 1 (the chain of 0003, without an
investigation link); those without get 0 (recorded before any chain).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # plain ALTER TABLE on both backends (SQLite >= 3.35 drops columns in place): a batch
    # rebuild of `investigation` would drop a table that every other table references
    op.add_column(
        "investigation",
        sa.Column("chain_version", sa.Integer(), nullable=False, server_default="0"),
    )
    op.add_column("record_link", sa.Column("key_id", sa.String(length=64), nullable=True))
    op.add_column("record_link", sa.Column("signature", sa.String(length=128), nullable=True))
    op.execute(
        "UPDATE investigation SET chain_version = 1 WHERE EXISTS "
        "(SELECT 1 FROM record_link WHERE record_link.investigation_id = investigation.id)"
    )
    # a database taken down to 0005 and up again keeps version 2 where the row was linked
    op.execute(
        "UPDATE investigation SET chain_version = 2 WHERE EXISTS "
        "(SELECT 1 FROM record_link WHERE record_link.investigation_id = investigation.id "
        "AND record_link.kind = 'investigation')"
    )


def downgrade() -> None:
    op.drop_column("record_link", "signature")
    op.drop_column("record_link", "key_id")
    op.drop_column("investigation", "chain_version")
