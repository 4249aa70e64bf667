"""Issue 25, item 1: DNS rebinding. The workspace answers only to allowed hosts (the bound host,
``localhost``, ``127.0.0.1``, ``[::1]`` and ``--allowed-host``) and compares a state-changing
request's ``Origin`` with that allow-list, never with the attacker-chosen ``Host``. Every case
goes through a real server on a loopback port, over real HTTP."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from rankscope.agent.web import create_app
from rankscope.agent.web.security import allow_hosts
from rankscope.experiments_db import Store
from tests.test_db_support import open_test_store, populate

EVIL = "evil.example"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "no CSRF token in the page"
    return match.group(1)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, int, Store, dict[str, int]]]:
    """A real uvicorn server on 127.0.0.1 (as ``rankscope serve`` binds it), with one more
    allowed name (as ``--allowed-host reviewbox.lan`` adds)."""
    with open_test_store(f"sqlite:///{tmp_path / 'store.db'}", tmp_path) as store:
        ids = populate(store, tmp_path)
        port = free_port()
        app = create_app(store)
        allow_hosts(app, "127.0.0.1", ["reviewbox.lan"])
        server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.time() + 20
        while not server.started and time.time() < deadline:
            time.sleep(0.05)
        assert server.started, "uvicorn did not start"
        try:
            yield f"http://127.0.0.1:{port}", port, store, ids
        finally:
            server.should_exit = True
            thread.join(10)


def _audit_jobs(store: Store, investigation_id: int) -> int:
    with store.engine.connect() as conn:
        return int(
            conn.exec_driver_sql(
                "SELECT COUNT(*) FROM audit_job WHERE investigation_id = ?", (investigation_id,)
            ).scalar_one()
        )


def test_a_rebound_host_gets_nothing(served: tuple[str, int, Store, dict[str, int]]) -> None:
    base, port, store, ids = served
    inv, hyp = ids["investigation"], ids["hypothesis"]
    evil = {"Host": f"{EVIL}:{port}"}
    forged = {**evil, "Origin": f"http://{EVIL}:{port}"}
    with httpx.Client(base_url=base, timeout=30) as client:
        # the page (and its CSRF token) is not served to another host name
        page = client.get(f"/investigations/{inv}", headers=evil)
        assert page.status_code == 400
        assert "csrf_token" not in page.text and "Which heads" not in page.text
        assert "--allowed-host" in page.text and page.headers["x-frame-options"] == "DENY"
        # a token read through an allowed host does not help a request naming another host
        token = csrf_of(client.get(f"/hypotheses/{hyp}").text)
        reviews = len(store.list_reviews(hypothesis_id=hyp))
        review = client.post(
            f"/hypotheses/{hyp}/review",
            data={"reviewer": "mallory", "decision": "dispute", "csrf_token": token},
            headers=forged,
        )
        assert review.status_code == 400
        assert len(store.list_reviews(hypothesis_id=hyp)) == reviews
        jobs = _audit_jobs(store, inv)
        audit = client.post(
            f"/investigations/{inv}/audit", data={"csrf_token": token}, headers=forged
        )
        assert audit.status_code == 400 and _audit_jobs(store, inv) == jobs
        export = client.get(f"/investigations/{inv}/export.zip", headers=evil)
        assert export.status_code == 400 and not export.content.startswith(b"PK")
        # a name that merely starts or ends like an allowed one is another host
        for host in (f"localhost.{EVIL}", f"127.0.0.1.{EVIL}", f"{EVIL}#@localhost"):
            assert client.get("/", headers={"Host": host}).status_code == 400


def test_allowed_hosts_are_served(served: tuple[str, int, Store, dict[str, int]]) -> None:
    base, port, _store, ids = served
    with httpx.Client(base_url=base, timeout=30) as client:
        for host in (
            f"127.0.0.1:{port}",
            f"localhost:{port}",
            f"LOCALHOST.:{port}",
            f"[::1]:{port}",
            f"reviewbox.lan:{port}",
        ):
            page = client.get(f"/investigations/{ids['investigation']}", headers={"Host": host})
            assert page.status_code == 200, host
            assert "Which heads" in page.text


def test_origin_is_checked_against_the_allow_list_not_the_host(
    served: tuple[str, int, Store, dict[str, int]],
) -> None:
    base, port, store, ids = served
    hyp = ids["hypothesis"]
    with httpx.Client(base_url=base, timeout=30) as client:
        token = csrf_of(client.get(f"/hypotheses/{hyp}").text)

        def review(origin: str, reviewer: str, **headers: str) -> int:
            return client.post(
                f"/hypotheses/{hyp}/review",
                data={"reviewer": reviewer, "decision": "accept", "csrf_token": token},
                headers={"Origin": origin, **headers},
                follow_redirects=False,
            ).status_code

        assert review(f"http://{EVIL}:{port}", "mallory") == 403
        assert review(f"http://localhost:{port + 1 if port < 65535 else port - 1}", "eve") == 403
        assert review("http://127.0.0.1", "eve") == 403  # another port (80)
        assert (
            review(f"http://127.0.0.1:{port}", "carol", **{"Sec-Fetch-Site": "cross-site"}) == 403
        )
        assert review(f"http://localhost:{port}", "alice") in (200, 303)
        assert review("null", "bob") in (200, 303)  # our pages send no referrer: Origin null
    reviewers = {r.reviewer for r in store.list_reviews(hypothesis_id=hyp)}
    assert {"alice", "bob"} <= reviewers and not {"mallory", "eve", "carol"} & reviewers


def test_serve_allowed_host_option(tmp_path: Path) -> None:
    """``rankscope serve --allowed-host`` end to end: the named host is served, others not."""
    db = f"sqlite:///{tmp_path / 'store.db'}"
    with open_test_store(db, tmp_path) as store:
        ids = populate(store, tmp_path)
    port = free_port()
    env = {**os.environ, "RANKSCOPE_ARTIFACT_DIR": str(tmp_path / "artifacts")}
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rankscope.agent.cli",
            "serve",
            "--port",
            str(port),
            "--db",
            db,
            "--allowed-host",
            "reviewbox.lan",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        url = f"http://127.0.0.1:{port}/investigations/{ids['investigation']}"
        deadline = time.time() + 60
        while True:
            try:
                ok = httpx.get(url, headers={"Host": f"reviewbox.lan:{port}"}, timeout=5)
                break
            except httpx.TransportError:
                assert child.poll() is None and time.time() < deadline, "serve did not start"
                time.sleep(0.2)
        assert ok.status_code == 200
        assert httpx.get(url, headers={"Host": f"{EVIL}:{port}"}, timeout=5).status_code == 400
        assert httpx.get(url, timeout=5).status_code == 200
    finally:
        child.terminate()
        child.wait(20)
