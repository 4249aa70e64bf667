"""The criterion lock covers a hypothesis's `components` too: a claim about named components is
bound to its test, so the components cannot change once an experiment testing it has started.
The trigger of 0001 is replaced on SQLite and PostgreSQL; downgrade restores it.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
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
_JSON_COLUMNS = frozenset({"tool_args", "components"})
_LOCK_MESSAGE = "criterion of hypothesis is locked: an experiment testing it has started"
_STARTED = (
    "OLD.locked OR EXISTS (SELECT 1 FROM experiment WHERE experiment.hypothesis_id = OLD.id "
    "AND experiment.status <> 'pending')"
)


def _criterion_changed(dialect: str, columns: Sequence[str]) -> str:
    """The SQL condition that one of `columns` changed or the lock was lifted."""
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
    """Drop the criterion-lock trigger and create it again over `columns`."""
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
    _replace_lock_trigger((*_CRITERION_COLUMNS, "components"))


def downgrade() -> None:
    _replace_lock_trigger(_CRITERION_COLUMNS)
