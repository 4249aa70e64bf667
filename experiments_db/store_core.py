"""What every part of :class:`~rankscope.experiments_db.repository.Store` shares: the database
engine, the artifact folder, short read and write sessions, and small helpers over rows.

The parts (``store_*`` modules, one per job) derive from :class:`StoreCore`; ``Store`` combines
them. Every method opens and closes its own short transaction and returns plain data (ids or the
pydantic records of :mod:`rankscope.experiments_db.records`), so callers never hold a session.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Protocol, Self, TypeVar

from pydantic import BaseModel
from sqlalchemy import Select
from sqlalchemy.engine import CursorResult, Engine
from sqlmodel import Session

from rankscope.experiments_db.artifacts import ArtifactStore
from rankscope.experiments_db.errors import NotFoundError
from rankscope.experiments_db.migrate import writer
from rankscope.experiments_db.models import StoreBase

RowT = TypeVar("RowT", bound=StoreBase)
RecordT = TypeVar("RecordT", bound=BaseModel)


def choice(value: str, choices: tuple[str, ...], what: str) -> str:
    """``value`` if it is one of ``choices``, else :class:`ValueError` naming ``what``."""
    if value not in choices:
        raise ValueError(f"{what} must be one of {', '.join(choices)}; got {value!r}")
    return value


def inserted_id(result: CursorResult[Any]) -> int:
    """The primary key of the row a single-row ``INSERT`` wrote."""
    key = result.inserted_primary_key
    if key is None:
        raise RuntimeError("the INSERT returned no primary key")
    return int(key[0])


def duration(started: datetime | None, finished: datetime) -> float | None:
    """Seconds from ``started`` to ``finished`` (never negative), or None without a start."""
    return None if started is None else max((finished - started).total_seconds(), 0.0)


class _Row(Protocol):
    id: int | None


def add_row(session: Session, row: _Row) -> int:
    """Insert ``row`` (flushing the session) and return the id the database gave it."""
    session.add(row)
    session.flush()
    assert row.id is not None
    return row.id


def get_row(session: Session, model: type[RowT], row_id: int, *, for_update: bool = False) -> RowT:
    """The row of ``model`` with that id, or :class:`NotFoundError`."""
    row = session.get(model, row_id, with_for_update=for_update or None)
    if row is None:
        raise NotFoundError(f"{model.__table__.name.replace('_', ' ')} {row_id} does not exist")
    return row


def records(session: Session, stmt: Select[Any], record: type[RecordT]) -> list[RecordT]:
    """The rows ``stmt`` selects, each validated as ``record``."""
    return [record.model_validate(dict(r)) for r in session.execute(stmt).mappings()]


class StoreCore:
    """The evidence store: a database engine plus the artifact folder its rows point into."""

    def __init__(self, engine: Engine, artifacts: ArtifactStore) -> None:
        self.engine = engine
        self.artifacts = artifacts
        self._writer = writer(engine)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r}, artifacts={str(self.artifacts.root)!r})"

    @property
    def url(self) -> str:
        """The database URL with the password masked."""
        return self.engine.url.render_as_string(hide_password=True)

    @property
    def dialect(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self.engine.dialect.name

    def close(self) -> None:
        """Close the pooled connections (the store can be reopened with ``open_store``)."""
        self.engine.dispose()

    @contextmanager
    def _write(self) -> Iterator[Session]:
        """A session on the writer engine inside one transaction, committed on exit."""
        with Session(self._writer, expire_on_commit=False) as session, session.begin():
            yield session

    @contextmanager
    def _read(self) -> Iterator[Session]:
        """A session for queries on the engine (no write lock)."""
        with Session(self.engine, expire_on_commit=False) as session:
            yield session
