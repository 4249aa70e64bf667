"""From per-pair patched scores to what a tool returns: effect rows ranked by |effect| with
query-cluster CIs and p-values, a breakdown by relevance grade, flat metrics for verdict rules.

A component's ``effect[X]`` has one meaning and one unit whatever the tool's ``metric``
argument: the fraction of the behaviour's score change it restores (denoising) or removes
(noising), per query as a ratio of means (:mod:`rankscope.tools.interventions.metrics`), family
``patching_fraction``. The score-unit change (``effect_score[X]``) and the per-pair classic and
robust metrics (table columns ``effect_classic``, ``effect_robust``, ``pair_effect``) are
descriptive."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rankscope.tools.contract import ArtifactFile
from rankscope.tools.interventions.metrics import (
    METRICS,
    Metric,
    component_metrics,
    fraction_by_query,
    kept_pairs,
    normalised_effect,
    pooled_fraction,
    rank_rows,
    restored,
    top_metrics,
)
from rankscope.tools.interventions.patching import PatchScores
from rankscope.tools.metric_keys import declare, estimate, metric_key, per_component, scalar
from rankscope.tools.retrievers.base import Component
from rankscope.tools.stats import QueryValue, bootstrap_ci, one_sample_p_value

FRACTION_MEANING = (
    "fraction of the behaviour's score change the component restores (denoising: perturbed "
    "activations patched into the baseline run) or removes (noising: baseline activations "
    "patched into the perturbed run); per query a ratio of means, the sum over its pairs of "
    "the score change the patch causes over the sum of Δ = s_pert − s_base; the value is the "
    "mean over queries. The same whatever the metric argument"
)
FRACTION_UNIT = "fraction of the behaviour's score change (1 = all of it)"

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
        family="patching_fraction",
        meaning=FRACTION_MEANING,
        unit=FRACTION_UNIT,
    ),
    per_component("effect_score"),
    per_component("p_value"),
    per_component("effect", qualifiers=["rel"]),
).describe(
    n_pairs=("pairs kept (|Δ| above min_abs_delta and not 0)", "pairs"),
    n_dropped=("pairs dropped for a too small |Δ|", "pairs"),
    n_components=("components (interventions) with a value", "components"),
    mean_delta=("mean Δ = s_pert − s_base over the kept pairs", "score"),
    top_p_value="the tool's own one-sample p-value of the top component (queries, for readers)",
    top_layer="layer of the component with the largest |effect| (a location, not a test)",
    top_head="head of the component with the largest |effect| (a location, not a test)",
    top_effect="effect (fraction) of the component with the largest |effect|: selected after "
    "the fact, for readers only",
    effect_score=(
        "the score change the component restores (denoising) or removes (noising), mean over "
        "pairs: the effect in score units, for readers (not a criterion)",
        "score",
    ),
    p_value="the tool's own two-sided one-sample t-test of the per-query fractions (for readers)",
    effect="the fraction within one relevance grade, ratio of means over its pairs (breakdown "
    "for readers)",
)
"""The metrics of :func:`effect_report` (activation, attribution and path patching)."""


@dataclass
class EffectReport:
    """Aggregated effects of a set of interventions (rows ranked by |effect|)."""

    rows: list[dict[str, Any]]
    relevance_rows: list[dict[str, Any]]
    metrics: dict[str, Any]
    n_kept: int
    n_dropped: int
    effects: dict[str, np.ndarray]
    """Per-pair normalised effects ``[kept pairs, n]`` under each per-pair metric (descriptive)."""
    per_query: dict[str, list[QueryValue]]
    """Per-query fractions of ``effect[X]`` of every reported X."""
    pair_rows: list[dict[str, Any]]
    """The plain per-pair scores behind them: one row per kept pair and applicable component."""
    sign_disagreements: list[str]
    """Components whose fraction and mean robust per-pair effect have opposite signs."""


def _num(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def _mean(values: np.ndarray) -> float | None:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else None


def effect_report(
    scores: PatchScores,
    metric: Metric,
    min_abs_delta: float = 0.0,
    confidence: float = 0.95,
    seed: int = 0,
) -> EffectReport:
    """Effects of ``scores``: ``effect`` is the fraction of the behaviour's score change (ratio
    of means per query, CI by a bootstrap over queries, p-value a t-test of the per-query
    values); ``metric`` only names the per-pair metric of the descriptive ``pair_effect``
    column (both per-pair metrics are columns)."""
    keep = kept_pairs(scores.s_base, scores.s_pert, min_abs_delta)
    names = scores.names
    applies = scores.applicable[keep]
    effects: dict[str, np.ndarray] = {}
    for per_pair in METRICS:
        pair_values = normalised_effect(
            scores.s_base[keep],
            scores.s_pert[keep],
            scores.s_patched[keep],
            scores.direction,
            per_pair,
        )
        effects[per_pair] = np.where(applies, pair_values, np.nan)
    qids = [q for q, k in zip(scores.qids, keep, strict=True) if k]
    numerators = restored_numerator(scores, keep)
    deltas = scores.s_pert[keep] - scores.s_base[keep]
    per_query: dict[str, list[QueryValue]] = {}
    rows: list[dict[str, Any]] = []
    disagreements: list[str] = []
    for j, name in enumerate(names):
        ok = applies[:, j]
        n = int(ok.sum())
        if not n:
            continue
        fraction = fraction_by_query(
            [q for q, a in zip(qids, ok, strict=True) if a],
            numerators[ok, j].tolist(),
            deltas[ok].tolist(),
        )
        values = [v.value for v in fraction]
        row: dict[str, Any] = {
            "component": name,
            "effect": None,
            "ci_low": None,
            "ci_high": None,
            "p_value": None,
            "n": n,
            "n_queries": len(fraction),
        }
        if fraction:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                ci = bootstrap_ci(values, confidence=confidence, seed=seed)
            p = one_sample_p_value(values)
            row.update(
                effect=float(np.mean(values)),
                ci_low=_num(ci.ci_low),
                ci_high=_num(ci.ci_high),
                p_value=_num(p),
            )
            per_query[metric_key("effect", name)] = fraction
        row["effect_score"] = float(numerators[ok, j].mean())
        row["effect_classic"] = _mean(effects["classic"][:, j])
        row["effect_robust"] = _mean(effects["robust"][:, j])
        row["pair_effect"] = row[f"effect_{metric}"]
        robust = row["effect_robust"]
        row["sign_disagrees"] = bool(
            robust is not None
            and row["effect"] is not None
            and np.sign(robust) * np.sign(row["effect"]) < 0
        )
        if row["sign_disagrees"]:
            disagreements.append(name)
        rows.append(row)
    ranked = rank_rows(rows)
    relevance = [g for g, k in zip(scores.relevance, keep, strict=True) if k]
    rel_rows = relevance_fractions(numerators, deltas, applies, names, relevance)
    metrics: dict[str, Any] = {
        "n_pairs": int(keep.sum()),
        "n_dropped": int((~keep).sum()),
        "n_components": len(ranked),
        "mean_delta": float(deltas.mean()) if deltas.size else None,
        **top_metrics(ranked),
        **top_location(ranked),
        **component_metrics([r for r in ranked if r["effect"] is not None]),
    }
    for row in ranked:
        metrics[metric_key("effect_score", row["component"])] = row["effect_score"]
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


def relevance_fractions(
    numerators: np.ndarray,
    deltas: np.ndarray,
    applies: np.ndarray,
    names: Sequence[str],
    relevance: Sequence[int | None],
) -> list[dict[str, Any]]:
    """Within each relevance grade, each component's fraction as a ratio of means over the
    grade's pairs (``{component, relevance, effect, n}``; descriptive)."""
    grades = sorted({g for g in relevance if g is not None})
    rel = np.array([g if g is not None else -1 for g in relevance])
    rows: list[dict[str, Any]] = []
    for grade in grades:
        in_grade = rel == grade
        for j, name in enumerate(names):
            ok = in_grade & applies[:, j]
            if not ok.any():
                continue
            value = pooled_fraction(numerators[ok, j][:, None], deltas[ok])[0]
            rows.append(
                {"component": name, "relevance": grade, "effect": _num(value), "n": int(ok.sum())}
            )
    return rows


def restored_numerator(scores: PatchScores, keep: np.ndarray) -> np.ndarray:
    """``[kept pairs, n]`` the score change each patch restores (denoising: s_patched − s_base)
    or removes (noising: s_pert − s_patched); signed like Δ = s_pert − s_base."""
    return restored(
        scores.s_base[keep], scores.s_pert[keep], scores.s_patched[keep], scores.direction
    )


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
        f"\nSign disagreement between the fraction (effect) and the mean robust per-pair "
        f"effect (a few pairs with large Δ pull the other way): {shown}."
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
    """The first ``limit`` rows as ``component: effect [CI] p=…, score=…, n=…`` and a note of
    the rest."""
    lines = [
        f"  {r['component']}: {fmt(r['effect'])} [{fmt(r['ci_low'])}, {fmt(r['ci_high'])}] "
        f"p={fmt(r['p_value'])} (score {fmt(r.get('effect_score'))}) n={r['n']}"
        for r in rows[:limit]
    ]
    if len(rows) > limit:
        lines.append(f"  … {len(rows) - limit} more rows in the full table")
    return "\n".join(lines)
