"""The review workspace in a real headless Chromium (Debian's package, driven by Playwright):
list → investigation → hypothesis → figure → accept and dispute → reload → audit → export from
disk; on finished investigations: the answer paragraph, the forest plot, the heatmap's outline of
the pre-registered component, compare (pairs of the same test, and none between different ones),
every error page, and sorting and filtering a table of 6,912 rows."""

from __future__ import annotations

import os
import re
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


# -- finished investigations: answer, forest plot, heatmap, compare, errors, large tables ------


@pytest.fixture(scope="module")
def finished(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, Store, dict[str, dict[str, int]]]]:
    """MiniLM and TAS-B on the same TFC1 question, and an LNC1 investigation, served."""
    from tests.web_support import finished_investigation, lnc1_investigation

    tmp_path = tmp_path_factory.mktemp("finished")
    with open_test_store(f"sqlite:///{tmp_path / 'store.db'}", tmp_path) as store:
        ids = {
            "minilm": finished_investigation(store, tmp_path, big_table=6912),
            "tasb": finished_investigation(
                store,
                tmp_path,
                model="sentence-transformers/msmarco-distilbert-base-tas-b",
                share=(0.64, 0.55, 0.74),
                circuit=False,
            ),
            "lnc1": lnc1_investigation(store, tmp_path),
        }
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


@pytest.fixture(scope="module")
def browser_page() -> Iterator[Page]:
    chromium_path = shutil.which("chromium")
    assert chromium_path, "Debian's chromium is not installed (apt-get install chromium)"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS)
        yield browser.new_page(viewport={"width": 1280, "height": 900})
        browser.close()


@pytest.mark.slow
def test_answer_forest_plot_and_heatmap_in_a_browser(
    finished: tuple[str, Store, dict[str, dict[str, int]]], browser_page: Page, tmp_path: Path
) -> None:
    base, _, ids = finished
    page, minilm = browser_page, ids["minilm"]
    page.goto(f"{base}/investigations/{minilm['investigation']}")
    answer = page.locator("section#answer")
    expect(answer.locator("p.lead")).to_have_text(
        "4 of 6 claims decided (3 supported, 1 negligible); 2 undecided; "
        "2 screening step(s) claim nothing."
    )
    expect(answer.locator("li.supported")).to_contain_text("0.813 [0.69, 0.926] on discovery")
    expect(answer.locator("li.undecided").filter(has_text="L5.H11")).to_contain_text(
        "needs ≥ 8 queries on discovery (has 5): pass --data"
    )
    expect(answer.locator("li.circuit")).to_contain_text(
        "3 heads of layer 5 (L5.H7, L5.H5, L5.H11) together restore 0.66 [0.61, 0.72]"
    )
    expect(answer.locator("svg.circuit g.node")).to_have_count(4)  # three heads and the score
    expect(answer.locator("a.circuit-json")).to_have_attribute("href", re.compile(r"/artifacts/"))
    shoot(page, tmp_path, "investigation")
    forest = page.locator("svg.forest")
    expect(forest.locator("g.forest-row")).to_have_count(6)  # the two exploratory steps left out
    h1 = forest.locator('g.forest-row[data-hypothesis="H1"]')
    expect(h1).to_have_attribute("data-verdict", "supported")
    expect(h1.locator("title")).to_contain_text("93.92 % = 1 − 2α with α = 0.0304")
    expect(forest.locator('g.forest-row[data-verdict="negligible"]')).to_have_count(1)
    page.locator("section#forest").screenshot(path=str(tmp_path / "forest.png"))
    if target := os.environ.get(SCREENSHOTS_ENV):
        shutil.copy(tmp_path / "forest.png", Path(target) / "forest.png")
    details = page.locator(f"details#h{minilm['component']}")
    details.locator(":scope > summary").click()
    heatmap = details.locator("figure.heatmap svg").first
    expect(heatmap).to_be_visible()
    outline = heatmap.locator('rect.outline-prereg[data-component="L5.H7"]')
    expect(outline).to_have_count(1)
    cell = heatmap.locator('g.cell.prereg[data-component="L5.H7"] rect')
    box, ring = cell.bounding_box(), outline.bounding_box()
    assert box and ring and abs(box["x"] - ring["x"]) < 3 and abs(box["width"] - ring["width"]) < 4
    # the strongest cell is dark: its label is white
    expect(heatmap.locator('g[data-component="L5.H7"] text')).to_have_attribute("fill", "#ffffff")
    expect(details.locator("figure.heatmap figcaption")).to_contain_text(
        "black outline: pre-registered L5.H7"
    )


@pytest.mark.slow
def test_compare_in_a_browser(
    finished: tuple[str, Store, dict[str, dict[str, int]]], browser_page: Page, tmp_path: Path
) -> None:
    base, _, ids = finished
    page = browser_page
    minilm, tasb, lnc1 = (ids[k]["investigation"] for k in ("minilm", "tasb", "lnc1"))
    page.goto(f"{base}/investigations/{minilm}")
    page.get_by_role("link", name="Compare with…").click()
    expect(page.locator("select[name=a]")).to_have_value(str(minilm))
    page.locator("select[name=b]").select_option(str(tasb))
    page.get_by_role("button", name="Compare").click()
    rows = page.locator("table.compare tbody tr")
    expect(rows).to_have_count(8)
    expect(page.locator('table.compare tr[data-paired="yes"]')).to_have_count(5)
    behaviour = page.locator('table.compare tr[data-paired="yes"]').first
    expect(behaviour.locator("td.side-a")).to_contain_text("supported")
    expect(behaviour.locator("td.side-b")).to_contain_text("inconclusive")
    expect(behaviour.locator("td").nth(3)).to_have_text("-0.28")
    alone = page.locator('table.compare tr[data-paired="no"]')
    expect(alone).to_have_count(3)
    expect(alone.nth(1).locator("td.side-a")).to_contain_text("Circuit")
    expect(alone.nth(1).locator("td.side-b")).to_have_text("not tested")
    expect(page.locator("table.compare-summary")).to_contain_text("supported")
    shoot(page, tmp_path, "compare")
    page.goto(f"{base}/compare?a={minilm}&b={lnc1}")
    expect(page.locator('table.compare tr[data-paired="yes"]')).to_have_count(0)
    expect(page.locator('table.compare tr[data-paired="no"]')).to_have_count(9)


@pytest.mark.slow
def test_error_pages_in_a_browser(
    finished: tuple[str, Store, dict[str, dict[str, int]]], browser_page: Page
) -> None:
    base, store, ids = finished
    page = browser_page
    cases = [
        ("/evidence/999", 404, "Not found"),
        ("/evidence/0", 404, "Not found"),
        (f"/evidence/{2**63}", 404, "Not found"),
        ("/hypotheses/abc", 422, "Invalid request"),
        ("/compare?a=x", 422, "Invalid request"),
    ]
    for url, status, title in cases:
        response = page.goto(base + url)
        assert response is not None and response.status == status, url
        expect(page.locator("main h1")).to_contain_text(title)
        expect(page.locator("header.top")).to_be_visible()  # the styled page, not raw JSON
    hyp = ids["tasb"]["behaviour"]
    page.goto(f"{base}/hypotheses/{hyp}")
    form = page.locator("form.review-form")
    form.locator("input[name=reviewer]").fill("   ")
    form.locator("input[name=comment]").fill("the held-out CI is too wide")
    with page.expect_response(lambda r: r.url.endswith("/review")) as reply:
        form.get_by_role("button", name="Dispute verdict").click()
    assert reply.value.status == 400
    expect(page.locator("p.error").first).to_contain_text("a review needs a reviewer name")
    expect(page.locator("form.review-form input[name=comment]")).to_have_value(
        "the held-out CI is too wide"
    )
    assert store.list_reviews(hypothesis_id=hyp) == []


@pytest.mark.slow
def test_sort_and_filter_a_large_table_in_a_browser(
    finished: tuple[str, Store, dict[str, dict[str, int]]], browser_page: Page
) -> None:
    base, store, ids = finished
    page = browser_page
    evidence = ids["minilm"]["screen_evidence"]
    page.goto(f"{base}/evidence/{evidence}")
    table = page.locator(f'table[id="t-{evidence}-pair_scores"]')
    expect(table.locator("tbody tr")).to_have_count(6912)
    values = [row["s_patched"] for row in store.get_evidence([evidence])[0].tables["pair_scores"]]
    column = 4  # pair, qid, component, s_base, s_patched
    header = table.locator("thead th").nth(column)
    start = time.perf_counter()
    header.locator("button").click()
    expect(header).to_have_attribute("aria-sort", "ascending")
    first = table.locator("tbody tr").first.locator("td").nth(column)
    expect(first).to_have_text(f"{min(values):.4g}")
    header.locator("button").click()
    expect(header).to_have_attribute("aria-sort", "descending")
    expect(first).to_have_text(f"{max(values):.4g}")
    assert time.perf_counter() - start < 10
    tools = page.locator(".table-tools").filter(has=page.locator('[aria-label*="pair_scores"]'))
    tools.locator("input.table-filter").fill("q03 L3.H3")
    shown = sum(1 for i in range(6912) if i % 14 == 3 and i % 6 == 3 and i % 12 == 3)
    expect(tools.locator(".table-count")).to_have_text(f"{shown} of 6912 rows shown")
