"""Issue 25, items 9, 13 and 18 (store side): faults of the database under a run, a review or an
import, on SQLite and PostgreSQL.

* A PostgreSQL connection dropped mid-run is replaced (the checkpointer's pool checks each
  connection before use); a database that cannot be reached stops the run with one line that
  says to run ``rankscope resume ID`` (never a raw ``psycopg.OperationalError``), and the resume
  finishes it.
* A NUL byte in a review is refused by the review rules (PostgreSQL cannot store it: a 500 before).
* A full disk says the database is intact (it is), not "restore from a backup".
* A failed import leaves no artifact files behind.
"""

from __future__ import annotations

import io
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import torch
import uvicorn
from rich.console import Console
from sqlalchemy import event
from sqlalchemy.engine import make_url

from rankscope.agent.planners.base import Ledger
from rankscope.agent.runner import investigate, resume
from rankscope.agent.settings import InvestigationSettings
from rankscope.agent.state import Budget
from rankscope.experiments_db import Store, export_investigation, import_bundle
from rankscope.experiments_db.errors import ReviewError, StoreError
from tests.agent_support import TINY_POLICY, ScriptedPlanner, behaviour, null_bert
from tests.test_db_support import PG_ENV, backend_params, fresh_database, open_test_store, populate

torch.set_num_threads(1)

PG_ONLY = [p for p in backend_params() if p.id == "postgresql"]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    return null_bert(tmp_path_factory.mktemp("faults") / "null")


def _libpq(url: str, database: str | None = None) -> str:
    parsed = make_url(url).set(drivername="postgresql")
    if database is not None:
        parsed = parsed.set(database=database)
    return parsed.render_as_string(hide_password=False)


def _admin(url: str) -> str:
    """A libpq URL of the server's admin database (the one ``RANKSCOPE_TEST_PG_URL`` names)."""
    return _libpq(url, make_url(os.environ[PG_ENV]).database)


def _terminate_others(url: str) -> int:
    """``pg_terminate_backend`` every connection to the run's database."""
    name = make_url(url).database
    with psycopg.connect(_admin(url), autocommit=True) as c:
        row = c.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        ).fetchone()
    return int(row[0]) if row else 0


def _allow_connections(url: str, allowed: bool) -> None:
    with psycopg.connect(_admin(url), autocommit=True) as c:
        c.execute(
            f'ALTER DATABASE "{make_url(url).database}" '
            f"ALLOW_CONNECTIONS {'true' if allowed else 'false'}"
        )


def _investigate(url: str, model: Path, tmp: Path, script: list[Any]) -> Any:
    return investigate(
        "a dropped connection",
        InvestigationSettings(
            model_arg=str(model), budget=Budget(max_steps=4, max_tool_calls=4), policy=TINY_POLICY
        ),
        db=url,
        report_dir=tmp / "reports",
        console=Console(file=io.StringIO()),
        quiet=True,
        planner_factory=lambda: ScriptedPlanner(script),
    )


# --- item 9: a dropped PostgreSQL connection ----------------------------------------------------


@pytest.mark.postgres
@pytest.mark.parametrize("backend", PG_ONLY)
def test_a_terminated_backend_mid_run_is_replaced_and_the_run_finishes(
    backend: str, model: Path, tmp_path: Path
) -> None:
    killed: list[int] = []

    def kill_then_test(ledger: Ledger) -> Any:
        killed.append(_terminate_others(url))
        return behaviour()

    with fresh_database(backend, tmp_path) as url:
        result = _investigate(url, model, tmp_path, [behaviour(), kill_then_test])
        assert killed and killed[0] >= 1  # the checkpointer's connection was among them
        assert result.status == "finished"
        with open_test_store(url, tmp_path) as store:
            tree = store.investigation_tree(result.investigation_id)
            assert tree.hypotheses and all(h.latest_verdict for h in tree.hypotheses)
            assert store.get_investigation(result.investigation_id).report_path


@pytest.mark.postgres
@pytest.mark.parametrize("backend", PG_ONLY)
def test_an_unreachable_database_stops_the_run_with_one_line_saying_resume(
    backend: str,
    model: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from rankscope.agent.cli import explain_error
    from rankscope.agent.commands.output import resume_hint, stopped

    monkeypatch.setattr("rankscope.agent.checkpoints.PG_POOL_TIMEOUT_S", 2.0, raising=False)

    def cut_off(ledger: Ledger) -> Any:
        _allow_connections(url, False)
        _terminate_others(url)
        return behaviour()

    with fresh_database(backend, tmp_path) as url:
        try:
            with pytest.raises(psycopg.OperationalError) as caught:
                _investigate(url, model, tmp_path, [behaviour(), cut_off])
        finally:
            _allow_connections(url, True)
        err = caught.value
        assert isinstance(err, StoreError), f"{type(err).__module__}.{type(err).__name__}: {err}"
        message = str(err)
        assert "\n" not in message and "rankscope resume 1" in message
        assert explain_error(err) == message
        stopped(err, resume_hint(1))
        printed = capsys.readouterr().err
        assert printed.count("rankscope resume 1") == 1 and "Traceback" not in printed

        result = resume(
            1,
            db=url,
            report_dir=tmp_path / "reports",
            console=Console(file=io.StringIO()),
            quiet=True,
            planner_factory=lambda: ScriptedPlanner([]),
        )
        assert result.status == "finished"


# --- item 13: a NUL byte in a review ---------------------------------------------------------


@pytest.fixture(params=backend_params())
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Store, dict[str, int]]]:
    with fresh_database(request.param, tmp_path) as url, open_test_store(url, tmp_path) as opened:
        yield opened, populate(opened, tmp_path)


def test_a_nul_byte_in_a_review_is_refused_by_the_review_rules(
    store: tuple[Store, dict[str, int]],
) -> None:
    opened, ids = store
    hyp = ids["hypothesis"]
    before = len(opened.list_reviews(hypothesis_id=hyp))
    for reviewer, comment in (("alice", "wrong\x00verdict"), ("al\x00ice", "wrong verdict")):
        with pytest.raises(ReviewError, match="NUL character"):
            opened.review_hypothesis(hyp, reviewer, "dispute", comment)
    assert len(opened.list_reviews(hypothesis_id=hyp)) == before
    assert opened.review_hypothesis(hyp, "alice", "dispute", "wrong verdict") > 0


def test_a_nul_byte_posted_to_the_workspace_is_a_400(store: tuple[Store, dict[str, int]]) -> None:
    import re
    import socket

    from rankscope.agent.web import create_app

    opened, ids = store
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    server = uvicorn.Server(
        uvicorn.Config(create_app(opened), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    assert server.started
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            page = client.get(f"/investigations/{ids['investigation']}")
            token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
            assert token, page.text[:500]
            posted = client.post(
                f"/hypotheses/{ids['hypothesis']}/review",
                data={
                    "reviewer": "alice",
                    "decision": "dispute",
                    "comment": "wrong\x00verdict",
                    "csrf_token": token.group(1),
                },
                headers={"Origin": f"http://127.0.0.1:{port}"},
            )
        assert posted.status_code == 400, posted.text[:500]
        assert "NUL character" in posted.text
    finally:
        server.should_exit = True
        thread.join(10)


# --- item 18: a full disk; a failed import -------------------------------------------------------


def test_a_full_disk_says_the_database_is_intact(tmp_path: Path) -> None:
    from rankscope.agent.cli import explain_error

    url = f"sqlite:///{tmp_path / 'full.db'}"
    with open_test_store(url, tmp_path) as opened:
        ids = populate(opened, tmp_path)
        with opened.engine.connect() as conn:
            pages = int(conn.exec_driver_sql("PRAGMA page_count").scalar_one())
        opened.engine.dispose()

        @event.listens_for(opened.engine, "connect")
        def _no_room(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.execute(f"PRAGMA max_page_count = {pages}")

        with pytest.raises(Exception) as caught:
            opened.review_hypothesis(ids["hypothesis"], "alice", "dispute", "x" * 400_000)
        assert "full" in str(caught.value)
        message = explain_error(caught.value)
        assert message is not None
        assert "backup" not in message and "intact" in message and "free space" in message
    conn = sqlite3.connect(tmp_path / "full.db")
    try:  # what the message says is true
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert conn.execute("SELECT count(*) FROM review").fetchone() == (1,)
    finally:
        conn.close()

    ioerr = explain_error(sqlite3.OperationalError("disk I/O error"))
    assert ioerr is not None and "backup" not in ioerr
    damaged = explain_error(sqlite3.DatabaseError("database disk image is malformed"))
    assert damaged is not None and "backup" in damaged
    nospace = explain_error(OSError(28, "No space left on device"))
    assert nospace is not None and "intact" in nospace


_FAIL_SQLITE = (
    "CREATE TRIGGER refuse_evidence BEFORE INSERT ON evidence "
    "BEGIN SELECT RAISE(ABORT, 'simulated write failure'); END"
)
_FAIL_PG = (
    "CREATE FUNCTION refuse_evidence() RETURNS trigger LANGUAGE plpgsql AS "
    "$$ BEGIN RAISE EXCEPTION 'simulated write failure'; END $$",
    "CREATE TRIGGER refuse_evidence BEFORE INSERT ON evidence "
    "FOR EACH ROW EXECUTE FUNCTION refuse_evidence()",
)


@pytest.mark.parametrize("backend", backend_params())
def test_a_failed_import_leaves_no_artifact_files(backend: str, tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    with open_test_store(f"sqlite:///{source / 's.db'}", source) as opened:
        ids = populate(opened, source)
        bundle = export_investigation(opened, ids["investigation"], tmp_path / "b.zip")
    with fresh_database(backend, tmp_path) as url:
        target = tmp_path / "target"
        with open_test_store(url, target) as opened:
            with opened.engine.begin() as conn:
                for statement in (_FAIL_SQLITE,) if backend == "sqlite" else _FAIL_PG:
                    conn.exec_driver_sql(statement)
            with pytest.raises(Exception, match="simulated write failure"):
                import_bundle(opened, bundle)
            assert opened.list_investigations() == []
            left = [p for p in (target / "artifacts").rglob("*") if p.is_file()]
            assert left == [], left
