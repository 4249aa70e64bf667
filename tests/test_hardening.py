"""Issue 16 (hardening): hostile inputs and careless use must not run code, orphan runs or misread."""

from __future__ import annotations

import io
import sqlite3
from pathlib import Path

import ormsgpack
import pytest
import torch
from rich.console import Console

from rankscope.agent.checkpoints import UnsafeCheckpointError
from rankscope.agent.runner import resume
from rankscope.experiments_db.engine import open_store
from tests.agent_support import ScriptedPlanner, behaviour, null_bert, run

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def null_model(tmp_path_factory) -> Path:
    return null_bert(tmp_path_factory.mktemp("null"))


def _interrupted_investigation(tmp: Path, model: Path) -> str:
    """An investigation interrupted after one experiment; returns its database URL."""
    planner = ScriptedPlanner([behaviour(), RuntimeError("planner exploded")])
    with pytest.raises(RuntimeError):
        run(tmp, model, planner)
    return f"sqlite:///{tmp / 't.db'}"


def _tamper_latest_checkpoint(db_file: Path, command: str) -> None:
    """Rewrite the latest checkpoint row so that it asks msgpack to call ``os.system(command)``."""
    conn = sqlite3.connect(db_file)
    try:
        row = conn.execute(
            "SELECT checkpoint_id, type, checkpoint FROM checkpoints "
            "WHERE thread_id = '1' ORDER BY checkpoint_id DESC LIMIT 1"
        ).fetchone()
        assert row is not None and row[1] == "msgpack"
        data = ormsgpack.unpackb(row[2], option=ormsgpack.OPT_NON_STR_KEYS)
        evil = ormsgpack.Ext(0, ormsgpack.packb(["os", "system", command]))
        data["channel_values"]["question"] = evil
        conn.execute(
            "UPDATE checkpoints SET checkpoint = ? WHERE thread_id = '1' AND checkpoint_id = ?",
            (ormsgpack.packb(data), row[0]),
        )
        conn.commit()
    finally:
        conn.close()


def test_tampered_checkpoint_is_refused_and_runs_nothing(tmp_path, null_model):
    url = _interrupted_investigation(tmp_path, null_model)
    marker = tmp_path / "pwned"
    _tamper_latest_checkpoint(tmp_path / "t.db", f"touch {marker}")
    again = ScriptedPlanner([behaviour(threshold=0.1)])
    with pytest.raises(UnsafeCheckpointError, match="os.system"):
        resume(
            1,
            db=url,
            report_dir=tmp_path / "reports",
            console=Console(file=io.StringIO()),
            quiet=True,
            planner_factory=lambda: again,
        )
    assert not marker.exists()
    assert again.ledgers == []
    with open_store(url, create=False) as store:
        assert store.get_investigation(1).status == "interrupted"
