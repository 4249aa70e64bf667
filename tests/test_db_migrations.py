"""Alembic migrations: up from empty, down to base, up again; the schema matches the models."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.exc import DBAPIError

from rankscope.experiments_db import create_db_engine, downgrade_database, upgrade_database
from rankscope.experiments_db.migrate import current_revision, head_revision, schema_differences
from rankscope.experiments_db.models import TABLE_NAMES
from tests.test_db_support import (
    TOOL_CALL,
    backend_params,
    criterion,
    fresh_database,
    open_test_store,
)


@pytest.fixture(params=backend_params())
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with fresh_database(request.param, tmp_path) as url:
        yield url


def _tables(url: str) -> set[str]:
    engine = create_db_engine(url, upgrade=False)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_upgrade_downgrade_upgrade(db_url: str) -> None:
    assert not set(TABLE_NAMES) & _tables(db_url)
    upgrade_database(db_url)
    assert set(TABLE_NAMES) <= _tables(db_url)
    downgrade_database(db_url, "base")
    assert _tables(db_url) - {"alembic_version"} == set()
    upgrade_database(db_url)
    engine = create_db_engine(db_url, upgrade=False)
    try:
        assert current_revision(engine) == head_revision()
        assert schema_differences(engine) == []
    finally:
        engine.dispose()


def test_migrated_schema_matches_models_and_ignores_foreign_tables(db_url: str) -> None:
    engine = create_db_engine(db_url)  # opening migrates to head
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE checkpoints (thread_id VARCHAR PRIMARY KEY)"))
        assert current_revision(engine) == head_revision()
        assert schema_differences(engine) == []
        create_db_engine(db_url).dispose()  # opening again is a no-op
    finally:
        engine.dispose()


def test_trigger_refuses_criterion_change_after_start(db_url: str, tmp_path: Path) -> None:
    with open_test_store(db_url, tmp_path) as store:
        inv = store.create_investigation("q", "m", "d", "protocol")
        hyp = store.preregister_hypothesis(inv, "h", criterion(), **TOOL_CALL)
        with store.engine.begin() as conn:  # before any experiment: the database allows it
            conn.execute(text("UPDATE hypothesis SET threshold = 0.3 WHERE id = :id"), {"id": hyp})
        store.start_experiment(inv, "activation_patching", {}, hypothesis_id=hyp)
        for statement in (
            "UPDATE hypothesis SET threshold = 0.9 WHERE id = :id",
            "UPDATE hypothesis SET metric = 'other' WHERE id = :id",
            "UPDATE hypothesis SET locked = false WHERE id = :id",
            "UPDATE hypothesis SET components = '[\"L5.H9\"]' WHERE id = :id",
        ):
            with (
                pytest.raises(DBAPIError, match="criterion of hypothesis"),
                store.engine.begin() as conn,
            ):
                conn.execute(text(statement), {"id": hyp})
        with store.engine.begin() as conn:  # other columns stay editable
            conn.execute(
                text("UPDATE hypothesis SET rationale = 'more' WHERE id = :id"), {"id": hyp}
            )
        assert store.get_hypothesis(hyp).criterion.threshold == 0.3
