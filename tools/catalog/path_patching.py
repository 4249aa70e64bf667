"""Path patching: does a sender head act on the score (or on a receiver head) directly?"""

from __future__ import annotations

import numpy as np
from pydantic import Field, model_validator

from rankscope.tools.catalog.activation_patching import PatchingArgs
from rankscope.tools.catalog.common import load_pairs
from rankscope.tools.contract import ArtifactFile, Tool, ToolContext, ToolResult
from rankscope.tools.interventions.cache import SiteKey, capture
from rankscope.tools.interventions.heatmaps import heatmap
from rankscope.tools.interventions.pairs import pair_batches, with_progress
from rankscope.tools.interventions.patching import PatchScores, sides
from rankscope.tools.interventions.path import Receiver, parse_senders, path_patch
from rankscope.tools.interventions.report import (
    EFFECT_METRICS,
    effect_report,
    save_scores,
    sign_note,
    top_lines,
)
from rankscope.tools.registry import register
from rankscope.tools.retrievers.base import Component


class PathPatchingArgs(PatchingArgs):
    senders: list[str] | None = Field(
        None,
        description="Sender heads (L<layer>.H<head>), each tested alone; default: every head in "
        "a layer before the receiver.",
    )
    joint: bool = Field(False, description="Also patch all senders together as one sender set.")
    receiver: str = Field(
        "final",
        description="'final' (the final representation, i.e. the score), or a head's query, key "
        "or value input: L<layer>.H<head>.q, .k or .v (e.g. L2.H3.k).",
    )

    @model_validator(mode="after")
    def _check(self) -> PathPatchingArgs:
        Receiver.parse(self.receiver)
        if self.senders is not None:
            if not self.senders:
                raise ValueError("senders is empty: name at least one head, or leave it out")
            parse_senders(self.senders)
        return self


@register
class PathPatching(Tool[PathPatchingArgs]):
    name = "path_patching"
    description = (
        "Path patching: the effect of sender heads on a receiver (the final representation, or a "
        "later head's q, k or v input) through the residual stream only, with every other head "
        "frozen to its clean value (Wang et al.). effect[X]: the fraction of the behaviour's "
        "score change each sender restores through that path (per query a ratio of means), "
        "with query-cluster CIs."
    )
    version = "1"
    Args = PathPatchingArgs
    metrics = EFFECT_METRICS

    def run(self, ctx: ToolContext, args: PathPatchingArgs) -> ToolResult:
        retriever = ctx.retriever
        receiver = Receiver.parse(args.receiver)
        limit = retriever.n_layers if receiver.layer is None else receiver.layer
        if args.senders is None:
            heads = [(layer, h) for layer in range(limit) for h in range(retriever.n_heads)]
            if not heads:
                raise ValueError(f"no head lies before the receiver {receiver.name}")
        else:
            heads = list(parse_senders(args.senders))
        sender_sets: list[tuple[tuple[int, int], ...]] = [(head,) for head in heads]
        names = [Component(layer, "heads", h).name for layer, h in heads]
        if args.joint and len(heads) > 1:
            sender_sets.append(tuple(heads))
            names.append("+".join(names))
        pairs = list(load_pairs(ctx, args))
        n, k = len(pairs), len(sender_sets)
        s_base, s_pert, s_patched = np.zeros(n), np.zeros(n), np.zeros((n, k))
        sites: list[SiteKey] = [(layer, "heads") for layer in range(retriever.n_layers)]
        batches = pair_batches(retriever, pairs, args.batch_size)
        for batch in with_progress(batches, n, "path patching", ctx.progress):
            target_side, source_side = sides(batch, args.direction)
            target = capture(retriever, target_side, sites)
            source = capture(retriever, source_side, sites)
            patched = path_patch(retriever, target, source, sender_sets, receiver)
            t, s = target.scores.float().cpu().numpy(), source.scores.float().cpu().numpy()
            base, pert = (t, s) if args.direction == "denoising" else (s, t)
            s_base[batch.index], s_pert[batch.index] = base, pert
            s_patched[batch.index] = patched.numpy()
        scores = PatchScores(
            names=names,
            s_base=s_base,
            s_pert=s_pert,
            s_patched=s_patched,
            applicable=np.ones((n, k), dtype=bool),
            relevance=[p.relevance for p in pairs],
            direction=args.direction,
            qids=[p.qid for p in pairs],
        )
        report = effect_report(scores, args.metric, args.min_abs_delta, args.confidence, args.seed)
        artifacts = [
            save_scores(
                scores,
                ctx.artifact_path("path_patching_scores.npz"),
                f"per-pair scores of path patching into {receiver.name}",
            )
        ]
        if report.n_kept and args.senders is None:
            grid = np.full((limit, retriever.n_heads), np.nan)
            for row in report.rows:
                if "+" not in row["component"] and row["effect"] is not None:
                    layer, head = parse_senders([row["component"]])[0]
                    grid[layer, head] = row["effect"]
            path = ctx.artifact_path("path_patching_layer_head.png")
            heatmap(
                grid,
                [f"L{i}" for i in range(limit)],
                [f"H{h}" for h in range(retriever.n_heads)],
                path,
                f"Path patching → {receiver.name}: fraction of the effect ({args.direction})",
                "sender head",
                "sender layer",
            )
            artifacts.append(
                ArtifactFile(path=path, media_type="image/png", description="sender layer × head")
            )
        header = (
            f"Path patching ({args.direction}) from {len(heads)} sender "
            f"head(s) into {receiver.name}, other heads frozen, on {report.n_kept} pairs of "
            f"{args.axiom}/{args.variant} [{args.split}]; {report.n_dropped} dropped."
        )
        summary = (
            header + " No pairs left: nothing to report."
            if not report.n_kept
            else f"{header}\nTop senders by |effect| (effect [CI] p):\n{top_lines(report.rows)}"
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
