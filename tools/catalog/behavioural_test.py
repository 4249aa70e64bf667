"""Behavioural axiom test: does the model's score move the way an IR axiom predicts?"""

from __future__ import annotations

from collections import defaultdict
from functools import partial
from operator import itemgetter

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from pydantic import Field
from scipy import stats

from rankscope.tools.catalog.common import PairArgs, load_pairs
from rankscope.tools.contract import ArtifactFile, Tool, ToolContext, ToolResult
from rankscope.tools.data.labels import (
    PREDICTED_BY_AXIOM,
    Predicted,
    is_unlabelled,
    perturbation_label,
    predicted_direction,
)
from rankscope.tools.data.types import PairSet
from rankscope.tools.metric_keys import (
    MetricCatalogue,
    breakdown,
    declare,
    estimate,
    metric_key,
    scalar,
)
from rankscope.tools.registry import register
from rankscope.tools.retrievers.base import Retriever
from rankscope.tools.stats import (
    Direction,
    QueryValue,
    bootstrap_ci,
    interval_text,
    values_by_query,
)

__all__ = ["PREDICTED_BY_AXIOM", "BehaviouralTest", "BehaviouralTestArgs", "Predicted"]

ALTERNATIVES: dict[Predicted, Direction] = {
    "increase": "greater",
    "decrease": "less",
    "any": "two-sided",
}
"""The alternative of the one-sided test in the predicted direction."""

DIRECTION_METRICS = ("share_moved_predicted",)
"""Metrics about the predicted direction: a run that predicts none (unlabelled pairs) has none."""


class BehaviouralTestArgs(PairArgs):
    predicted: Predicted | None = Field(
        None,
        description="Direction the axiom predicts for perturbed minus baseline score; default "
        "from the axiom (TFC1/TFC2/TDC/STMC1/LNC2: increase, LNC1: decrease, others: any). "
        "Unlabelled pairs (axiom UNLABELLED) predict nothing: the run reports the score change "
        "and its two-sided p-value, without share_moved_predicted, unless this is given.",
    )
    aligned: bool = Field(
        False,
        description="Score the length-aligned texts (with filler) instead of the originals.",
    )
    batch_size: int = Field(32, ge=1, le=1024)
    n_bootstrap: int = Field(2000, ge=100, le=100_000)


def score_pairs(
    retriever: Retriever, pairs: PairSet, batch_size: int, progress: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """(baseline scores, perturbed scores) of every pair."""
    queries = [p.query for p in pairs]
    texts = [p.baseline for p in pairs] + [p.perturbed for p in pairs]
    scores = retriever.score(queries + queries, texts, batch_size, progress).numpy().astype(float)
    return scores[: len(pairs)], scores[len(pairs) :]


def rank_changes(pairs: PairSet, base: np.ndarray, pert: np.ndarray) -> np.ndarray:
    """Rank gain of each perturbed document among its query's baseline candidates in the set.

    Rank 1 is the top. The gain is the baseline rank minus the rank after replacing the document
    by its perturbed text (positive: moved up). A query with one candidate has gain 0.
    """
    by_query: dict[str, list[int]] = defaultdict(list)
    for i, pair in enumerate(pairs):
        by_query[pair.qid].append(i)
    gains = np.zeros(len(pairs))
    for rows in by_query.values():
        for i in rows:
            others = np.array([base[j] for j in rows if j != i])
            base_rank = 1 + int((others > base[i]).sum())
            pert_rank = 1 + int((others > pert[i]).sum())
            gains[i] = base_rank - pert_rank
    return gains


def moved_predicted(delta: np.ndarray, predicted: Predicted) -> np.ndarray:
    if predicted == "increase":
        return (delta > 0).astype(float)
    if predicted == "decrease":
        return (delta < 0).astype(float)
    return (delta != 0).astype(float)


def medians_by_query(qids: list[str], values: np.ndarray) -> list[QueryValue]:
    """Each query's median of its pairs' ``values`` (queries in order of first appearance)."""
    groups: dict[str, list[float]] = defaultdict(list)
    for qid, value in zip(qids, values.tolist(), strict=True):
        groups[qid].append(value)
    return [
        QueryValue(qid=qid, n_pairs=len(vals), value=float(np.median(vals)))
        for qid, vals in groups.items()
    ]


def direction_p_value(delta: np.ndarray, predicted: Predicted) -> float:
    """Wilcoxon signed-rank p-value of the deltas in the predicted direction."""
    nonzero = delta[delta != 0]
    if nonzero.size < 2:
        return 1.0
    return float(stats.wilcoxon(nonzero, alternative=ALTERNATIVES[predicted]).pvalue)


def delta_histogram(delta: np.ndarray, grades: list[int | None], path: str, title: str) -> None:
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    labelled = sorted({g for g in grades if g is not None})
    groups = [
        (f"grade {g}", np.array([d for d, gg in zip(delta, grades, strict=True) if gg == g]))
        for g in labelled
    ]
    if not groups or any(g is None for g in grades):
        groups.append(
            (
                "unjudged" if labelled else "all pairs",
                np.array([d for d, g in zip(delta, grades, strict=True) if g is None]),
            )
        )
    bins = np.histogram_bin_edges(delta, bins=30)
    for label, values in groups:
        if values.size:
            ax.hist(values, bins=bins.tolist(), alpha=0.55, label=f"{label} (n={values.size})")
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set_xlabel("score delta (perturbed − baseline)")
    ax.set_ylabel("pairs")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def predicted_of(args: BehaviouralTestArgs) -> Predicted | None:
    """The direction a run tests: the one given, else the axiom's (None for unlabelled pairs)."""
    return args.predicted or predicted_direction(args.axiom)


@register
class BehaviouralTest(Tool[BehaviouralTestArgs]):
    name = "behavioural_test"
    description = (
        "Score (baseline, perturbed) document pairs of an IR axiom (e.g. TFC1 append: a query term "
        "appended) and report how often and how much the score moves the predicted way, with "
        "bootstrap 95% CIs, rank changes within each query's candidates, and a breakdown by "
        "relevance grade. Metrics: share_moved_predicted, mean_delta(_ci_low/_ci_high), "
        "median_delta(...), p_value (Wilcoxon, predicted direction), mean_rank_gain, n_pairs."
    )
    version = "1"
    Args = BehaviouralTestArgs
    metrics = declare(
        estimate(
            scalar("share_moved_predicted", ci=True),
            family="behaviour_share",
            meaning="share of pairs whose score moved the predicted way (per query: the share "
            "among the query's pairs)",
            unit="fraction of pairs",
            null_value=0.5,
        ),
        estimate(
            scalar("mean_delta", ci=True),
            family="score_delta",
            meaning="mean score change s_pert − s_base (per query: the mean over its pairs)",
            unit="score",
        ),
        estimate(
            scalar("median_delta", ci=True),
            family="score_delta",
            meaning="median score change s_pert − s_base; per query the median over its pairs "
            "(the verdict rules test the mean of these per-query medians)",
            unit="score",
        ),
        estimate(
            scalar("mean_rank_gain", ci=True),
            family="rank_gain",
            meaning="ranks the perturbed document gains among its query's baseline candidates "
            "in the pair set (per query: the mean over its pairs)",
            unit="ranks",
        ),
        "p_value",
        "n_pairs",
        "n_queries",
        "mean_relative_delta",
        "share_rank_improved",
        "share_rank_worsened",
        estimate(
            breakdown("share_moved_predicted", "grade"),
            family="behaviour_share",
            meaning="share_moved_predicted among the pairs of one relevance grade",
            unit="fraction of pairs",
            null_value=0.5,
        ),
        estimate(
            breakdown("mean_delta", "grade"),
            family="score_delta",
            meaning="mean_delta among the pairs of one relevance grade",
            unit="score",
        ),
    ).describe(
        p_value="Wilcoxon signed-rank p-value of the deltas in the predicted direction (pairs)",
        n_pairs=("pairs scored", "pairs"),
        n_queries=("queries the pairs belong to", "queries"),
        mean_relative_delta=("mean of delta / |baseline score|", "fraction"),
        share_rank_improved=("share of pairs whose rank gain is positive", "fraction of pairs"),
        share_rank_worsened=("share of pairs whose rank gain is negative", "fraction of pairs"),
    )

    def metrics_for(self, args: BehaviouralTestArgs) -> MetricCatalogue | None:
        """Without a predicted direction (unlabelled pairs) there is no share that moved the
        predicted way."""
        catalogue = self.metrics
        if catalogue is not None and predicted_of(args) is None:
            return catalogue.without(*DIRECTION_METRICS)
        return catalogue

    def run(self, ctx: ToolContext, args: BehaviouralTestArgs) -> ToolResult:
        pairs = load_pairs(ctx, args, aligned=args.aligned)
        label = perturbation_label(args.axiom, args.variant)
        if len(pairs) == 0:
            raise ValueError(f"no pairs for {label} on split {args.split!r}")
        predicted = predicted_of(args)
        base, pert = score_pairs(ctx.retriever, pairs, args.batch_size, ctx.progress)
        delta = pert - base
        moved = moved_predicted(delta, predicted or "any")
        gains = rank_changes(pairs, base, pert)
        boot = partial(bootstrap_ci, n_resamples=args.n_bootstrap, seed=args.seed)
        share = boot(moved)
        mean = boot(delta)
        median = boot(delta, statistic=lambda x, axis=-1: np.median(x, axis=axis))
        rank = boot(gains)
        metrics: dict[str, float | int | None] = {
            "n_pairs": len(pairs),
            "n_queries": len(pairs.qids()),
            **share.as_metrics("share_moved_predicted"),
            **mean.as_metrics("mean_delta"),
            **median.as_metrics("median_delta"),
            "mean_relative_delta": float(np.mean(delta / np.maximum(np.abs(base), 1e-9))),
            "p_value": direction_p_value(delta, predicted or "any"),
            **rank.as_metrics("mean_rank_gain"),
            "share_rank_improved": float(np.mean(gains > 0)),
            "share_rank_worsened": float(np.mean(gains < 0)),
        }
        if predicted is None:
            for key in share.as_metrics("share_moved_predicted"):
                del metrics[key]
        qids = [p.qid for p in pairs]
        per_query = {
            "share_moved_predicted": values_by_query(qids, moved.tolist()),
            "mean_delta": values_by_query(qids, delta.tolist()),
            "median_delta": medians_by_query(qids, delta),
            "mean_rank_gain": values_by_query(qids, gains.tolist()),
        }
        if predicted is None:
            del per_query["share_moved_predicted"]
        grades = [p.relevance for p in pairs]
        by_grade = []
        for grade in sorted({g for g in grades if g is not None}):
            idx = np.array([g == grade for g in grades])
            g_share = boot(moved[idx])
            g_mean = boot(delta[idx])
            row: dict[str, float | int | None] = {"grade": grade, "n": int(idx.sum())}
            if predicted is not None:
                row |= {
                    "share_moved_predicted": g_share.value,
                    "share_ci_low": g_share.ci_low,
                    "share_ci_high": g_share.ci_high,
                }
            row |= {
                "mean_delta": g_mean.value,
                "mean_delta_ci_low": g_mean.ci_low,
                "mean_delta_ci_high": g_mean.ci_high,
            }
            by_grade.append(row)
            g_qids = [q for q, keep in zip(qids, idx, strict=True) if keep]
            if predicted is not None:
                share_key = metric_key("share_moved_predicted", grade=grade)
                metrics[share_key] = g_share.value
                per_query[share_key] = values_by_query(g_qids, moved[idx].tolist())
            mean_key = metric_key("mean_delta", grade=grade)
            metrics[mean_key] = g_mean.value
            per_query[mean_key] = values_by_query(g_qids, delta[idx].tolist())
        pair_rows = sorted(
            (
                {
                    "qid": p.qid,
                    "docno": p.docno,
                    "relevance": p.relevance,
                    "score_baseline": float(b),
                    "score_perturbed": float(s),
                    "delta": float(s - b),
                    "rank_gain": int(g),
                }
                for p, b, s, g in zip(pairs, base, pert, gains, strict=True)
            ),
            key=itemgetter("delta"),
        )
        figure = ctx.artifact_path(f"behaviour_{args.axiom}_{args.variant}_{args.split}.png")
        delta_histogram(delta, grades, str(figure), f"{label}: {ctx.retriever.model_id}")
        data_name = str(getattr(ctx.data, "name", ""))
        if predicted is None:
            direction = (
                "no predicted direction (the pairs' perturbation was not declared; declare it to "
                "test an axiom's prediction)."
            )
            moved_line = f"Two-sided Wilcoxon p={metrics['p_value']:.3g}; "
        else:
            direction = f"predicted: {predicted}."
            moved_line = (
                f"Moved the predicted way: {share.value:.1%} "
                f"{interval_text(share.ci_low, share.ci_high, '.1%')}; "
                f"Wilcoxon p={metrics['p_value']:.3g}; "
            )
        summary_lines = [
            f"{label} on {len(pairs)} pairs ({len(pairs.qids())} queries, split {args.split}) of "
            f"{data_name or 'the data'}, {direction}",
            f"{moved_line}mean delta {mean.value:+.4g} "
            f"{interval_text(mean.ci_low, mean.ci_high, '+.4g')}; "
            f"median {median.value:+.4g}; mean rank gain {rank.value:+.3g}.",
        ]
        for row in by_grade:
            moved_part = (
                f"moved {row['share_moved_predicted']:.1%}, " if predicted is not None else ""
            )
            summary_lines.append(
                f"  grade {row['grade']}: n={row['n']}, {moved_part}"
                f"mean delta {row['mean_delta']:+.4g} "
                + interval_text(row["mean_delta_ci_low"], row["mean_delta_ci_high"], "+.4g")
            )
        perturbation = {
            "axiom": args.axiom,
            "variant": args.variant,
            "label": label,
            "declared": not is_unlabelled(args.axiom),
            "predicted": predicted,
            "data": data_name,
        }
        return ToolResult(
            metrics=metrics,
            summary="\n".join(summary_lines),
            tables={"by_grade": by_grade, "pairs": pair_rows, "perturbation": [perturbation]},
            per_query=per_query,
            artifacts=[
                ArtifactFile(
                    path=figure,
                    media_type="image/png",
                    description="Histogram of score deltas by relevance grade",
                )
            ],
        )
