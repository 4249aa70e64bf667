"""Agreement between two scorings of the same query groups, and rank changes of single documents."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats


def ranking_agreement(
    groups: Sequence[np.ndarray], base: np.ndarray, new: np.ndarray, top_n: int = 10
) -> dict[str, float]:
    """Mean over queries (with at least 2 documents) of Spearman ρ and Kendall τ between the two
    scorings, top-1 agreement and top-``top_n`` overlap (share of the base top-n kept)."""
    rho: list[float] = []
    tau: list[float] = []
    top1: list[float] = []
    overlap: list[float] = []
    for idx in groups:
        if len(idx) < 2:
            continue
        b, n = base[idx], new[idx]
        if np.ptp(b) > 0 and np.ptp(n) > 0:
            rho.append(float(stats.spearmanr(b, n).statistic))
            tau.append(float(stats.kendalltau(b, n).statistic))
        top1.append(float(np.argmax(b) == np.argmax(n)))
        m = min(top_n, len(idx))
        overlap.append(len(set(np.argsort(-b)[:m]) & set(np.argsort(-n)[:m])) / m)

    def mean(values: list[float]) -> float:
        return float(np.mean(values)) if values else float("nan")

    return {
        "spearman": mean(rho),
        "kendall": mean(tau),
        "top1_agreement": mean(top1),
        f"top{top_n}_overlap": mean(overlap),
        "n_queries": float(len(top1)),
    }


def solo_rank_change(groups: Sequence[np.ndarray], base: np.ndarray, new: np.ndarray) -> np.ndarray:
    """For each document, base rank − new rank when only it gets its new score (the others keep
    their base scores): positive means it moved up. Ranks start at 1; NaN for single documents."""
    change = np.full(base.shape[0], np.nan)
    for idx in groups:
        if len(idx) < 2:
            continue
        b = base[idx]
        for j, i in enumerate(idx):
            others = np.delete(b, j)
            before = 1 + int(np.sum(others > base[i]))
            after = 1 + int(np.sum(others > new[i]))
            change[i] = before - after
    return change
