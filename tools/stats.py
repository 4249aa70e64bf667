"""Statistics shared by the experiments: bootstrap confidence intervals and multiple comparisons."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

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
