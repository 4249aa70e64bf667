"""The graph's checkpointer, in the investigation's own database.

Checkpoints are read with :class:`StrictCheckpointSerializer`: the state is plain JSON, so a
checkpoint row that asks for any other object to be constructed (a msgpack extension naming, say,
``os.system``) is refused with :class:`UnsafeCheckpointError` before anything is built from it.

On PostgreSQL the checkpointer draws its connection from a pool that checks a connection before
each use: a connection the server dropped between two steps (a restart, an idle timeout,
``pg_terminate_backend``) is replaced by a new one. When no working connection can be had within
:data:`PG_POOL_TIMEOUT_S`, the run stops with :class:`DatabaseConnectionLostError`, one line that
says to resume it (see :func:`connection_lost`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import ormsgpack
import psycopg
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.serde import _msgpack as lg_msgpack
from langgraph.checkpoint.serde.base import maybe_add_typed_methods
from langgraph.checkpoint.serde.jsonplus import (
    EXT_CONSTRUCTOR_KW_ARGS,
    EXT_CONSTRUCTOR_POS_ARGS,
    EXT_CONSTRUCTOR_SINGLE_ARG,
    EXT_METHOD_SINGLE_ARG,
    EXT_PYDANTIC_V1,
    EXT_PYDANTIC_V2,
    JsonPlusSerializer,
)
from sqlalchemy.engine import make_url

from rankscope.experiments_db.errors import StoreError
from rankscope.experiments_db.migrate import PG_MIGRATION_LOCK, poll_lock

if TYPE_CHECKING:
    from psycopg.rows import DictRow

PG_POOL_TIMEOUT_S = 10.0
"""How long the PostgreSQL checkpointer waits for a working connection (a dropped one is
replaced) before the run stops with :class:`DatabaseConnectionLostError`."""

_CONSTRUCTOR_EXTS = frozenset(
    {
        EXT_CONSTRUCTOR_SINGLE_ARG,
        EXT_CONSTRUCTOR_POS_ARGS,
        EXT_CONSTRUCTOR_KW_ARGS,
        EXT_PYDANTIC_V1,
        EXT_PYDANTIC_V2,
    }
)


class UnsafeCheckpointError(RuntimeError):
    """A checkpoint row asks for an object outside the allow-list; nothing was built from it."""


class DatabaseConnectionLostError(StoreError, psycopg.OperationalError):
    """The database connection was lost during a run and could not be re-opened; everything
    recorded so far stays, and ``rankscope resume ID`` continues the run. (A
    ``psycopg.OperationalError`` too, for callers that caught the driver's error.)"""


_SERVER_GONE = frozenset({"57P01", "57P02", "57P03"})
"""SQLSTATEs of a server that ended or refuses the session (admin or crash shutdown, cannot
connect now); class 08 is every other connection exception."""


def _is_connection_error(err: BaseException) -> bool:
    """A lost or unreachable connection: psycopg's client-side errors (no SQLSTATE: the
    connection is closed, a connection attempt failed, the pool timed out) and the server's
    connection errors. Not the other operational errors (a full disk, a deadlock, a lock
    timeout), which a new connection would not cure."""
    if not isinstance(err, psycopg.OperationalError):
        return False
    state = getattr(err, "sqlstate", None)
    return state is None or state.startswith("08") or state in _SERVER_GONE


def connection_lost(exc: BaseException) -> str | None:
    """The driver's reason when ``exc`` (or the error it wraps or was raised from) is a lost or
    unreachable PostgreSQL connection; None otherwise."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        err = todo.pop()
        if err is None or id(err) in seen:
            continue
        seen.add(id(err))
        if isinstance(err, DatabaseConnectionLostError):
            return None
        if _is_connection_error(err):
            return " ".join(str(err).split()) or type(err).__name__
        todo += [getattr(err, "orig", None), err.__cause__, err.__context__]
    return None


def connection_lost_error(investigation_id: int, reason: str) -> DatabaseConnectionLostError:
    """The one-line error of a run whose database connection was lost."""
    return DatabaseConnectionLostError(
        f"investigation {investigation_id} stopped: its database connection was lost and no "
        f"new one could be opened ({reason.rstrip('.')}); everything recorded so far stays. "
        f"Run `rankscope resume {investigation_id}` once the database is reachable again"
    )


def _checking_hook(refused: list[str]) -> Callable[[int, bytes], Any]:
    """A msgpack ext hook that only inspects: it records (and raises on) the first extension
    naming a type or method outside LangGraph's safe list, recursing into nested extensions."""

    def hook(code: int, data: bytes) -> Any:
        inner = ormsgpack.unpackb(data, ext_hook=hook, option=ormsgpack.OPT_NON_STR_KEYS)
        if code in _CONSTRUCTOR_EXTS:
            name = (str(inner[0]), str(inner[1]))
            if name not in lg_msgpack.SAFE_MSGPACK_TYPES:
                refused.append(".".join(name))
                raise UnsafeCheckpointError(refused[-1])
        elif code == EXT_METHOD_SINGLE_ARG:
            method = (str(inner[0]), str(inner[1]), str(inner[3]))
            if method not in lg_msgpack.SAFE_MSGPACK_METHODS:
                refused.append(".".join(method))
                raise UnsafeCheckpointError(refused[-1])
        return None

    return hook


class StrictCheckpointSerializer(JsonPlusSerializer):
    """LangGraph's serializer with every msgpack payload checked against the safe-type list
    first; pickle is never read."""

    def __init__(self) -> None:
        super().__init__(pickle_fallback=False, allowed_msgpack_modules=None)

    def loads_typed(self, data: tuple[str, bytes]) -> Any:
        type_, payload = data
        if type_ == "pickle":
            raise UnsafeCheckpointError(
                "refusing a pickled checkpoint value: RankScope checkpoints are plain JSON"
            )
        if type_ == "msgpack":
            refused: list[str] = []
            try:
                ormsgpack.unpackb(
                    payload, ext_hook=_checking_hook(refused), option=ormsgpack.OPT_NON_STR_KEYS
                )
            except ValueError:
                if not refused:
                    raise
                raise UnsafeCheckpointError(
                    f"refusing a checkpoint that asks to construct {refused[0]!r}: RankScope "
                    "checkpoints hold plain JSON only, so this row was altered outside RankScope; "
                    "nothing was run"
                ) from None
        return super().loads_typed(data)


def strict_serde() -> Any:
    """The serializer every RankScope checkpointer uses."""
    return maybe_add_typed_methods(StrictCheckpointSerializer())


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
            saver = SqliteSaver(conn, serde=strict_serde())
            saver.setup()
            yield saver
        finally:
            conn.close()
    elif backend == "postgresql":
        with _postgres_checkpointer(postgres_conninfo(db_url)) as pg_saver:
            yield pg_saver
    else:
        raise ValueError(f"no checkpointer for database backend {backend!r}")


@contextmanager
def _postgres_checkpointer(conninfo: str) -> Iterator[BaseCheckpointSaver[Any]]:
    """A ``PostgresSaver`` on a pool of at most two connections, each checked before use
    (``ConnectionPool.check_connection``), so a connection the server dropped is replaced."""
    from langgraph.checkpoint.postgres import PostgresSaver
    from psycopg.rows import dict_row
    from psycopg_pool import ConnectionPool

    pool: ConnectionPool[psycopg.Connection[DictRow]] = ConnectionPool(
        conninfo,
        min_size=1,
        max_size=2,
        open=False,
        timeout=PG_POOL_TIMEOUT_S,
        check=ConnectionPool.check_connection,
        kwargs={"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row},
        name="rankscope-checkpoints",
    )
    pool.open(wait=True, timeout=PG_POOL_TIMEOUT_S)
    try:
        pg_saver = PostgresSaver(pool)
        pg_saver.serde = strict_serde()
        # Several processes starting on a fresh database would race in setup() (a duplicate
        # type or migration row): it runs under the lock that serialises the store's
        # migrations, taken on a connection of its own.
        with psycopg.connect(conninfo, autocommit=True) as lock_conn:

            def try_lock() -> bool:
                row = lock_conn.execute(
                    "SELECT pg_try_advisory_lock(%s)", (PG_MIGRATION_LOCK,)
                ).fetchone()
                return bool(row and row[0])

            poll_lock(try_lock, what="the store's migration lock")
            try:
                pg_saver.setup()
            finally:
                lock_conn.execute("SELECT pg_advisory_unlock(%s)", (PG_MIGRATION_LOCK,))
        yield pg_saver
    finally:
        pool.close()


def verify_checkpoint(db_url: str, investigation_id: int) -> None:
    """Read an investigation's latest checkpoint and its pending writes through the strict
    serializer; raises :class:`UnsafeCheckpointError` if any of it is refused."""
    with open_checkpointer(db_url) as saver:
        saver.get_tuple(thread_config(investigation_id, 1))


def thread_config(investigation_id: int, recursion_limit: int) -> RunnableConfig:
    """The LangGraph run config of an investigation: its thread and recursion limit."""
    return {
        "configurable": {"thread_id": str(investigation_id)},
        "recursion_limit": recursion_limit,
    }
