"""The tools' side of the evidence contract (docs/evidence_contract.md §1, §2): declared
estimates come with per-query values, checked against hand computations; run facts are not
metrics; descriptive numbers are declared descriptive."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
import pytest
import torch

from rankscope.tools.catalog.common import load_pairs
from rankscope.tools.contract import Tool, ToolContext, ToolResult
from rankscope.tools.data.source import resolve_data
from rankscope.tools.metric_keys import MetricSpec, declare, estimate, scalar
from rankscope.tools.registry import all_tools, get_tool, validate_args
from rankscope.tools.retrievers import load_retriever
from rankscope.tools.stats import QueryValue, per_query_from_rows, per_query_rows
from tests.agent_support import mean_bert
from tests.test_agent_graph import CATALOGUE_RUNS
from tests.tiny_models import save_tiny_model, save_tiny_splade

torch.set_num_threads(1)

OTHER_KINDS = {"attention_masking": "cross", "term_contributions": "splade"}
"""Tools that need another kind of model than the tiny mean-pooled bi-encoder."""

COUNTS = ("n_pairs", "n_queries", "n_components", "n_dropped", "top_layer", "top_head", "n_docs")


@pytest.fixture(scope="module")
def retrievers(tmp_path_factory) -> dict[str, Any]:
    """The tiny models of the catalogue test, loaded once."""
    tmp = tmp_path_factory.mktemp("models")
    models = {
        "mean": mean_bert(tmp / "mean"),
        "cross": save_tiny_model(tmp / "cross", "bert", "cross-encoder"),
        "splade": save_tiny_splade(tmp / "splade"),
    }
    return {kind: load_retriever(str(path)) for kind, path in models.items()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, retrievers) -> dict[str, list[tuple[Tool[Any], Any, ToolResult]]]:
    """Every call of the agent graph's catalogue test, run once: (tool, args, result)."""
    tmp = tmp_path_factory.mktemp("contract")
    data = resolve_data(None)
    out: dict[str, list[tuple[Tool[Any], Any, ToolResult]]] = {}
    for name, calls in CATALOGUE_RUNS.items():
        tool = get_tool(name)
        retriever = retrievers[OTHER_KINDS.get(name, "mean")]
        for i, raw in enumerate(calls):
            args = validate_args(tool, raw)
            ctx = ToolContext(lambda r=retriever: r, data, tmp / f"{name}{i}", progress=False)
            out.setdefault(name, []).append((tool, args, tool.run(ctx, args)))
    return out


def test_every_declared_estimate_has_per_query_values(runs):
    assert set(runs) == set(all_tools())
    for name, calls in runs.items():
        for tool, args, result in calls:
            estimates = [k for k in result.metrics if tool.metric_spec(args, k).kind == "estimate"]
            missing = [k for k in estimates if not result.per_query.get(k)]
            assert not missing, f"{name}: estimates without per-query values: {missing}"
            extra = [k for k in result.per_query if k not in estimates]
            assert not extra, f"{name}: per-query values of no declared estimate: {extra}"
            for key, values in result.per_query.items():
                assert all(isinstance(v, QueryValue) and v.n_pairs > 0 for v in values), key
                assert len({v.qid for v in values}) == len(values), f"{name} {key}: a qid twice"
                rows = per_query_rows({key: values})
                assert per_query_from_rows(rows) == {key: values}


def test_the_tools_with_a_per_query_unit_declare_estimates(runs):
    with_estimates = {
        name for name, calls in runs.items() for tool, args, result in calls if result.per_query
    }
    assert with_estimates >= {
        "behavioural_test",
        "activation_patching",
        "attribution_patching",
        "path_patching",
        "ablation",
        "attention_by_role",
        "attention_masking",
        "term_contributions",
    }


def test_no_metric_is_a_timing_and_run_facts_carry_them(runs):
    for name, calls in runs.items():
        for _tool, _args, result in calls:
            timed = [k for k in result.metrics if "second" in k]
            assert not timed, f"{name} puts timings into metrics: {timed}"
            for fact, value in result.run_facts.items():
                assert isinstance(value, float | str), (name, fact)
    facts = {name: calls[0][2].run_facts for name, calls in runs.items()}
    assert "seconds" in facts["embedding_svd"] and "seconds" in facts["steering"]
    assert {"collect_seconds", "probe_seconds"} <= set(facts["linear_probe"])


CROSS_FITTED = {("token_screen", "top_delta")}
"""``top_`` metrics that are estimates all the same: each query is measured on the token the
other half of the queries picked, so the selection never sees the values it is judged by."""


def test_counts_locations_and_own_statistics_are_descriptive(runs):
    for name, calls in runs.items():
        for tool, args, result in calls:
            for key in result.metrics:
                spec = tool.metric_spec(args, key)
                assert spec is not None, f"{name}: {key} undeclared"
                assert spec.meaning, f"{name}: {key} has no meaning"
                selected = key.startswith("top_") and (name, key) not in CROSS_FITTED
                if key in COUNTS or selected or "_ci_" in key or "p_value" in key:
                    assert spec.kind == "descriptive", f"{name}: {key} declared an estimate"
                if spec.kind == "estimate":
                    assert spec.family, f"{name}: {key} has no SESOI family"
    patching = runs["activation_patching"][0][0]
    args = runs["activation_patching"][0][1]
    assert patching.metric_spec(args, "effect_ci_low[L0.H1]").kind == "descriptive"
    assert patching.metric_spec(args, "effect[L0.H1]").family == "patching_fraction"
    assert patching.metric_spec(args, "effect_score[L0.H1]").kind == "descriptive"
    attribution, attribution_args = runs["attribution_patching"][0][:2]
    assert attribution.metric_spec(attribution_args, "effect[L0.H1]").approximate
    behaviour, behaviour_args = runs["behavioural_test"][0][:2]
    share = behaviour.metric_spec(behaviour_args, "share_moved_predicted")
    assert (share.kind, share.family, share.null_value) == ("estimate", "behaviour_share", 0.5)
    screen = get_tool("attention_by_role")
    screen_args = validate_args(screen, {"n_pairs": 8})
    assert screen.metric_spec(screen_args, "attention[L0.H1|doc->cls]").kind == "descriptive"


def test_behavioural_test_per_query_values_by_hand(runs, retrievers, tmp_path):
    """Scores by hand through the retriever, grouped by qid."""
    tool, args, result = runs["behavioural_test"][0]
    retriever = retrievers["mean"]
    ctx = ToolContext(lambda: retriever, resolve_data(None), tmp_path, progress=False)
    pairs = list(load_pairs(ctx, args, aligned=args.aligned))
    by_qid: dict[str, list[float]] = defaultdict(list)
    for pair in pairs:
        base, pert = retriever.score([pair.query] * 2, [pair.baseline, pair.perturbed]).tolist()
        by_qid[pair.qid].append(pert - base)
    expected_mean = {q: float(np.mean(d)) for q, d in by_qid.items()}
    expected_median = {q: float(np.median(d)) for q, d in by_qid.items()}
    expected_share = {q: float(np.mean(np.array(d) > 0)) for q, d in by_qid.items()}
    for key, expected in (
        ("mean_delta", expected_mean),
        ("median_delta", expected_median),
        ("share_moved_predicted", expected_share),
    ):
        got = {v.qid: v.value for v in result.per_query[key]}
        assert got.keys() == expected.keys()
        for qid, value in expected.items():
            assert got[qid] == pytest.approx(value, abs=1e-5), (key, qid)
    n_pairs = {v.qid: v.n_pairs for v in result.per_query["mean_delta"]}
    assert n_pairs == {q: len(d) for q, d in by_qid.items()}
    # the estimate is the mean over queries, not over pairs
    assert np.mean(list(expected_mean.values())) == pytest.approx(
        np.mean([v.value for v in result.per_query["mean_delta"]]), abs=1e-6
    )


def test_activation_patching_effect_is_the_fraction_by_hand(runs):
    """Per query: the sum over its pairs of (s_patched − s_base) over the sum of Δ, from the
    plain per-pair scores the tool stores; the score-unit change is the mean numerator."""
    tool, args, result = runs["activation_patching"][0]
    rows = result.tables["pair_scores"]
    assert rows, "no per-pair scores stored"
    num: dict[tuple[str, str], float] = defaultdict(float)
    den: dict[tuple[str, str], float] = defaultdict(float)
    score: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        cell = (row["component"], row["qid"])
        num[cell] += row["s_patched"] - row["s_base"]
        den[cell] += row["s_pert"] - row["s_base"]
        score[row["component"]].append(row["s_patched"] - row["s_base"])
    components = {row["component"] for row in rows}
    assert "L0.H1+L1.H2" in components
    for component in components:
        got = {v.qid: v for v in result.per_query[f"effect[{component}]"]}
        expected = {q: num[(c, q)] / den[(c, q)] for c, q in num if c == component}
        assert got.keys() == expected.keys()
        for qid, value in expected.items():
            assert got[qid].value == pytest.approx(value, rel=1e-6, abs=1e-9)
        assert result.metrics[f"effect[{component}]"] == pytest.approx(
            np.mean(list(expected.values()))
        )
        assert result.metrics[f"effect_score[{component}]"] == pytest.approx(
            np.mean(score[component])
        )
    assert all("sign_disagrees" in row for row in result.tables["effects"])


def test_sign_disagreement_is_flagged_in_the_summary():
    from rankscope.tools.interventions.patching import PatchScores
    from rankscope.tools.interventions.report import effect_report, sign_note

    # one pair with a large Δ pulls the ratio of means negative, many small ones the robust
    # effect positive
    s_base = np.zeros(4)
    s_pert = np.array([1.0, 1.0, 1.0, 100.0])
    s_patched = np.array([[1.0], [1.0], [1.0], [-50.0]])
    scores = PatchScores(
        names=["L0.H1"],
        s_base=s_base,
        s_pert=s_pert,
        s_patched=s_patched,
        applicable=np.ones((4, 1), dtype=bool),
        relevance=[None] * 4,
        direction="denoising",
        qids=["q1"] * 4,
    )
    report = effect_report(scores, "classic")
    assert report.sign_disagreements == ["L0.H1"]
    assert "L0.H1" in sign_note(report)
    assert report.metrics["effect[L0.H1]"] == pytest.approx(-47 / 103)


def test_spec_for_gives_ci_bounds_a_descriptive_spec():
    catalogue = declare(
        estimate(scalar("mean_delta", ci=True), family="score_delta", meaning="m", unit="score"),
        "n_pairs",
    )
    assert catalogue.is_estimate("mean_delta")
    assert not catalogue.is_estimate("mean_delta_ci_low")
    assert not catalogue.is_estimate("n_pairs")
    assert catalogue.spec_for("nothing") is None
    assert catalogue.estimate_patterns() == ["mean_delta"]
    with pytest.raises(ValueError, match="family"):
        MetricSpec("x", kind="estimate")
