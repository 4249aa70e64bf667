"""A hypothesis can be exploratory: a screen or a ranking whose call runs once on the discovery
split, whose evidence is recorded and ranks what to test next, and which claims nothing — it gets
no verdict and spends no level of the multiplicity procedure. The flag is fixed at
pre-registration: the criterion lock (0002) covers it, so it cannot change once an experiment
testing the hypothesis has started. Existing hypotheses are confirmatory (false).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_LOCKED_0002 = (
    "tool",
    "tool_args",
    "metric",
    "direction",
    "threshold",
    "alpha",
    "split",
    "correction",
    "n_tests",
    "components",
)
_JSON_COLUMNS = frozenset({"tool_args", "components"})
_LOCK_MESSAGE = "criterion of hypothesis is locked: an experiment testing it has started"
_STARTED = (
    "OLD.locked OR EXISTS (SELECT 1 FROM experiment WHERE experiment.hypothesis_id = OLD.id "
    "AND experiment.status <> 'pending')"
)


def _criterion_changed(dialect: str, columns: Sequence[str]) -> str:
    """The SQL condition that one of `columns` changed or the lock was lifted (as in 0002)."""
    if dialect == "postgresql":
        changes = [
            f"NEW.{c}::text IS DISTINCT FROM OLD.{c}::text"
            if c in _JSON_COLUMNS
            else f"NEW.{c} IS DISTINCT FROM OLD.{c}"
            for c in columns
        ]
    else:
        changes = [f"NEW.{c} IS NOT OLD.{c}" for c in columns]
    return " OR ".join([*changes, "(OLD.locked AND NOT NEW.locked)"])


def _replace_lock_trigger(columns: Sequence[str]) -> None:
    """Drop the criterion-lock trigger and create it again over `columns` (as in 0002)."""
    dialect = op.get_context().dialect.name
    changed = _criterion_changed(dialect, columns)
    if dialect == "postgresql":
        op.execute(
            f"""
            CREATE OR REPLACE FUNCTION hypothesis_criterion_lock() RETURNS trigger
            LANGUAGE plpgsql AS $$
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
    elif dialect == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS hypothesis_criterion_lock")
        op.execute(
            f"""
            CREATE TRIGGER hypothesis_criterion_lock BEFORE UPDATE ON hypothesis
            FOR EACH ROW WHEN ({_STARTED}) AND ({changed})
            BEGIN
                SELECT RAISE(ABORT, '{_LOCK_MESSAGE}');
            END
            """
        )


def upgrade() -> None:
    with op.batch_alter_table("hypothesis") as batch:
        batch.add_column(
            sa.Column("exploratory", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    _replace_lock_trigger((*_LOCKED_0002, "exploratory"))


def downgrade() -> None:
    # PostgreSQL: the trigger function must stop reading the column before it is dropped; SQLite
    # recreates the table to drop a column, which drops its triggers: the trigger is made again.
    _replace_lock_trigger(_LOCKED_0002)
    with op.batch_alter_table("hypothesis") as batch:
        batch.drop_column("exploratory")
    _replace_lock_trigger(_LOCKED_0002)
