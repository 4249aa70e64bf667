"""Axiom screen: every axiom, variant and ABNIRML-style manipulation of the data in one call."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from pydantic import Field

from rankscope.tools.catalog.behavioural_test import PREDICTED_BY_AXIOM
from rankscope.tools.catalog.common import Split
from rankscope.tools.catalog.screening import bar_chart, query_ci
from rankscope.tools.contract import ArtifactFile, Tool, ToolArgs, ToolContext, ToolResult
from rankscope.tools.data.errors import AlignmentWarning
from rankscope.tools.metric_keys import WITH_CI, MetricSpec, declare, estimate, metric_key
from rankscope.tools.registry import register
from rankscope.tools.stats import QueryValue, interval_text, values_by_query

ROW = ("axiom", "variant")
"""The qualifiers naming one row (one perturbation) of the screen."""


class AxiomScreenArgs(ToolArgs):
    split: Split = Field(
        "discovery",
        description="Queries to use: 'discovery' to screen, 'holdout' (disjoint queries) to "
        "replicate a hit, 'all' for both.",
    )
    n_pairs: int = Field(
        32, ge=1, le=10_000, description="Pairs sampled (with the seed) per perturbation."
    )
    perturbations: list[str] | None = Field(
        None,
        description="Rows to run as 'AXIOM/variant' (e.g. ['TFC1/append', 'LNC1/append']); "
        "default: every perturbation the data source offers.",
    )
    aligned: bool = Field(
        False, description="Score the length-aligned texts (with filler) instead of originals."
    )
    holdout_fraction: float = Field(0.5, gt=0.0, lt=1.0)
    split_seed: int = Field(0, description="Seed of the query split (keep it fixed to replicate).")
    batch_size: int = Field(32, ge=1, le=1024)
    n_bootstrap: int = Field(2000, ge=100, le=100_000)


def _row_spec(name: str, **declared: Any) -> MetricSpec:
    return estimate(MetricSpec(name, WITH_CI, False, (), ROW), **declared)


@register
class AxiomScreen(Tool[AxiomScreenArgs]):
    """Run the whole perturbation battery on one split and rank the rows by effect size."""

    name = "axiom_screen"
    description = (
        "Screen every axiom and variant (TFC1 append/prepend/replace, TFC2, TDC, STMC1, LNC1, "
        "LNC2) and every ABNIRML-style manipulation (shuffle, reverse, delete stop words or "
        "punctuation, typos) in one call on one split. Per row: mean score delta (perturbed − "
        "baseline) with a query-cluster bootstrap 95% CI, the share of pairs moved the way the "
        "axiom predicts (rows without a prediction: the share that increased), n queries and "
        "pairs; a ranked table and a bar chart. Metrics: mean_delta[axiom=A|variant=V], "
        "share_moved_predicted[axiom=A|variant=V] (with _ci_low/_ci_high), n_rows. Use it for "
        "open questions ('what does the model reward?'), then confirm a hit with "
        "behavioural_test."
    )
    version = "1"
    Args = AxiomScreenArgs
    metrics = declare(
        _row_spec(
            "mean_delta",
            family="score_delta",
            meaning="mean score change s_pert − s_base of one perturbation (row); per query the "
            "mean over its pairs, the estimate the mean over queries",
            unit="score",
        ),
        _row_spec(
            "share_moved_predicted",
            family="behaviour_share",
            meaning="share of a row's pairs whose score moved the way the axiom predicts (rows "
            "without a predicted direction: the share that increased); per query the share "
            "among its pairs",
            unit="fraction of pairs",
            null_value=0.5,
        ),
        "n_rows",
        "n_pairs",
        "n_queries",
    ).describe(
        n_rows=("perturbations (rows) screened: the tests of one family this call makes", "rows"),
        n_pairs=("pairs scored over all rows", "pairs"),
        n_queries=("distinct queries over all rows", "queries"),
    )

    def run(self, ctx: ToolContext, args: AxiomScreenArgs) -> ToolResult:
        rows_wanted = self._rows(ctx, args)
        metrics: dict[str, float | int | None] = {}
        per_query: dict[str, list[QueryValue]] = {}
        table: list[dict[str, Any]] = []
        skipped: list[str] = []
        all_qids: set[str] = set()
        total_pairs = 0
        for axiom, variant in rows_wanted:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", AlignmentWarning)
                pairs = ctx.data.pairs(
                    axiom,
                    variant,
                    tokenizer=ctx.retriever.tokenizer if args.aligned else None,
                    split=args.split,
                    n=args.n_pairs,
                    seed=args.seed,
                    split_seed=args.split_seed,
                    holdout_fraction=args.holdout_fraction,
                    max_length=ctx.retriever.max_length,
                )
            if len(pairs) == 0:
                skipped.append(f"{axiom}/{variant}")
                continue
            predicted = PREDICTED_BY_AXIOM.get(axiom.upper(), "any")
            queries = [p.query for p in pairs]
            texts = [p.baseline for p in pairs] + [p.perturbed for p in pairs]
            scores = ctx.retriever.score(queries + queries, texts, args.batch_size, ctx.progress)
            base, pert = scores.numpy().astype(float).reshape(2, len(pairs))
            delta = pert - base
            moved = delta < 0 if predicted == "decrease" else delta > 0
            qids = [p.qid for p in pairs]
            all_qids |= set(qids)
            total_pairs += len(pairs)
            delta_q = values_by_query(qids, delta.tolist())
            share_q = values_by_query(qids, moved.astype(float).tolist())
            est, low, high, p = query_ci(delta_q, seed=args.seed, n_resamples=args.n_bootstrap)
            s_est, s_low, s_high, _ = query_ci(
                share_q, seed=args.seed, n_resamples=args.n_bootstrap
            )
            sd = float(np.std([v.value for v in delta_q], ddof=1)) if len(delta_q) > 1 else 0.0
            for name, values, stats in (
                ("mean_delta", delta_q, (est, low, high)),
                ("share_moved_predicted", share_q, (s_est, s_low, s_high)),
            ):
                key = metric_key(name, axiom=axiom, variant=variant)
                per_query[key] = values
                for stat, value in zip(WITH_CI, stats, strict=True):
                    metrics[metric_key(name, stat=stat, axiom=axiom, variant=variant)] = value
            table.append(
                {
                    "axiom": axiom,
                    "variant": variant,
                    "predicted": predicted,
                    "mean_delta": est,
                    "ci_low": low,
                    "ci_high": high,
                    "p_value": p,
                    "standardised": est / sd if sd > 0 else float("nan"),
                    "share_moved_predicted": s_est,
                    "share_ci_low": s_low,
                    "share_ci_high": s_high,
                    "n_queries": len(delta_q),
                    "n_pairs": len(pairs),
                }
            )
        if not table:
            raise ValueError(f"no perturbation gave pairs on split {args.split!r}")
        table.sort(key=lambda r: -abs(r["mean_delta"]))
        for rank, row in enumerate(table, start=1):
            row["rank"] = rank
        metrics |= {"n_rows": len(table), "n_pairs": total_pairs, "n_queries": len(all_qids)}
        figure = ctx.artifact_path(f"axiom_screen_{args.split}.png")
        bar_chart(
            [f"{r['axiom']}/{r['variant']}" for r in table],
            [r["mean_delta"] for r in table],
            [r["ci_low"] for r in table],
            [r["ci_high"] for r in table],
            figure,
            title=f"Axiom screen ({args.split}): {ctx.retriever.model_id}",
            xlabel="mean score delta (perturbed − baseline), 95% query-cluster CI",
        )
        return ToolResult(
            metrics=metrics,
            summary=self._summary(args, table, skipped),
            tables={"rows": table, "skipped": [{"perturbation": s} for s in skipped]},
            per_query=per_query,
            artifacts=[
                ArtifactFile(
                    path=figure,
                    media_type="image/png",
                    description="Mean score delta per perturbation with 95% query-cluster CIs",
                )
            ],
        )

    @staticmethod
    def _rows(ctx: ToolContext, args: AxiomScreenArgs) -> list[tuple[str, str]]:
        offered = ctx.data.axioms()
        if args.perturbations is None:
            return offered
        wanted = []
        for item in args.perturbations:
            axiom, _, variant = item.partition("/")
            match = [(a, v) for a, v in offered if a == axiom.upper() and v == variant.lower()]
            if not match:
                known = ", ".join(f"{a}/{v}" for a, v in offered)
                raise ValueError(f"unknown perturbation {item!r}; this data offers: {known}")
            wanted.extend(match)
        return wanted

    @staticmethod
    def _summary(args: AxiomScreenArgs, table: list[dict[str, Any]], skipped: list[str]) -> str:
        lines = [
            f"Axiom screen on split {args.split}: {len(table)} perturbations, ranked by |mean "
            "delta| (95% query-cluster CI; share moved the predicted way):"
        ]
        for row in table[:8]:
            excludes_zero = row["ci_low"] > 0 or row["ci_high"] < 0
            moved = "increased" if row["predicted"] == "any" else "moved as predicted"
            lines.append(
                f"  {row['rank']}. {row['axiom']}/{row['variant']} (predicted {row['predicted']})"
                f": mean delta {row['mean_delta']:+.4g} "
                f"{interval_text(row['ci_low'], row['ci_high'], '+.4g')}"
                f"{' *' if excludes_zero else ''}, {moved} "
                f"{row['share_moved_predicted']:.0%}, {row['n_queries']} queries / "
                f"{row['n_pairs']} pairs"
            )
        if len(table) > 8:
            lines.append(f"  … {len(table) - 8} more rows in the table 'rows'")
        if skipped:
            lines.append(f"No pairs for: {', '.join(skipped)}.")
        lines.append(
            "* CI excludes 0 (uncorrected; the engine corrects for the "
            f"{len(table)} rows). Confirm a hit with behavioural_test on the same perturbation."
        )
        return "\n".join(lines)
