"""Activation patching: which components carry the perturbation's effect on the score?"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import Field, model_validator

from rankscope.tools.catalog.common import PairArgs, load_pairs
from rankscope.tools.contract import ArtifactFile, Tool, ToolContext, ToolResult
from rankscope.tools.interventions.heatmaps import grid_from_rows, heatmap
from rankscope.tools.interventions.pairs import ALL_POSITIONS, POSITION_GROUPS
from rankscope.tools.interventions.patching import (
    Intervention,
    PatchDirection,
    block_grid,
    heads_grid,
    on_token_layers,
    parse_target,
    patch_name,
    patch_pairs,
)
from rankscope.tools.interventions.report import (
    EFFECT_METRICS,
    effect_report,
    save_scores,
    sign_note,
    top_lines,
)
from rankscope.tools.registry import register
from rankscope.tools.retrievers.base import Component, Retriever

RoleGroup = Literal["cls", "query", "doc", "qterm", "injected", "filler", "sep"]
BlockSite = Literal["resid", "attn", "mlp"]


def all_block_sites() -> list[BlockSite]:
    """Every site of the block grid (the default of ``sites``)."""
    return ["resid", "attn", "mlp"]


DIRECTION_DOC = (
    "'denoising': perturbed-run activations patched into the baseline run (does the component "
    "restore the effect?); 'noising': baseline activations patched into the perturbed run (does "
    "it remove the effect?)."
)
METRIC_DOC = (
    "Descriptive only: the per-pair metric of the table column 'pair_effect' ('classic': "
    "(s_patched − s_base)/(s_pert − s_base); 'robust': (s_patched − s_base)/sqrt(1 + Δ²), in score "
    "units). effect[X] is always the fraction of the behaviour's score change restored "
    "(denoising) or removed (noising), per query a ratio of means, whatever this is."
)
EFFECT_NOTE = (
    "effect = fraction of the behaviour's score change restored (denoising) or removed "
    "(noising), per query a ratio of means; CI over queries"
)


class PatchingArgs(PairArgs):
    """Options shared by the patching-style tools."""

    direction: PatchDirection = Field("denoising", description=DIRECTION_DOC)
    metric: Literal["classic", "robust"] = Field("classic", description=METRIC_DOC)
    min_abs_delta: float = Field(
        0.0,
        ge=0.0,
        description="Drop pairs whose |s_pert − s_base| is below this (the classic metric is "
        "unstable for tiny deltas); pairs with a zero delta are always dropped.",
    )
    batch_size: int = Field(16, ge=1, le=1024, description="Pairs per batch.")
    confidence: float = Field(0.95, gt=0.5, lt=1.0, description="Bootstrap CI level.")


class ActivationPatchingArgs(PatchingArgs):
    components: list[str] | None = Field(
        None,
        description="Components to patch, each alone: L<layer>.H<head>, L<layer>.resid, "
        ".attn or .mlp, optionally restricted to positions with @<role> (cls, query, doc, qterm, "
        "injected, filler, sep) or @p<index>, e.g. ['L1.H6', 'L2.mlp@injected']. Overrides "
        "granularity.",
    )
    joint: bool = Field(
        False, description="With components: also patch all of them together in one run."
    )
    granularity: Literal["heads", "block", "head_role"] = Field(
        "heads",
        description="Grid when no components are given: 'heads' = every head at all positions; "
        "'block' = sites × layer × positions; 'head_role' = every head × position role.",
    )
    sites: list[BlockSite] = Field(
        default_factory=all_block_sites,
        description="Sites of the block grid: resid (layer output), attn (attention write), mlp.",
    )
    positions: Literal["all", "role", "index"] = Field(
        "role",
        description="Positions of the block grid: 'all' (whole layer), 'role' (whole layer and "
        "each role group), 'index' (each token position up to max_positions).",
    )
    roles: list[RoleGroup] | None = Field(
        None, description="Role groups for positions='role' and head_role (default: all)."
    )
    max_positions: int = Field(32, ge=1, le=512, description="Positions for positions='index'.")
    engine: Literal["auto", "cached", "nnsight"] = Field(
        "auto",
        description="'cached': exact, runs from the patched layer on cached inputs (fast); "
        "'nnsight': one nnsight trace per chunk of interventions (generic reference); 'auto': "
        "nnsight for explicit components and remote models (--remote), cached for grids. Both give "
        "the same numbers.",
    )

    @model_validator(mode="after")
    def _check(self) -> ActivationPatchingArgs:
        if self.components is not None:
            if not self.components:
                raise ValueError("components is empty: name at least one, or leave it out")
            for name in self.components:
                parse_target(name)
        if not self.sites:
            raise ValueError("sites is empty: choose from resid, attn, mlp")
        return self


def role_groups(retriever: Retriever, roles: Sequence[str] | None) -> list[str]:
    """The role groups to use (``query`` only exists on cross-encoders)."""
    groups = list(roles) if roles else list(POSITION_GROUPS)
    if retriever.kind != "cross-encoder" and not roles:
        groups.remove("query")
    return groups


def build_interventions(retriever: Retriever, args: ActivationPatchingArgs) -> list[Intervention]:
    n_layers, n_heads = retriever.n_layers, retriever.n_heads
    if args.components is not None:
        patches = [parse_target(name) for name in args.components]
        out = [Intervention(patch_name(p), (p,)) for p in patches]
        if args.joint and len(patches) > 1:
            out.append(Intervention("+".join(patch_name(p) for p in patches), tuple(patches)))
        return out
    if args.granularity == "heads":
        return heads_grid(n_layers, n_heads)
    if args.granularity == "head_role":
        grid = heads_grid(n_layers, n_heads, role_groups(retriever, args.roles))
    else:
        if args.positions == "all":
            selectors = [ALL_POSITIONS]
        elif args.positions == "role":
            selectors = [ALL_POSITIONS, *role_groups(retriever, args.roles)]
        else:
            selectors = [f"p{i}" for i in range(args.max_positions)]
        grid = block_grid(n_layers, args.sites, selectors)
    return on_token_layers(retriever, grid)


def _split_name(name: str) -> tuple[str, str]:
    base, _, positions = name.partition("@")
    return base, positions or ALL_POSITIONS


def _head_cell(base: str) -> dict[str, str]:
    """The labels of a head in the layer × head heatmap (``L1``, ``H6``); none for any other
    component (a block, a cross-attention head, a joint intervention)."""
    try:
        component = Component.parse(base)
    except ValueError:
        return {}
    if component.site != "heads":
        return {}
    return {"grid_layer": f"L{component.layer}", "grid_head": f"H{component.head}"}


def figures(
    ctx: ToolContext,
    retriever: Retriever,
    args: ActivationPatchingArgs,
    rows: list[dict],
    prefix: str = "patching",
    title: str = "Activation patching",
) -> list[ArtifactFile]:
    """Heatmaps of the grid: layer × head, (site, layer) × position role, head × role."""
    label = f"fraction of the effect ({'restored' if args.direction == 'denoising' else 'removed'})"
    cells = []
    for row in rows:
        base, positions = _split_name(row["component"])
        cells.append({**row, **_head_cell(base), "base": base, "positions": positions})
    out: list[ArtifactFile] = []
    layers = [f"L{i}" for i in range(retriever.n_layers)]
    if args.components is None and args.granularity == "heads":
        heads = [f"H{h}" for h in range(retriever.n_heads)]
        path = ctx.artifact_path(f"{prefix}_layer_head.png")
        grid = grid_from_rows(cells, "grid_layer", "grid_head", layers, heads)
        heatmap(grid, layers, heads, path, f"{title} per head: {label}", "head", "layer")
        out.append(ArtifactFile(path=path, media_type="image/png", description="layer × head"))
    elif args.components is None and args.granularity == "head_role":
        names = [
            Component(i, "heads", h).name
            for i in range(retriever.n_layers)
            for h in range(retriever.n_heads)
        ]
        groups = role_groups(retriever, args.roles)
        path = ctx.artifact_path(f"{prefix}_head_role.png")
        grid = grid_from_rows(cells, "base", "positions", names, groups)
        heatmap(grid, names, groups, path, f"{title} per head × position role: {label}", "role")
        out.append(ArtifactFile(path=path, media_type="image/png", description="head × role"))
    elif args.components is None:
        names = [f"{layer}.{site}" for site in args.sites for layer in layers]
        columns = sorted({c["positions"] for c in cells}, key=_position_order)
        path = ctx.artifact_path(f"{prefix}_layer_position.png")
        grid = grid_from_rows(cells, "base", "positions", names, columns)
        kind = "position role" if args.positions != "index" else "position"
        heatmap(grid, names, columns, path, f"{title} per layer × {kind}: {label}", kind)
        out.append(
            ArtifactFile(path=path, media_type="image/png", description=f"(site, layer) × {kind}")
        )
    return out


def _position_order(selector: str) -> tuple[int, int | str]:
    if selector == ALL_POSITIONS:
        return (0, 0)
    if selector in POSITION_GROUPS:
        return (1, list(POSITION_GROUPS).index(selector))
    return (2, int(selector[1:]))


@register
class ActivationPatching(Tool[ActivationPatchingArgs]):
    name = "activation_patching"
    description = (
        "Activation patching between the baseline and perturbed document of each pair: per head "
        "(all positions), per block (resid/attn/mlp × layer × position role or index), per head × "
        "position role, or chosen components. effect[X]: the fraction of the behaviour's score "
        "change the component restores (denoising) or removes (noising), per query a ratio of "
        "means, with query-cluster CIs; score-unit changes as descriptive columns; heatmaps. "
        "Bi-encoders: the query embedding is fixed, the document side is patched."
    )
    version = "1"
    Args = ActivationPatchingArgs
    metrics = EFFECT_METRICS

    def run(self, ctx: ToolContext, args: ActivationPatchingArgs) -> ToolResult:
        retriever = ctx.retriever
        pairs = load_pairs(ctx, args)
        interventions = build_interventions(retriever, args)
        engine = args.engine
        if engine == "auto":
            remote = getattr(retriever, "remote", None)
            engine = "nnsight" if args.components is not None or remote else "cached"
        scores = (ctx.patch_engine or patch_pairs)(
            retriever,
            list(pairs),
            interventions,
            direction=args.direction,
            engine=engine,
            batch_size=args.batch_size,
            progress=ctx.progress,
        )
        report = effect_report(scores, args.metric, args.min_abs_delta, args.confidence, args.seed)
        artifacts = [
            save_scores(
                scores,
                ctx.artifact_path("patching_scores.npz"),
                "per-pair scores: s_base, s_pert, s_patched [pairs × interventions]",
            )
        ]
        if report.n_kept:
            artifacts += figures(ctx, retriever, args, report.rows)
        what = (
            f"{len(interventions)} components"
            if args.components is not None
            else f"granularity {args.granularity}"
            + (f", positions {args.positions}" if args.granularity == "block" else "")
        )
        header = (
            f"Activation patching ({args.direction}, {engine} engine, "
            f"{what}) on {report.n_kept} pairs of {args.axiom}/{args.variant} "
            f"[{args.split}]; {report.n_dropped} dropped (|Δ| < {args.min_abs_delta} or 0)."
        )
        if not report.n_kept:
            summary = header + " No pairs left: nothing to report."
        else:
            mean_delta = report.metrics["mean_delta"]
            summary = (
                f"{header} Mean Δ = s_pert − s_base = {mean_delta:.4g}.\n"
                f"{EFFECT_NOTE}. Top components by |effect| (effect [{args.confidence:.0%} CI] "
                f"p, score-unit change):\n"
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
        )
