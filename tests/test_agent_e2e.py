"""End to end: the protocol planner on the real MiniLM and the built-in collection, killed with
SIGKILL mid-way, resumed, reported and audited (then tampered with, so that the audit fails).
Also a smoke run against PostgreSQL when ``RANKSCOPE_TEST_PG_URL`` is set."""

from __future__ import annotations

import io
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from rankscope.agent.cli import app
from rankscope.agent.runner import resume
from rankscope.experiments_db.engine import open_store
from tests.agent_support import ScriptedPlanner, behaviour, null_bert

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]
QUESTION = (
    "Does all-MiniLM-L6-v2 reward repeated query terms (TFC1), and which components compute it?"
)
KILL_AFTER = 3


def finished_experiments(db: Path) -> list[tuple[int, int, str]]:
    if not db.exists():
        return []
    try:
        with sqlite3.connect(db, timeout=30) as conn:
            rows = conn.execute(
                "SELECT id, hypothesis_id, json_extract(args, '$.split') FROM experiment "
                "WHERE status = 'finished' ORDER BY id"
            ).fetchall()
    except sqlite3.OperationalError:
        return []
    return [tuple(r) for r in rows]


def self_contained(html: str) -> bool:
    sources = re.findall(r'(?:src|href)="([^"]*)"', html)
    return all(s.startswith("data:") or s.startswith("#") for s in sources)


@pytest.mark.slow
@pytest.mark.timeout(2400)  # the README investigation with its circuit steps, then a full audit
def test_protocol_investigation_killed_resumed_reported_and_audited(tmp_path):
    db = tmp_path / "rankscope.db"
    url = f"sqlite:///{db}"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("OPENAI_BASE_URL", None)
    env.pop("OPENAI_API_KEY", None)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rankscope.agent.cli",
            "investigate",
            QUESTION,
            "--db",
            url,
            "--report-dir",
            str(tmp_path / "reports"),
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 400
    while len(finished_experiments(db)) < KILL_AFTER:
        assert proc.poll() is None, proc.stdout.read().decode()
        assert time.monotonic() < deadline, "the investigation did not reach the kill point"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    output = proc.stdout.read().decode()
    assert output.lstrip().startswith("Investigation 1")
    assert "planner: protocol" in output
    before = finished_experiments(db)
    assert len(before) >= KILL_AFTER

    result = resume(1, db=url, report_dir=tmp_path / "reports", console=Console(file=io.StringIO()))
    assert result.status == "finished"
    after = finished_experiments(db)
    assert after[: len(before)] == before, "a recorded experiment was lost or changed"
    per_split = [(h, s) for _, h, s in after]
    assert len(per_split) == len(set(per_split)), "an experiment ran twice"

    with open_store(url) as store:
        tree = store.investigation_tree(1)
    statuses = {h.text.split(":")[0]: h.verdicts[-1].status for h in tree.hypotheses if h.verdicts}
    assert statuses["Behaviour"] == "supported"
    rank = next(h for h in tree.hypotheses if h.text.startswith("Rank:"))
    assert rank.exploratory and not rank.verdicts  # a ranking claims nothing: no verdict
    assert any(h.text.startswith("Circuit:") for h in tree.hypotheses)
    assert all(h.verdicts for h in tree.hypotheses if not h.exploratory)

    md = Path(result.report_path)
    html = (md.parent / "report.html").read_text()
    assert md.exists() and "## What stays open" in md.read_text()
    assert self_contained(html) and "data:image/png;base64," in html
    cli = CliRunner()
    out_html = tmp_path / "out" / "r.html"
    done = cli.invoke(
        app,
        [
            "report",
            "1",
            "--db",
            url,
            "--html",
            str(out_html),
            "--report-dir",
            str(tmp_path / "reports2"),
        ],
    )
    assert done.exit_code == 0, done.output
    assert self_contained(out_html.read_text())

    audit = cli.invoke(app, ["audit", "1", "--db", url])
    assert audit.exit_code == 0, audit.output
    assert "audit passed" in audit.output

    first = tree.hypotheses[0].experiments[0]
    ev = first.evidence[0]
    with sqlite3.connect(db) as conn:
        conn.execute(
            "UPDATE evidence SET metrics = json_set(metrics, '$.mean_delta', 9.5) WHERE id = ?",
            (ev.id,),
        )
    tampered = cli.invoke(app, ["audit", "1", "--db", url, "--experiment", str(first.id)])
    assert tampered.exit_code == 1 and "DRIFT" in tampered.output
    with sqlite3.connect(db) as conn:
        conn.execute(
            "UPDATE evidence SET metrics = json_set(metrics, '$.mean_delta', ?) WHERE id = ?",
            (ev.metrics["mean_delta"], ev.id),
        )
    art = ev.artifacts[0]
    with open_store(url) as store:
        path = store.artifacts.path(art.path)
    path.chmod(0o644)
    path.write_bytes(path.read_bytes() + b"tampered")
    broken = cli.invoke(app, ["audit", "1", "--db", url, "--no-rerun"])
    assert broken.exit_code == 1 and "corrupted" in broken.output


def test_postgres_smoke(tmp_path, tmp_path_factory):
    pg = os.environ.get("RANKSCOPE_TEST_PG_URL")
    if not pg:
        pytest.skip("RANKSCOPE_TEST_PG_URL is not set")
    model = null_bert(tmp_path_factory.mktemp("null-pg"))
    from rankscope.agent.runner import investigate
    from rankscope.agent.settings import InvestigationSettings

    planner = ScriptedPlanner([behaviour(), RuntimeError("stop here")])
    with pytest.raises(RuntimeError):
        investigate(
            "postgres smoke",
            InvestigationSettings(model_arg=str(model)),
            db=pg,
            report_dir=tmp_path / "reports",
            console=Console(file=io.StringIO()),
            quiet=True,
            planner_factory=lambda: planner,
        )
    with open_store(pg) as store:
        inv_id = store.list_investigations(limit=1)[0].id
        assert store.get_investigation(inv_id).status == "interrupted"
    result = resume(
        inv_id,
        db=pg,
        report_dir=tmp_path / "reports",
        console=Console(file=io.StringIO()),
        quiet=True,
        planner_factory=lambda: ScriptedPlanner([]),
    )
    assert result.status == "finished"
    with open_store(pg) as store:
        tree = store.investigation_tree(inv_id)
        assert len(tree.hypotheses) == 1 and tree.hypotheses[0].verdicts
