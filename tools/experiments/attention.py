"""Attention tools: where heads look by token role, and what masking segments does to scores."""

from __future__ import annotations

import re
import warnings
from dataclasses import replace
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from rankscope.tools.contract import ArtifactFile, Tool, ToolContext, ToolResult
from rankscope.tools.experiments.common import PairArgs, load_pairs
from rankscope.tools.interventions.attention import SAME_TOKEN, attention_by_role, token_layers
from rankscope.tools.interventions.cache import capture
from rankscope.tools.interventions.figures import heatmap
from rankscope.tools.interventions.masking import (
    SEGMENTS,
    Block,
    config_name,
    masked_scores,
    require_cross_encoder,
)
from rankscope.tools.interventions.metrics import rank_rows, summarise_columns
from rankscope.tools.interventions.pairs import POSITION_GROUPS, pair_batches, with_progress
from rankscope.tools.interventions.report import fmt
from rankscope.tools.metric_keys import (
    MetricCatalogue,
    declare,
    estimate,
    metric_key,
    per_component,
    scalar,
)
from rankscope.tools.registry import register
from rankscope.tools.retrievers.base import Retriever
from rankscope.tools.stats import QueryValue, values_by_query

FromRole = Literal["cls", "query", "doc", "qterm", "injected", "filler", "sep"]
ToRole = Literal["cls", "query", "doc", "qterm", "injected", "filler", "sep", "same_token"]


def parse_heads(retriever: Retriever, names: list[str] | None) -> list[tuple[int, int]]:
    """(layer, head) for names ``L1.H6`` (a head) or ``L1`` (all heads of layer 1); if None, all
    heads of the layers that run over the input's tokens (monoT5's decoder blocks do not)."""
    if names is None:
        return [(layer, h) for layer in token_layers(retriever) for h in range(retriever.n_heads)]
    out: list[tuple[int, int]] = []
    for name in names:
        match = re.fullmatch(r"L(\d+)(?:\.H(\d+))?", name.strip())
        if not match:
            raise ValueError(f"bad head {name!r}: use L<layer>.H<head> or L<layer> (all its heads)")
        layer = int(match.group(1))
        if not 0 <= layer < retriever.n_layers:
            raise ValueError(f"layer {layer} does not exist (0…{retriever.n_layers - 1})")
        if match.group(2) is None:
            out += [(layer, h) for h in range(retriever.n_heads)]
        else:
            head = int(match.group(2))
            if not 0 <= head < retriever.n_heads:
                raise ValueError(f"head {head} does not exist (0…{retriever.n_heads - 1})")
            out.append((layer, head))
    return list(dict.fromkeys(out))


class AttentionByRoleArgs(PairArgs):
    heads: list[str] | None = Field(
        None,
        description="Heads to read: L<layer>.H<head> or L<layer> (all its heads); all if None.",
    )
    side: Literal["perturbed", "baseline"] = Field(
        "perturbed", description="Which document of each pair to read attention on."
    )
    from_roles: list[FromRole] | None = Field(
        None, description="Role groups attending (rows); default: every group."
    )
    to_roles: list[ToRole] | None = Field(
        None,
        description="Role groups attended to; 'same_token' = other positions with the same token "
        "(earlier occurrences of an injected term: duplicate-token heads). Default: every group.",
    )
    focus: str = Field(
        "injected->same_token",
        description="The role pair '<from>-><to>' whose top heads the summary and top_* metrics "
        "report.",
    )
    batch_size: int = Field(16, ge=1, le=1024, description="Pairs per batch.")
    confidence: float = Field(0.95, gt=0.5, lt=1.0, description="Bootstrap CI level.")

    @field_validator("focus")
    @classmethod
    def _focus(cls, value: str) -> str:
        source, sep, dest = value.partition("->")
        if not sep or source not in POSITION_GROUPS or dest not in [*POSITION_GROUPS, SAME_TOKEN]:
            raise ValueError(
                f"bad focus {value!r}: use '<from>-><to>' with groups {', '.join(POSITION_GROUPS)}"
                f" (and {SAME_TOKEN} as <to>)"
            )
        return value


@register
class AttentionByRole(Tool[AttentionByRoleArgs]):
    name = "attention_by_role"
    description = (
        "Mean attention mass from tokens of one role (cls, query, doc, qterm, injected, filler, "
        "sep) to tokens of another (or to other occurrences of the same token: same_token) for "
        "chosen heads, read from the eager attention probabilities with nnsight; with bootstrap "
        "CIs and the mass uniform attention would give. Finds duplicate-token heads "
        "(injected->same_token)."
    )
    version = "1"
    Args = AttentionByRoleArgs
    metrics = declare(
        "n_pairs",
        "n_heads",
        "top_lift",
        "uniform_attention",
        scalar("top_attention", ci=True),
        estimate(
            per_component("attention", tags=["from->to"]),
            family="attention_mass",
            meaning="mean attention mass from tokens of one role to tokens of another for one "
            "head (per query: the mean over its pairs that have tokens of both roles); an "
            "estimate when heads are named, descriptive in a screen of every head",
            unit="attention probability mass",
        ),
    ).describe(
        n_pairs=("pairs read", "pairs"),
        n_heads=("heads read", "heads"),
        top_lift="attention / uniform attention of the top head of the focus role pair",
        uniform_attention="mass uniform attention would give the focus role pair",
        top_attention="attention of the top head of the focus role pair: selected after the "
        "fact, for readers only",
    )
    screen_metrics: ClassVar[MetricCatalogue] = MetricCatalogue(
        tuple(
            replace(s, kind="descriptive", family="") if s.kind == "estimate" else s
            for s in metrics.specs
        )
    )
    """The metrics of a screen of every head (``heads`` left out): too many tests to claim on."""

    def metrics_for(self, args: AttentionByRoleArgs) -> MetricCatalogue:
        return self.metrics if args.heads is not None else self.screen_metrics

    def run(self, ctx: ToolContext, args: AttentionByRoleArgs) -> ToolResult:
        retriever = ctx.retriever
        heads = parse_heads(retriever, args.heads)
        groups = [g for g in POSITION_GROUPS if g != "query" or retriever.kind == "cross-encoder"]
        from_groups: list[str] = list(args.from_roles or groups)
        to_groups: list[str] = list(args.to_roles) if args.to_roles else [*groups, SAME_TOKEN]
        focus_from, _, focus_to = args.focus.partition("->")
        if focus_from not in from_groups:
            from_groups.append(focus_from)
        if focus_to not in to_groups:
            to_groups.append(focus_to)
        pairs = list(load_pairs(ctx, args))
        layers = sorted({layer for layer, _ in heads})
        res = attention_by_role(
            retriever,
            pairs,
            layers,
            from_groups,
            to_groups,
            args.side,
            args.batch_size,
            ctx.progress,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            uniform = np.nanmean(res.uniform, axis=0)
        rows: list[dict[str, Any]] = []
        names, columns = [], []
        for layer, head in heads:
            li = res.layers.index(layer)
            for fi, source in enumerate(from_groups):
                for ti, dest in enumerate(to_groups):
                    columns.append(res.values[:, li, head, fi, ti])
                    names.append((f"L{layer}.H{head}", source, dest, fi, ti))
        column_of = {(h, f, t): col for (h, f, t, _, _), col in zip(names, columns, strict=True)}
        summaries = summarise_columns(
            np.stack(columns, 1) if columns else np.zeros((len(pairs), 0)),
            [f"{h}|{f}->{t}" for h, f, t, _, _ in names],
            args.confidence,
            args.seed,
        )
        for (head_name, source, dest, fi, ti), row in zip(names, summaries, strict=True):
            if row["n"] == 0:
                continue
            base = float(uniform[fi, ti]) if np.isfinite(uniform[fi, ti]) else None
            rows.append(
                {
                    "head": head_name,
                    "from_role": source,
                    "to_role": dest,
                    "attention": row["effect"],
                    "ci_low": row["ci_low"],
                    "ci_high": row["ci_high"],
                    "n": row["n"],
                    "uniform": base,
                    "lift": row["effect"] / base if base and row["effect"] is not None else None,
                }
            )
        focus_rows = sorted(
            (r for r in rows if r["from_role"] == focus_from and r["to_role"] == focus_to),
            key=lambda r: -(r["attention"] or 0.0),
        )
        metrics: dict[str, Any] = {"n_pairs": len(pairs), "n_heads": len(heads)}
        if focus_rows:
            top = focus_rows[0]
            metrics |= {
                "top_attention": top["attention"],
                "top_attention_ci_low": top["ci_low"],
                "top_attention_ci_high": top["ci_high"],
                "top_lift": top["lift"],
                "uniform_attention": top["uniform"],
            }
        per_query: dict[str, list[QueryValue]] = {}
        qids = [p.qid for p in pairs]
        for r in rows:
            role_pair = f"{r['from_role']}->{r['to_role']}"
            key = metric_key("attention", r["head"], tags=[role_pair])
            metrics[key] = r["attention"]
            if args.heads is not None:
                values = column_of[(r["head"], r["from_role"], r["to_role"])]
                per_query[key] = values_by_query(qids, values.tolist())
        artifacts = self._figure(ctx, rows, heads, args) if rows else []
        lines = [
            f"  {r['head']}: {fmt(r['attention'])} [{fmt(r['ci_low'])}, {fmt(r['ci_high'])}] "
            f"(uniform {fmt(r['uniform'])}, lift {fmt(r['lift'])}, n={r['n']})"
            for r in focus_rows[:5]
        ]
        if len(focus_rows) > 5:
            lines.append(f"  … {len(focus_rows) - 5} more heads in the full table")
        summary = (
            f"Attention by role on the {args.side} documents of {len(pairs)} pairs of "
            f"{args.axiom}/{args.variant} [{args.split}], {len(heads)} heads, "
            f"{len(from_groups)} × {len(to_groups)} role pairs. Top heads for {args.focus} "
            "(mean attention mass [CI]):\n"
            + ("\n".join(lines) if lines else "  no pair has tokens of both roles")
        )
        return ToolResult(
            metrics=metrics,
            summary=summary,
            tables={"attention": rows},
            artifacts=artifacts,
            per_query=per_query,
        )

    @staticmethod
    def _figure(
        ctx: ToolContext, rows: list[dict], heads: list[tuple[int, int]], args: AttentionByRoleArgs
    ) -> list[ArtifactFile]:
        row_labels = [f"L{layer}.H{head}" for layer, head in heads]
        pairs = list(dict.fromkeys(f"{r['from_role']}->{r['to_role']}" for r in rows))
        grid = np.full((len(row_labels), len(pairs)), np.nan)
        index_r = {name: i for i, name in enumerate(row_labels)}
        index_c = {name: j for j, name in enumerate(pairs)}
        for r in rows:
            if r["attention"] is not None:
                grid[index_r[r["head"]], index_c[f"{r['from_role']}->{r['to_role']}"]] = r[
                    "attention"
                ]
        path = ctx.artifact_path("attention_by_role.png")
        heatmap(
            grid,
            row_labels,
            pairs,
            path,
            f"Mean attention mass by role ({args.side} documents)",
            "from -> to",
            "head",
            "attention mass",
            diverging=False,
        )
        return [ArtifactFile(path=path, media_type="image/png", description="head × role pair")]


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
