"""Term contributions of a learned-sparse (SPLADE) model: which vocabulary terms carry a score.

A SPLADE score is a sum over vocabulary terms of ``query_weight * doc_weight``. For each pair this
tool splits the baseline score, the perturbed score and their change over terms, and labels each
term ``matched`` (a token of both texts), ``query_expansion`` (the query side expanded to a term of
the document), ``doc_expansion`` (the document side expanded to a query token) or ``expansion``
(a term neither text contains).
"""

from __future__ import annotations

from collections import defaultdict
from typing import cast

import numpy as np
from pydantic import Field

from rankscope.tools.catalog.common import PairArgs, load_pairs
from rankscope.tools.contract import Tool, ToolContext, ToolResult, summarise_rows
from rankscope.tools.metric_keys import breakdown, declare, estimate, metric_key, scalar
from rankscope.tools.registry import register
from rankscope.tools.retrievers.splade import Splade, TermContribution
from rankscope.tools.stats import bootstrap_ci, interval_text, values_by_query

TERM_KINDS = ("matched", "query_expansion", "doc_expansion", "expansion")


class TermContributionsArgs(PairArgs):
    top_k: int = Field(20, ge=1, le=1000, description="Terms kept in the table of top terms.")
    n_bootstrap: int = Field(2000, ge=100, le=100_000)


def _by_term(rows: list[TermContribution]) -> dict[int, TermContribution]:
    return {r.token_id: r for r in rows}


def _share(part: float, total: float) -> float | None:
    return part / total if abs(total) > 1e-12 else None


@register
class TermContributions(Tool[TermContributionsArgs]):
    name = "term_contributions"
    description = (
        "SPLADE models only: split each (baseline, perturbed) pair's score and score change over "
        "vocabulary terms (query weight x document weight), labelled matched, query_expansion, "
        "doc_expansion or expansion. Metrics: mean_delta (with CI), share_score[kind=K] (share of "
        "the baseline score from K terms), share_delta[kind=K] (share of the summed change), "
        "share_delta_injected (share of the change on terms the perturbation added), "
        "max_sum_error, n_pairs. Tables: top terms by mean |change| and per pair."
    )
    version = "1"
    Args = TermContributionsArgs
    metrics = declare(
        estimate(
            scalar("mean_delta", ci=True),
            family="score_delta",
            meaning="mean score change s_pert − s_base (per query: the mean over its pairs)",
            unit="score",
        ),
        "share_delta_injected",
        "max_sum_error",
        "n_pairs",
        breakdown("share_score", "kind"),
        breakdown("share_delta", "kind"),
    ).describe(
        share_delta_injected=(
            "share of the summed score change on terms the perturbation added (all pairs)",
            "fraction",
        ),
        max_sum_error=("largest |sum of term contributions − score| (a check)", "score"),
        n_pairs=("pairs split over terms", "pairs"),
        share_score=("share of the summed baseline score from terms of one kind", "fraction"),
        share_delta=("share of the summed score change on terms of one kind", "fraction"),
    )

    def run(self, ctx: ToolContext, args: TermContributionsArgs) -> ToolResult:
        retriever = ctx.retriever
        if not isinstance(retriever, Splade):
            raise ValueError(
                f"term_contributions needs a SPLADE model (its score is a sum over vocabulary "
                f"terms); the model under study is a {retriever.kind}"
            )
        pairs = load_pairs(ctx, args, aligned=False)
        if len(pairs) == 0:
            raise ValueError(f"no pairs for {args.axiom}/{args.variant} on split {args.split!r}")
        scores = retriever.score(
            [p.query for p in pairs] * 2, [p.baseline for p in pairs] + [p.perturbed for p in pairs]
        ).numpy()
        base_scores, pert_scores = scores[: len(pairs)], scores[len(pairs) :]
        score_by_kind: dict[str, float] = defaultdict(float)
        delta_by_kind: dict[str, float] = defaultdict(float)
        term_delta: dict[str, list[float]] = defaultdict(list)
        term_kind: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        injected_delta = 0.0
        max_error = 0.0
        pair_rows = []
        for pair, base_score, pert_score in zip(pairs, base_scores, pert_scores, strict=True):
            base = _by_term(retriever.term_contributions(pair.query, pair.baseline))
            pert = _by_term(retriever.term_contributions(pair.query, pair.perturbed))
            base_ids = retriever.own_token_ids(pair.baseline)
            max_error = max(
                max_error,
                abs(sum(r.contribution for r in base.values()) - float(base_score)),
                abs(sum(r.contribution for r in pert.values()) - float(pert_score)),
            )
            for row in base.values():
                score_by_kind[row.kind] += row.contribution
            top_term, top_change = "", 0.0
            for token_id in base.keys() | pert.keys():
                after, before = pert.get(token_id), base.get(token_id)
                change = (after.contribution if after else 0.0) - (
                    before.contribution if before else 0.0
                )
                entry = after or before
                if entry is None:
                    continue
                delta_by_kind[entry.kind] += change
                term_delta[entry.term].append(change)
                term_kind[entry.term][entry.kind] += 1
                if after is not None and after.in_doc and token_id not in base_ids:
                    injected_delta += change
                if abs(change) > abs(top_change):
                    top_term, top_change = row.term, change
            pair_rows.append(
                {
                    "qid": pair.qid,
                    "docno": pair.docno,
                    "baseline_score": float(base_score),
                    "perturbed_score": float(pert_score),
                    "delta": float(pert_score - base_score),
                    "top_term": top_term,
                    "top_term_change": top_change,
                }
            )
        deltas = pert_scores.astype(float) - base_scores.astype(float)
        total_score = float(sum(score_by_kind.values()))
        total_delta = float(sum(delta_by_kind.values()))
        mean = bootstrap_ci(deltas, n_resamples=args.n_bootstrap, seed=args.seed)
        metrics: dict[str, float | int | None] = {
            "n_pairs": len(pairs),
            **mean.as_metrics("mean_delta"),
            "share_delta_injected": _share(injected_delta, total_delta),
            "max_sum_error": max_error,
        }
        for kind in TERM_KINDS:
            metrics[metric_key("share_score", kind=kind)] = _share(score_by_kind[kind], total_score)
            metrics[metric_key("share_delta", kind=kind)] = _share(delta_by_kind[kind], total_delta)
        n = len(pairs)
        term_rows = sorted(
            (
                {
                    "term": term,
                    "kind": max(term_kind[term], key=term_kind[term].__getitem__),
                    "mean_change": float(np.sum(changes) / n),
                    "pairs": len(changes),
                }
                for term, changes in term_delta.items()
            ),
            key=lambda r: -abs(float(cast(float, r["mean_change"]))),
        )[: args.top_k]
        summary = (
            f"term contributions on {n} {args.axiom}/{args.variant} pairs: mean delta "
            f"{mean.value:.4g} {interval_text(mean.ci_low, mean.ci_high)}; share of the change on "
            + ", ".join(
                f"{k} {v:.2f}"
                for k in TERM_KINDS
                if (v := metrics[metric_key("share_delta", kind=k)]) is not None
            )
            + "\ntop terms by mean change:\n"
            + summarise_rows(term_rows, ["term", "kind", "mean_change", "pairs"])
        )
        return ToolResult(
            metrics=metrics,
            summary=summary,
            tables={"terms": term_rows, "pairs": pair_rows},
            per_query={"mean_delta": values_by_query([p.qid for p in pairs], deltas.tolist())},
        )
