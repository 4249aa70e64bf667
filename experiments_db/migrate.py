"""Alembic migrations, run programmatically (no ``alembic.ini`` needed)."""

import time
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

from rankscope.experiments_db.models import metadata

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
WRITE_OPTION = "rankscope_write"
"""Execution option: on SQLite, a connection carrying it opens ``BEGIN IMMEDIATE`` transactions."""
PG_MIGRATION_LOCK = 0x52616E6B53636F70
"""The PostgreSQL advisory lock key that serialises schema changes: the store's migrations and
the checkpointer's table setup (both take it with :func:`poll_lock`)."""
LOCK_TIMEOUT_S = 600.0


def poll_lock(
    try_lock: Callable[[], bool], *, what: str, timeout_s: float = LOCK_TIMEOUT_S
) -> None:
    """Take an advisory lock by polling its ``pg_try_…`` form. A blocking ``pg_advisory_lock``
    waits inside a statement, and the holder's ``CREATE INDEX CONCURRENTLY`` (LangGraph's
    checkpointer setup) waits for that statement: a deadlock. Between tries nothing is held."""
    deadline = time.monotonic() + timeout_s
    delay = 0.01
    while not try_lock():
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"{what} was held by another process for over {timeout_s:.0f} s; check for a "
                "stuck 'rankscope' process on this database and retry"
            )
        time.sleep(delay)
        delay = min(2 * delay, 0.25)


def writer(engine: Engine) -> Engine:
    """The engine for write transactions (on SQLite they take the write lock up front)."""
    return engine.execution_options(**{WRITE_OPTION: True})


def alembic_config(connection: Connection | None = None, url: str | None = None) -> Config:
    """An alembic ``Config`` pointing at the package's migrations."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


@lru_cache(maxsize=1)
def head_revision() -> str:
    """The newest revision shipped with this package."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise RuntimeError(f"no alembic revisions in {MIGRATIONS_DIR}")
    return head


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at (``None`` for an empty database)."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def _locked_transaction(engine: Engine, revision: str, upgrade: bool) -> None:
    """Run the migration in one transaction; on PostgreSQL under the migration lock, taken as a
    session lock polled from an autocommit connection, so no transaction stays open while
    waiting (the holder's ``CREATE INDEX CONCURRENTLY`` waits for every open transaction)."""
    if engine.dialect.name != "postgresql":
        _migrate(writer(engine), revision, upgrade)
        return
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as lock_conn:
        poll_lock(
            lambda: bool(
                lock_conn.execute(
                    text("SELECT pg_try_advisory_lock(:key)"), {"key": PG_MIGRATION_LOCK}
                ).scalar()
            ),
            what="the store's migration lock",
        )
        try:
            _migrate(writer(engine), revision, upgrade)
        finally:
            lock_conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": PG_MIGRATION_LOCK})


def _migrate(engine: Engine, revision: str, upgrade: bool) -> None:
    with engine.begin() as conn:
        config = alembic_config(conn)
        if upgrade:
            command.upgrade(config, revision)
        else:
            command.downgrade(config, revision)


def upgrade_engine(engine: Engine, revision: str = "head") -> None:
    """Migrate the database up to ``revision`` (safe when several processes do it at once)."""
    if revision == "head" and current_revision(engine) == head_revision():
        return
    _locked_transaction(engine, revision, upgrade=True)


def downgrade_engine(engine: Engine, revision: str) -> None:
    """Migrate the database down to ``revision`` (``"base"`` drops every table of the store)."""
    _locked_transaction(engine, revision, upgrade=False)


def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
    """Autogenerate filter: only the store's own tables (others, e.g. graph checkpoints, are not
    ours to drop)."""
    if type_ == "table":
        return name in metadata.tables
    return True


def schema_differences(engine: Engine) -> list[Any]:
    """What alembic autogenerate would change to make the database match the models (``[]`` when
    the migrations are complete)."""
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"include_name": include_name, "compare_type": True}
        )
        return list(compare_metadata(context, metadata))
