"""The graph's checkpointer, in the investigation's own database."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from langgraph.checkpoint.base import BaseCheckpointSaver
from sqlalchemy.engine import make_url


def postgres_conninfo(url: str) -> str:
    """A libpq connection string for a SQLAlchemy PostgreSQL URL."""
    parsed = make_url(url).set(drivername="postgresql")
    return parsed.render_as_string(hide_password=False)


@contextmanager
def open_checkpointer(db_url: str) -> Iterator[BaseCheckpointSaver[Any]]:
    """The checkpointer in the investigation's database (tables beside the store's):
    ``SqliteSaver`` in the same SQLite file, ``PostgresSaver`` in the same PostgreSQL database."""
    parsed = make_url(db_url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        from langgraph.checkpoint.sqlite import SqliteSaver

        database = parsed.database or ":memory:"
        conn = sqlite3.connect(database, check_same_thread=False, timeout=30.0)
        try:
            saver = SqliteSaver(conn)
            saver.setup()
            yield saver
        finally:
            conn.close()
    elif backend == "postgresql":
        from langgraph.checkpoint.postgres import PostgresSaver

        with PostgresSaver.from_conn_string(postgres_conninfo(db_url)) as pg_saver:
            pg_saver.setup()
            yield pg_saver
    else:
        raise ValueError(f"no checkpointer for database backend {backend!r}")


def thread_config(investigation_id: int, recursion_limit: int) -> dict[str, Any]:
    """The LangGraph run config of an investigation: its thread and recursion limit."""
    return {
        "configurable": {"thread_id": str(investigation_id)},
        "recursion_limit": recursion_limit,
    }
