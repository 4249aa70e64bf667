"""The ``attention_masking`` tool: block attention between segments and measure the score change."""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import Field, model_validator

from rankscope.tools.catalog.common import PairArgs, load_pairs
from rankscope.tools.contract import Tool, ToolContext, ToolResult
from rankscope.tools.interventions.cache import capture
from rankscope.tools.interventions.masking import (
    SEGMENTS,
    Block,
    config_name,
    masked_scores,
    require_cross_encoder,
)
from rankscope.tools.interventions.metrics import rank_rows, summarise_columns
from rankscope.tools.interventions.pairs import pair_batches, with_progress
from rankscope.tools.interventions.report import fmt
from rankscope.tools.metric_keys import (
    declare,
    estimate,
    metric_key,
    per_component,
    scalar,
)
from rankscope.tools.registry import register
from rankscope.tools.stats import values_by_query


class AttentionMaskingArgs(PairArgs):
    blocks: list[str] = Field(
        default_factory=lambda: ["doc->query", "query->doc"],
        min_length=1,
        description="Segment blocks '<from>-><to>' (segments: cls, query, doc, sep), each applied "
        "alone, e.g. 'doc->query' stops document tokens attending to query tokens.",
    )
    layers: list[int] | None = Field(None, description="Layers to mask at (default: all).")
    per_layer: bool = Field(False, description="Also apply each block at each layer alone.")
    joint: bool = Field(False, description="Also apply all blocks together.")
    batch_size: int = Field(16, ge=1, le=1024, description="Pairs per batch.")
    confidence: float = Field(0.95, gt=0.5, lt=1.0, description="Bootstrap CI level.")

    @model_validator(mode="after")
    def _check(self) -> AttentionMaskingArgs:
        for text in self.blocks:
            Block.parse(text, [0])
        by_source: dict[str, set[str]] = {}
        for text in self.blocks:
            block = Block.parse(text, [0])
            by_source.setdefault(block.source, set()).add(block.dest)
        if self.joint and any(dests >= set(SEGMENTS) for dests in by_source.values()):
            raise ValueError("joint blocks would stop a segment attending to anything")
        return self


@register
class AttentionMasking(Tool[AttentionMaskingArgs]):
    name = "attention_masking"
    description = (
        "Cross-encoders only: block attention from one segment (cls, query, doc, sep) to another "
        "at chosen layers and measure the change of the baseline and perturbed scores and of "
        "the delta s_pert − s_base, with bootstrap CIs and p-values. Bi-encoders encode one "
        "segment and get an error."
    )
    version = "1"
    Args = AttentionMaskingArgs
    metrics = declare(
        "n_pairs",
        "n_blocks",
        "mean_delta",
        scalar("top_delta_change", ci=True),
        estimate(
            per_component("delta_change", ci=True),
            family="ablation_delta",
            meaning="change of the score delta s_pert − s_base when the attention block is "
            "masked (per query: the mean over its pairs)",
            unit="score",
        ),
        per_component("p_value"),
        per_component("base_score_change"),
    ).describe(
        n_pairs=("pairs run", "pairs"),
        n_blocks=("masking configurations run", "configurations"),
        mean_delta=("mean Δ = s_pert − s_base without masking", "score"),
        top_delta_change="delta_change of the block with the largest |change|: selected after "
        "the fact, for readers only",
        p_value="the tool's own two-sided p-value of a block's delta_change (pairs)",
        base_score_change=("mean change of the baseline score under the mask", "score"),
    )

    def run(self, ctx: ToolContext, args: AttentionMaskingArgs) -> ToolResult:
        retriever = ctx.retriever
        require_cross_encoder(retriever)
        layers = args.layers if args.layers is not None else list(range(retriever.n_layers))
        for layer in layers:
            if not 0 <= layer < retriever.n_layers:
                raise ValueError(f"layer {layer} does not exist (0…{retriever.n_layers - 1})")
        blocks = [Block.parse(text, layers) for text in args.blocks]
        configs: list[tuple[Block, ...]] = [(b,) for b in blocks]
        if args.per_layer and len(layers) > 1:
            configs += [(Block(b.source, b.dest, (layer,)),) for b in blocks for layer in layers]
        if args.joint and len(blocks) > 1:
            configs.append(tuple(blocks))
        names = [config_name(c) for c in configs]
        pairs = list(load_pairs(ctx, args))
        n, k = len(pairs), len(names)
        s_base, s_pert = np.zeros(n), np.zeros(n)
        base_m, pert_m = np.zeros((n, k)), np.zeros((n, k))
        batches = pair_batches(retriever, pairs, args.batch_size)
        for batch in with_progress(batches, n, "masking", ctx.progress):
            for side, plain, masked in ((batch.base, s_base, base_m), (batch.pert, s_pert, pert_m)):
                run = capture(retriever, side)
                plain[batch.index] = run.scores.float().cpu().numpy()
                masked[batch.index] = masked_scores(retriever, run, configs).numpy()
        delta = s_pert - s_base
        change = (pert_m - base_m) - delta[:, None]
        rows = summarise_columns(change, names, args.confidence, args.seed)
        base_rows = summarise_columns(base_m - s_base[:, None], names, args.confidence, args.seed)
        pert_rows = summarise_columns(pert_m - s_pert[:, None], names, args.confidence, args.seed)
        mean_delta = float(delta.mean()) if n else None
        table = []
        for j, row in enumerate(rows):
            masked_delta = float((pert_m[:, j] - base_m[:, j]).mean()) if n else None
            table.append(
                {
                    "block": row["component"],
                    "delta_change": row["effect"],
                    "ci_low": row["ci_low"],
                    "ci_high": row["ci_high"],
                    "p_value": row["p_value"],
                    "n": row["n"],
                    "delta": mean_delta,
                    "delta_masked": masked_delta,
                    "fraction_removed": 1.0 - masked_delta / mean_delta
                    if mean_delta and masked_delta is not None
                    else None,
                    "base_score_change": base_rows[j]["effect"],
                    "pert_score_change": pert_rows[j]["effect"],
                }
            )
        ranked = rank_rows(table, "delta_change")
        metrics: dict[str, Any] = {"n_pairs": n, "n_blocks": k, "mean_delta": mean_delta}
        if ranked:
            metrics |= {
                "top_delta_change": ranked[0]["delta_change"],
                "top_delta_change_ci_low": ranked[0]["ci_low"],
                "top_delta_change_ci_high": ranked[0]["ci_high"],
            }
        for r in ranked:
            name = r["block"]
            metrics[metric_key("delta_change", name)] = r["delta_change"]
            metrics[metric_key("delta_change", name, "ci_low")] = r["ci_low"]
            metrics[metric_key("delta_change", name, "ci_high")] = r["ci_high"]
            metrics[metric_key("p_value", name)] = r["p_value"]
            metrics[metric_key("base_score_change", name)] = r["base_score_change"]
        lines = [
            f"  {r['block']}: Δ change {fmt(r['delta_change'])} [{fmt(r['ci_low'])}, "
            f"{fmt(r['ci_high'])}] p={fmt(r['p_value'])}; baseline score change "
            f"{fmt(r['base_score_change'])}"
            for r in ranked[:5]
        ]
        if len(ranked) > 5:
            lines.append(f"  … {len(ranked) - 5} more rows in the full table")
        summary = (
            f"Attention masking on {n} pairs of {args.axiom}/{args.variant} [{args.split}]; "
            f"mean Δ = {fmt(mean_delta)}. Ranked by |change of Δ|:\n" + "\n".join(lines)
        )
        qids = [p.qid for p in pairs]
        per_query = {
            metric_key("delta_change", name): values_by_query(qids, change[:, j].tolist())
            for j, name in enumerate(names)
            if metric_key("delta_change", name) in metrics
        }
        return ToolResult(
            metrics=metrics, summary=summary, tables={"masking": ranked}, per_query=per_query
        )
