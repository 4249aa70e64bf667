"""Ablation: what happens to the perturbation's effect and to rankings without some components?"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator

from rankscope.tools.catalog.common import PairArgs, load_pairs
from rankscope.tools.contract import Tool, ToolContext, ToolResult
from rankscope.tools.interventions.ablation_runs import (
    ablate_pairs,
    kendall_by_query,
    rank_gains,
    site_means,
)
from rankscope.tools.interventions.metrics import rank_rows, summarise_columns
from rankscope.tools.interventions.patching import Intervention, parse_target, patch_name
from rankscope.tools.interventions.report import fmt
from rankscope.tools.metric_keys import declare, estimate, metric_key, per_component, scalar
from rankscope.tools.registry import register
from rankscope.tools.stats import values_by_query


class AblationArgs(PairArgs):
    components: list[str] = Field(
        ...,
        min_length=1,
        description="Heads and blocks to ablate: L<layer>.H<head>, L<layer>.attn, L<layer>.mlp, "
        "optionally at some positions only (@injected, @qterm …), e.g. ['L1.H6', 'L3.mlp'].",
    )
    mode: Literal["zero", "mean"] = Field(
        "zero",
        description="'zero': replace by zeros; 'mean': by the mean activation over all tokens of "
        "the pair set's baseline documents.",
    )
    each: bool = Field(True, description="Ablate each component alone.")
    joint: bool = Field(True, description="Also ablate all components together (if several).")
    batch_size: int = Field(16, ge=1, le=1024, description="Pairs per batch.")
    confidence: float = Field(0.95, gt=0.5, lt=1.0, description="Bootstrap CI level.")

    @field_validator("components")
    @classmethod
    def _known(cls, names: list[str]) -> list[str]:
        for name in names:
            if parse_target(name).site == "resid":
                raise ValueError(
                    f"{name}: ablating the residual stream removes everything; ablate heads, "
                    "attn or mlp"
                )
        return names


def build_ablations(args: AblationArgs) -> list[Intervention]:
    patches = [parse_target(name, args.mode) for name in args.components]
    out = [Intervention(patch_name(p), (p,)) for p in patches] if args.each else []
    if args.joint and len(patches) > 1 or not out:
        out.append(Intervention("+".join(patch_name(p) for p in patches), tuple(patches)))
    return out


@register
class Ablation(Tool[AblationArgs]):
    name = "ablation"
    description = (
        "Zero or mean ablation of heads, attention blocks and MLPs (each alone and together) on "
        "both sides of each pair: the change of the score delta s_pert − s_base with a bootstrap "
        "CI and p-value, the share of the delta removed, and the effect on rankings within each "
        "query's documents in the pair set (rank gain of the perturbed document, Kendall's tau)."
    )
    version = "1"
    Args = AblationArgs
    metrics = declare(
        "n_pairs",
        "n_components",
        "mean_delta",
        "share_pert_higher",
        "rank_gain",
        "n_ranked_pairs",
        "top_p_value",
        "top_fraction_removed",
        scalar("top_delta_change", ci=True),
        estimate(
            per_component("delta_change", ci=True),
            family="ablation_delta",
            meaning="change of the score delta s_pert − s_base when the component is ablated "
            "(per query: the mean over its pairs)",
            unit="score",
        ),
        per_component("p_value"),
        per_component("fraction_removed"),
        per_component("delta_ablated"),
        per_component("rank_gain_ablated"),
        per_component("kendall_tau"),
    ).describe(
        n_pairs=("pairs run", "pairs"),
        n_components=("ablations run (each component, and the joint one)", "ablations"),
        mean_delta=("mean Δ = s_pert − s_base without ablation", "score"),
        share_pert_higher=("share of pairs with s_pert > s_base", "fraction of pairs"),
        rank_gain=("mean rank gain of the perturbed document without ablation", "ranks"),
        n_ranked_pairs=("pairs whose query has another document in the set", "pairs"),
        top_p_value="the tool's own p-value of the top ablation (pairs, for readers)",
        top_fraction_removed="fraction of the mean Δ removed by the top ablation (readers)",
        top_delta_change="delta_change of the ablation with the largest |change|: selected "
        "after the fact, for readers only",
        p_value="the tool's own two-sided p-value of a component's delta_change (pairs)",
        fraction_removed=("1 − mean ablated Δ / mean Δ (ratio of the pair means)", "fraction"),
        delta_ablated=("mean Δ with the component ablated", "score"),
        rank_gain_ablated=("mean rank gain with the component ablated", "ranks"),
        kendall_tau="mean per-query Kendall tau between baseline scores with and without ablation",
    )

    def run(self, ctx: ToolContext, args: AblationArgs) -> ToolResult:
        retriever = ctx.retriever
        pairs = list(load_pairs(ctx, args))
        interventions = build_ablations(args)
        means = None
        if args.mode == "mean":
            sites = {(p.layer, p.site) for iv in interventions for p in iv.patches}
            means = site_means(retriever, pairs, sites, args.batch_size, ctx.progress)
        res = ablate_pairs(
            retriever, pairs, interventions, means, args.batch_size, progress=ctx.progress
        )
        delta = res.s_pert - res.s_base
        delta_abl = res.pert_ablated - res.base_ablated
        change = delta_abl - delta[:, None]
        rows = summarise_columns(change, res.names, args.confidence, args.seed)
        base_change = summarise_columns(
            res.base_ablated - res.s_base[:, None], res.names, args.confidence, args.seed
        )
        gain = rank_gains(res.qids, res.s_base, res.s_pert)
        mean_delta = float(delta.mean()) if delta.size else None
        table: list[dict[str, Any]] = []
        for j, row in enumerate(rows):
            gain_abl = rank_gains(res.qids, res.base_ablated[:, j], res.pert_ablated[:, j])
            mean_abl = float(delta_abl[:, j].mean()) if delta.size else None
            table.append(
                {
                    "component": row["component"],
                    "delta_change": row["effect"],
                    "ci_low": row["ci_low"],
                    "ci_high": row["ci_high"],
                    "p_value": row["p_value"],
                    "n": row["n"],
                    "delta": mean_delta,
                    "delta_ablated": mean_abl,
                    "fraction_removed": 1.0 - mean_abl / mean_delta
                    if mean_delta and mean_abl is not None
                    else None,
                    "base_score_change": base_change[j]["effect"],
                    "share_pert_higher_ablated": float((delta_abl[:, j] > 0).mean())
                    if delta.size
                    else None,
                    "rank_gain": _nanmean(gain),
                    "rank_gain_ablated": _nanmean(gain_abl),
                    "kendall_tau": kendall_by_query(res.qids, res.s_base, res.base_ablated[:, j]),
                }
            )
        ranked = rank_rows(table, "delta_change")
        metrics: dict[str, Any] = {
            "n_pairs": len(pairs),
            "n_components": len(ranked),
            "mean_delta": mean_delta,
            "share_pert_higher": float((delta > 0).mean()) if delta.size else None,
            "rank_gain": _nanmean(gain),
            "n_ranked_pairs": int(np.isfinite(gain).sum()),
        }
        if ranked:
            top = ranked[0]
            metrics |= {
                "top_delta_change": top["delta_change"],
                "top_delta_change_ci_low": top["ci_low"],
                "top_delta_change_ci_high": top["ci_high"],
                "top_p_value": top["p_value"],
                "top_fraction_removed": top["fraction_removed"],
            }
        for row in ranked:
            metrics |= _component_metrics(row)
        lines = [
            f"  {r['component']}: Δ change {fmt(r['delta_change'])} [{fmt(r['ci_low'])}, "
            f"{fmt(r['ci_high'])}] p={fmt(r['p_value'])}; Δ {fmt(r['delta'])} → "
            f"{fmt(r['delta_ablated'])} ({fmt(r['fraction_removed'])} removed); rank gain "
            f"{fmt(r['rank_gain'])} → {fmt(r['rank_gain_ablated'])}; tau {fmt(r['kendall_tau'])}"
            for r in ranked[:5]
        ]
        if len(ranked) > 5:
            lines.append(f"  … {len(ranked) - 5} more rows in the full table")
        summary = (
            f"{args.mode.capitalize()} ablation of {', '.join(args.components)} on {len(pairs)} "
            f"pairs of {args.axiom}/{args.variant} [{args.split}] (both sides ablated). "
            f"Mean Δ = s_pert − s_base = {fmt(mean_delta)}; ranked by |change of Δ|:\n"
            + "\n".join(lines)
        )
        column = {name: j for j, name in enumerate(res.names)}
        per_query = {
            metric_key("delta_change", r["component"]): values_by_query(
                res.qids, change[:, column[r["component"]]].tolist()
            )
            for r in ranked
        }
        return ToolResult(
            metrics=metrics, summary=summary, tables={"ablations": ranked}, per_query=per_query
        )


def _component_metrics(row: dict[str, Any]) -> dict[str, Any]:
    """The per-component metrics of one ablation row: ``delta_change[L1.H6]`` and the rest."""
    name = row["component"]
    return {
        metric_key("delta_change", name): row["delta_change"],
        metric_key("delta_change", name, "ci_low"): row["ci_low"],
        metric_key("delta_change", name, "ci_high"): row["ci_high"],
        metric_key("p_value", name): row["p_value"],
        **{
            metric_key(column, name): row[column]
            for column in ("fraction_removed", "delta_ablated", "rank_gain_ablated", "kendall_tau")
        },
    }


def _nanmean(values: np.ndarray) -> float | None:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else None
