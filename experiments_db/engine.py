"""Database URLs and engines: SQLite by default (WAL, foreign keys, busy timeout), PostgreSQL
through a ``postgresql+psycopg://`` URL. Opening an engine migrates the schema to the newest
revision."""

import os
import re
from pathlib import Path
from typing import Any

from alembic.util import CommandError
from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.pool import StaticPool

from rankscope.experiments_db.artifacts import ArtifactStore, default_artifact_root
from rankscope.experiments_db.errors import DatabaseURLError, SchemaVersionError
from rankscope.experiments_db.jsonutil import dumps_json
from rankscope.experiments_db.migrate import WRITE_OPTION, downgrade_engine, upgrade_engine
from rankscope.experiments_db.repository import Store

ENV_DB_URL = "RANKSCOPE_DB_URL"
DEFAULT_DB_FILE = "rankscope.db"
SQLITE_BUSY_TIMEOUT_S = 30.0
PG_CONNECT_TIMEOUT_S = 10
_SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")
_URL_HINT = (
    "Use sqlite:///PATH/TO/FILE.db (the embedded default is sqlite:///rankscope.db) or "
    "postgresql+psycopg://USER:PASSWORD@HOST:PORT/DBNAME, passed with --db or in "
    f"{ENV_DB_URL}."
)


def mask_url(url: str | URL) -> str:
    """The URL with its password replaced by ``***`` (also for URLs that do not parse)."""
    if isinstance(url, URL):
        return url.render_as_string(hide_password=True)
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def _is_memory(database: str | None) -> bool:
    return database in (None, "", ":memory:") or "mode=memory" in (database or "")


def _file_database(database: str | None) -> str | None:
    """The file path a SQLite database name points to; ``None`` for in-memory and ``file:`` URIs."""
    if database is None or _is_memory(database) or database.startswith("file:"):
        return None
    return database


def database_url(url: str | None = None) -> str:
    """The database URL to use: ``url`` if given, else ``$RANKSCOPE_DB_URL``, else the SQLite file
    ``./rankscope.db``.

    ``postgres://`` and ``postgresql://`` mean psycopg 3; a bare path ending in ``.db``, ``.sqlite``
    or ``.sqlite3`` means a SQLite file; relative SQLite paths are made absolute.
    """
    raw = (url if url else os.environ.get(ENV_DB_URL) or "").strip()
    if not raw:
        return f"sqlite:///{Path(DEFAULT_DB_FILE).resolve()}"
    if "://" not in raw:
        if Path(raw).suffix.lower() in _SQLITE_SUFFIXES:
            return f"sqlite:///{Path(raw).expanduser().resolve()}"
        raise DatabaseURLError(f"malformed database URL {mask_url(raw)!r}. {_URL_HINT}")
    try:
        parsed = make_url(raw)
        parsed.port  # noqa: B018 - parsing the port raises on a malformed one
    except (ArgumentError, ValueError) as exc:
        raise DatabaseURLError(
            f"malformed database URL {mask_url(raw)!r} ({exc}). {_URL_HINT}"
        ) from None
    backend, _, driver = parsed.drivername.partition("+")
    if backend in ("postgres", "postgresql"):
        if driver not in ("", "psycopg"):
            raise DatabaseURLError(
                f"unsupported PostgreSQL driver {driver!r} in {mask_url(parsed)!r}: RankScope uses "
                f"psycopg 3, write postgresql+psycopg://…. {_URL_HINT}"
            )
        parsed = parsed.set(drivername="postgresql+psycopg")
    elif backend == "sqlite":
        if driver not in ("", "pysqlite"):
            raise DatabaseURLError(
                f"unsupported SQLite driver {driver!r} in {mask_url(parsed)!r}. {_URL_HINT}"
            )
        database = _file_database(parsed.database)
        if database is not None:
            parsed = parsed.set(database=str(Path(database).expanduser().resolve()))
    else:
        raise DatabaseURLError(
            f"unsupported database {backend!r} in {mask_url(parsed)!r}: RankScope stores "
            f"investigations in SQLite or PostgreSQL. {_URL_HINT}"
        )
    return parsed.render_as_string(hide_password=False)


def _sqlite_engine(url: URL) -> Engine:
    memory = _is_memory(url.database)
    database = _file_database(url.database)
    if database is not None:
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url,
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False},
        poolclass=StaticPool if memory else None,
        json_serializer=dumps_json,
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # pysqlite's own implicit BEGIN is switched off; ``_on_begin`` issues it instead.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
        cursor.execute("PRAGMA foreign_keys = ON")
        if not memory:
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Writers take the lock up front so that concurrent processes queue on the busy timeout
        # instead of failing when a read transaction tries to become a write transaction.
        immediate = conn.get_execution_options().get(WRITE_OPTION, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def _postgres_engine(url: URL) -> Engine:
    return create_engine(
        url,
        connect_args={"connect_timeout": PG_CONNECT_TIMEOUT_S},
        pool_pre_ping=True,
        json_serializer=dumps_json,
    )


def _reason(exc: BaseException, url: URL) -> str:
    orig = getattr(exc, "orig", None) or exc
    lines = [line.strip() for line in str(orig).strip().splitlines() if line.strip()]
    reason = " ".join(lines[:2]).rstrip(" .?!") or type(orig).__name__
    if url.password:
        reason = reason.replace(str(url.password), "***")
    return reason


def create_db_engine(url: str | None = None, *, upgrade: bool = True) -> Engine:
    """An engine for ``database_url(url)``, checked by connecting, migrated to head if ``upgrade``.

    Raises :class:`DatabaseURLError` (password masked) when the database cannot be opened.
    """
    parsed = make_url(database_url(url))
    sqlite = parsed.get_backend_name() == "sqlite"
    try:
        engine = _sqlite_engine(parsed) if sqlite else _postgres_engine(parsed)
    except (NoSuchModuleError, ImportError) as exc:
        raise DatabaseURLError(
            f"cannot use the database {mask_url(parsed)!r}: {exc}. {_URL_HINT}"
        ) from None
    except OSError as exc:
        raise DatabaseURLError(
            f"cannot open the database {mask_url(parsed)!r}: {exc}. Check that the file's folder "
            "can be created and is writable."
        ) from None
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
        if upgrade:
            upgrade_engine(engine)
    except CommandError as exc:
        engine.dispose()
        raise SchemaVersionError(
            f"cannot migrate the database {mask_url(parsed)!r}: {exc}. It was probably written by "
            "a newer RankScope; upgrade RankScope or use another database."
        ) from None
    except (DBAPIError, SQLAlchemyError, OSError) as exc:
        engine.dispose()
        if sqlite:
            advice = "Check that the file's folder exists and is writable."
        else:
            advice = (
                "Check that the PostgreSQL server is running and reachable, that the database "
                "exists and that the user may connect to it; or use the embedded SQLite default."
            )
        raise DatabaseURLError(
            f"cannot open the database {mask_url(parsed)!r}: {_reason(exc, parsed)}. {advice} "
            f"{_URL_HINT}"
        ) from None
    return engine


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL (``None`` for PostgreSQL or an in-memory database)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    database = _file_database(parsed.database)
    return Path(database) if database is not None else None


def refuse_in_memory(url: str | None) -> None:
    """Refuse an in-memory SQLite URL where results must outlive the command."""
    parsed = make_url(database_url(url))
    if parsed.get_backend_name() == "sqlite" and _is_memory(parsed.database):
        raise DatabaseURLError(
            f"{mask_url(parsed)!r} is an in-memory database: everything recorded would vanish "
            "when the command exits. Pass a file, e.g. sqlite:///rankscope.db"
        )


def _refuse_foreign_sqlite(file: Path) -> None:
    """Refuse to open an existing SQLite file that holds tables but none of RankScope's (opening
    it would add RankScope's tables to someone else's database)."""
    import sqlite3

    try:
        conn = sqlite3.connect(f"file:{file}?mode=ro", uri=True)
        try:
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        raise DatabaseURLError(f"{file} is not a RankScope database ({exc})") from None
    if tables and "alembic_version" not in tables and "investigation" not in tables:
        raise DatabaseURLError(
            f"{file} is a SQLite database without RankScope's tables; refusing to add them. "
            f"Pass the right database with --db or {ENV_DB_URL}."
        )


def open_store(
    url: str | None = None,
    *,
    artifact_dir: str | Path | None = None,
    upgrade: bool = True,
    create: bool = True,
) -> Store:
    """Open the evidence store: the database (migrated to head) and its artifact folder.

    ``artifact_dir`` defaults to :func:`default_artifact_root`. With ``create=False`` a missing
    SQLite file is an error instead of a new, empty database; so is an existing SQLite file with
    tables but none of RankScope's.
    """
    resolved = database_url(url)
    file = sqlite_file(resolved)
    if not create and file is not None and not file.exists():
        raise DatabaseURLError(
            f"no RankScope database at {file}: run an investigation first, or pass the right "
            f"database with --db or {ENV_DB_URL}."
        )
    if not create and file is not None:
        _refuse_foreign_sqlite(file)
    engine = create_db_engine(resolved, upgrade=upgrade)
    root = Path(artifact_dir) if artifact_dir is not None else default_artifact_root(resolved)
    return Store(engine, ArtifactStore(root))


def upgrade_database(url: str | None = None, revision: str = "head") -> None:
    """Migrate the database at ``url`` up to ``revision``."""
    engine = create_db_engine(url, upgrade=False)
    try:
        upgrade_engine(engine, revision)
    finally:
        engine.dispose()


def downgrade_database(url: str | None, revision: str) -> None:
    """Migrate the database at ``url`` down to ``revision`` (``"base"``: an empty schema)."""
    engine = create_db_engine(url, upgrade=False)
    try:
        downgrade_engine(engine, revision)
    finally:
        engine.dispose()
