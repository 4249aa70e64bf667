"""From per-pair patched scores to what a tool returns: ranked effect rows with CIs and p-values
under both metrics, a breakdown by relevance grade, flat metrics for verdict rules."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rankscope.tools.contract import ArtifactFile
from rankscope.tools.interventions.metrics import (
    METRICS,
    Metric,
    by_relevance,
    component_metrics,
    kept_pairs,
    normalised_effect,
    rank_rows,
    summarise_columns,
    top_metrics,
)
from rankscope.tools.interventions.patching import PatchScores
from rankscope.tools.metric_keys import declare, metric_key, per_component, scalar

EFFECT_METRICS = declare(
    "n_pairs",
    "n_dropped",
    "n_components",
    "mean_delta",
    "top_p_value",
    "top_layer",
    "top_head",
    scalar("top_effect", ci=True),
    per_component("effect", ci=True),
    per_component("p_value"),
    per_component("effect", qualifiers=["rel"]),
)
"""The metrics of :func:`effect_report` (activation, attribution and path patching)."""


@dataclass
class EffectReport:
    """Aggregated effects of a set of interventions (rows ranked by |effect|, primary metric)."""

    rows: list[dict[str, Any]]
    relevance_rows: list[dict[str, Any]]
    metrics: dict[str, Any]
    n_kept: int
    n_dropped: int
    effects: dict[str, np.ndarray]
    """Per-pair effects ``[kept pairs, n]`` under each metric."""


def effect_report(
    scores: PatchScores,
    metric: Metric,
    min_abs_delta: float = 0.0,
    confidence: float = 0.95,
    seed: int = 0,
) -> EffectReport:
    """Effects of ``scores`` under both metrics; ``metric`` is the primary one (ranking, keys)."""
    keep = kept_pairs(scores.s_base, scores.s_pert, min_abs_delta)
    names = scores.names
    effects: dict[str, np.ndarray] = {}
    summaries: dict[str, list[dict[str, Any]]] = {}
    for name in METRICS:
        values = normalised_effect(
            scores.s_base[keep],
            scores.s_pert[keep],
            scores.s_patched[keep],
            scores.direction,
            name,
        )
        values = np.where(scores.applicable[keep], values, np.nan)
        effects[name] = values
        summaries[name] = summarise_columns(values, names, confidence, seed)
    other: Metric = "robust" if metric == "classic" else "classic"
    rows = []
    for primary, secondary in zip(summaries[metric], summaries[other], strict=True):
        rows.append(
            {
                **primary,
                f"effect_{other}": secondary["effect"],
                f"ci_low_{other}": secondary["ci_low"],
                f"ci_high_{other}": secondary["ci_high"],
            }
        )
    rows = [r for r in rows if r["n"] > 0]
    ranked = rank_rows(rows)
    relevance = [g for g, k in zip(scores.relevance, keep, strict=True) if k]
    rel_rows = by_relevance(effects[metric], names, relevance, confidence, seed)
    rel_rows = [r for r in rel_rows if r["n"] > 0]
    delta = scores.s_pert[keep] - scores.s_base[keep]
    metrics: dict[str, Any] = {
        "n_pairs": int(keep.sum()),
        "n_dropped": int((~keep).sum()),
        "n_components": len(ranked),
        "mean_delta": float(delta.mean()) if delta.size else None,
        **top_metrics(ranked),
        **top_location(ranked),
        **component_metrics(ranked),
    }
    for row in rel_rows:
        metrics[metric_key("effect", row["component"], rel=row["relevance"])] = row["effect"]
    return EffectReport(
        rows=ranked,
        relevance_rows=rel_rows,
        metrics=metrics,
        n_kept=int(keep.sum()),
        n_dropped=int((~keep).sum()),
        effects=effects,
    )


def top_location(ranked: Sequence[dict[str, Any]]) -> dict[str, int | None]:
    """``top_layer`` and ``top_head`` of the top component, as numbers (``top_head`` None for a
    block; both None for a joint intervention)."""
    if not ranked or "+" in ranked[0]["component"]:
        return {"top_layer": None, "top_head": None}
    match = re.match(r"L(\d+)\.(?:H(\d+))?", ranked[0]["component"])
    if not match:
        return {"top_layer": None, "top_head": None}
    head = match.group(2)
    return {"top_layer": int(match.group(1)), "top_head": int(head) if head is not None else None}


def save_scores(scores: PatchScores, path: Path, description: str) -> ArtifactFile:
    """The per-pair scores as a ``.npz`` artifact (for audits and re-analysis)."""
    with path.open("wb") as fh:
        np.savez_compressed(
            fh,
            names=np.array(scores.names),
            s_base=scores.s_base,
            s_pert=scores.s_pert,
            s_patched=scores.s_patched,
            applicable=scores.applicable,
            relevance=np.array([-1 if g is None else g for g in scores.relevance]),
        )
    return ArtifactFile(path=path, media_type="application/x-npz", description=description)


def fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def top_lines(rows: Sequence[dict[str, Any]], limit: int = 5) -> str:
    """The first ``limit`` rows as ``component: effect [CI] p=…, n=…`` and a note of the rest."""
    lines = [
        f"  {r['component']}: {fmt(r['effect'])} [{fmt(r['ci_low'])}, {fmt(r['ci_high'])}] "
        f"p={fmt(r['p_value'])} n={r['n']}"
        for r in rows[:limit]
    ]
    if len(rows) > limit:
        lines.append(f"  … {len(rows) - limit} more rows in the full table")
    return "\n".join(lines)
