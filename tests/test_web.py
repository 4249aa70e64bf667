"""The review workspace through FastAPI's test client, on SQLite and PostgreSQL; the review
command; escaping of stored HTML; the access token and CSRF checks."""

from __future__ import annotations

import re
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from rankscope.agent.audit import AuditReport
from rankscope.agent.cli import app as cli_app
from rankscope.agent.reports import write_reports
from rankscope.agent.web import create_app
from rankscope.agent.web.export import export_static
from rankscope.agent.web.security import is_loopback
from rankscope.experiments_db import Store
from tests.test_db_support import backend_params, fresh_database, open_test_store, populate

LOOPBACK = "http://127.0.0.1"
"""The test client's base URL: the workspace answers only to allowed hosts (not ``testserver``)."""
XSS_SCRIPT = "<script>alert('x')</script>"
XSS_IMG = "<img src=x onerror=alert(1)>"


@pytest.fixture(params=backend_params())
def stored(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[Store, dict[str, int], str]]:
    with fresh_database(request.param, tmp_path) as url, open_test_store(url, tmp_path) as store:
        ids = populate(store, tmp_path)
        yield store, ids, url


def fake_audit(
    store: Store,
    investigation_id: int,
    progress: Callable[[int, int], None] | None = None,
    **_: Any,
) -> AuditReport:
    report = AuditReport(investigation_id)
    report.add("experiment 1", "metrics", True, "all equal")
    if progress is not None:
        progress(1, 2)
    report.add("artifact 1", "sha256", False, "hash <b>changed</b>")
    if progress is not None:
        progress(2, 2)
    return report


@pytest.fixture
def client(stored: tuple[Store, dict[str, int], str]) -> TestClient:
    return TestClient(create_app(stored[0], auditor=fake_audit), base_url=LOOPBACK)


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "no CSRF token in the page"
    return match.group(1)


def test_every_page(client: TestClient, stored: tuple[Store, dict[str, int], str]) -> None:
    _, ids, _ = stored
    page = client.get("/")
    assert page.status_code == 200 and "Which heads make MiniLM" in page.text
    assert client.get("/?q=minilm+heads&status=running").text.count("/investigations/") >= 1
    assert "No investigation matches" in client.get("/?q=nothing-like-this").text
    assert "No investigation matches" in client.get("/?review=disputed").text
    inv = client.get(f"/investigations/{ids['investigation']}").text
    assert inv.index("Findings") < inv.index("Pre-registration")
    assert "LLM transcript" in inv and "/artifacts/" in inv
    for url in (
        f"/hypotheses/{ids['hypothesis']}",
        f"/experiments/{ids['experiment']}",
        f"/experiments/{ids['exploration']}",
        f"/evidence/{ids['evidence']}",
        f"/compare?a={ids['investigation']}&b={ids['investigation']}",
        "/compare",
        "/static/style.css",
        "/static/app.js",
    ):
        assert client.get(url).status_code == 200, url
    assert client.get("/hypotheses/999").status_code == 404
    assert client.get("/audits/999").status_code == 404
    tree = stored[0].investigation_tree(ids["investigation"])
    png, table = tree.artifacts()
    image = client.get(f"/artifacts/{png.id}")
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    download = client.get(f"/artifacts/{table.id}")
    assert download.headers["content-disposition"].startswith("attachment")
    export = client.get(f"/investigations/{ids['investigation']}/export.zip")
    assert export.status_code == 200 and export.content[:2] == b"PK"


def test_artifact_hash_is_checked(
    client: TestClient, stored: tuple[Store, dict[str, int], str]
) -> None:
    store, ids, _ = stored
    png = store.investigation_tree(ids["investigation"]).artifacts()[0]
    store.artifacts.path(png.path).write_bytes(b"tampered")
    assert client.get(f"/artifacts/{png.id}").status_code == 409


def test_review_from_the_page(
    client: TestClient, stored: tuple[Store, dict[str, int], str]
) -> None:
    store, ids, _ = stored
    page = client.get(f"/investigations/{ids['investigation']}").text
    form = {
        "csrf_token": csrf_of(page),
        "reviewer": "bob",
        "decision": "dispute",
        "comment": "CI too wide",
    }
    done = client.post(f"/hypotheses/{ids['hypothesis']}/review", data=form, follow_redirects=False)
    assert done.status_code == 303
    reviews = store.list_reviews(hypothesis_id=ids["hypothesis"])
    assert [(r.reviewer, r.decision, r.comment) for r in reviews][-1] == (
        "bob",
        "dispute",
        "CI too wide",
    )
    assert len(store.list_reviews(investigation_id=ids["investigation"])) == 2
    page = client.get(f"/investigations/{ids['investigation']}").text
    assert "DISPUTED" in page and "CI too wide" in page
    assert "disputed" in client.get("/").text
    assert "Which heads" in client.get("/?review=disputed").text
    no_comment = {**form, "comment": ""}
    assert (
        client.post(f"/hypotheses/{ids['hypothesis']}/review", data=no_comment).status_code == 400
    )
    no_verdict = client.post(
        f"/hypotheses/{ids['replication']}/review", data={**form, "decision": "accept"}
    )
    assert no_verdict.status_code == 404


def test_csrf_is_required(client: TestClient, stored: tuple[Store, dict[str, int], str]) -> None:
    store, ids, _ = stored
    form = {"reviewer": "mallory", "decision": "accept"}
    url = f"/hypotheses/{ids['hypothesis']}/review"
    assert client.post(url, data=form).status_code == 403
    assert client.post(url, data={**form, "csrf_token": "wrong"}).status_code == 403
    good = csrf_of(client.get(f"/hypotheses/{ids['hypothesis']}").text)
    cross = client.post(
        url, data={**form, "csrf_token": good}, headers={"origin": "http://evil.example"}
    )
    assert cross.status_code == 403
    assert client.post(f"/investigations/{ids['investigation']}/audit", data={}).status_code == 403
    assert all(r.reviewer != "mallory" for r in store.list_reviews(hypothesis_id=ids["hypothesis"]))


def start_audit(client: TestClient, investigation_id: int) -> int:
    """Press the page's "Start audit" (with its CSRF token); the new job's id."""
    page = client.get(f"/investigations/{investigation_id}").text
    started = client.post(
        f"/investigations/{investigation_id}/audit",
        data={"csrf_token": csrf_of(page)},
        follow_redirects=False,
    )
    assert started.status_code == 303
    return int(started.headers["location"].rsplit("/", 1)[1])


def test_audit_from_the_page(client: TestClient, stored: tuple[Store, dict[str, int], str]) -> None:
    _, ids, _ = stored
    job_id = start_audit(client, ids["investigation"])
    workspace = client.app.state.workspace  # type: ignore[attr-defined]
    assert workspace.audits.wait(job_id).state == "done"
    report = client.get(f"/audits/{job_id}").text
    assert "1 with drift" in report and "DRIFT" in report
    assert "hash &lt;b&gt;changed&lt;/b&gt;" in report
    assert "2/2 steps" in report


def test_audit_jobs_are_rows_a_restarted_server_shows(
    stored: tuple[Store, dict[str, int], str],
) -> None:
    store, ids, _ = stored
    first = TestClient(create_app(store, auditor=fake_audit), base_url=LOOPBACK)
    job_id = start_audit(first, ids["investigation"])
    first.app.state.workspace.audits.wait(job_id)  # type: ignore[attr-defined]
    row = store.get_audit_job(job_id)
    assert (row.state, row.done, row.total) == ("done", 2, 2)
    assert [(f.subject, f.ok) for f in row.drift] == [("artifact 1", False)]
    restarted = TestClient(create_app(store, auditor=fake_audit), base_url=LOOPBACK)
    report = restarted.get(f"/audits/{job_id}").text
    assert "1 with drift" in report and "hash &lt;b&gt;changed&lt;/b&gt;" in report
    listed = restarted.get(f"/investigations/{ids['investigation']}").text
    assert f"audit {job_id}: done" in listed


def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_a_dead_servers_audit_is_marked_interrupted_and_a_failure_is_stored(
    stored: tuple[Store, dict[str, int], str],
) -> None:
    store, ids, _ = stored
    inv = ids["investigation"]
    orphan = store.create_audit_job(inv, rerun=True, owner=f"{socket.gethostname()}:{dead_pid()}")
    store.update_audit_job(orphan, state="running", done=1, total=3)
    elsewhere = store.create_audit_job(inv, rerun=True, owner="another-host:1")
    store.update_audit_job(elsewhere, state="running")

    def broken_audit(store: Store, investigation_id: int, **_: Any) -> AuditReport:
        raise RuntimeError("model folder <gone>")

    client = TestClient(create_app(store, auditor=broken_audit), base_url=LOOPBACK)
    assert store.get_audit_job(orphan).state == "interrupted"
    assert store.get_audit_job(elsewhere).state == "running"
    page = client.get(f"/audits/{orphan}").text
    assert "interrupted" in page and "is gone; start it again" in page
    job_id = start_audit(client, inv)
    assert client.app.state.workspace.audits.wait(job_id).state == "failed"  # type: ignore[attr-defined]
    failed = client.get(f"/audits/{job_id}").text
    assert "RuntimeError: model folder &lt;gone&gt;" in failed


def test_a_server_that_stops_marks_its_running_audit_interrupted(
    stored: tuple[Store, dict[str, int], str],
) -> None:
    store, ids, _ = stored
    release = threading.Event()

    def slow_audit(store: Store, investigation_id: int, **_: Any) -> AuditReport:
        release.wait(30)
        return fake_audit(store, investigation_id)

    app = create_app(store, auditor=slow_audit)
    with TestClient(app, base_url=LOOPBACK) as client:
        job_id = start_audit(client, ids["investigation"])
        assert "refreshes every 2 s" in client.get(f"/audits/{job_id}").text
    assert store.get_audit_job(job_id).state == "interrupted"
    release.set()
    app.state.workspace.audits.wait(job_id)
    stopped = store.get_audit_job(job_id)
    assert stopped.state == "interrupted" and "server running this audit stopped" in stopped.error


def test_token_is_required_everywhere(stored: tuple[Store, dict[str, int], str]) -> None:
    store, ids, _ = stored
    client = TestClient(create_app(store, token="s3cret"), base_url=LOOPBACK)
    assert client.get("/").status_code == 401
    assert client.get("/static/style.css").status_code == 401
    assert client.get("/", params={"token": "wrong"}).status_code == 401
    assert client.get("/", headers={"authorization": "Bearer s3cret"}).status_code == 200
    assert client.get("/", params={"token": "s3cret"}).status_code == 200
    assert client.get(f"/investigations/{ids['investigation']}").status_code == 200  # cookie
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4")


def test_serve_refuses_a_public_host_without_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RANKSCOPE_SERVE_TOKEN", raising=False)
    result = CliRunner().invoke(cli_app, ["serve", "--host", "0.0.0.0"])
    assert result.exit_code == 2 and "without a token" in result.output


def hostile_store(store: Store, tmp_path: Path) -> int:
    inv = store.create_investigation(
        f"Question {XSS_SCRIPT}", f"model{XSS_IMG}", "builtin:tfc1", "llm"
    )
    hyp = store.preregister_hypothesis(
        inv, f"claim {XSS_IMG}", {"metric": "m", "direction": "greater", "threshold": 0.1}, tool="t"
    )
    exp = store.start_experiment(inv, "t", {"note": XSS_SCRIPT}, hypothesis_id=hyp)
    ev = store.finish_experiment(exp, {"m": 0.5}, summary=f"passage: {XSS_SCRIPT} {XSS_IMG}")
    store.record_verdict(
        hyp,
        "supported",
        criterion_result={"reason": XSS_IMG},
        cited_evidence_ids=[ev],
        decided_by="rules",
        narrative=f"narrative {XSS_SCRIPT}",
    )
    store.review_hypothesis(hyp, f"eve{XSS_IMG}", "dispute", XSS_SCRIPT)
    store.record_llm_call(
        inv,
        "m",
        [{"role": "user", "content": XSS_SCRIPT}],
        {"choices": [{"message": {"content": XSS_IMG}}]},
    )
    return inv


def test_stored_html_is_escaped(stored: tuple[Store, dict[str, int], str], tmp_path: Path) -> None:
    store = stored[0]
    inv = hostile_store(store, tmp_path)
    client = TestClient(create_app(store), base_url=LOOPBACK)
    tree = store.investigation_tree(inv)
    hyp = tree.hypotheses[0]
    pages = [
        client.get("/").text,
        client.get(f"/investigations/{inv}").text,
        client.get(f"/hypotheses/{hyp.id}").text,
        client.get(f"/experiments/{hyp.experiments[0].id}").text,
        client.get(f"/evidence/{hyp.experiments[0].evidence[0].id}").text,
        client.get(f"/compare?a={inv}&b={inv}").text,
        (export_static(store, inv, tmp_path / "export") / "index.html").read_text(),
    ]
    for html in pages:
        assert "<script>alert" not in html and "<img src=x" not in html
        assert "&lt;script&gt;" in html or "&lt;img" in html
    assert (
        client.get(f"/investigations/{inv}")
        .headers["content-security-policy"]
        .startswith("default-src 'self'")
    )


def test_review_command_and_show(stored: tuple[Store, dict[str, int], str], tmp_path: Path) -> None:
    store, ids, url = stored
    runner = CliRunner()
    inv, hyp = str(ids["investigation"]), str(ids["hypothesis"])
    ok = runner.invoke(
        cli_app,
        [
            "review",
            inv,
            hyp,
            "--dispute",
            "-m",
            "effect is noise",
            "--reviewer",
            "carol",
            "--db",
            url,
        ],
    )
    assert ok.exit_code == 0, ok.output
    assert "carol disputes" in ok.output
    last = store.list_reviews(hypothesis_id=ids["hypothesis"])[-1]
    assert (last.reviewer, last.decision, last.comment) == ("carol", "dispute", "effect is noise")
    assert runner.invoke(cli_app, ["review", inv, hyp, "--dispute", "--db", url]).exit_code == 2
    assert (
        runner.invoke(cli_app, ["review", inv, hyp, "--accept", "--dispute", "--db", url]).exit_code
        == 2
    )
    wrong = runner.invoke(cli_app, ["review", "999", hyp, "--accept", "--db", url])
    assert wrong.exit_code == 1 and "not part of investigation" in wrong.output
    shown = runner.invoke(cli_app, ["show", inv, "--db", url])
    assert "DISPUTED" in shown.output and "carol" in shown.output
    md, html = write_reports(store, ids["investigation"], tmp_path / "report")
    assert "DISPUTED by carol" in md.read_text() and "DISPUTED by carol" in html.read_text()
    overview = store.verdict_overview([ids["investigation"]])[ids["investigation"]]
    assert overview["supported"] == 1 and overview["disputed"] == 1


def test_static_export_is_self_contained(
    stored: tuple[Store, dict[str, int], str], tmp_path: Path
) -> None:
    store, ids, _ = stored
    folder = export_static(store, ids["investigation"], tmp_path / "export")
    html = (folder / "index.html").read_text()
    assert "http://" not in html.replace(
        "http://www.w3.org", ""
    ) and "/static/" not in html.replace('"static/', "")
    for ref in re.findall(r'(?:src|href)="([^"#?]+)"', html):
        assert (folder / ref).exists(), ref
    assert 'method="post"' not in html


def test_sweeps_page(client: TestClient, stored: tuple[Store, dict[str, int], str]) -> None:
    """``/sweeps`` lists the sweeps tagged in investigations' ``config.sweep``; a sweep's page
    has one row per cell with its status and Findings (a supported finding links to its
    hypothesis); stored text is escaped; the pages are read-only."""
    from tests.test_db_support import TOOL_CALL, criterion

    store, ids, _ = stored
    assert "No sweep in this store" in client.get("/sweeps").text

    def cell(name: str, model: str, question: str, seed: int) -> int:
        tag = {"id": name, "cell": f"c-{model}-{seed}", "model": model, "question": question}
        return store.create_investigation(
            question, model, "builtin", "protocol", config={"sweep": {**tag, "seed": seed}}
        )

    first = cell("lab-sweep", "tiny-a", f"Does it reward TFC1? {XSS_SCRIPT}", 0)
    second = cell("lab-sweep", "tiny-b", "Does it reward TFC1?", 1)
    duplicate = cell("lab-sweep", "tiny-b", "Does it reward TFC1?", 1)
    cell("other-sweep", "tiny-a", "Length bias?", 0)
    hyp = store.preregister_hypothesis(
        first, f"TFC1 moves scores {XSS_IMG}", criterion(), **TOOL_CALL
    )
    exp = store.start_experiment(first, "behavioural_test", {"seed": 0}, hypothesis_id=hyp)
    ev = store.finish_experiment(exp, {"share_moved_predicted": 0.9}, summary="moved")
    store.record_verdict(
        hyp,
        "supported",
        criterion_result={"value": 0.9, "ci": [0.8, 0.95], "passed": True},
        cited_evidence_ids=[ev],
        decided_by="threshold-rule/1",
    )
    store.set_investigation_status(first, "finished")

    listing = client.get("/sweeps")
    assert listing.status_code == 200
    assert (
        'href="/sweeps/lab-sweep"' in listing.text and 'href="/sweeps/other-sweep"' in listing.text
    )
    assert "Which heads make MiniLM" not in listing.text  # untagged investigations stay out
    page = client.get("/sweeps/lab-sweep")
    assert page.status_code == 200
    html = page.text
    assert html.count("<tr>") == 1 + 2  # header and one row per cell
    assert f'href="/investigations/{first}"' in html and f'href="/investigations/{second}"' in html
    assert html.count('class="badge finished"') == 1
    assert "duplicate" in html and f'href="/investigations/{duplicate}"' in html
    assert f'href="/hypotheses/{hyp}"' in html and "supported" in html
    assert XSS_SCRIPT not in html and XSS_IMG not in html
    assert "&lt;script&gt;" in html and "&lt;img" in html
    assert "<form" not in html and "Length bias" not in html
    assert client.get("/sweeps/no-such-sweep").status_code == 404
    assert client.post("/sweeps/lab-sweep").status_code == 405
    assert str(ids["investigation"]) not in re.findall(r"/investigations/(\d+)", html)
