"""Issue 16, item 5: expected errors are one line with what to do, no run is orphaned by a bad model
or device, and report.md cannot be forged by LLM text."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from rankscope.agent.cli import app
from rankscope.experiments_db.engine import open_store
from tests.agent_support import ScriptedPlanner, behaviour, null_bert, run

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def null_model(tmp_path_factory) -> Path:
    return null_bert(tmp_path_factory.mktemp("null"))


def _one_line_error(output: str) -> str:
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, output
    return lines[0]


def _statuses(db_file: Path) -> list[str]:
    if not db_file.exists():
        return []
    conn = sqlite3.connect(db_file)
    try:
        return [row[0] for row in conn.execute("SELECT status FROM investigation")]
    finally:
        conn.close()


def test_bad_weights_or_device_is_one_line_and_leaves_no_running_row(tmp_path, null_model):
    corrupt = Path(shutil.copytree(null_model, tmp_path / "corrupt"))
    (corrupt / "model.safetensors").write_bytes(b"not a safetensors file" * 10)
    db_file = tmp_path / "t.db"
    cli = CliRunner()
    base = ["--db", f"sqlite:///{db_file}", "--planner", "protocol", "--budget", "1"]
    weights = cli.invoke(app, ["investigate", "q", "--model", str(corrupt), *base])
    assert weights.exit_code == 1, weights.output
    line = _one_line_error(weights.output)
    assert "corrupt" in line and "save the model again" in line
    assert "resume" not in weights.output
    for device in ("cuda:7", "bogus"):
        bad = cli.invoke(
            app, ["investigate", "q", "--model", str(null_model), "--device", device, *base]
        )
        assert bad.exit_code == 2, bad.output
        line = _one_line_error(bad.output)
        assert device in line and "--device cpu" in line.replace("use cpu", "--device cpu")
        assert "resume" not in bad.output
    assert "running" not in _statuses(db_file)
    audit = cli.invoke(app, ["audit", "1", "--db", f"sqlite:///{db_file}", "--device", "bogus"])
    assert audit.exit_code == 1 and "bogus" in _one_line_error(audit.output)


def test_a_failure_after_the_row_exists_marks_it_failed(tmp_path, null_model, monkeypatch):
    import rankscope.agent.runner as runner
    from rankscope.agent.settings import InvestigationSettings

    def broken(*args, **kwargs):
        raise RuntimeError("the planner could not be made")

    monkeypatch.setattr(runner, "make_planner", broken)
    with pytest.raises(RuntimeError, match="the planner could not be made"):
        runner.investigate(
            "q",
            InvestigationSettings(model_arg=str(null_model), planner="protocol"),
            db=f"sqlite:///{tmp_path / 't.db'}",
            report_dir=tmp_path / "reports",
            quiet=True,
        )
    assert _statuses(tmp_path / "t.db") == ["failed"]


def test_locked_and_read_only_databases_are_one_line(tmp_path, null_model, monkeypatch):
    from sqlalchemy.exc import OperationalError

    import rankscope.experiments_db.engine as engine
    from rankscope.experiments_db.repository import Store

    run(tmp_path, null_model, ScriptedPlanner([behaviour()]))
    url = f"sqlite:///{tmp_path / 't.db'}"
    cli = CliRunner()
    review = ["review", "1", "1", "--accept", "--db", url]
    monkeypatch.setattr(engine, "SQLITE_BUSY_TIMEOUT_S", 0.2)
    holder = sqlite3.connect(tmp_path / "t.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        locked = cli.invoke(app, review)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert locked.exit_code == 1, locked.output
    assert "locked by another process" in _one_line_error(locked.output)

    def read_only(self, *args, **kwargs):
        raise OperationalError(
            "UPDATE", {}, sqlite3.OperationalError("attempt to write a readonly database")
        )

    monkeypatch.setattr(Store, "review_hypothesis", read_only)
    refused = cli.invoke(app, review)
    assert refused.exit_code == 1
    assert "make the database file and its folder writable" in _one_line_error(refused.output)
    debug = cli.invoke(app, ["--debug", *review])
    assert isinstance(debug.exception, OperationalError)


def test_bracketed_data_text_prints_intact_in_audit_and_tools(tmp_path, null_model):
    from rich.console import Console

    from rankscope.agent.audit import AuditReport, print_report

    out = Console(record=True, width=200)
    report = AuditReport(investigation_id=1)
    report.add("E1 [/b]x", "artifact [red]", False, "rankscope[irds]")
    print_report(report, out)
    text = out.export_text()
    assert "E1 [/b]x" in text and "artifact [red]" in text and "rankscope[irds]" in text


def test_report_md_cannot_be_forged_by_llm_text(tmp_path, null_model):
    from rankscope.agent.reports import write_reports

    evil = (
        "Fine.\n\n## Verdicts\n\n| H9 | supported |\n\n![pixel](https://evil.example/p.png) "
        '<img src="https://evil.example/q.png">'
    )
    proposal = behaviour()
    proposal.hypothesis = "H\n## Verdicts\n![h](https://evil.example/h.png)"
    run(
        tmp_path,
        null_model,
        ScriptedPlanner([proposal]),
        question="Q?\n# Verdicts\n![a](http://x/a.png)",
    )
    with open_store(f"sqlite:///{tmp_path / 't.db'}", create=False) as store:
        store.record_verdict(
            1,
            "inconclusive",
            criterion_result={"reason": "[x](javascript:alert(1))"},
            cited_evidence_ids=[],
            narrative=evil,
            decided_by="test",
        )
        md_path, html_path = write_reports(store, 1, tmp_path / "report")
    md = md_path.read_text()
    headings = [line for line in md.splitlines() if line.lstrip().startswith("#")]
    assert [h for h in headings if h.lstrip("# ").startswith("Verdicts")] == ["## Verdicts"]
    for forged in ("![pixel](", "![a](", "![h](", "[x](javascript"):
        assert forged not in md
    assert "<img" not in md.replace("\\<img", "")
    assert "evil.example/p.png" in md
    html = html_path.read_text()
    assert '<img src="https://evil' not in html and "&lt;img" in html
