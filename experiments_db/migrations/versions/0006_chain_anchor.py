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
    with op.batch_alter_table("investigation") as batch:
        batch.add_column(
            sa.Column("chain_version", sa.Integer(), nullable=False, server_default="0")
        )
    with op.batch_alter_table("record_link") as batch:
        batch.add_column(sa.Column("key_id", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("signature", sa.String(length=128), nullable=True))
    op.execute(
        "UPDATE investigation SET chain_version = 1 WHERE EXISTS "
        "(SELECT 1 FROM record_link WHERE record_link.investigation_id = investigation.id)"
    )


def downgrade() -> None:
    with op.batch_alter_table("record_link") as batch:
        batch.drop_column("signature")
        batch.drop_column("key_id")
    with op.batch_alter_table("investigation") as batch:
        batch.drop_column("chain_version")
