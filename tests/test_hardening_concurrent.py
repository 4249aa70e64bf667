"""Issue 16, item 4: investigations started together on a fresh database all run (the checkpointer's
table setup is serialised with the store's migrations), and a checkpointer that cannot be opened
leaves the investigation ``interrupted``, never ``running``."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest
import torch

from rankscope.agent.checkpoints import open_checkpointer, postgres_conninfo
from rankscope.experiments_db.engine import open_store
from rankscope.experiments_db.migrate import PG_MIGRATION_LOCK
from tests.agent_support import ScriptedPlanner, behaviour, null_bert, run
from tests.test_db_support import backend_params, fresh_database

REPO = Path(__file__).resolve().parents[1]
CHILD = """
import io, sys
from pathlib import Path
from rich.console import Console
from rankscope.agent.runner import investigate
from rankscope.agent.settings import InvestigationSettings
from rankscope.agent.state import Budget
from tests.agent_support import TINY_POLICY, ScriptedPlanner, behaviour

url, model, reports = sys.argv[1], sys.argv[2], Path(sys.argv[3])
investigate(
    "concurrent start",
    InvestigationSettings(
        model_arg=model, budget=Budget(max_steps=4, max_tool_calls=4), policy=TINY_POLICY
    ),
    db=url,
    report_dir=reports,
    console=Console(file=io.StringIO()),
    quiet=True,
    planner_factory=lambda: ScriptedPlanner([behaviour()]),
)
"""


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    return null_bert(tmp_path_factory.mktemp("concurrent") / "null")


@pytest.mark.slow
@pytest.mark.parametrize("backend", backend_params())
def test_three_investigations_started_together_on_a_fresh_database_all_finish(
    backend: str, model: Path, tmp_path: Path
) -> None:
    with fresh_database(backend, tmp_path) as url:
        children = [
            subprocess.Popen(
                [sys.executable, "-c", CHILD, url, str(model), str(tmp_path / f"r{i}")],
                cwd=REPO,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            for i in range(3)
        ]
        errors = [child.communicate(timeout=600)[1].decode()[-2000:] for child in children]
        assert [child.returncode for child in children] == [0, 0, 0], errors
        with open_store(url) as store:
            statuses = [inv.status for inv in store.list_investigations()]
        assert statuses == ["finished"] * 3


@pytest.mark.postgres
@pytest.mark.parametrize("backend", [p for p in backend_params() if p.id == "postgresql"])
def test_checkpointer_setup_waits_for_the_migration_lock(backend: str, tmp_path: Path) -> None:
    with fresh_database(backend, tmp_path) as url:
        entered = threading.Event()

        def open_it() -> None:
            with open_checkpointer(url):
                entered.set()

        with psycopg.connect(postgres_conninfo(url), autocommit=True) as holder:
            holder.execute("SELECT pg_advisory_lock(%s)", (PG_MIGRATION_LOCK,))
            thread = threading.Thread(target=open_it, daemon=True)
            thread.start()
            time.sleep(1.5)
            assert not entered.is_set(), "the checkpointer set its tables up under a held lock"
            holder.execute("SELECT pg_advisory_unlock(%s)", (PG_MIGRATION_LOCK,))
            assert entered.wait(30)
        thread.join(10)

    failures: list[BaseException] = []

    def setup_once(target: str) -> None:
        try:
            with open_checkpointer(target):
                pass
        except BaseException as exc:
            failures.append(exc)

    for round_ in range(3):
        with fresh_database(backend, tmp_path / f"round{round_}") as fresh:
            threads = [threading.Thread(target=setup_once, args=(fresh,)) for _ in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
    assert failures == []


def test_a_checkpointer_that_cannot_open_leaves_the_investigation_interrupted(
    model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(db_url: str) -> None:
        raise psycopg.OperationalError("checkpoint tables unavailable")

    monkeypatch.setattr("rankscope.agent.graph.open_checkpointer", broken)
    with pytest.raises(psycopg.OperationalError, match="checkpoint tables unavailable"):
        run(tmp_path, model, ScriptedPlanner([behaviour()]))
    with open_store(f"sqlite:///{tmp_path / 't.db'}") as store:
        (inv,) = store.list_investigations()
    assert inv.status == "interrupted"
