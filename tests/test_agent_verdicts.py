"""Verdict rules on constructed per-query evidence, and a property test on a model with no effect."""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import stats

from rankscope.agent.planners.base import Criterion, Proposal
from rankscope.agent.policy import StatsPolicy
from rankscope.agent.state import Budget
from rankscope.agent.verdicts import criterion_problem, decide, evaluate_split
from rankscope.experiments_db.engine import open_store
from rankscope.experiments_db.records import EvidenceRecord
from rankscope.tools.metric_keys import MetricSpec, estimate, per_component
from tests.agent_support import ScriptedPlanner, null_bert, run

torch.set_num_threads(1)

POLICY = StatsPolicy()
SHIFT = estimate("m", family="score_delta", meaning="score change", unit="score")
SHARE = estimate("s", family="behaviour_share", meaning="share", unit="share", null_value=0.5)
EFFECT = estimate(per_component("effect"), family="patching_effect", meaning="effect", unit="score")


def crit(**kw) -> Criterion:
    base = {"metric": "m", "direction": "greater", "threshold": 0.0}
    return Criterion(**{**base, **kw})


def ev(values, metric: str = "m", n_pairs: int = 3, offset: int = 0, extra=()) -> EvidenceRecord:
    """Evidence with one per-query value per query (``q{offset+i}``) of ``metric``."""
    rows = [
        {"metric": metric, "qid": f"q{offset + i}", "n_pairs": n_pairs, "value": float(v)}
        for i, v in enumerate(values)
    ]
    for key in extra:
        rows += [{**r, "metric": key} for r in rows if r["metric"] == metric]
    return EvidenceRecord(
        id=1,
        experiment_id=1,
        metrics={metric: float(np.mean(values)), "p_value": 0.0},
        summary="",
        tables={"per_query": rows},
        approximate=False,
        created_at=datetime.now(UTC),
    )


def split(c: Criterion, evidence: EvidenceRecord, spec: MetricSpec | None = SHIFT, level=0.05):
    return evaluate_split(c, evidence, split="discovery", spec=spec, policy=POLICY, level=level)


RNG = np.random.default_rng(0)
BIG = RNG.normal(0.05, 0.01, 12)
TINY = RNG.normal(0.0, 0.001, 12)


def test_met_contradicted_negligible_and_undetermined():
    assert split(crit(), ev(BIG)).outcome == "met"
    negligible = split(crit(), ev(TINY))
    assert negligible.outcome == "contradicted" and negligible.negligible
    assert negligible.reason.startswith("negligible")
    wrong = split(crit(), ev(-BIG))
    assert wrong.outcome == "contradicted" and not wrong.negligible
    assert split(crit(direction="less"), ev(-BIG)).outcome == "met"
    few = split(crit(), ev(BIG[:5]))
    assert few.outcome == "undetermined" and "5 queries" in few.reason
    pairs = split(crit(), ev(BIG, n_pairs=1))
    assert pairs.outcome == "undetermined" and "12 pairs" in pairs.reason


def test_one_query_decides_nothing_and_constant_values_get_a_sign_test():
    """One query: no inference. Every query with the same value: no t-test exists, so the exact
    sign test decides (p = 0.5**12 here), never a p of 0 — and never below the policy's minimum
    number of queries."""
    assert split(crit(), ev([0.9])).outcome == "undetermined"
    constant = split(crit(), ev([0.9] * 12))
    assert constant.outcome == "met" and constant.p_value == pytest.approx(0.5**12)
    assert split(crit(), ev([0.9] * 5)).outcome == "undetermined"


def test_the_test_is_against_the_effective_threshold_not_zero():
    """p-value and CI checked against scipy: t-test vs max(threshold, null + SESOI)."""
    result = split(crit(threshold=-1000.0), ev(BIG))
    assert result.effective_threshold == pytest.approx(POLICY.sesoi_for("score_delta"))
    expected = stats.ttest_1samp(BIG, 0.01, alternative="greater").pvalue
    assert result.p_value == pytest.approx(expected)
    assert result.ci_level == pytest.approx(1 - 2 * 0.05)
    share = split(crit(metric="s", threshold=0.0), ev(0.55 + 0.01 * BIG, "s"), SHARE)
    assert share.effective_threshold == pytest.approx(0.6) and share.outcome != "met"


def test_descriptive_or_missing_metrics_never_decide():
    assert split(crit(), ev(BIG), spec=None).outcome == "undetermined"
    described = MetricSpec("m")
    assert split(crit(), ev(BIG), spec=described).outcome == "undetermined"
    assert split(crit(metric="other"), ev(BIG)).outcome == "undetermined"


def test_engine_counts_the_tests_of_the_call():
    c = crit(metric="effect[L0.H1]")
    evidence = ev(BIG, "effect[L0.H1]", extra=[f"effect[L0.H{h}]" for h in range(2, 6)])
    result = split(c, evidence, EFFECT, level=0.05)
    assert result.n_tests == 5 and result.corrected_alpha == pytest.approx(0.01)
    assert result.ci_level == pytest.approx(1 - 2 * 0.01)


def test_pre_registration_refusals():
    assert "descriptive" in (criterion_problem(crit(), [], MetricSpec("m"), POLICY) or "")
    assert "not declared" in (criterion_problem(crit(), [], None, POLICY, ["x"]) or "")
    assert "above" in (criterion_problem(crit(alpha=0.2), [], SHIFT, POLICY) or "")
    assert "discovery" in (criterion_problem(crit(split="holdout"), [], SHIFT, POLICY) or "")
    assert "two-sided" in (criterion_problem(crit(direction="two-sided"), [], SHIFT, POLICY) or "")
    assert criterion_problem(crit(alpha=0.01), [], SHIFT, POLICY) is None
    bound = crit(metric="effect[L5.H9]")
    assert criterion_problem(bound, ["L5.H9"], EFFECT, POLICY) is None
    assert "exactly those components" in (criterion_problem(crit(), ["L5.H9"], SHIFT, POLICY) or "")
    joint = crit(metric="effect[L5.H7+L5.H5]")
    assert criterion_problem(joint, ["L5.H5", "L5.H7"], EFFECT, POLICY) is None


def test_hypothesis_rules():
    met = split(crit(), ev(BIG))
    wrong = split(crit(), ev(-BIG))
    unsure = split(crit(), ev(BIG[:3]))
    negligible = split(crit(), ev(TINY))
    assert decide(met, met).status == "supported"
    assert decide(met, wrong).status == "refuted"
    assert "did not replicate" in decide(met, wrong).reason
    assert decide(met, unsure).status == "inconclusive"
    assert decide(met, None, replication_note="budget").status == "inconclusive"
    assert decide(met, met, exploratory_of=1).status == "inconclusive"
    assert decide(wrong).status == "refuted"
    small = decide(negligible)
    assert small.status == "refuted" and small.negligible
    assert decide(unsure).status == "inconclusive"
    assert decide(None).status == "inconclusive"
    approx = met.model_copy(update={"approximate": True})
    assert decide(approx, met).status == "inconclusive"
    for outcome in (wrong, negligible):
        rough = decide(outcome.model_copy(update={"approximate": True}))
        assert rough.status == "inconclusive"
        assert "neither support nor refute" in rough.reason


def test_criterion_result_keeps_the_keys_readers_use():
    met = split(crit(), ev(BIG))
    result = decide(met, met).criterion_result()
    for key in ("status", "reason", "replication", "notes", "corrected_alpha", "level_spent"):
        assert key in result
    assert result["replication"]["outcome"] == "met"


# -- property: no effect claim is ever supported on a model with no effect --------------------

EFFECT_METRICS = {
    "behavioural_test": ["share_moved_predicted", "mean_delta", "median_delta", "mean_rank_gain"],
    "ablation": ["delta_change[{c}]"],
}
"""Declared estimates a claim can rest on, per tool ({c}: the component the claim names)."""
NULLS = {"share_moved_predicted": 0.5}
COMPONENTS = [f"L{layer}.H{head}" for layer in range(2) for head in range(4)]


@st.composite
def effect_claims(draw):
    """A random claim of an effect that the rules accept for testing: a declared estimate (bound
    to the one component it names), a threshold on the effect side of "no effect", an alpha the
    policy allows and enough pairs to reach the policy's minimum numbers of queries and pairs."""
    tool = draw(st.sampled_from(sorted(EFFECT_METRICS)))
    comp = draw(st.sampled_from(COMPONENTS))
    metric = draw(st.sampled_from(EFFECT_METRICS[tool])).format(c=comp)
    direction = draw(st.sampled_from(["greater", "less"]))
    null = NULLS.get(metric, 0.0)
    size = draw(st.floats(0.0, 0.5, allow_nan=False))
    threshold = null - size if direction == "less" else null + size
    args = {"n_pairs": 64, "seed": draw(st.integers(0, 3))}
    if tool == "behavioural_test":
        args["n_bootstrap"] = 200
    else:
        args["components"] = [comp]
    return Proposal(
        hypothesis=f"{tool}: {metric} {direction} {threshold:g}",
        tool=tool,
        args=args,
        criterion=Criterion(
            metric=metric,
            direction=direction,
            threshold=threshold,
            alpha=draw(st.sampled_from([0.01, 0.05])),
        ),
        components=[] if tool == "behavioural_test" else [comp],
    )


@pytest.fixture(scope="module")
def null_model(tmp_path_factory) -> Path:
    return null_bert(tmp_path_factory.mktemp("null-bert"))


@settings(
    max_examples=6,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(claims=st.lists(effect_claims(), min_size=1, max_size=2))
def test_random_effect_claims_about_a_model_without_effects_are_never_supported(null_model, claims):
    """A planner proposing random effect claims about a random tiny BERT that provably has no
    effect (see ``null_bert``) never gets ``supported``. The claims are ones the rules accept, and
    the test checks that each was pre-registered and measured, so it cannot pass by refusing
    everything. (A plain random BERT would not do: with mean pooling it genuinely rewards
    appended query terms, so claims about it can be true.)"""
    with tempfile.TemporaryDirectory() as tmp:
        planner = ScriptedPlanner(list(claims))
        run(Path(tmp), null_model, planner, Budget(max_steps=4, max_tool_calls=8))
        with open_store(f"sqlite:///{Path(tmp) / 't.db'}") as store:
            tree = store.investigation_tree(1)
            store.close()
    assert len(tree.hypotheses) == len(claims), [ledger.feedback for ledger in planner.ledgers]
    for node in tree.hypotheses:
        assert any(e.status == "finished" for e in node.experiments), node.text
        assert node.verdicts and node.verdicts[-1].status != "supported", node.text
