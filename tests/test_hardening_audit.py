"""Issue 25, items 4–6: the audit covers everything a reader trusts, on SQLite and PostgreSQL.

4. a policy loosened in the stored config is drift (the investigation row is in the chain);
5. a deleted chain is drift for an investigation recorded with one; the chain's head is printed in
   ``show``, the report and the bundle, and ``audit --expect HEAD`` catches a chain recomputed
   after an edit; with a signing key, a chain recomputed without the key is drift;
6. the question, the model, ``report.md`` and the report's copies of figures are checked;
   ``show`` and every page of the workspace (a real server) mark a failing investigation.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from sqlalchemy import select, text, update
from typer.testing import CliRunner

from rankscope.agent.audit import audit_investigation, fast_check
from rankscope.agent.cli import app
from rankscope.agent.reports import write_reports
from rankscope.agent.web import create_app
from rankscope.experiments_db import Store, export_investigation
from rankscope.experiments_db.chain import append_link
from rankscope.experiments_db.models import Investigation, RecordLink
from tests.test_db_support import backend_params, fresh_database, open_test_store, populate


@pytest.fixture(autouse=True)
def no_signing_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No signing key unless a test makes one (never the user's own)."""
    key = tmp_path / "keys" / "chain-signing-key.pem"
    monkeypatch.setenv("RANKSCOPE_CHAIN_KEY", str(key))
    return key


@pytest.fixture(params=backend_params())
def stored(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Store, dict, str]]:
    with fresh_database(request.param, tmp_path) as url, open_test_store(url, tmp_path) as store:
        yield store, populate(store, tmp_path), url


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


_LEASE = {"host": "elsewhere", "pid": 1, "heartbeat": "2026-12-06T10:00:00+00:00"}


def _drift(store: Store, inv: int, **kwargs: Any) -> list[tuple[str, str, str]]:
    report = audit_investigation(store, inv, rerun=False, **kwargs)
    return [(f.subject, f.check, f.detail) for f in report.drift]


def _config(store: Store, inv: int) -> dict[str, Any]:
    with store.engine.connect() as conn:
        table = Investigation.__table__
        return dict(conn.execute(select(table.c.config).where(table.c.id == inv)).scalar_one())


def _sql_update(store: Store, inv: int, **values: Any) -> None:
    """What someone with write access to the database does: change the row, nothing else."""
    table = Investigation.__table__
    with store.engine.begin() as conn:
        conn.execute(update(table).where(table.c.id == inv).values(**values))


def _edit_metric(store: Store, evidence_id: int) -> None:
    with store.engine.begin() as conn:
        conn.execute(
            text("UPDATE evidence SET summary = 'forged' WHERE id = :e"), {"e": evidence_id}
        )


def _recompute_chain(store: Store, inv: int) -> None:
    """Rewrite the chain from the records as they are now (what chain.py lets anyone do)."""
    link = RecordLink.__table__
    with store.engine.begin() as conn:
        rows = conn.execute(
            select(link.c.kind, link.c.record_id)
            .where(link.c.investigation_id == inv)
            .order_by(link.c.seq)
        ).all()
        conn.execute(link.delete().where(link.c.investigation_id == inv))
        for kind, record_id in rows:
            append_link(conn, inv, kind, record_id)


def test_a_loosened_policy_is_drift(stored: tuple[Store, dict, str]) -> None:
    store, ids, _ = stored
    inv = ids["investigation"]
    before = _drift(store, inv)
    config = _config(store, inv)
    config["policy"] = {"alpha": 0.3, "default_sesoi": 0.0, "sesoi": {"score_delta": 0.0}}
    _sql_update(store, inv, config=config)
    new = [d for d in _drift(store, inv) if d not in before]
    assert (f"investigation {inv}", "record chain", "changed after it was recorded") in new
    assert any("changed after it was recorded" in p for p in fast_check(store, inv))


def test_the_policy_and_settings_changed_through_the_store_verify(
    stored: tuple[Store, dict, str],
) -> None:
    """A note or a lease written through the store is not drift; the lease is not attested."""
    from rankscope.agent.settings import add_note

    store, ids, _ = stored
    inv = ids["investigation"]
    add_note(store, inv, "a note written by the agent")
    _sql_update(store, inv, config={**_config(store, inv), "lease": _LEASE})
    assert fast_check(store, inv) == []


@pytest.mark.parametrize(
    ("column", "value"),
    [("question", "A different question"), ("model_id", "bert-base-uncased"), ("data_spec", "x")],
)
def test_the_investigation_row_is_in_the_chain(
    stored: tuple[Store, dict, str], column: str, value: str
) -> None:
    store, ids, _ = stored
    inv = ids["investigation"]
    assert fast_check(store, inv) == []
    _sql_update(store, inv, **{column: value})
    assert f"investigation {inv}: changed after it was recorded" in fast_check(store, inv)


def test_a_deleted_chain_is_drift(stored: tuple[Store, dict, str]) -> None:
    store, ids, _ = stored
    inv = ids["investigation"]
    with store.engine.begin() as conn:
        conn.execute(RecordLink.__table__.delete())
    _edit_metric(store, ids["evidence"])
    drift = _drift(store, inv)
    assert any(check == "record chain" and "missing" in detail for _, check, detail in drift)
    assert not any("no record chain" in d for _, _, d in drift)


def test_the_head_is_anchored_outside_and_checked(
    stored: tuple[Store, dict, str], tmp_path: Path
) -> None:
    store, ids, url = stored
    inv = ids["investigation"]
    cli = CliRunner()
    shown = cli.invoke(app, ["show", str(inv), "--db", url], env={"COLUMNS": "400"})
    assert shown.exit_code == 0, shown.output
    head = re.search(r"record chain head ([0-9a-f]{64})", shown.output)
    assert head, shown.output
    # the report and the bundle carry a head too
    md, _ = write_reports(store, inv, tmp_path / "report")
    in_report = re.search(r"Record chain head ([0-9a-f]{64})", md.read_text())
    assert in_report and in_report[1] == head[1]  # written before the report's own link
    assert any(
        c.check == "expected head" and "recorded after it" in c.detail
        for c in audit_investigation(store, inv, rerun=False, expect=in_report[1]).findings
    )
    bundle = export_investigation(store, inv, tmp_path / "b.zip")
    with zipfile.ZipFile(bundle) as zf:
        manifest = json.loads(zf.read("bundle.json"))
    assert re.fullmatch(r"[0-9a-f]{64}", manifest["record_chain"]["head"])
    # untouched: the chain still passes through the head printed earlier
    wide = {"COLUMNS": "400"}
    ok = cli.invoke(
        app, ["audit", str(inv), "--db", url, "--no-rerun", "--expect", head[1]], env=wide
    )
    assert "expected head is link" in ok.output
    assert "the expected head" not in "".join(d for _, _, d in _drift(store, inv, expect=head[1]))
    # an edit hidden by recomputing the chain passes the chain check, not the anchor
    _edit_metric(store, ids["evidence"])
    _recompute_chain(store, inv)
    assert not any(c == "record chain" for _, c, _ in _drift(store, inv))
    drift = _drift(store, inv, expect=head[1])
    assert any("is not in the record chain" in d for _, _, d in drift)
    bad = cli.invoke(
        app, ["audit", str(inv), "--db", url, "--no-rerun", "--expect", head[1]], env=wide
    )
    assert bad.exit_code == 1 and "not in the record chain" in bad.output


def test_a_chain_recomputed_without_the_key_is_drift(
    stored: tuple[Store, dict, str], no_signing_key: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rankscope.experiments_db.signing import create_key

    store, ids, _ = stored
    signer = create_key(no_signing_key)
    inv = store.create_investigation("signed", "m", "d", "protocol")
    hyp = store.preregister_hypothesis(
        inv, "h", {"metric": "m", "direction": "greater", "threshold": 0.1}, tool="t"
    )
    exp = store.start_experiment(inv, "t", {})
    ev = store.finish_experiment(exp, {"m": 0.5})
    store.record_verdict(
        hyp, "supported", criterion_result={}, cited_evidence_ids=[ev], decided_by="r"
    )
    head = store.chain_head(inv)
    assert head is not None and head.key_id == signer.key_id
    assert [d for d in _drift(store, inv, signed=True) if d[1] == "record chain"] == []
    # someone without the key edits the evidence and recomputes the chain
    _edit_metric(store, ev)
    monkeypatch.setenv("RANKSCOPE_CHAIN_KEY", str(no_signing_key.parent / "absent.pem"))
    _recompute_chain(store, inv)
    monkeypatch.setenv("RANKSCOPE_CHAIN_KEY", str(no_signing_key))
    drift = _drift(store, inv, signed=True)
    assert any("not signed" in d for _, _, d in drift)
    # ... or keeps the old signatures: they no longer verify
    with store.engine.begin() as conn:
        link = RecordLink.__table__
        for row in conn.execute(
            select(link.c.id, link.c.seq).where(link.c.investigation_id == inv)
        ):
            conn.execute(
                update(link)
                .where(link.c.id == row.id)
                .values(key_id=signer.key_id, signature="00" * 64)
            )
    assert any("does not verify" in d for _, _, d in _drift(store, inv))
    # the earlier investigation, recorded without a key, is unaffected unless --signed
    assert not any("sign" in d for _, _, d in _drift(store, ids["investigation"]))


def test_report_files_are_checked(stored: tuple[Store, dict, str], tmp_path: Path) -> None:
    store, ids, url = stored
    inv = ids["investigation"]
    md, html = write_reports(store, inv, tmp_path / "report")
    figures = sorted((tmp_path / "report" / "figures").iterdir())
    assert figures, "the report has no figure copies"
    assert not any("report" in s for s, _, _ in _drift(store, inv))
    md.write_text(md.read_text().replace("supported", "refuted"))
    figures[0].write_bytes(b"\x89PNG another picture")
    drift = {(s, d.split(" changed")[0]) for s, c, d in _drift(store, inv) if c == "report digest"}
    assert ("report file report.md", str(md)) in drift
    assert (f"report figure {figures[0].name}", str(figures[0])) in drift
    shown = CliRunner().invoke(app, ["show", str(inv), "--db", url], env={"COLUMNS": "400"})
    assert "INTEGRITY" in shown.output and "report.md" in shown.output
    # writing the report again records the new files
    write_reports(store, inv, tmp_path / "report")
    assert fast_check(store, inv) == []
    assert html.exists()


def test_every_workspace_page_marks_a_failing_investigation(tmp_path: Path) -> None:
    with open_test_store(f"sqlite:///{tmp_path / 'store.db'}", tmp_path) as store:
        ids = populate(store, tmp_path)
        inv = ids["investigation"]
        _sql_update(
            store, inv, question="Which heads make MiniLM reward repeated query terms? (edited)"
        )
        port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(create_app(store), host="127.0.0.1", port=port, log_level="warning")
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.time() + 20
        while not server.started and time.time() < deadline:
            time.sleep(0.05)
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
                for path in (
                    f"/investigations/{inv}",
                    f"/hypotheses/{ids['hypothesis']}",
                    f"/experiments/{ids['experiment']}",
                    f"/evidence/{ids['evidence']}",
                ):
                    page = client.get(path)
                    assert page.status_code == 200, path
                    assert "Integrity check failed" in page.text, path
                    assert "changed after it was recorded" in page.text, path
                other = store.create_investigation("untouched", "m", "d", "protocol")
                assert "Integrity check failed" not in client.get(f"/investigations/{other}").text
        finally:
            server.should_exit = True
            thread.join(10)


def test_migration_0006_marks_what_was_recorded_with_a_chain(
    stored: tuple[Store, dict, str],
) -> None:
    """Upgrading to 0006: an investigation whose 0003-era chain exists gets version 1 (checked
    without an investigation link; its links deleted later is drift); one without links gets 0
    (reported, not drift); a database taken down and up again keeps version 2."""
    from rankscope.experiments_db import downgrade_database, upgrade_database

    store, ids, url = stored
    old = ids["investigation"]
    link = RecordLink.__table__
    with store.engine.begin() as conn:  # the chain as the store kept it before 0006
        rows = conn.execute(
            select(link.c.kind, link.c.record_id)
            .where(link.c.investigation_id == old)
            .where(link.c.kind != "investigation")
            .order_by(link.c.seq)
        ).all()
        conn.execute(link.delete().where(link.c.investigation_id == old))
        for kind, record_id in rows:
            append_link(conn, old, kind, record_id)
    bare = store.create_investigation("no chain", "m", "d", "protocol")
    with store.engine.begin() as conn:
        conn.execute(link.delete().where(link.c.investigation_id == bare))
    new = store.create_investigation("recorded with 0006", "m", "d", "protocol")
    store.close()
    downgrade_database(url, "0005")
    upgrade_database(url)
    with open_test_store(url, Path(store.artifacts.root).parent) as again:
        with again.engine.connect() as conn:
            inv_t = Investigation.__table__
            versions = {
                int(i): int(v)
                for i, v in conn.execute(select(inv_t.c.id, inv_t.c.chain_version)).all()
            }
        assert (versions[old], versions[bare], versions[new]) == (1, 0, 2)
        assert fast_check(again, old) == [] and fast_check(again, new) == []
        findings = audit_investigation(again, bare, rerun=False).findings
        assert any(c.ok and "no record chain" in c.detail for c in findings)
        with again.engine.begin() as conn:
            conn.execute(link.delete().where(link.c.investigation_id == old))
        assert any("record chain is missing" in p for p in fast_check(again, old))
