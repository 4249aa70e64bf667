"""Statistics shared by the experiments: one percentile bootstrap (:func:`bootstrap`), one
one-sample t-test (:func:`one_sample_p_value`), inference with the query as the unit of analysis
(:func:`query_inference`) and multiple comparisons."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel
from scipy import special


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


TOO_FEW_FOR_AN_INTERVAL = "(too few pairs for an interval)"


def interval_text(low: float | None, high: float | None, spec: str = ".4g") -> str:
    """A confidence interval as text, ``[low, high]`` formatted with ``spec``; an interval that
    could not be computed (NaN or missing bounds: one pair, or none) says so instead of
    printing ``[nan, nan]``."""
    if low is None or high is None or not (np.isfinite(low) and np.isfinite(high)):
        return TOO_FEW_FOR_AN_INTERVAL
    return f"[{low:{spec}}, {high:{spec}}]"


Direction = Literal["greater", "less", "two-sided"]
"""The alternative of a test: the direction of a one-sided claim, or two-sided."""


def bootstrap(
    values: np.ndarray | list[float],
    *,
    statistic: Callable[..., np.ndarray] = np.nanmean,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``statistic`` of each column of ``values`` (``[n]`` or ``[n, k]``) and its percentile
    bootstrap CI: (estimate, low, high), each a scalar array or one value per column.

    The rows are resampled with replacement ``n_resamples`` times, drawn with
    ``numpy.random.default_rng(seed)`` (the resamples scipy's ``stats.bootstrap`` draws with the
    same generator); every column reads the same resampled rows, which keeps per-component CIs
    comparable. ``statistic(x, axis=...)`` reduces rows (default: the mean of the non-NaN
    values); the bounds are the ``(1 - confidence) / 2`` and ``1 - (1 - confidence) / 2``
    quantiles (linear interpolation) of the resampled statistics, ignoring NaN."""
    data = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, data.shape[0], size=(n_resamples, data.shape[0]))
    resampled = statistic(data[idx], axis=1)
    tail = (1.0 - confidence) / 2.0
    low, high = np.nanquantile(resampled, [tail, 1.0 - tail], axis=0)
    return statistic(data, axis=0), low, high


def bootstrap_ci(
    values: np.ndarray | list[float],
    statistic: Callable[..., np.ndarray] = np.mean,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> Estimate:
    """:func:`bootstrap` of ``statistic`` of the finite values of a 1-D sample, as an
    :class:`Estimate`."""
    data = np.asarray(values, dtype=float)
    data = data[np.isfinite(data)]
    if data.size == 0:
        return Estimate(value=float("nan"), ci_low=float("nan"), ci_high=float("nan"), n=0)
    value = float(statistic(data))
    if data.size == 1:
        # One value: nothing to resample, so there is no interval.
        return Estimate(value=value, ci_low=float("nan"), ci_high=float("nan"), n=1)
    if np.all(data == data[0]):
        # Every value the same: every resample gives it, so the interval is that point (the
        # verdict rules do their own inference, see query_inference).
        return Estimate(value=value, ci_low=value, ci_high=value, n=int(data.size))
    _, low, high = bootstrap(
        data, statistic=statistic, confidence=confidence, n_resamples=n_resamples, seed=seed
    )
    return Estimate(value=value, ci_low=float(low), ci_high=float(high), n=int(data.size))


def one_sample_p_value(
    values: np.ndarray | list[float],
    alternative: Direction = "two-sided",
    popmean: float = 0.0,
) -> float:
    """p-value of a one-sample t-test of mean ``popmean`` (``greater``, ``less`` or
    ``two-sided``) on the finite values.

    NaN with fewer than two values: one value tests nothing, and a p-value of 0 would turn one
    pair into a "significant" result. Values that are all the same have no t-test; they get the
    exact sign test (:func:`_sign_p`: 1 when the value is on the null, else ``0.5**n``, doubled
    when two-sided). The p-value is scipy's ``ttest_1samp``'s, computed from the t statistic
    directly (without scipy's per-call overhead, which would dominate the calibration
    benchmark's run time)."""
    data = np.asarray(values, dtype=float)
    data = data[np.isfinite(data)]
    n = int(data.size)
    if n < 2:
        return float("nan")
    if np.all(data == data[0]):
        return _sign_p(float(data[0]), popmean, alternative, n)
    se = float(data.std(ddof=1)) / np.sqrt(n)
    t = (float(data.mean()) - popmean) / se
    df = n - 1
    if alternative == "greater":
        return float(special.stdtr(df, -t))
    if alternative == "less":
        return float(special.stdtr(df, t))
    return float(min(1.0, 2.0 * special.stdtr(df, -abs(t))))


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


# --- inference on per-query values (docs/evidence_contract.md §3) ------------------------------


class QueryInference(BaseModel):
    """What the verdict rules read: an estimate over queries with its CI and tests.

    ``p_value`` is the t-test of the per-query values against the pre-registered threshold in
    the claim's direction; ``tost_p`` the equivalence test inside the asked bounds. Both are
    ``None`` (and the CI NaN) with fewer than two queries or none that differ."""

    estimate: float
    ci_low: float
    ci_high: float
    ci_level: float
    p_value: float | None
    tost_p: float | None
    n_queries: int
    n_pairs: int
    method: str


def ci_level_for(alpha: float, direction: Direction) -> float:
    """The CI level that matches a test at ``alpha``: ``1 - 2*alpha`` for a one-sided claim
    (its CI bound on the claim's side is then the one-sided ``1 - alpha`` bound), ``1 - alpha``
    for a two-sided one."""
    if direction == "two-sided":
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha must lie in (0, 1) for a two-sided test, not {alpha}")
        return 1.0 - alpha
    if not 0.0 < alpha < 0.5:
        raise ValueError(f"alpha must lie in (0, 0.5) for a one-sided test, not {alpha}")
    return 1.0 - 2.0 * alpha


def _sign_p(value: float, threshold: float, direction: Direction, n: int) -> float:
    """Exact sign-test p-value when all ``n`` queries have ``value``: under the null that the
    median lies on the threshold's other side, all ``n`` fall beyond it with probability
    at most ``0.5**n``."""
    beyond = {
        "greater": value > threshold,
        "less": value < threshold,
        "two-sided": value != threshold,
    }[direction]
    if not beyond:
        return 1.0
    return min(1.0, (2.0 if direction == "two-sided" else 1.0) * 0.5**n)


def _unvarying_inference(
    data: np.ndarray,
    threshold: float,
    direction: Direction,
    equivalence: tuple[float, float] | None,
    level: float,
    n_pairs: int,
    method: str,
) -> QueryInference:
    """Inference when every query has the same value (e.g. every pair of every query moved the
    predicted way): no t-test exists, but the sign test does; every bootstrap resample gives the
    value, so the interval is that point."""
    value, n = float(data[0]), int(data.size)
    tost_p = None
    if equivalence is not None:
        inside = equivalence[0] < value < equivalence[1]
        tost_p = 0.5**n if inside else 1.0
    return QueryInference(
        estimate=value,
        ci_low=value,
        ci_high=value,
        ci_level=level,
        p_value=_sign_p(value, threshold, direction, n),
        tost_p=tost_p,
        n_queries=n,
        n_pairs=n_pairs,
        method=method + f" (no variation across {n} queries: exact sign test, p = 0.5^n)",
    )


def query_inference(
    values: Sequence[QueryValue],
    *,
    threshold: float,
    direction: Direction,
    alpha: float,
    equivalence: tuple[float, float] | None = None,
    n_resamples: int = 2000,
    seed: int = 0,
) -> QueryInference:
    """Inference with the query as the unit of analysis.

    - estimate: the mean of the per-query values (each query's value is already the mean over
      its pairs, so a query's pairs move together: this is a cluster bootstrap over queries);
    - CI: percentile bootstrap of that mean over ``n_resamples`` resamples of the queries drawn
      with ``numpy.random.default_rng(seed)`` (the resamples scipy's ``stats.bootstrap`` draws
      with the same generator), at :func:`ci_level_for` ``(alpha, direction)``; ``alpha`` is the
      level after multiplicity correction, so corrections apply to the CI too;
    - ``p_value``: one-sample t-test of the per-query values against ``threshold`` (not zero),
      with the claim's ``direction`` as the alternative;
    - ``tost_p``: with ``equivalence=(low, high)``, the two one-sided tests of
      ``low < mean < high`` (the larger of the two p-values), else ``None``.

    Non-finite per-query values are left out (and their pairs are not counted). Fewer than two
    queries: no inference (``None`` p-values, NaN CI). Values that do not differ: an exact sign
    test (``0.5**n`` when all lie beyond the threshold) and a point interval; the policy's
    minimum number of queries (8: p = 0.0039) still applies in the verdict rules."""
    level = ci_level_for(alpha, direction)
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be positive, not {n_resamples}")
    if equivalence is not None and not equivalence[0] < equivalence[1]:
        raise ValueError(f"equivalence bounds must be (low, high) with low < high: {equivalence}")
    kept = [qv for qv in values if np.isfinite(qv.value)]
    data = np.array([qv.value for qv in kept], dtype=float)
    n = int(data.size)
    n_pairs = sum(qv.n_pairs for qv in kept)
    method = (
        f"query-cluster percentile bootstrap ({n_resamples} resamples, seed {seed}) at level "
        f"{level:.6g}; one-sample t-test ({direction}) of per-query means vs {threshold:.6g}"
    )
    if equivalence is not None:
        method += f"; TOST vs [{equivalence[0]:.6g}, {equivalence[1]:.6g}]"
    estimate = float(data.mean()) if n else float("nan")
    if n < 2:
        return QueryInference(
            estimate=estimate,
            ci_low=float("nan"),
            ci_high=float("nan"),
            ci_level=level,
            p_value=None,
            tost_p=None,
            n_queries=n,
            n_pairs=n_pairs,
            method=method + " (no inference: fewer than 2 queries)",
        )
    if np.all(data == data[0]):
        return _unvarying_inference(data, threshold, direction, equivalence, level, n_pairs, method)
    _, low, high = bootstrap(data, confidence=level, n_resamples=n_resamples, seed=seed)
    p_value = one_sample_p_value(data, direction, popmean=threshold)
    tost_p = None
    if equivalence is not None:
        p_above_low = one_sample_p_value(data, "greater", popmean=equivalence[0])
        p_below_high = one_sample_p_value(data, "less", popmean=equivalence[1])
        tost_p = max(p_above_low, p_below_high)
    return QueryInference(
        estimate=estimate,
        ci_low=float(low),
        ci_high=float(high),
        ci_level=level,
        p_value=p_value,
        tost_p=tost_p,
        n_queries=n,
        n_pairs=n_pairs,
        method=method,
    )


# --- multiplicity ---------------------------------------------------------------------------


def lond_gamma(index: int) -> float:
    """LOND's weight of the ``index``-th test (from 1): ``6 / (pi^2 * index^2)``; they sum to 1."""
    if index < 1:
        raise ValueError(f"LOND indices start at 1, not {index}")
    return 6.0 / (np.pi**2 * index**2)


def lond_levels(alpha: float, n_previous_discoveries: int, index: int) -> float:
    """The level LOND spends on the ``index``-th confirmatory hypothesis (from 1).

    LOND (Javanmard & Montanari 2018, "Online rules for control of false discovery rate"):
    ``alpha_i = alpha * gamma_i * (D + 1)`` with ``gamma_i`` from :func:`lond_gamma` and ``D``
    the discoveries among hypotheses ``1 .. index-1``. It controls the FDR at ``alpha`` over
    the whole sequence, however long, for independent tests; each hypothesis is tested once,
    at the level its position gives it, and the level is stored with its verdict."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), not {alpha}")
    if n_previous_discoveries < 0:
        raise ValueError(f"the number of discoveries cannot be negative: {n_previous_discoveries}")
    return alpha * lond_gamma(index) * (n_previous_discoveries + 1)


def holm_adjusted(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given.

    The k-th smallest of m p-values is multiplied by ``m - k + 1``, capped at 1, and made
    monotone (an adjusted p-value is never below an earlier one's); rejecting where the
    adjusted p-value is ``<= alpha`` controls the family-wise error rate at ``alpha``."""
    p = np.asarray(p_values, dtype=float)
    m = int(p.size)
    if m == 0:
        return []
    order = np.argsort(p, kind="stable")
    stepped = np.minimum(1.0, np.maximum.accumulate(p[order] * (m - np.arange(m))))
    adjusted = np.empty(m)
    adjusted[order] = stepped
    return [float(x) for x in adjusted]
