"""The review workspace in a real headless Chromium (Debian's package, driven by Playwright):
list → investigation → hypothesis → figure → accept and dispute → reload → audit → export from
disk."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from playwright.sync_api import Locator, Page, expect, sync_playwright

from rankscope.agent.web import create_app
from rankscope.experiments_db import Store
from tests.test_db_support import open_test_store, populate

SCREENSHOTS_ENV = "RANKSCOPE_SCREENSHOTS"
"""A folder to copy the screenshots to (the README's come from ``docs/screenshots``); unset, they
stay in the test's temporary folder and the checkout is left as it was."""
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def heatmap_png() -> bytes:
    """A small layer × head heatmap, as the patching tools draw them."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(5, 3), dpi=80)
    image = ax.imshow(np.random.default_rng(0).normal(size=(6, 12)), cmap="RdBu_r")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    fig.colorbar(image)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Store, dict[str, int]]]:
    with open_test_store(f"sqlite:///{tmp_path / 'store.db'}", tmp_path) as store:
        ids = populate(store, tmp_path)
        figure = store.investigation_tree(ids["investigation"]).artifacts()[0]
        stored = store.artifacts.put_bytes(heatmap_png(), ".png")
        with store.engine.begin() as conn:
            conn.exec_driver_sql(
                "UPDATE artifact SET sha256 = ?, path = ?, size = ? WHERE id = ?",
                (stored.sha256, stored.relpath, stored.size, figure.id),
            )
        inv = ids["investigation"]
        ids["refuted"] = store.preregister_hypothesis(
            inv,
            "Layer 5 heads carry it too",
            {"metric": "m", "direction": "greater", "threshold": 0.2},
            tool="t",
        )
        store.record_verdict(
            ids["refuted"],
            "refuted",
            criterion_result={"reason": "effect 0.01 below 0.2"},
            cited_evidence_ids=[ids["evidence3"]],
            decided_by="rules",
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
        assert server.started, "uvicorn did not start"
        yield f"http://127.0.0.1:{port}", store, ids
        server.should_exit = True
        thread.join(10)


def assert_image_loads(page: Page, image: Locator) -> None:
    """Wait (polling, up to 15 s) until a lazily loaded figure has decoded with a real width: a
    visible ``<img>`` may still be fetching, so one immediate check is a race."""
    page.wait_for_function(
        "img => img.complete && img.naturalWidth > 0", arg=image.element_handle(), timeout=15_000
    )


def shoot(page: Page, tmp_path: Path, name: str) -> None:
    path = tmp_path / "screenshots" / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    if target := os.environ.get(SCREENSHOTS_ENV):
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(target) / path.name)


@pytest.mark.slow
def test_review_in_a_browser(served: tuple[str, Store, dict[str, int]], tmp_path: Path) -> None:
    chromium_path = shutil.which("chromium")
    assert chromium_path, "Debian's chromium is not installed (apt-get install chromium)"
    base, store, ids = served
    hyp, refuted = ids["hypothesis"], ids["refuted"]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900}, accept_downloads=True)
        page.goto(base + "/")
        expect(page.locator("table.list")).to_contain_text("Which heads make MiniLM")
        shoot(page, tmp_path, "investigations")
        page.get_by_role("link", name="Which heads make MiniLM").click()
        expect(page.locator("h2#findings")).to_be_visible()
        details = page.locator(f"details#h{hyp}")
        details.locator(":scope > summary").click()
        figure = details.locator("figure img").first
        expect(figure).to_be_visible()
        assert_image_loads(page, figure)
        shoot(page, tmp_path, "investigation")
        form = details.locator("form.review-form")
        form.locator("input[name=reviewer]").fill("alice")
        form.get_by_role("button", name="Accept verdict").click()
        page.wait_for_url(f"**/investigations/{ids['investigation']}#h{hyp}")
        other = page.locator(f"details#h{refuted}")
        other.locator(":scope > summary").click()
        other.locator("input[name=reviewer]").fill("bob")
        other.locator("input[name=comment]").fill("effect <b>too small</b> to call")
        other.get_by_role("button", name="Dispute verdict").click()
        page.wait_for_url(f"**#h{refuted}")
        page.reload()
        expect(page.locator(f"details#h{refuted} > summary")).to_contain_text("DISPUTED")
        page.locator(f"details#h{hyp} > summary").click()
        expect(page.locator(f"details#h{hyp} table.reviews")).to_contain_text("alice")
        expect(page.locator(f"details#h{refuted} table.reviews")).to_contain_text(
            "effect <b>too small</b> to call"
        )
        shoot(page, tmp_path, "reviewed")
        page.get_by_role("button", name="Start audit").click()
        page.wait_for_url("**/audits/*")
        expect(page.locator("h1 .audit-state")).to_have_text("done", timeout=30_000)
        expect(page.locator("table.audit")).to_contain_text("record chain")
        shoot(page, tmp_path, "audit")
        (job,) = store.list_audit_jobs(ids["investigation"])
        assert job.state == "done" and job.total >= 1 and job.done == job.total
        page.locator("p.crumbs a").click()
        expect(page.locator("h2#findings")).to_be_visible()
        decisions = {
            (r.reviewer, r.decision)
            for r in store.list_reviews(investigation_id=ids["investigation"])
        }
        assert {("alice", "accept"), ("bob", "dispute")} <= decisions
        with page.expect_download() as download:
            page.get_by_role("link", name="Export (static folder, zip)").click()
        archive = tmp_path / "export.zip"
        download.value.save_as(archive)
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(tmp_path / "export")
        index = next((tmp_path / "export").glob("*/index.html"))
        page.goto(index.as_uri())
        expect(page.locator("h2#findings")).to_be_visible()
        expect(page.locator(f"details#h{refuted} > summary")).to_contain_text("DISPUTED")
        page.locator(f"details#h{hyp} > summary").click()
        exported = page.locator(f"details#h{hyp} figure img").first
        expect(exported).to_be_visible()
        assert_image_loads(page, exported)
        shoot(page, tmp_path, "export")
        browser.close()
