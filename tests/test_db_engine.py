"""Database URLs and engines: defaults, SQLite pragmas, clear errors for bad URLs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from sqlalchemy import text

from rankscope.experiments_db import DatabaseURLError, create_db_engine, database_url, open_store
from rankscope.experiments_db.artifacts import default_artifact_root
from tests.test_db_support import PG_ENV, fresh_database


def test_database_url_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RANKSCOPE_DB_URL", raising=False)
    assert database_url() == f"sqlite:///{tmp_path / 'rankscope.db'}"
    monkeypatch.setenv("RANKSCOPE_DB_URL", "postgres://u:pw@db.example:5433/rs")
    assert database_url() == "postgresql+psycopg://u:pw@db.example:5433/rs"
    assert database_url("runs/x.sqlite") == f"sqlite:///{tmp_path / 'runs' / 'x.sqlite'}"
    assert database_url("sqlite:///rel.db") == f"sqlite:///{tmp_path / 'rel.db'}"
    assert database_url("postgresql://h/db") == "postgresql+psycopg://h/db"


def test_default_artifact_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RANKSCOPE_ARTIFACT_DIR", raising=False)
    assert (
        default_artifact_root(f"sqlite:///{tmp_path}/a/run.db") == tmp_path / "a" / "run_artifacts"
    )
    assert default_artifact_root("postgresql+psycopg://h/db") == tmp_path / "rankscope_artifacts"
    monkeypatch.setenv("RANKSCOPE_ARTIFACT_DIR", str(tmp_path / "elsewhere"))
    assert default_artifact_root(f"sqlite:///{tmp_path}/run.db") == tmp_path / "elsewhere"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mysql://user:hunter2@localhost/db", "unsupported database 'mysql'"),
        ("nosuchdialect://x/y", "unsupported database 'nosuchdialect'"),
        ("postgresql+psycopg2://user:hunter2@localhost/db", "unsupported PostgreSQL driver"),
        ("not a url", "malformed database URL 'not a url'"),
        ("postgresql+psycopg://user:hunter2@localhost:notaport/db", "malformed database URL"),
    ],
)
def test_bad_url_is_a_clear_error(url: str, expected: str) -> None:
    with pytest.raises(DatabaseURLError) as info:
        create_db_engine(url)
    message = str(info.value)
    assert expected in message
    assert "hunter2" not in message
    assert "sqlite:///" in message and "postgresql+psycopg://" in message  # says what to do


def test_unreachable_server_is_a_clear_error() -> None:
    url = "postgresql+psycopg://rankscope:hunter2@127.0.0.1:1/rs"
    with pytest.raises(DatabaseURLError) as info:
        create_db_engine(url)
    message = str(info.value)
    assert "cannot open the database 'postgresql+psycopg://rankscope:***@127.0.0.1:1/rs'" in message
    assert "hunter2" not in message
    assert "server is running" in message


@pytest.mark.postgres
@pytest.mark.skipif(not os.environ.get(PG_ENV), reason=f"{PG_ENV} is not set")
def test_missing_postgres_database_is_a_clear_error(tmp_path: Path) -> None:
    with fresh_database("postgresql", tmp_path) as url:
        missing = url.rsplit("/", 1)[0] + "/rs_no_such_database"
        with pytest.raises(DatabaseURLError, match="rs_no_such_database"):
            create_db_engine(missing)


def test_sqlite_unwritable_location_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(DatabaseURLError, match="cannot open the database"):
        create_db_engine(f"sqlite:///{blocker}/sub/x.db")


def test_open_store_without_create_needs_the_file(tmp_path: Path) -> None:
    with pytest.raises(DatabaseURLError, match="no RankScope database at"):
        open_store(str(tmp_path / "missing.db"), create=False)
    assert not (tmp_path / "missing.db").exists()


def test_sqlite_pragmas_on_every_connection(tmp_path: Path) -> None:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'p.db'}")
    try:
        for _ in range(2):
            with engine.connect() as conn:
                assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
                assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
                assert conn.execute(text("PRAGMA busy_timeout")).scalar() == 30000
            engine.dispose()
    finally:
        engine.dispose()


def test_in_memory_sqlite(tmp_path: Path) -> None:
    with open_store("sqlite://", artifact_dir=tmp_path) as store:
        inv = store.create_investigation("q", "m", "d", "protocol")
        assert store.get_investigation(inv).question == "q"
