"""Metric keys: formatting, parsing, round trips, errors, CI and p-value candidates, catalogues."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rankscope.tools.interventions.metrics import component_metrics, top_metrics
from rankscope.tools.metric_keys import (
    MetricKey,
    MetricKeyError,
    breakdown,
    ci_keys,
    declare,
    metric_family,
    metric_key,
    p_keys,
    parse_metric_key,
    per_component,
    scalar,
    try_parse_metric_key,
)

# -- the exact strings of every key shape ---------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        (metric_key("share_moved_predicted"), "share_moved_predicted"),
        (metric_key("share_moved_predicted", stat="ci_low"), "share_moved_predicted_ci_low"),
        (metric_key("top_effect", stat="ci_high"), "top_effect_ci_high"),
        (metric_key("effect", "L5.H7"), "effect[L5.H7]"),
        (metric_key("effect", "L5.H7", "ci_low"), "effect_ci_low[L5.H7]"),
        (metric_key("effect", "L5.H7", stat="ci_high"), "effect_ci_high[L5.H7]"),
        (metric_key("p_value", "L5.H7"), "p_value[L5.H7]"),
        (metric_key("effect", "L5.H7", stat="p_value"), "effect_p_value[L5.H7]"),
        (metric_key("effect", "L5.H7", rel=2), "effect[L5.H7|rel=2]"),
        (metric_key("mean_delta", grade=1), "mean_delta[grade=1]"),
        (metric_key("mean_delta", s="-8"), "mean_delta[s=-8]"),
        (metric_key("effect", "L2.mlp@injected"), "effect[L2.mlp@injected]"),
        (metric_key("delta_change", "L0.H1+L1.H2"), "delta_change[L0.H1+L1.H2]"),
        (metric_key("delta_change", "doc->query@L0,1"), "delta_change[doc->query@L0,1]"),
        (
            metric_key("attention", "L1.H2", tags=["injected->same_token"]),
            "attention[L1.H2|injected->same_token]",
        ),
        (metric_key("x", "c", tags=["t1", "t2"], k="v", j=3), "x[c|t1|t2|k=v|j=3]"),
    ],
)
def test_exact_key_strings(key, expected):
    assert key == expected


def test_the_patching_helpers_write_the_keys_stored_before():
    row = {"component": "L1.H6", "effect": 0.3, "ci_low": 0.1, "ci_high": 0.5, "p_value": 0.01}
    assert list(component_metrics([row])) == [
        "effect[L1.H6]",
        "effect_ci_low[L1.H6]",
        "effect_ci_high[L1.H6]",
        "p_value[L1.H6]",
    ]
    assert list(top_metrics([row])) == [
        "top_effect",
        "top_effect_ci_low",
        "top_effect_ci_high",
        "top_p_value",
    ]


# -- parsing and round trips ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "parsed"),
    [
        ("share_moved_predicted_ci_low", MetricKey("share_moved_predicted_ci_low")),
        ("effect[L5.H7]", MetricKey("effect", "L5.H7")),
        ("effect_ci_low[L5.H7]", MetricKey("effect_ci_low", "L5.H7")),
        ("p_value[L5.H7]", MetricKey("p_value", "L5.H7")),
        ("effect[L5.H7|rel=2]", MetricKey("effect", "L5.H7", (("rel", "2"),))),
        ("mean_delta[grade=1]", MetricKey("mean_delta", None, (("grade", "1"),))),
        (
            "attention[L1.H2|injected->same_token]",
            MetricKey("attention", "L1.H2", tags=("injected->same_token",)),
        ),
        ("x[a b|k=v w]", MetricKey("x", "a b", (("k", "v w"),))),
    ],
)
def test_hand_written_keys_parse_and_round_trip(key, parsed):
    assert parse_metric_key(key) == parsed
    assert str(parsed) == key
    assert (
        metric_key(parsed.name, parsed.component, tags=parsed.tags, **dict(parsed.qualifiers))
        == key
    )


def test_families_and_qualifiers():
    assert metric_family("effect[L1.H6]") == "effect"
    assert metric_family("effect[L1.H6|rel=2]") == "effect|rel"
    assert metric_family("mean_delta[grade=1]") == "mean_delta|grade"
    assert metric_family("attention[L1.H2|doc->cls]") == "attention|doc->cls"
    assert metric_family("top_effect") is None
    assert metric_family("not a key") is None
    key = parse_metric_key("effect[L1.H6|rel=2]")
    assert key.qualifier("rel") == "2" and key.qualifier("grade") is None
    assert str(key.statistic("ci_low")) == "effect_ci_low[L1.H6|rel=2]"
    assert str(key.with_name("p_value")) == "p_value[L1.H6|rel=2]"


NAMES = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,12}", fullmatch=True)
PARTS = st.text(
    alphabet=st.characters(blacklist_characters="[]|=", blacklist_categories=("Cs",)),
    min_size=1,
    max_size=12,
)
STATS = st.sampled_from(["value", "ci_low", "ci_high", "p_value"])


@st.composite
def key_fields(draw):
    """Arguments of :func:`metric_key`: name, component, statistic, tags and qualifiers."""
    component = draw(st.none() | PARTS)
    tags = draw(st.lists(PARTS, max_size=2)) if component is not None else []
    qualifier_names = NAMES.filter(lambda n: n not in {"name", "component", "stat", "tags"})
    qualifiers = draw(st.dictionaries(qualifier_names, PARTS, max_size=3))
    return draw(NAMES), component, draw(STATS), tags, qualifiers


@given(key_fields())
def test_generated_keys_round_trip(fields):
    name, component, stat, tags, qualifiers = fields
    key = metric_key(name, component, stat, tags=tags, **qualifiers)
    parsed = parse_metric_key(key)
    assert str(parsed) == key
    suffix = "" if stat == "value" else f"_{stat}"
    assert parsed.name == name + suffix
    assert parsed.component == component
    assert parsed.tags == tuple(tags)
    assert parsed.qualifiers == tuple(qualifiers.items())
    assert parsed.bracketed == (component is not None or bool(qualifiers))


@given(st.text(max_size=30))
def test_any_string_that_parses_formats_back_to_itself(text):
    parsed = try_parse_metric_key(text)
    if parsed is not None:
        assert str(parsed) == text


# -- malformed keys -------------------------------------------------------------------------------

SHAPES = "(name, name[component], name[component|tag] or name[component|key=value])"


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("", f"'' is not a metric key {SHAPES}"),
        ("1x", f"'1x' is not a metric key {SHAPES}"),
        ("effect-size[L1.H6]", f"'effect-size[L1.H6]' is not a metric key {SHAPES}"),
        ("effect [L1.H6]", f"'effect [L1.H6]' is not a metric key {SHAPES}"),
        ("effect[]", f"'effect[]' is not a metric key {SHAPES}"),
        ("effect[L1.H6]_ci_low", f"'effect[L1.H6]_ci_low' is not a metric key {SHAPES}"),
        ("effect[a][b]", f"'effect[a][b]' is not a metric key {SHAPES}"),
        ("effect[L1.H6]\n", f"'effect[L1.H6]\\n' is not a metric key {SHAPES}"),
        (
            "effect[|L1.H6]",
            "'effect[|L1.H6]': the component may not be empty or contain [ ] | =, got ''",
        ),
        ("effect[L1.H6|]", "'effect[L1.H6|]': the tag may not be empty or contain [ ] | =, got ''"),
        (
            "effect[=2]",
            "'effect[=2]': the qualifier name may not be empty or contain [ ] | =, got ''",
        ),
        (
            "effect[L1.H6|rel=]",
            "'effect[L1.H6|rel=]': the qualifier value may not be empty or contain [ ] | =, got ''",
        ),
        (
            "effect[rel=2=3]",
            "'effect[rel=2=3]': the qualifier value may not be empty or contain [ ] | =, got '2=3'",
        ),
        (
            "effect[rel=2|L1.H6]",
            "'effect[rel=2|L1.H6]': the component and tags come before the qualifiers, not after",
        ),
    ],
)
def test_malformed_keys_are_rejected_with_a_clear_message(key, message):
    with pytest.raises(MetricKeyError) as err:
        parse_metric_key(key)
    assert str(err.value) == message
    assert try_parse_metric_key(key) is None
    assert metric_family(key) is None


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: metric_key("effect size"),
            "a metric name must be an identifier, got 'effect size'",
        ),
        (
            lambda: metric_key("effect", "L1|H6"),
            "a metric key's component may not be empty or contain [ ] | =, got 'L1|H6'",
        ),
        (
            lambda: metric_key("effect", ""),
            "a metric key's component may not be empty or contain [ ] | =, got ''",
        ),
        (
            lambda: metric_key("effect", "L1.H6", tags=["a=b"]),
            "a metric key's tag may not be empty or contain [ ] | =, got 'a=b'",
        ),
        (
            lambda: metric_key("effect", rel="[2]"),
            "a metric key's qualifier value may not be empty or contain [ ] | =, got '[2]'",
        ),
        (
            lambda: MetricKey("attention", None, tags=("doc->cls",)),
            "metric 'attention': tags ('doc->cls',) need a component",
        ),
    ],
)
def test_keys_that_cannot_be_written_are_refused(call, message):
    with pytest.raises(MetricKeyError) as err:
        call()
    assert str(err.value) == message


# -- where the CI bounds and p-value of a metric may be stored ------------------------------------


@pytest.mark.parametrize(
    ("metric", "low", "high", "p"),
    [
        (
            "share_moved_predicted",
            ["share_moved_predicted_ci_low"],
            ["share_moved_predicted_ci_high"],
            ["share_moved_predicted_p_value"],
        ),
        (
            "effect[L5.H7]",
            ["effect_ci_low[L5.H7]", "ci_low[L5.H7]"],
            ["effect_ci_high[L5.H7]", "ci_high[L5.H7]"],
            ["effect_p_value[L5.H7]", "p_value[L5.H7]"],
        ),
        (
            "effect[L5.H7|rel=2]",
            ["effect_ci_low[L5.H7|rel=2]", "ci_low[L5.H7|rel=2]"],
            ["effect_ci_high[L5.H7|rel=2]", "ci_high[L5.H7|rel=2]"],
            ["effect_p_value[L5.H7|rel=2]", "p_value[L5.H7|rel=2]"],
        ),
        (
            "mean_delta[grade=1]",
            ["mean_delta_ci_low[grade=1]", "ci_low[grade=1]"],
            ["mean_delta_ci_high[grade=1]", "ci_high[grade=1]"],
            ["mean_delta_p_value[grade=1]", "p_value[grade=1]"],
        ),
        ("not a key", ["not a key_ci_low"], ["not a key_ci_high"], ["not a key_p_value"]),
    ],
)
def test_ci_and_p_value_candidates(metric, low, high, p):
    assert ci_keys(metric) == (low, high)
    assert p_keys(metric) == p
    parsed = try_parse_metric_key(metric)
    if parsed is not None:
        assert ci_keys(parsed) == (low, high) and p_keys(parsed) == p


def test_the_agent_reads_no_overall_p_value():
    from rankscope.agent import verdicts

    assert verdicts.ci_keys("effect[L5.H7]") == (
        ["effect[L5.H7]_ci_low", "effect_ci_low[L5.H7]", "ci_low[L5.H7]"],
        ["effect[L5.H7]_ci_high", "effect_ci_high[L5.H7]", "ci_high[L5.H7]"],
    )
    assert verdicts.p_keys("effect[L5.H7]") == [
        "effect[L5.H7]_p_value",
        "effect_p_value[L5.H7]",
        "p_value[L5.H7]",
    ]
    assert verdicts.ci_keys("mean_delta") == (["mean_delta_ci_low"], ["mean_delta_ci_high"])
    assert verdicts.p_keys("mean_delta") == ["mean_delta_p_value"]
    assert verdicts.p_keys("top_effect") == ["top_effect_p_value"]


# -- what a tool declares ----------------------------------------------------------------------


def test_a_catalogue_says_which_keys_a_tool_produces():
    catalogue = declare(
        "n_pairs",
        scalar("top_effect", ci=True),
        per_component("effect", ci=True),
        per_component("p_value"),
        per_component("effect", qualifiers=["rel"]),
        per_component("attention", tags=["from->to"]),
        breakdown("mean_delta", "grade"),
    )
    produced = [
        "n_pairs",
        "top_effect",
        "top_effect_ci_low",
        "effect[L1.H6]",
        "effect_ci_high[L1.H6@injected]",
        "p_value[L0.H1+L1.H2]",
        "effect[L1.H6|rel=2]",
        "attention[L1.H2|doc->cls]",
        "mean_delta[grade=1]",
    ]
    assert all(catalogue.produces(k) for k in produced)
    not_produced = [
        "n_pair",
        "n_pairs[L1.H6]",
        "top_effect_p_value",
        "effect",
        "effect[grade=1]",
        "effect_ci_low[L1.H6|rel=2]",
        "effect[L1.H6|grade=2]",
        "attention[L1.H2]",
        "mean_delta",
        "mean_delta[L1.H6|grade=1]",
        "effect[L1.H6",
    ]
    assert not any(catalogue.produces(k) for k in not_produced)
    assert catalogue.patterns() == [
        "n_pairs",
        "top_effect",
        "top_effect_ci_low",
        "top_effect_ci_high",
        "effect[<component>]",
        "effect_ci_low[<component>]",
        "effect_ci_high[<component>]",
        "p_value[<component>]",
        "effect[<component>|rel=<rel>]",
        "attention[<component>|<from->to>]",
        "mean_delta[grade=<grade>]",
    ]
    narrowed = catalogue.without("effect", "n_pairs")
    assert not narrowed.produces("effect[L1.H6]") and not narrowed.produces("n_pairs")
    assert narrowed.produces("p_value[L1.H6]")
    assert (narrowed + declare("n_pairs")).produces("n_pairs")
