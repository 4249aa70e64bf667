"""tools.stats inference on per-query values, checked against independent implementations.

The t-tests against scipy's ``ttest_1samp`` and a closed form, the bootstrap against scipy's
``stats.bootstrap`` and a plain loop on the same generator, TOST and Holm against statsmodels,
LOND against its formula; properties with hypothesis.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.weightstats import ttost_paired

from rankscope.tools.stats import (
    Direction,
    QueryValue,
    bootstrap,
    bootstrap_ci,
    ci_level_for,
    holm_adjusted,
    lond_gamma,
    lond_levels,
    one_sample_p_value,
    per_query_from_rows,
    per_query_rows,
    query_inference,
    ratio_by_query,
    values_by_query,
)

DIRECTIONS: list[Direction] = ["greater", "less", "two-sided"]

# Fixed per-query values: skewed, with ties, 12 queries of different sizes.
FIXED = [0.31, -0.12, 0.05, 0.44, 0.18, 0.18, 0.92, -0.03, 0.27, 0.11, 0.60, 0.02]


def as_values(data: list[float] | np.ndarray) -> list[QueryValue]:
    return [QueryValue(qid=f"q{i}", n_pairs=3 + i % 4, value=float(v)) for i, v in enumerate(data)]


# --- per-query aggregation ---------------------------------------------------------------------


def test_values_by_query_means_per_query_in_first_appearance_order() -> None:
    out = values_by_query(["b", "a", "b", "a", "c"], [1.0, 2.0, 3.0, float("nan"), float("inf")])
    assert out == [
        QueryValue(qid="b", n_pairs=2, value=2.0),
        QueryValue(qid="a", n_pairs=1, value=2.0),
    ]
    with pytest.raises(ValueError):
        values_by_query(["a"], [1.0, 2.0])


def test_ratio_by_query_is_a_ratio_of_sums_not_a_mean_of_ratios() -> None:
    out = ratio_by_query(["a", "a", "b", "c"], [1.0, 3.0, 1.0, 2.0], [1.0, 9.0, 0.0, 4.0])
    # a: (1 + 3) / (1 + 9) = 0.4 (the mean of the ratios would be 2/3); b: denominator 0, left out.
    assert out == [
        QueryValue(qid="a", n_pairs=2, value=0.4),
        QueryValue(qid="c", n_pairs=1, value=0.5),
    ]


def test_per_query_rows_round_trip() -> None:
    per_query = {
        "effect[L1.H2]": as_values([0.1, 0.2]),
        "mean_delta": as_values([0.3]),
    }
    rows = per_query_rows(per_query)
    assert rows[0] == {"metric": "effect[L1.H2]", "qid": "q0", "n_pairs": 3, "value": 0.1}
    assert len(rows) == 3
    assert per_query_from_rows(rows) == per_query


# --- t-test and TOST ---------------------------------------------------------------------------


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("threshold", [-0.1, 0.0, 0.1, 0.35])
def test_p_value_is_scipys_one_sample_t_test_against_the_threshold(
    direction: Direction, threshold: float
) -> None:
    result = query_inference(as_values(FIXED), threshold=threshold, direction=direction, alpha=0.05)
    expected = stats.ttest_1samp(FIXED, popmean=threshold, alternative=direction).pvalue
    assert result.p_value == pytest.approx(float(expected), rel=1e-12)
    assert result.estimate == pytest.approx(float(np.mean(FIXED)), rel=1e-12)
    assert result.n_queries == len(FIXED)
    assert result.n_pairs == sum(3 + i % 4 for i in range(len(FIXED)))


def test_p_value_matches_the_closed_form_t_distribution_with_4_df() -> None:
    # [1..5] against 2: mean 3, sd sqrt(2.5), se sqrt(0.5), t = sqrt(2), 4 degrees of freedom.
    # Student's t with 4 df in closed form: F(t) = 1/2 + (3/8) u (1 - w / 12) with
    # u = t / sqrt(1 + t^2/4) and w = t^2 / (1 + t^2/4).
    t = math.sqrt(2.0)
    u = t / math.sqrt(1 + t * t / 4)
    w = t * t / (1 + t * t / 4)
    p_greater = 1.0 - (0.5 + 0.375 * u * (1 - w / 12))
    data = as_values([1.0, 2.0, 3.0, 4.0, 5.0])
    greater = query_inference(data, threshold=2.0, direction="greater", alpha=0.05)
    less = query_inference(data, threshold=2.0, direction="less", alpha=0.05)
    two = query_inference(data, threshold=2.0, direction="two-sided", alpha=0.05)
    assert greater.p_value == pytest.approx(p_greater, rel=1e-10)
    assert greater.p_value == pytest.approx(0.1151, abs=1e-4)
    assert less.p_value == pytest.approx(1.0 - p_greater, rel=1e-10)
    assert two.p_value == pytest.approx(2.0 * p_greater, rel=1e-10)


@pytest.mark.parametrize("bounds", [(-0.2, 0.2), (-0.5, 0.5), (0.0, 0.4), (0.1, 0.9)])
def test_tost_is_statsmodels_ttost(bounds: tuple[float, float]) -> None:
    result = query_inference(
        as_values(FIXED), threshold=0.0, direction="greater", alpha=0.05, equivalence=bounds
    )
    expected, _, _ = ttost_paired(np.array(FIXED), np.zeros(len(FIXED)), bounds[0], bounds[1])
    assert result.tost_p == pytest.approx(float(expected), rel=1e-10)
    assert "TOST" in result.method


def test_tost_p_is_none_when_not_asked() -> None:
    result = query_inference(as_values(FIXED), threshold=0.0, direction="greater", alpha=0.05)
    assert result.tost_p is None


# --- bootstrap ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("direction", "alpha", "level"),
    [("greater", 0.05, 0.90), ("less", 0.01, 0.98), ("two-sided", 0.05, 0.95)],
)
@pytest.mark.parametrize("seed", [0, 7])
def test_ci_is_scipys_percentile_bootstrap_on_the_same_resamples(
    direction: Direction, alpha: float, level: float, seed: int
) -> None:
    result = query_inference(
        as_values(FIXED),
        threshold=0.0,
        direction=direction,
        alpha=alpha,
        n_resamples=999,
        seed=seed,
    )
    assert result.ci_level == pytest.approx(level)
    expected = stats.bootstrap(
        (np.array(FIXED),),
        np.mean,
        confidence_level=level,
        n_resamples=999,
        method="percentile",
        vectorized=True,
        rng=np.random.default_rng(seed),
    ).confidence_interval
    assert result.ci_low == pytest.approx(float(expected.low), rel=1e-12)
    assert result.ci_high == pytest.approx(float(expected.high), rel=1e-12)
    assert "bootstrap (999 resamples" in result.method


def test_ci_is_a_plain_loop_over_resampled_queries() -> None:
    data = np.array(FIXED)
    rng = np.random.default_rng(3)
    indices = rng.integers(0, data.size, size=(500, data.size))
    means = sorted(float(np.mean([data[i] for i in row])) for row in indices)
    # Level 0.90 (one-sided alpha 0.05): the 5 % and 95 % points, linear interpolation.
    pos_low, pos_high = 0.05 * 499, 0.95 * 499

    def at(pos: float) -> float:
        lo = int(math.floor(pos))
        return means[lo] + (pos - lo) * (means[min(lo + 1, 499)] - means[lo])

    result = query_inference(
        as_values(data), threshold=0.0, direction="greater", alpha=0.05, n_resamples=500, seed=3
    )
    assert result.ci_low == pytest.approx(at(pos_low), rel=1e-12)
    assert result.ci_high == pytest.approx(at(pos_high), rel=1e-12)


@pytest.mark.parametrize("reduce", [np.mean, np.median])
def test_bootstrap_ci_is_scipys_percentile_bootstrap(reduce: Callable[..., np.ndarray]) -> None:
    def stat(x: np.ndarray, axis: int = -1) -> np.ndarray:
        return reduce(x, axis=axis)

    result = bootstrap_ci(FIXED, statistic=stat, confidence=0.9, n_resamples=999, seed=4)
    expected = stats.bootstrap(
        (np.array(FIXED),),
        stat,
        confidence_level=0.9,
        n_resamples=999,
        method="percentile",
        vectorized=True,
        rng=np.random.default_rng(4),
    ).confidence_interval
    assert result.value == pytest.approx(float(stat(np.array(FIXED))), rel=1e-12)
    assert result.ci_low == pytest.approx(float(expected.low), rel=1e-12)
    assert result.ci_high == pytest.approx(float(expected.high), rel=1e-12)


def test_bootstrap_columns_share_the_resampled_rows() -> None:
    # Each column's CI is the 1-D bootstrap of that column on the same generator; NaN is skipped.
    columns = np.column_stack([FIXED, np.array(FIXED) * 2.0, [np.nan, *FIXED[1:]]])
    estimate, low, high = bootstrap(columns, confidence=0.95, n_resamples=400, seed=2)
    for j in range(2):
        one = bootstrap(columns[:, j], confidence=0.95, n_resamples=400, seed=2)
        assert (estimate[j], low[j], high[j]) == tuple(float(x) for x in one)
    assert low[1] == pytest.approx(2.0 * low[0], rel=1e-12)
    assert estimate[2] == pytest.approx(float(np.mean(FIXED[1:])), rel=1e-12)


def test_the_bootstrap_resamples_queries_not_pairs() -> None:
    # One query with many pairs weighs like one with a single pair: a query is one value.
    few = [QueryValue(qid=f"q{i}", n_pairs=1, value=v) for i, v in enumerate(FIXED)]
    many = [QueryValue(qid=f"q{i}", n_pairs=100, value=v) for i, v in enumerate(FIXED)]
    a = query_inference(few, threshold=0.0, direction="greater", alpha=0.05)
    b = query_inference(many, threshold=0.0, direction="greater", alpha=0.05)
    assert (a.ci_low, a.ci_high, a.p_value) == (b.ci_low, b.ci_high, b.p_value)
    assert b.n_pairs == 100 * len(FIXED)


def test_corrected_alpha_widens_the_ci() -> None:
    wide = query_inference(as_values(FIXED), threshold=0.0, direction="greater", alpha=0.005)
    narrow = query_inference(as_values(FIXED), threshold=0.0, direction="greater", alpha=0.05)
    assert wide.ci_level == pytest.approx(0.99)
    assert wide.ci_low < narrow.ci_low and wide.ci_high > narrow.ci_high


# --- no inference ------------------------------------------------------------------------------


@pytest.mark.parametrize("data", [[], [0.7], [float("nan"), 0.4]])
def test_no_inference_from_fewer_than_two_queries(data: list[float]) -> None:
    result = query_inference(
        as_values(data), threshold=0.0, direction="greater", alpha=0.05, equivalence=(-1, 1)
    )
    assert result.p_value is None and result.tost_p is None
    assert math.isnan(result.ci_low) and math.isnan(result.ci_high)
    assert result.n_queries == sum(1 for v in data if math.isfinite(v))
    assert "no inference" in result.method


@pytest.mark.parametrize(
    ("value", "direction", "p"),
    [
        (1.0, "greater", 0.5**10),
        (0.2, "greater", 1.0),
        (-0.3, "less", 0.5**10),
        (0.1, "two-sided", 2 * 0.5**10),
    ],
)
def test_unvarying_values_get_an_exact_sign_test(
    value: float, direction: Direction, p: float
) -> None:
    """Every query with the same value (a perfect effect): the binomial sign test, checked
    against scipy, and a point interval."""
    result = query_inference(
        as_values([value] * 10),
        threshold=0.0 if direction != "greater" else 0.5,
        direction=direction,
        alpha=0.05,
        equivalence=(-1, 1),
    )
    assert result.p_value == pytest.approx(p)
    if p < 1:
        alternative = {"greater": "greater", "less": "less", "two-sided": "two-sided"}[direction]
        assert p == pytest.approx(
            stats.binomtest(10, 10, 0.5, alternative=alternative).pvalue
            if direction != "less"
            else stats.binomtest(0, 10, 0.5, alternative="less").pvalue
        )
    assert result.ci_low == result.ci_high == value
    assert result.tost_p == pytest.approx(0.5**10 if -1 < value < 1 else 1.0)


def test_non_finite_query_values_are_left_out() -> None:
    with_nan = as_values([*FIXED, float("nan")])
    result = query_inference(with_nan, threshold=0.1, direction="greater", alpha=0.05)
    clean = query_inference(as_values(FIXED), threshold=0.1, direction="greater", alpha=0.05)
    assert result.p_value == clean.p_value and result.n_queries == len(FIXED)


@pytest.mark.parametrize(
    ("direction", "alpha"), [("greater", 0.5), ("less", 0.0), ("two-sided", 1.0)]
)
def test_alpha_outside_its_range_is_refused(direction: Direction, alpha: float) -> None:
    with pytest.raises(ValueError):
        ci_level_for(alpha, direction)


def test_equivalence_bounds_must_be_ordered() -> None:
    with pytest.raises(ValueError):
        query_inference(
            as_values(FIXED), threshold=0, direction="greater", alpha=0.05, equivalence=(1, -1)
        )


# --- multiplicity ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "p_values",
    [
        [0.01, 0.04, 0.03, 0.5],
        [0.001, 0.001, 0.2, 0.04, 0.049, 0.9, 0.012],
        [0.3],
        [0.02, 0.02, 0.02],
        list(np.random.default_rng(1).uniform(0, 0.2, 25)),
    ],
)
def test_holm_is_statsmodels_holm(p_values: list[float]) -> None:
    expected = multipletests(p_values, alpha=0.05, method="holm")[1]
    assert holm_adjusted(p_values) == pytest.approx(list(expected), rel=1e-12)


def test_holm_of_nothing_is_nothing() -> None:
    assert holm_adjusted([]) == []


def test_lond_levels() -> None:
    assert lond_gamma(1) == pytest.approx(6 / math.pi**2)
    assert lond_levels(0.05, 0, 1) == pytest.approx(0.05 * 6 / math.pi**2)
    assert lond_levels(0.05, 0, 1) == pytest.approx(0.030396355092701)
    assert lond_levels(0.05, 2, 3) == pytest.approx(0.05 * 6 / (math.pi**2 * 9) * 3)
    # The weights sum to 1, so without discoveries LOND never spends more than alpha in all.
    assert sum(lond_gamma(i) for i in range(1, 200_000)) == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError):
        lond_levels(0.05, 0, 0)
    with pytest.raises(ValueError):
        lond_levels(0.05, -1, 2)


# --- properties --------------------------------------------------------------------------------

query_samples = st.lists(
    st.floats(min_value=-10, max_value=10, allow_nan=False, allow_infinity=False),
    min_size=2,
    max_size=40,
).filter(lambda xs: max(xs) - min(xs) > 1e-6)


@settings(max_examples=60, deadline=None)
@given(
    data=query_samples,
    direction=st.sampled_from(DIRECTIONS),
    alpha=st.floats(min_value=0.005, max_value=0.1),
    seed=st.integers(min_value=0, max_value=2**16),
)
def test_the_ci_contains_the_estimate(
    data: list[float], direction: Direction, alpha: float, seed: int
) -> None:
    result = query_inference(
        as_values(data), threshold=0.0, direction=direction, alpha=alpha, seed=seed
    )
    tolerance = 1e-9 * (1 + abs(result.estimate))
    assert result.ci_low - tolerance <= result.estimate <= result.ci_high + tolerance
    assert result.ci_low <= result.ci_high


@settings(max_examples=60, deadline=None)
@given(
    data=query_samples,
    thresholds=st.lists(st.floats(min_value=-12, max_value=12), min_size=2, max_size=6),
)
def test_p_is_monotone_in_the_threshold(data: list[float], thresholds: list[float]) -> None:
    thresholds = sorted(thresholds)
    values = as_values(data)

    def p(threshold: float, direction: Direction) -> float:
        result = query_inference(values, threshold=threshold, direction=direction, alpha=0.05)
        assert result.p_value is not None
        return result.p_value

    greater = [p(t, "greater") for t in thresholds]
    less = [p(t, "less") for t in thresholds]
    # A higher bar is harder to clear for a "greater" claim and easier for a "less" one.
    assert all(a <= b + 1e-12 for a, b in zip(greater, greater[1:], strict=False))
    assert all(a >= b - 1e-12 for a, b in zip(less, less[1:], strict=False))


@settings(max_examples=40, deadline=None)
@given(
    data=st.lists(
        st.tuples(st.sampled_from("abcdef"), st.integers(1, 9), st.floats(-5, 5)),
        max_size=30,
    )
)
def test_rows_round_trip_any_values(data: list[tuple[str, int, float]]) -> None:
    per_query = {
        "m": [QueryValue(qid=q, n_pairs=n, value=v) for q, n, v in data],
        "effect[L0.H1]": [QueryValue(qid=q, n_pairs=n, value=-v) for q, n, v in data],
    }
    restored = per_query_from_rows(per_query_rows(per_query))
    assert restored == {k: v for k, v in per_query.items() if v}


def test_a_tools_own_p_value_is_scipys_t_test_or_the_exact_sign_test() -> None:
    values = [0.3, -0.1, 0.5, 0.2, 0.4]
    for alternative in ("greater", "less", "two-sided"):
        expected = stats.ttest_1samp(values, 0.0, alternative=alternative).pvalue
        assert one_sample_p_value(values, alternative) == pytest.approx(expected, rel=1e-12)
    assert one_sample_p_value([0.2, 0.2, 0.2], "greater") == 0.125
    assert one_sample_p_value([0.2, 0.2, 0.2], "two-sided") == 0.25
    assert one_sample_p_value([0.2, 0.2, 0.2], "less") == 1.0
    assert one_sample_p_value([0.0, 0.0, 0.0, 0.0], "two-sided") == 1.0
    assert math.isnan(one_sample_p_value([0.7], "greater"))
    assert math.isnan(one_sample_p_value([], "greater"))
