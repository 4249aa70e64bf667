"""The answer first: the rule-written answer paragraph, the forest plot, one number per quantity,
compare like with like, unverified verdicts, numbering per investigation, Markdown that reads as
text and the error pages — in the reports, the static export and the review pages (SQLite)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from rankscope.agent.cli import app as cli_app
from rankscope.agent.report_answer import answer, queries_needed
from rankscope.agent.report_facts import (
    Interval,
    labels,
    level_note,
    metric_cells,
    table_columns,
    unverified_of,
)
from rankscope.agent.report_forest import forest, forest_png, forest_svg
from rankscope.agent.report_render import md_escape
from rankscope.agent.reports import write_reports
from rankscope.agent.web import create_app
from rankscope.agent.web.export import export_static
from rankscope.agent.web.views import align, compare_summary
from rankscope.experiments_db import Store, open_store
from tests.web_support import finished_investigation, lnc1_investigation, mark_unverified


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with open_store(f"sqlite:///{tmp_path / 'store.db'}", artifact_dir=tmp_path / "a") as s:
        yield s


@pytest.fixture
def three(store: Store, tmp_path: Path) -> dict[str, dict[str, int]]:
    """MiniLM and TAS-B on the same TFC1 question (TAS-B without a circuit), and an LNC1 one."""
    return {
        "minilm": finished_investigation(store, tmp_path),
        "tasb": finished_investigation(
            store,
            tmp_path,
            model="sentence-transformers/msmarco-distilbert-base-tas-b",
            share=(0.64, 0.55, 0.74),
            circuit=False,
        ),
        "lnc1": lnc1_investigation(store, tmp_path),
    }


def client_for(store: Store) -> TestClient:
    """A test client on the loopback host the workspace answers to."""
    return TestClient(create_app(store), base_url="http://127.0.0.1")


def text_of(html: str) -> str:
    """The visible text of a page, one space between words."""
    return " ".join(re.sub(r"<[^>]+>", " ", html).split())


def test_answer_states_each_verdict_with_its_numbers_and_what_would_decide(
    store: Store, three: dict[str, dict[str, int]]
) -> None:
    tree = store.investigation_tree(three["minilm"]["investigation"])
    names = labels(tree)
    result = answer(tree, names, unverified_of(tree))
    by_kind = {line.kind: line for line in result.lines}
    assert result.lead.startswith("4 of 6 claims decided (3 supported, 1 negligible); 2 undecided")
    assert "0.813 [0.69, 0.926] on discovery and 0.92 [0.835, 0.986] on held-out" in (
        by_kind["supported"].text
    )
    assert "within ± SESOI 0.005 of 0" in by_kind["negligible"].text
    undecided = [line for line in result.lines if line.kind == "undecided"]
    few = next(line for line in undecided if "L5.H11" in line.text)
    assert "needs ≥ 8 queries on discovery (has 5): pass --data" in few.text
    ci = next(line for line in undecided if "L5.H7" in line.text)
    assert "includes 0.005" in ci.text and "queries on discovery (has 14)" in ci.text
    assert by_kind["screen"].text.endswith("exploratory step, claims nothing.")
    circuit = by_kind["circuit"].text
    assert circuit.startswith("supported: 3 heads of layer 5 (L5.H7, L5.H5, L5.H11) together")
    assert "restore 0.66 [0.61, 0.72] of the effect on held-out queries" in circuit
    assert "random sets of 3 heads restore 0.12" in circuit and "p = 0.01" in circuit
    assert "L5.H7 → output 0.27" in circuit
    assert "selected in L5.H7 95%, L5.H5 90%, L5.H11 70% of resampled rankings" in circuit
    assert "random-set control supported: the circuit beats random sets by 0.54 [0.45, 0.63]" in (
        circuit
    )
    assert [label for label, _ in by_kind["circuit"].refs] == ["H7", "H8"]
    tasb = store.investigation_tree(three["tasb"]["investigation"])
    plain = answer(tasb, labels(tasb), {}).plain()
    assert "No circuit was tested" in plain
    lnc1 = store.investigation_tree(three["lnc1"]["investigation"])
    assert "circuit" not in answer(lnc1, labels(lnc1), {}).plain().lower()


def test_queries_needed_extrapolates_the_half_width() -> None:
    iv = Interval("discovery", 0.8, 0.5, 1.1, 0.95, 10, 40, "undetermined")
    assert queries_needed(iv, 0.6) == 23  # 10 * (0.3 / 0.2) ** 2 = 22.5
    assert queries_needed(iv, 0.8) is None


def test_forest_plot_rows_levels_and_accessible_svg(
    store: Store, three: dict[str, dict[str, int]]
) -> None:
    tree = store.investigation_tree(three["minilm"]["investigation"])
    plot = forest(tree, labels(tree), {})
    assert [g.name for g in plot.groups] == [
        "share_moved_predicted",
        "effect",
        "faithfulness",
        "beats_random",
    ]
    assert [r.label for r in plot.rows] == ["H1", "H3", "H4", "H5", "H7", "H8"]
    assert plot.left_out == ["H2 (exploratory step: no claim)", "H6 (exploratory step: no claim)"]
    h1 = plot.rows[0]
    assert h1.holdout is not None and h1.status == "supported"
    assert h1.level.startswith("93.92 % = 1 − 2α with α = 0.0304 after LOND spending")
    assert plot.rows[2].status == "negligible"
    svg = str(forest_svg(plot))
    assert 'role="img"' in svg and "<desc" in svg and svg.count('class="forest-row"') == 6
    assert 'data-verdict="negligible"' in svg and "93.92 %" in svg
    png = forest_png(plot)
    assert png is not None and png[:4] == b"\x89PNG"


def test_one_number_per_quantity(store: Store, three: dict[str, dict[str, int]]) -> None:
    ids = three["minilm"]
    client = client_for(store)
    page = client.get(f"/investigations/{ids['investigation']}").text
    findings = page[page.index('id="findings"') : page.index('id="estimates-note"')]
    # the engine's query-level estimate with its level explained on hover
    assert "0.813 [0.69, 0.926]" in findings
    assert 'title="93.92 % = 1 − 2α with α = 0.0304 after LOND spending' in findings
    # the claim names metric, direction and threshold; the deciding test is named
    assert "share_moved_predicted &gt; 0.6" in findings and "(t-test vs 0.6)" in findings
    assert "TOST p = 1.7e-09" in findings
    # the exploratory screen shows no p-value in Findings, nor a tool p column in its evidence
    screen_row = re.search(r'<tr class="exploratory">.*?</tr>', findings, re.S)
    assert screen_row is not None and "p =" not in screen_row.group(0)
    evidence = client.get(f"/evidence/{ids['screen_evidence']}").text
    assert "tool&#39;s p" not in evidence and "tool's own pair-level CI" in evidence
    # CI bounds folded into the estimate's cell, not separate rows
    assert "effect_ci_low[L5.H7]" not in evidence and "0.0049 [0.0032, 0.0067]" in evidence
    assert "effect [CI]" in evidence  # the stored table's ci_low/ci_high folded too
    level = level_note({"ci_level": 0.9865, "corrected_alpha": 0.00675, "lond_index": 3})
    assert level.startswith("98.65 % = 1 − 2α with α = 0.00675 after LOND spending")


def test_metric_and_table_folding() -> None:
    cells = metric_cells(
        {
            "x": 1.0,
            "x_ci_low": 0.5,
            "x_ci_high": 1.5,
            "effect[L1.H2]": 2.0,
            "p_value[L1.H2]": 0.01,
            "effect_ci_low[L1.H2]": 1.0,
            "effect_ci_high[L1.H2]": 3.0,
            "n_pairs": 9,
        },
        "effect[L1.H2]",
    )
    assert [c.key for c in cells] == ["effect[L1.H2]", "x", "n_pairs"]
    assert cells[0].text() == "2 [1, 3]" and cells[0].p_value == 0.01
    header = [
        "component",
        "effect",
        "ci_low",
        "ci_high",
        "n",
        "effect_classic",
        "ci_low_classic",
        "ci_high_classic",
        "share",
        "share_ci_low",
        "share_ci_high",
    ]
    folded = {name: (low, high) for name, _, low, high in table_columns(header)}
    assert folded["effect"] == (2, 3) and folded["effect_classic"] == (6, 7)
    assert folded["share"] == (9, 10) and "ci_low" not in folded


def test_compare_pairs_the_same_test_and_only_it(
    store: Store, three: dict[str, dict[str, int]]
) -> None:
    minilm = store.investigation_tree(three["minilm"]["investigation"])
    tasb = store.investigation_tree(three["tasb"]["investigation"])
    lnc1 = store.investigation_tree(three["lnc1"]["investigation"])
    rows = align(minilm, tasb)
    paired = [r for r in rows if r.paired]
    assert len(paired) == 5 and all(r.a.tool_args == r.b.tool_args for r in paired)  # type: ignore[union-attr]
    behaviour = paired[0]
    assert (behaviour.status_a, behaviour.status_b) == ("supported", "inconclusive")
    assert behaviour.difference == pytest.approx(0.64 - 0.92) and not behaviour.agree
    alone = [r.a.id for r in rows if not r.paired]  # type: ignore[union-attr]
    assert alone == [
        three["minilm"]["rank"],
        three["minilm"]["circuit"],
        three["minilm"]["control"],
    ]
    summary = compare_summary(rows)
    assert ("supported", "inconclusive", 1) in summary and ("supported", "not tested", 2) in summary
    assert ("exploratory", "not tested", 1) in summary
    # same claim words, another axiom: not the same test
    assert not any(r.paired for r in align(minilm, lnc1))
    client = client_for(store)
    a, b = three["minilm"]["investigation"], three["tasb"]["investigation"]
    page = client.get(f"/compare?a={a}&b={b}").text
    assert page.count('data-paired="yes"') == 5 and page.count('data-paired="no"') == 3
    assert "Verdict by verdict" in page
    preselected = client.get(f"/compare?a={a}").text
    assert f'<option value="{a}" selected>' in preselected


def test_numbers_per_investigation_and_readable_markdown(
    store: Store, three: dict[str, dict[str, int]], tmp_path: Path
) -> None:
    second = three["tasb"]
    client = client_for(store)
    page = client.get(f"/investigations/{second['investigation']}").text
    assert f'<a href="/hypotheses/{second["behaviour"]}">H1</a>' in page
    assert "Hypothesis H1" in client.get(f"/hypotheses/{second['behaviour']}").text
    md, _ = write_reports(store, second["investigation"], tmp_path / "report")
    text = md.read_text()
    assert "sentence-transformers/msmarco-distilbert-base-tas-b" in text  # no \- escapes
    assert "### H1 — inconclusive" in text and "[0.55, 0.74]" in text
    assert "\\-" not in text and "\\[" not in text.replace("![", "")
    assert "## Answer" in text and "figures/forest.png" in text
    assert (tmp_path / "report" / "figures" / "forest.png").exists()
    assert md_escape("# x") == "\\# x" and md_escape("![a](b)") == "\\![a\\](b)"
    assert (
        md_escape("a_b _c_ <b>") == "a_b \\_c\\_ \\<b>" and md_escape("2026-12-05") == "2026-12-05"
    )


def test_unverified_verdict_is_never_shown_as_a_verdict(
    store: Store, three: dict[str, dict[str, int]], tmp_path: Path
) -> None:
    ids = three["minilm"]
    inv, hyp = ids["investigation"], ids["behaviour"]
    mark_unverified(store, inv, hyp, "inconclusive")
    client = client_for(store)
    pages = {
        "investigation": client.get(f"/investigations/{inv}").text,
        "hypothesis": client.get(f"/hypotheses/{hyp}").text,
        "export": (export_static(store, inv, tmp_path / "export") / "index.html").read_text(),
    }
    for name, html in pages.items():
        assert "bundle claims <b>supported</b> · its evidence gives <b>inconclusive</b>" in html, (
            name
        )
    findings = pages["investigation"].split('id="findings"')[1].split("</table>")[0]
    row = re.search(r'<tr class="unverified">.*?</tr>', findings, re.S)
    assert row is not None and "badge supported" not in row.group(0)
    assert "claims supported, its own evidence gives inconclusive" in text_of(
        pages["investigation"].split('id="answer"')[1].split("</section>")[0]
    )
    listing = client.get("/").text
    assert "1 unverified" in listing
    other = three["tasb"]["investigation"]
    compare = client.get(f"/compare?a={inv}&b={other}").text
    assert "the imported bundle claims supported" in compare
    md, html = write_reports(store, inv, tmp_path / "report")
    text = md.read_text()
    assert "UNVERIFIED (the bundle claims supported; its evidence gives inconclusive)" in text
    assert "**Supported:** H1" not in text and "### H1 — supported" not in text
    shown = CliRunner().invoke(
        cli_app,
        ["show", str(inv), "--db", f"sqlite:///{tmp_path / 'store.db'}"],
        env={"COLUMNS": "200"},
    )
    line = next(ln for ln in shown.output.splitlines() if f"hypothesis {hyp} " in ln)
    assert "UNVERIFIED: bundle claims supported, its evidence gives inconclusive" in line
    assert "[supported]" not in line


def test_error_pages(store: Store, three: dict[str, dict[str, int]]) -> None:
    client = client_for(store)
    for url in (
        "/evidence/999",
        "/evidence/0",
        f"/evidence/{2**63}",
        f"/hypotheses/{10**30}",
        "/investigations/-1",
        "/compare?a=1&b=999",
        f"/artifacts/{2**64}",
    ):
        page = client.get(url)
        assert page.status_code == 404, url
        assert "<h1>Not found" in page.text and page.headers["content-type"].startswith("text/html")
    for url, words in (
        ("/hypotheses/abc", "&#39;abc&#39; is not a whole number"),
        ("/compare?a=x", "a (parameter): &#39;x&#39; is not a whole number"),
    ):
        page = client.get(url)
        assert page.status_code == 422 and "<h1>Invalid request" in page.text, url
        assert words in page.text, url
    hyp = three["minilm"]["behaviour"]
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', client.get(f"/hypotheses/{hyp}").text)
    assert csrf is not None
    form = {
        "csrf_token": csrf.group(1),
        "decision": "dispute",
        "reviewer": " ",
        "comment": "the CI is <b>too wide</b>",
    }
    refused = client.post(f"/hypotheses/{hyp}/review", data=form)
    assert refused.status_code == 400 and "a review needs a reviewer name" in refused.text
    assert 'value="the CI is &lt;b&gt;too wide&lt;/b&gt;"' in refused.text
    no_comment = client.post(
        f"/hypotheses/{hyp}/review", data={**form, "reviewer": "ann", "comment": ""}
    )
    assert no_comment.status_code == 400 and 'value="ann"' in no_comment.text
    bad = client.post(
        f"/hypotheses/{hyp}/review", data={**form, "reviewer": "ann", "decision": "maybe"}
    )
    assert bad.status_code == 400 and "review decision must be one of" in bad.text
    assert store.list_reviews(hypothesis_id=hyp) == []


def test_export_carries_the_answer_the_forest_plot_and_every_table_row(
    store: Store, three: dict[str, dict[str, int]], tmp_path: Path
) -> None:
    ids = three["minilm"]
    folder = export_static(store, ids["investigation"], tmp_path / "export")
    html = (folder / "index.html").read_text()
    assert 'id="answer"' in html and '<svg class="forest"' in html and 'href="forest.png"' in html
    assert (folder / "forest.png").read_bytes()[:4] == b"\x89PNG"
    assert 'class="circuit-json"' in html and '<svg class="circuit"' in html
    csv_files = sorted(p.name for p in (folder / "tables").iterdir())
    assert f"E{ids['screen_evidence']}-effects.csv" in csv_files
    rows = (folder / "tables" / f"E{ids['screen_evidence']}-effects.csv").read_text().splitlines()
    assert rows[0].startswith("component,effect,ci_low,ci_high") and len(rows) == 1 + 72


def test_a_mechanism_patched_jointly_is_not_taken_for_the_circuit_and_roles_are_stated(
    store: Store, three: dict[str, dict[str, int]], tmp_path: Path
) -> None:
    """A later faithfulness claim on every attention block (a mechanism's prediction, no random
    sets drawn) must not replace the circuit the random-set control tested; the role steps
    (position-resolved patching, attention by role) give each member its role."""
    from rankscope.agent.report_circuit import circuit_of
    from rankscope.agent.verdicts import Decision
    from tests.web_support import PATCH_ARGS, _experiment, record_decision, split_result

    inv = three["minilm"]["investigation"]
    blocks = [f"L{layer}.attn" for layer in range(5, -1, -1)]
    args = {**PATCH_ARGS, "members": blocks, "k": 6, "n_random": 0, "target": 0.5}
    hyp = store.preregister_hypothesis(
        inv,
        "Mechanism (heads): all attention outputs patched jointly restore more than 0.5",
        {"metric": "faithfulness", "direction": "greater", "threshold": 0.5},
        tool="circuit",
        tool_args=args,
    )
    ev = _experiment(store, inv, hyp, "circuit", args, {"faithfulness": 0.48}, tmp_path)
    result = split_result(
        "faithfulness", 0.48, 0.13, 0.74, threshold=0.5, null=0.0, sesoi=0.05, level=0.004
    )
    decision = Decision(
        status="inconclusive",
        reason="CI includes the threshold",
        discovery=result,
        level=0.004,
        lond_index=7,
        evidence_ids=[ev],
    )
    record_decision(store, hyp, decision)
    positions = ["L5.H7@injected", "L5.H7@doc", "L5.H5@injected", "L5.H5@doc"]
    _experiment(
        store,
        inv,
        None,
        "activation_patching",
        {**PATCH_ARGS, "components": positions},
        {"effect[L5.H7@injected]": 0.02, "effect[L5.H7@doc]": 0.07, "effect[L5.H5@doc]": 0.01},
        tmp_path,
    )
    _experiment(
        store,
        inv,
        None,
        "attention_by_role",
        {**PATCH_ARGS, "heads": ["L5.H7"], "focus": "injected->same_token"},
        {"attention[L5.H7|injected->same_token]": 0.1, "uniform_attention": 0.02},
        tmp_path,
    )
    tree = store.investigation_tree(inv)
    circuit = circuit_of(tree, unverified_of(tree))
    assert circuit is not None and circuit.members == ["L5.H7", "L5.H5", "L5.H11"]
    assert circuit.status == "supported"
    assert circuit.roles["L5.H7"] == (
        "signal at the document's other tokens (0.07 of the effect; the added term 0.02); "
        "attention injected->same_token 0.1, 5.0× uniform"
    )
    assert circuit.roles["L5.H5"] == "signal at the document's other tokens (0.01 of the effect)"
    assert "L5.H11" not in circuit.roles
    text = answer(tree, labels(tree), unverified_of(tree)).plain()
    assert "3 heads of layer 5 (L5.H7, L5.H5, L5.H11) together restore 0.66" in text
    assert "roles: L5.H7: signal at the document's other tokens" in text
