"""The ``attention_by_role`` tool: mean attention mass between token roles, per head."""

from __future__ import annotations

import warnings
from dataclasses import replace
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field, field_validator

from rankscope.tools.catalog.common import PairArgs, load_pairs
from rankscope.tools.contract import ArtifactFile, Tool, ToolContext, ToolResult
from rankscope.tools.interventions.attention import SAME_TOKEN, attention_by_role, token_layers
from rankscope.tools.interventions.heatmaps import heatmap
from rankscope.tools.interventions.metrics import summarise_columns
from rankscope.tools.interventions.pairs import POSITION_GROUPS
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
from rankscope.tools.representations.activations import parse_layer_name
from rankscope.tools.retrievers.base import Component, Retriever
from rankscope.tools.stats import QueryValue, values_by_query

FromRole = Literal["cls", "query", "doc", "qterm", "injected", "filler", "sep"]
ToRole = Literal["cls", "query", "doc", "qterm", "injected", "filler", "sep", "same_token"]


def parse_heads(retriever: Retriever, names: list[str] | None) -> list[tuple[int, int]]:
    """(layer, head) for names ``L1.H6`` (a head, as :class:`Component` names it) or ``L1`` (all
    heads of layer 1, a whole-layer name as :func:`parse_layer_name` reads it); if None, all heads
    of the layers that run over the input's tokens (monoT5's decoder blocks do not)."""
    if names is None:
        return [(layer, h) for layer in token_layers(retriever) for h in range(retriever.n_heads)]
    out: list[tuple[int, int]] = []
    for name in names:
        layer = parse_layer_name(name.strip())
        head = None
        if layer is None:
            component = _head(name)
            layer, head = component.layer, component.head
        if not 0 <= layer < retriever.n_layers:
            raise ValueError(f"layer {layer} does not exist (0…{retriever.n_layers - 1})")
        if head is None:
            out += [(layer, h) for h in range(retriever.n_heads)]
        else:
            if not 0 <= head < retriever.n_heads:
                raise ValueError(f"head {head} does not exist (0…{retriever.n_heads - 1})")
            out.append((layer, head))
    return list(dict.fromkeys(out))


def _head(name: str) -> Component:
    """The attention head ``name`` names; ValueError for any other name."""
    try:
        component = Component.parse(name)
    except ValueError:
        component = None
    if component is None or component.site != "heads":
        raise ValueError(f"bad head {name!r}: use L<layer>.H<head> or L<layer> (all its heads)")
    return component


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
                    names.append((Component(layer, "heads", head).name, source, dest, fi, ti))
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
        row_labels = [Component(layer, "heads", head).name for layer, head in heads]
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
