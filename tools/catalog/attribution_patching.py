"""Attribution patching: a fast, approximate first pass over heads and blocks."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from rankscope.tools.catalog.activation_patching import (
    ActivationPatchingArgs,
    BlockSite,
    PatchingArgs,
    RoleGroup,
    all_block_sites,
    build_interventions,
    figures,
)
from rankscope.tools.catalog.common import load_pairs
from rankscope.tools.contract import Tool, ToolContext, ToolResult
from rankscope.tools.interventions.attribution import attribute_pairs
from rankscope.tools.interventions.report import (
    EFFECT_METRICS,
    effect_report,
    save_scores,
    sign_note,
    top_lines,
)
from rankscope.tools.registry import register


class AttributionPatchingArgs(PatchingArgs):
    granularity: Literal["heads", "block", "head_role"] = Field(
        "heads",
        description="'heads' = every head at all positions; 'block' = sites × layer × positions; "
        "'head_role' = every head × position role.",
    )
    sites: list[BlockSite] = Field(
        default_factory=all_block_sites, min_length=1, description="Block sites."
    )
    positions: Literal["all", "role", "index"] = Field(
        "role", description="Positions of the block grid (as in activation_patching)."
    )
    roles: list[RoleGroup] | None = Field(None, description="Role groups (default: all).")
    max_positions: int = Field(32, ge=1, le=512, description="Positions for positions='index'.")


@register
class AttributionPatching(Tool[AttributionPatchingArgs]):
    name = "attribution_patching"
    description = (
        "Attribution patching: a first-order (activation difference · gradient) estimate of "
        "activation patching for every head or block from one forward and one backward pass per "
        "batch, as fractions of the behaviour's score change (like activation_patching's "
        "effect[X]). APPROXIMATE (magnitudes can be off): its estimates never support a claim; "
        "use it to shortlist components, then confirm them with activation_patching."
    )
    version = "1"
    Args = AttributionPatchingArgs
    metrics = EFFECT_METRICS.approximate()

    def run(self, ctx: ToolContext, args: AttributionPatchingArgs) -> ToolResult:
        retriever = ctx.retriever
        grid = ActivationPatchingArgs(
            **args.model_dump(
                exclude={"granularity", "sites", "positions", "roles", "max_positions"}
            ),
            granularity=args.granularity,
            sites=args.sites,
            positions=args.positions,
            roles=args.roles,
            max_positions=args.max_positions,
        )
        interventions = build_interventions(retriever, grid)
        pairs = list(load_pairs(ctx, args))
        scores = attribute_pairs(
            retriever, pairs, interventions, args.direction, args.batch_size, ctx.progress
        )
        report = effect_report(scores, args.metric, args.min_abs_delta, args.confidence, args.seed)
        artifacts = [
            save_scores(
                scores,
                ctx.artifact_path("attribution_scores.npz"),
                "per-pair estimated patched scores (attribution patching, approximate)",
            )
        ]
        if report.n_kept:
            artifacts += figures(
                ctx,
                retriever,
                grid,
                report.rows,
                prefix="attribution",
                title="Attribution patching (approximate)",
            )
        header = (
            f"APPROXIMATE — attribution patching (gradient estimate of {args.direction} "
            f"activation patching, granularity {args.granularity}; effect = estimated fraction "
            f"of the behaviour's score change, per query a ratio of means) on "
            f"{report.n_kept} pairs of {args.axiom}/{args.variant} [{args.split}]; "
            f"{report.n_dropped} dropped. Estimates rank components; confirm the top ones with "
            "activation_patching before drawing conclusions."
        )
        summary = (
            header + " No pairs left: nothing to report."
            if not report.n_kept
            else f"{header}\nTop components by |estimated effect| (effect [CI] p):\n"
            f"{top_lines(report.rows)}"
        )
        return ToolResult(
            metrics=report.metrics,
            summary=summary + sign_note(report),
            tables={
                "effects": report.rows,
                "effects_by_relevance": report.relevance_rows,
                "pair_scores": report.pair_rows,
            },
            per_query=report.per_query,
            artifacts=artifacts,
            approximate=True,
        )
