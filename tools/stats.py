"""Statistics shared by the experiments: bootstrap confidence intervals and multiple comparisons."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel
from scipy import stats


class Estimate(BaseModel):
    """A point estimate with a bootstrap confidence interval."""

    value: float
    ci_low: float
    ci_high: float
    n: int

    def as_metrics(self, prefix: str) -> dict[str, float]:
        return {
            prefix: self.value,
            f"{prefix}_ci_low": self.ci_low,
            f"{prefix}_ci_high": self.ci_high,
        }


def bootstrap_ci(
    values: np.ndarray | list[float],
    statistic: Callable[..., np.ndarray] = np.mean,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> Estimate:
    """Percentile bootstrap CI of ``statistic`` (vectorised over ``axis``) of a 1-D sample."""
    data = np.asarray(values, dtype=float)
    data = data[np.isfinite(data)]
    if data.size == 0:
        return Estimate(value=float("nan"), ci_low=float("nan"), ci_high=float("nan"), n=0)
    value = float(statistic(data))
    if data.size == 1 or np.all(data == data[0]):
        # One value, or no variability: the bootstrap has nothing to resample, so there is no
        # interval (a zero-width one would claim certainty the data cannot give).
        return Estimate(value=value, ci_low=float("nan"), ci_high=float("nan"), n=int(data.size))
    result = stats.bootstrap(
        (data,),
        statistic,
        confidence_level=confidence,
        n_resamples=n_resamples,
        method="percentile",
        vectorized=True,
        rng=np.random.default_rng(seed),
    )
    ci = result.confidence_interval
    return Estimate(value=value, ci_low=float(ci.low), ci_high=float(ci.high), n=int(data.size))


def bootstrap_ci_columns(
    values: np.ndarray, confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and percentile-bootstrap CI of each column of ``values`` ``[n, k]`` at once.

    All columns share the same resampled rows, which keeps per-component CIs comparable.
    """
    data = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, data.shape[0], size=(n_resamples, data.shape[0]))
    means = np.nanmean(data[idx], axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.nanquantile(means, [alpha, 1.0 - alpha], axis=0)
    return np.nanmean(data, axis=0), low, high


Alternative = Literal["two-sided", "less", "greater"]


def one_sample_p_value(
    values: np.ndarray | list[float], alternative: Alternative = "two-sided"
) -> float:
    """p-value of a one-sample t-test of mean zero (``greater``, ``less`` or ``two-sided``).

    NaN with fewer than two values or none that differ: the test is undefined there, and a
    p-value of 0 would turn one pair into a "significant" result."""
    data = np.asarray(values, dtype=float)
    data = data[np.isfinite(data)]
    if data.size < 2 or np.all(data == data[0]):
        return float("nan")
    return float(stats.ttest_1samp(data, 0.0, alternative=alternative).pvalue)


# --- per-query values (docs/evidence_contract.md §2) -------------------------------------------


class QueryValue(BaseModel):
    """One query's aggregate of one estimate: the query is the unit of analysis.

    ``value`` is the mean over the query's pairs (for a ratio-of-means metric, the query's sum
    of numerators over its sum of denominators); ``n_pairs`` is how many pairs it summarises."""

    qid: str
    n_pairs: int
    value: float


def values_by_query(qids: Sequence[str], values: Sequence[float]) -> list[QueryValue]:
    """Per-query means of pair-level ``values`` (``qids[i]`` is the query of ``values[i]``).

    Non-finite values are dropped before averaging; a query left with no finite value is left
    out. Queries come out in the order of their first appearance."""
    if len(qids) != len(values):
        raise ValueError(f"{len(qids)} qids for {len(values)} values")
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for qid, raw in zip(qids, values, strict=True):
        value = float(raw)
        if not np.isfinite(value):
            continue
        key = str(qid)
        sums[key] = sums.get(key, 0.0) + value
        counts[key] = counts.get(key, 0) + 1
    return [QueryValue(qid=q, n_pairs=counts[q], value=sums[q] / counts[q]) for q in sums]


def ratio_by_query(
    qids: Sequence[str], numerators: Sequence[float], denominators: Sequence[float]
) -> list[QueryValue]:
    """Per-query ratio of means: the query's sum of numerators over its sum of denominators.

    Pairs with a non-finite numerator or denominator are dropped; a query whose denominators
    sum to zero has no ratio and is left out. Queries come out in order of first appearance."""
    if not len(qids) == len(numerators) == len(denominators):
        raise ValueError(
            f"{len(qids)} qids, {len(numerators)} numerators, {len(denominators)} denominators"
        )
    nums: dict[str, float] = {}
    dens: dict[str, float] = {}
    counts: dict[str, int] = {}
    for qid, raw_num, raw_den in zip(qids, numerators, denominators, strict=True):
        num, den = float(raw_num), float(raw_den)
        if not (np.isfinite(num) and np.isfinite(den)):
            continue
        key = str(qid)
        nums[key] = nums.get(key, 0.0) + num
        dens[key] = dens.get(key, 0.0) + den
        counts[key] = counts.get(key, 0) + 1
    return [
        QueryValue(qid=q, n_pairs=counts[q], value=nums[q] / dens[q]) for q in nums if dens[q] != 0
    ]


def per_query_rows(per_query: Mapping[str, Sequence[QueryValue]]) -> list[dict[str, Any]]:
    """The rows of the ``per_query`` evidence table: one ``{metric, qid, n_pairs, value}`` per
    query of each estimate key (the inverse of :func:`per_query_from_rows`)."""
    return [
        {"metric": metric, "qid": qv.qid, "n_pairs": qv.n_pairs, "value": qv.value}
        for metric, values in per_query.items()
        for qv in values
    ]


def per_query_from_rows(rows: Iterable[Mapping[str, Any]]) -> dict[str, list[QueryValue]]:
    """Per-query values by metric key, read back from ``per_query`` table rows (row order kept)."""
    out: dict[str, list[QueryValue]] = {}
    for row in rows:
        out.setdefault(str(row["metric"]), []).append(
            QueryValue(qid=str(row["qid"]), n_pairs=int(row["n_pairs"]), value=float(row["value"]))
        )
    return out
