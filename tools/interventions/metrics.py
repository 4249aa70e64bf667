"""Patching metrics and their aggregation over pairs and queries.

With ``Δ = s_pert − s_base`` (the perturbation's effect on the score) and ``s_patched`` the
target's score after patching:

- denoising (perturbed activations patched into the baseline run): the numerator is the score
  change the patch causes, ``s_patched − s_base``;
- noising (baseline activations patched into the perturbed run): the numerator is the score the
  patch removes, ``s_pert − s_patched``.

Both numerators are signed like ``Δ``: positive means the component carries the perturbation's
effect (:func:`restored`).

**The effect of a component** (the one estimate of the patching tools, family
``patching_fraction``) is the *fraction of the behaviour's score change* it restores (denoising)
or removes (noising), per query as a ratio of means: the sum of the numerators of the query's
pairs over the sum of their ``Δ`` (:func:`fraction_by_query`); 1 = the whole effect, 0 =
nothing. A ratio of means stays stable where single pairs have a tiny ``Δ``; its unit never
depends on an argument. Across all pairs of a set (a ranking), :func:`pooled_fraction` is the
same ratio over every pair.

Per-pair normalised metrics are kept as descriptive columns only: ``classic = numerator / Δ``
(undefined, NaN, where ``Δ = 0``; explodes for tiny ``Δ``) and ``robust = numerator /
sqrt(1 + Δ²)`` (Polyakov, Chen & Eickhoff, SIGIR 2025), which is in score units (not a fraction)
and stays finite as ``Δ → 0``. Pairs with ``|Δ| < min_abs_delta`` are dropped.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from rankscope.tools.metric_keys import metric_key
from rankscope.tools.stats import (
    Direction,
    QueryValue,
    bootstrap,
    one_sample_p_value,
    ratio_by_query,
)

Metric = Literal["classic", "robust"]
METRICS: tuple[Metric, ...] = ("classic", "robust")


def restored(
    s_base: np.ndarray, s_pert: np.ndarray, s_patched: np.ndarray, direction: str
) -> np.ndarray:
    """``[N, n]`` the score change each patch restores (denoising: ``s_patched − s_base``) or
    removes (noising: ``s_pert − s_patched``), signed like ``Δ = s_pert − s_base``."""
    base = np.asarray(s_base, dtype=float)[:, None]
    pert = np.asarray(s_pert, dtype=float)[:, None]
    patched = np.asarray(s_patched, dtype=float)
    if direction == "denoising":
        return patched - base
    if direction == "noising":
        return pert - patched
    raise ValueError(f"unknown direction {direction!r}; use 'denoising' or 'noising'")


def fraction_by_query(
    qids: Sequence[str], numerators: Sequence[float], deltas: Sequence[float]
) -> list[QueryValue]:
    """Per query, the fraction of the behaviour's score change restored (or removed): the sum of
    the query's numerators over the sum of its ``Δ`` (a ratio of means; a query whose ``Δ`` sum
    to 0 has none)."""
    return ratio_by_query(qids, numerators, deltas)


def pooled_fraction(numerators: np.ndarray, deltas: np.ndarray) -> np.ndarray:
    """``[n]`` the ratio of means over all pairs: the sum of each column of ``numerators``
    ``[N, n]`` over the sum of ``deltas`` ``[N]`` (NaN when the deltas sum to 0). Used to rank
    components: one query with a tiny change cannot put an irrelevant component first, as a
    mean of per-query ratios can."""
    num = np.asarray(numerators, dtype=float)
    den = float(np.sum(np.asarray(deltas, dtype=float)))
    if den == 0.0:
        return np.full(num.shape[1:], np.nan)
    return num.sum(axis=0) / den


def normalised_effect(
    s_base: np.ndarray,
    s_pert: np.ndarray,
    s_patched: np.ndarray,
    direction: str,
    metric: Metric,
) -> np.ndarray:
    """Per-pair effects ``[N, n]`` of ``s_patched`` ``[N, n]`` (see the module docstring)."""
    numerator = restored(s_base, s_pert, s_patched, direction)
    delta = (np.asarray(s_pert, dtype=float) - np.asarray(s_base, dtype=float))[:, None]
    if metric == "classic":
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(delta != 0, numerator / np.where(delta != 0, delta, 1.0), np.nan)
    if metric == "robust":
        return numerator / np.sqrt(1.0 + delta**2)
    raise ValueError(f"unknown metric {metric!r}; use 'classic' or 'robust'")


def kept_pairs(s_base: np.ndarray, s_pert: np.ndarray, min_abs_delta: float) -> np.ndarray:
    """Pairs whose ``|Δ|`` reaches ``min_abs_delta`` (and is not 0 when the threshold is 0)."""
    delta = np.abs(np.asarray(s_pert, dtype=float) - np.asarray(s_base, dtype=float))
    return (delta >= min_abs_delta) & (delta > 0)


def summarise_columns(
    values: np.ndarray,
    names: Sequence[str],
    confidence: float = 0.95,
    seed: int = 0,
    alternative: Direction = "two-sided",
) -> list[dict[str, Any]]:
    """One row per column of ``values`` ``[N, n]`` (NaN = no value for that pair): mean, bootstrap
    CI, one-sample p-value (mean 0) and the number of pairs; in column order."""
    values = np.asarray(values, dtype=float)
    rows: list[dict[str, Any]] = []
    if values.ndim != 2 or values.shape[0] == 0:
        return [
            {
                "component": n,
                "effect": None,
                "ci_low": None,
                "ci_high": None,
                "p_value": None,
                "n": 0,
            }
            for n in names
        ]
    counts = np.isfinite(values).sum(axis=0)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean, low, high = bootstrap(values, confidence=confidence, seed=seed)
    for j, name in enumerate(names):
        n = int(counts[j])
        rows.append(
            {
                "component": name,
                "effect": _num(mean[j]) if n else None,
                "ci_low": _num(low[j]) if n else None,
                "ci_high": _num(high[j]) if n else None,
                "p_value": one_sample_p_value(values[:, j], alternative) if n else None,
                "n": n,
            }
        )
    return rows


def _num(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def rank_rows(rows: list[dict[str, Any]], key: str = "effect") -> list[dict[str, Any]]:
    """Rows sorted by ``|key|`` descending (rows without a value last)."""
    return sorted(rows, key=lambda r: -abs(r[key]) if r.get(key) is not None else np.inf)


def by_relevance(
    values: np.ndarray,
    names: Sequence[str],
    relevance: Sequence[int | None],
    confidence: float = 0.95,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """:func:`summarise_columns` within each relevance grade (rows carry ``relevance``)."""
    grades = sorted({g for g in relevance if g is not None})
    rel = np.array([g if g is not None else -1 for g in relevance])
    rows: list[dict[str, Any]] = []
    for grade in grades:
        subset = values[rel == grade]
        for row in summarise_columns(subset, names, confidence, seed):
            rows.append({**row, "relevance": grade})
    return rows


def component_metrics(rows: Sequence[dict[str, Any]], prefix: str = "effect") -> dict[str, Any]:
    """Flat metric keys for verdict rules: ``effect[L1.H6]``, ``effect_ci_low[L1.H6]``,
    ``effect_ci_high[L1.H6]``, ``p_value[L1.H6]``."""
    out: dict[str, Any] = {}
    for row in rows:
        name = row["component"]
        out[metric_key(prefix, name)] = row["effect"]
        out[metric_key(prefix, name, "ci_low")] = row["ci_low"]
        out[metric_key(prefix, name, "ci_high")] = row["ci_high"]
        out[metric_key("p_value", name)] = row["p_value"]
    return out


def top_metrics(ranked: Sequence[dict[str, Any]], prefix: str = "top_effect") -> dict[str, Any]:
    """``top_effect``, its CI bounds and p-value, from rows ranked by :func:`rank_rows`."""
    top = ranked[0] if ranked else {}
    return {
        prefix: top.get("effect"),
        metric_key(prefix, stat="ci_low"): top.get("ci_low"),
        metric_key(prefix, stat="ci_high"): top.get("ci_high"),
        f"{prefix.replace('effect', 'p_value')}": top.get("p_value"),
    }


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two vectors (NaN-free)."""
    from scipy import stats

    return float(stats.spearmanr(a, b).statistic)


def top_overlap(a: np.ndarray, b: np.ndarray, k: int = 5) -> int:
    """How many of the ``k`` largest-|value| entries of ``a`` are among those of ``b``."""
    top_a = set(np.argsort(-np.abs(a))[:k].tolist())
    top_b = set(np.argsort(-np.abs(b))[:k].tolist())
    return len(top_a & top_b)
