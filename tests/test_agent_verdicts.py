"""Verdict rules on constructed evidence, and a property test on a model with no effect."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rankscope.agent.planners.base import Criterion, Proposal
from rankscope.agent.state import Budget
from rankscope.agent.verdicts import corrected_alpha, decide, evaluate_split
from rankscope.experiments_db.engine import open_store
from tests.agent_support import ScriptedPlanner, null_bert, run

torch.set_num_threads(1)


def crit(**kw) -> Criterion:
    base = {"metric": "m", "direction": "greater", "threshold": 0.0}
    return Criterion(**{**base, **kw})


def ev(value, low=None, high=None, p=None, name="m"):
    metrics = {name: value}
    if low is not None:
        metrics[f"{name}_ci_low"] = low
        metrics[f"{name}_ci_high"] = high
    if p is not None:
        metrics["p_value"] = p
    return metrics


def test_greater_met_contradicted_undetermined():
    c = crit(threshold=0.1)
    assert evaluate_split(c, ev(0.3, 0.2, 0.4, 0.001), split="discovery").outcome == "met"
    assert evaluate_split(c, ev(0.0, -0.1, 0.05), split="discovery").outcome == "contradicted"
    assert evaluate_split(c, ev(0.15, 0.05, 0.25), split="discovery").outcome == "undetermined"
    # CI above the threshold but p not below alpha: not met
    assert evaluate_split(c, ev(0.3, 0.2, 0.4, 0.2), split="discovery").outcome == "undetermined"


def test_less_is_the_mirror_image():
    c = crit(direction="less", threshold=-0.1)
    assert evaluate_split(c, ev(-0.3, -0.4, -0.2, 0.01), split="d").outcome == "met"
    assert evaluate_split(c, ev(0.1, 0.0, 0.2), split="d").outcome == "contradicted"
    assert evaluate_split(c, ev(-0.1, -0.2, 0.0), split="d").outcome == "undetermined"


def test_two_sided_means_magnitude_beyond_threshold():
    c = crit(direction="two-sided", threshold=0.1)
    assert evaluate_split(c, ev(-0.3, -0.4, -0.2, 0.01), split="d").outcome == "met"
    assert evaluate_split(c, ev(0.3, 0.2, 0.4, 0.01), split="d").outcome == "met"
    assert evaluate_split(c, ev(0.0, -0.05, 0.05), split="d").outcome == "contradicted"


def test_without_ci_the_value_and_p_decide_and_no_uncertainty_never_supports():
    c = crit(threshold=0.5)
    assert evaluate_split(c, ev(0.8, p=0.01), split="d").outcome == "met"
    assert evaluate_split(c, ev(0.3, p=0.4), split="d").outcome == "contradicted"
    assert evaluate_split(c, ev(0.8, p=0.4), split="d").outcome == "undetermined"
    bare = evaluate_split(c, ev(0.9), split="d")
    assert bare.outcome == "undetermined" and "no uncertainty" in bare.reason


def test_missing_and_nan_metrics_are_undetermined():
    c = crit()
    assert "no metric" in evaluate_split(c, {"x": 1.0}, split="d").reason
    assert evaluate_split(c, {"m": None}, split="d").outcome == "undetermined"
    assert evaluate_split(c, {"m": float("nan")}, split="d").outcome == "undetermined"


def test_component_keys_and_bracketed_p_values():
    c = crit(metric="effect[L1.H6]", threshold=0.05)
    metrics = {
        "effect[L1.H6]": 0.3,
        "effect_ci_low[L1.H6]": 0.2,
        "effect_ci_high[L1.H6]": 0.4,
        "p_value[L1.H6]": 0.001,
        "p_value": 0.9,
    }
    result = evaluate_split(c, metrics, split="d")
    assert result.outcome == "met" and result.p_value == 0.001 and result.ci_low == 0.2


def test_bonferroni_and_holm():
    c = crit(metric="effect[L0.H1]", correction="bonferroni", n_tests=4)
    level, _ = corrected_alpha(c, 0.02, {}, [])
    assert level == pytest.approx(0.0125)
    holm = crit(metric="effect[L0.H1]", correction="holm", n_tests=3)
    family = {"p_value[L0.H0]": 0.001, "p_value[L0.H1]": 0.02, "p_value[L0.H2]": 0.5}
    comps = ["L0.H0", "L0.H1", "L0.H2"]
    level, rank = corrected_alpha(holm, 0.02, family, comps)
    assert rank == 2 and level == pytest.approx(0.025)
    # step-down: a smaller p-value that fails blocks the larger ones
    blocked = {"p_value[L0.H0]": 0.03, "p_value[L0.H1]": 0.031, "p_value[L0.H2]": 0.5}
    level, _ = corrected_alpha(holm, 0.031, blocked, comps)
    assert level == 0.0
    # a criterion that says several tests but no correction is still corrected
    level, _ = corrected_alpha(crit(n_tests=5), 0.02, {}, [])
    assert level == pytest.approx(0.01)
    metrics = {"effect[L0.H1]": 0.3, "effect[L0.H1]_ci_low": 0.2, "effect[L0.H1]_ci_high": 0.4}
    result = evaluate_split(holm, {**metrics, **family}, split="d", components=comps)
    assert result.outcome == "met" and result.holm_rank == 2


def test_decide_combines_discovery_and_replication():
    c = crit(threshold=0.1)
    met = evaluate_split(c, ev(0.3, 0.2, 0.4, 0.001), split="discovery")
    wrong = evaluate_split(c, ev(0.0, -0.1, 0.05), split="holdout")
    unsure = evaluate_split(c, ev(0.15, 0.05, 0.25), split="holdout")
    assert decide(met, met).status == "supported"
    assert decide(met, wrong).status == "refuted"
    assert "did not replicate" in decide(met, wrong).reason
    assert decide(met, unsure).status == "inconclusive"
    assert decide(met, None, replication_note="budget").status == "inconclusive"
    assert decide(wrong).status == "refuted"
    assert decide(unsure).status == "inconclusive"
    assert decide(None).status == "inconclusive"


def test_approximate_evidence_never_supports_alone():
    c = crit(threshold=0.1)
    approx = evaluate_split(c, ev(0.9, 0.8, 1.0, 1e-9), split="discovery", approximate=True)
    assert approx.outcome == "met"
    assert decide(approx, approx).status == "inconclusive"
    exact = evaluate_split(c, ev(0.9, 0.8, 1.0, 1e-9), split="holdout")
    assert decide(approx, exact).status == "inconclusive"


def test_criterion_result_has_the_numbers():
    c = crit(threshold=0.1)
    met = evaluate_split(c, ev(0.3, 0.2, 0.4, 0.001), split="discovery")
    result = decide(met, met).criterion_result()
    assert result["value"] == 0.3 and result["ci_low"] == 0.2 and result["p_value"] == 0.001
    assert result["corrected_alpha"] == 0.05 and result["replication"]["value"] == 0.3


# -- property: no effect claim is ever supported on a model with no effect --------------------

EFFECT_TOOLS = {
    "behavioural_test": ["share_moved_predicted", "mean_delta", "median_delta", "mean_rank_gain"],
    "activation_patching": ["effect[{c}]", "top_effect"],
    "attribution_patching": ["effect[{c}]", "top_effect"],
    "ablation": ["effect[{c}]", "delta_reduction"],
    "path_patching": ["effect[{c}]"],
}
COMPONENTS = [f"L{layer}.H{head}" for layer in range(2) for head in range(4)]


@st.composite
def effect_claims(draw):
    """A random claim of an effect: a tool, a metric, components, and a threshold on the effect
    side of "no effect" (greater than t >= 0, less than t <= 0, or |effect| > t >= 0)."""
    from rankscope.tools.registry import all_tools

    tools = [t for t in EFFECT_TOOLS if t in all_tools()]
    tool = draw(st.sampled_from(tools))
    comps = draw(st.lists(st.sampled_from(COMPONENTS), min_size=1, max_size=3, unique=True))
    metric = draw(st.sampled_from(EFFECT_TOOLS[tool])).format(c=comps[0])
    direction = draw(st.sampled_from(["greater", "less", "two-sided"]))
    size = draw(st.floats(0.0, 1.0, allow_nan=False))
    threshold = -size if direction == "less" else size
    correction = draw(st.sampled_from(["none", "holm", "bonferroni"]))
    args = {"n_pairs": 8, "seed": draw(st.integers(0, 3))}
    if tool == "behavioural_test":
        args["n_bootstrap"] = 200
    else:
        args["components"] = comps
    return Proposal(
        hypothesis=f"{tool}: {metric} {direction} {threshold:g}",
        tool=tool,
        args=args,
        criterion=Criterion(
            metric=metric,
            direction=direction,
            threshold=threshold,
            alpha=draw(st.sampled_from([0.01, 0.05, 0.2])),
            correction=correction,
            n_tests=len(comps) if correction != "none" else 1,
        ),
        components=comps,
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
    effect (see ``null_bert``) never gets ``supported``: the rules need a CI beyond the threshold
    and a significant p-value on discovery AND on held-out queries, which exact zero effects never
    give. (A plain random BERT would not do: with mean pooling it genuinely rewards appended
    query terms, so claims about it can be true.)"""
    with tempfile.TemporaryDirectory() as tmp:
        planner = ScriptedPlanner(list(claims))
        run(Path(tmp), null_model, planner, Budget(max_steps=4, max_tool_calls=6))
        with open_store(f"sqlite:///{Path(tmp) / 't.db'}") as store:
            tree = store.investigation_tree(1)
            verdicts = [v.status for h in tree.hypotheses for v in h.verdicts]
            store.close()
    assert "supported" not in verdicts
