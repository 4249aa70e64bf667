"""From per-pair patched scores to what a tool returns: ranked effect rows with CIs and p-values
under both metrics, a breakdown by relevance grade, flat metrics for verdict rules."""

from __future__ import annotations

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
from rankscope.tools.metric_keys import declare, estimate, metric_key, per_component, scalar
from rankscope.tools.retrievers.base import Component
from rankscope.tools.stats import QueryValue, ratio_by_query, values_by_query

EFFECT_METRICS = declare(
    "n_pairs",
    "n_dropped",
    "n_components",
    "mean_delta",
    "top_p_value",
    "top_layer",
    "top_head",
    scalar("top_effect", ci=True),
    estimate(
        per_component("effect", ci=True),
        family="patching_effect",
        meaning="the component's normalised patching effect, mean over pairs of the primary "
        "metric (classic: numerator / Δ; robust: numerator / sqrt(1 + Δ²)); per query: the mean "
        "over its pairs",
        unit="fraction of the score change (classic) or score / sqrt(1 + Δ²) (robust)",
    ),
    estimate(
        per_component("fraction_restored"),
        family="patching_fraction",
        meaning="fraction of the perturbation's score change the component restores "
        "(denoising) or removes (noising), as a ratio of means: per query the sum of "
        "numerators over the sum of Δ = s_pert − s_base of its pairs; the value is the mean "
        "over queries",
        unit="fraction of the score change",
    ),
    per_component("p_value"),
    per_component("effect", qualifiers=["rel"]),
).describe(
    n_pairs=("pairs kept (|Δ| above min_abs_delta and not 0)", "pairs"),
    n_dropped=("pairs dropped for a too small |Δ|", "pairs"),
    n_components=("components (interventions) with a value", "components"),
    mean_delta=("mean Δ = s_pert − s_base over the kept pairs", "score"),
    top_p_value="the tool's own one-sample p-value of the top component (pairs, for readers)",
    top_layer="layer of the component with the largest |effect| (a location, not a test)",
    top_head="head of the component with the largest |effect| (a location, not a test)",
    top_effect="effect of the component with the largest |effect|: selected after the fact, "
    "for readers only",
    p_value="the tool's own two-sided one-sample p-value of a component's effect (pairs)",
    effect="the effect within one relevance grade (breakdown for readers)",
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
    per_query: dict[str, list[QueryValue]]
    """Per-query values of ``effect[X]`` and ``fraction_restored[X]`` of every reported X."""
    pair_rows: list[dict[str, Any]]
    """The plain per-pair scores behind them: one row per kept pair and applicable component."""
    sign_disagreements: list[str]
    """Components whose fraction restored and robust effect have opposite signs."""


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
    qids = [q for q, k in zip(scores.qids, keep, strict=True) if k]
    numerators = restored_numerator(scores, keep)
    denominators = scores.s_pert[keep] - scores.s_base[keep]
    index = {name: j for j, name in enumerate(names)}
    per_query: dict[str, list[QueryValue]] = {}
    disagreements: list[str] = []
    for row in rows:
        j = index[row["component"]]
        ok = scores.applicable[keep][:, j]
        fraction = ratio_by_query(
            [q for q, a in zip(qids, ok, strict=True) if a],
            numerators[ok, j].tolist(),
            denominators[ok].tolist(),
        )
        per_query[metric_key("effect", row["component"])] = values_by_query(
            qids, effects[metric][:, j].tolist()
        )
        per_query[metric_key("fraction_restored", row["component"])] = fraction
        row["fraction_restored"] = float(np.mean([v.value for v in fraction])) if fraction else None
        robust = row["effect"] if metric == "robust" else row["effect_robust"]
        row["sign_disagrees"] = bool(
            robust is not None
            and row["fraction_restored"] is not None
            and np.sign(robust) * np.sign(row["fraction_restored"]) < 0
        )
        if row["sign_disagrees"]:
            disagreements.append(row["component"])
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
    for row in ranked:
        metrics[metric_key("fraction_restored", row["component"])] = row["fraction_restored"]
    for row in rel_rows:
        metrics[metric_key("effect", row["component"], rel=row["relevance"])] = row["effect"]
    return EffectReport(
        rows=ranked,
        relevance_rows=rel_rows,
        metrics=metrics,
        n_kept=int(keep.sum()),
        n_dropped=int((~keep).sum()),
        effects=effects,
        per_query=per_query,
        pair_rows=pair_score_rows(scores, keep, [r["component"] for r in ranked]),
        sign_disagreements=disagreements,
    )


def restored_numerator(scores: PatchScores, keep: np.ndarray) -> np.ndarray:
    """``[kept pairs, n]`` the score change each patch restores (denoising: s_patched − s_base)
    or removes (noising: s_pert − s_patched); signed like Δ = s_pert − s_base."""
    patched = scores.s_patched[keep]
    if scores.direction == "denoising":
        return np.asarray(patched - scores.s_base[keep][:, None], dtype=float)
    return np.asarray(scores.s_pert[keep][:, None] - patched, dtype=float)


def pair_score_rows(
    scores: PatchScores, keep: np.ndarray, components: Sequence[str]
) -> list[dict[str, Any]]:
    """The per-pair scores of ``components``: ``{pair, qid, component, s_base, s_pert,
    s_patched}`` for each kept pair where the component applies (pair: its index in the set)."""
    index = {name: j for j, name in enumerate(scores.names)}
    out: list[dict[str, Any]] = []
    for component in components:
        j = index[component]
        for i in np.flatnonzero(keep & scores.applicable[:, j]).tolist():
            out.append(
                {
                    "pair": i,
                    "qid": scores.qids[i],
                    "component": component,
                    "s_base": float(scores.s_base[i]),
                    "s_pert": float(scores.s_pert[i]),
                    "s_patched": float(scores.s_patched[i, j]),
                }
            )
    return out


def sign_note(report: EffectReport) -> str:
    """A summary line flagging components whose fraction restored and robust effect disagree
    in sign ("" when none do)."""
    flagged = report.sign_disagreements
    if not flagged:
        return ""
    shown = ", ".join(flagged[:5]) + (f" and {len(flagged) - 5} more" if len(flagged) > 5 else "")
    return (
        f"\nSign disagreement between fraction_restored and the robust effect (a few pairs "
        f"with large Δ pull the other way): {shown}."
    )


def top_location(ranked: Sequence[dict[str, Any]]) -> dict[str, int | None]:
    """``top_layer`` and ``top_head`` of the top component, as numbers (``top_head`` None for a
    block or a cross-attention head; both None for a joint intervention)."""
    if not ranked or "+" in ranked[0]["component"]:
        return {"top_layer": None, "top_head": None}
    base, _, _positions = ranked[0]["component"].partition("@")
    try:
        component = Component.parse(base)
    except ValueError:
        return {"top_layer": None, "top_head": None}
    head = component.head if component.site == "heads" else None
    return {"top_layer": component.layer, "top_head": head}


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
