"""Steering along a direction with a dose–response over scales (tool ``steering``)."""

from __future__ import annotations

import time
from typing import Literal

import numpy as np
import torch
from pydantic import Field, model_validator
from tqdm.auto import tqdm

from rankscope.tools.catalog.common import PairArgs, load_pairs
from rankscope.tools.contract import ArtifactFile, Tool, ToolContext, ToolResult, summarise_rows
from rankscope.tools.data.types import Pair
from rankscope.tools.metric_keys import MetricCatalogue, breakdown, declare, metric_key, scalar
from rankscope.tools.registry import register
from rankscope.tools.representations.activations import layer_list, layer_name, length_batches
from rankscope.tools.representations.corpus import Document, query_groups, sample_documents
from rankscope.tools.representations.edits import (
    mean_difference,
    position_mask,
    site_output_and_scores,
    steer_scores,
)
from rankscope.tools.representations.plots import dose_response_figure
from rankscope.tools.representations.probing import load_probes, probe_direction
from rankscope.tools.representations.ranking import ranking_agreement, solo_rank_change
from rankscope.tools.representations.results import clean_metrics
from rankscope.tools.representations.sae import load_sae
from rankscope.tools.representations.sae_eval import check_fits
from rankscope.tools.stats import bootstrap_ci


class SteeringArgs(PairArgs):
    direction: Literal["mean_diff", "probe", "sae"] = Field(
        "mean_diff",
        description="mean_diff: perturbed − baseline residual mean at injected positions of the "
        "axiom's pairs (axiom/variant/split/n_pairs); probe: a probe's weight row from the file "
        "`probe`; sae: decoder row `latent` of the SAE folder `sae`.",
    )
    target: Literal["documents", "pairs"] = Field(
        "documents",
        description="Steer documents of the data, or the baselines of the axiom's pairs (then "
        "the steered change is compared with the perturbation's real effect; a mean_diff "
        "direction is then computed on half of the pairs' queries and tested on the other half).",
    )
    layer: int | None = Field(None, description="Layer whose output is steered; default: middle.")
    site: Literal["resid", "attn", "mlp"] = Field(
        "resid", description="Residual stream, attention write or MLP write of the layer."
    )
    positions: Literal["all", "doc", "cls", "qterm", "filler"] = Field(
        "all",
        description="Tokens steered: all non-padding, document tokens, CLS, query terms, or "
        "(target pairs) the baseline's filler tokens, where the perturbation puts its text.",
    )
    scales: list[float] = Field(
        [-8.0, -4.0, -2.0, 0.0, 2.0, 4.0, 8.0],
        min_length=1,
        max_length=25,
        description="Multiples of the direction added (0 is always included).",
    )
    normalize: bool = Field(True, description="Scale the direction to unit norm first.")
    probe: str | None = Field(None, description="PATH of probe weights written by linear_probe.")
    probe_layer: str | None = Field(
        None, description="Which layer's probe (e.g. L3, emb); default: the steered layer."
    )
    probe_class: int | None = Field(
        None, description="Class whose direction to use (multi-class probes); default: last."
    )
    sae: str | None = Field(None, description="PATH of an SAE folder in the sae-lens format.")
    latent: int | None = Field(None, ge=0, description="SAE latent whose decoder row is used.")
    n_docs: int = Field(
        64,
        ge=2,
        le=20_000,
        description="Documents steered (target documents), drawn with the seed.",
    )
    docs_per_query: int = Field(8, ge=2, le=1000, description="Documents per query (for ranks).")
    batch_size: int = Field(16, ge=1, le=512)

    @model_validator(mode="after")
    def _filler_needs_pairs(self) -> SteeringArgs:
        if self.positions == "filler" and self.target != "pairs":
            raise ValueError("positions 'filler' exist in pair baselines only: use target 'pairs'")
        return self


PAIR_METRICS = ("actual_delta", "n_direction_pairs", "best_recovered")
"""The scalars of target 'pairs' only (the perturbation's real effect and its recovery)."""


def _direction(
    ctx: ToolContext, args: SteeringArgs, layer: int, pairs: list[Pair]
) -> tuple[np.ndarray, str]:
    retriever = ctx.retriever
    if args.direction == "probe":
        if not args.probe:
            raise ValueError("direction 'probe' needs probe (the .safetensors of linear_probe)")
        weights, meta = load_probes(args.probe)
        key = args.probe_layer or layer_name(layer)
        if key not in weights:
            raise ValueError(f"the probe file has no layer {key!r}; it has {', '.join(weights)}")
        vec = probe_direction(weights[key], args.probe_class)
        return vec, f"probe {meta.get('property', '?')} ({key})"
    if args.direction == "sae":
        if not args.sae or args.latent is None:
            raise ValueError("direction 'sae' needs sae (an SAE folder) and latent")
        sae = load_sae(args.sae)
        check_fits(retriever, sae)
        if args.latent >= sae.d_sae:
            raise ValueError(f"latent {args.latent} does not exist (0..{sae.d_sae - 1})")
        return sae.W_dec[args.latent].detach().numpy(), f"SAE latent {args.latent}"
    vec, count = mean_difference(retriever, pairs, layer, args.batch_size, ctx.progress)
    return vec, f"mean difference {args.axiom}/{args.variant} ({count} positions)"


def _pairs_for(ctx: ToolContext, args: SteeringArgs) -> tuple[list[Pair], list[Pair]]:
    """(pairs the direction is computed on, pairs steered) for target 'pairs' or a mean_diff."""
    if args.target == "documents":
        return (list(load_pairs(ctx, args)) if args.direction == "mean_diff" else []), []
    pairs = load_pairs(ctx, args)
    if len(pairs) == 0:
        raise ValueError(f"no {args.axiom}/{args.variant} pairs in this split of the data")
    if args.direction != "mean_diff":
        return [], list(pairs)
    first, second = pairs.split_by_query(0.5, args.seed)
    return list(first), list(second)


def _slope(scales: np.ndarray, scores: np.ndarray, sign: int) -> float | None:
    """Mean over documents of the least-squares slope through the origin on scales of one sign."""
    pick = np.flatnonzero(sign * scales > 0)
    if pick.size == 0:
        return None
    s = scales[pick]
    base = scores[np.flatnonzero(scales == 0)[0]]
    delta = scores[pick] - base
    return float(np.mean((s[:, None] * delta).sum(0) / (s**2).sum()))


def _fmt(value: float | int | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


@register
class Steering(Tool[SteeringArgs]):
    name = "steering"
    description = (
        "Add scale x direction to a layer's output (residual stream, attention or MLP write) at "
        "chosen token positions inside the forward pass, for several scales, and report the "
        "dose-response: mean score change with a bootstrap CI, share of documents moving up, "
        "rank gain of a document steered alone among its query's documents, and ranking "
        "agreement. Directions: mean difference of pairs, a saved probe, an SAE decoder row. "
        "target='pairs' steers pair baselines (e.g. at their filler positions) and reports the "
        "share of the perturbation's real effect recovered. Metrics: mean_delta[s=..], "
        "rank_gain[s=..], recovered[s=..], slope (per unit scale, with CI), slope_positive, "
        "slope_negative."
    )
    version = "1"
    Args = SteeringArgs
    metrics = declare(
        "layer",
        "n_docs",
        "n_queries",
        "n_positions",
        "direction_norm",
        "site_norm",
        scalar("slope", ci=True),
        "slope_positive",
        "slope_negative",
        "max_abs_delta",
        "base_score_std",
        *PAIR_METRICS,
        breakdown("mean_delta", "s"),
        breakdown("share_up", "s"),
        breakdown("rank_gain", "s"),
        breakdown("recovered", "s"),
    ).describe(
        actual_delta=("mean real score change of the perturbation (target pairs)", "score"),
        n_direction_pairs=("pairs the direction is estimated from", "pairs"),
        best_recovered=("largest share of the real effect reproduced over scales", "fraction"),
        layer="layer steered",
        n_docs=("documents steered", "documents"),
        n_queries=("queries", "queries"),
        n_positions=("positions steered", "positions"),
        direction_norm="norm of the steering direction",
        site_norm="mean norm of the activations at the steered site",
        slope=(
            "slope of the mean score change over the steering scale (a dose-response fit "
            "over scales, no per-query unit: descriptive)",
            "score per unit scale",
        ),
        slope_positive=("slope over positive scales", "score per unit scale"),
        slope_negative=("slope over negative scales", "score per unit scale"),
        max_abs_delta=("largest |mean score change| over scales", "score"),
        base_score_std=("standard deviation of the unsteered scores", "score"),
        mean_delta=("mean score change at one scale", "score"),
        share_up=("share of documents whose score rose at one scale", "fraction"),
        rank_gain=("mean rank gain at one scale", "ranks"),
        recovered=(
            "share of the perturbation's real effect the steering reproduces at one scale",
            "fraction",
        ),
    )

    def metrics_for(self, args: SteeringArgs) -> MetricCatalogue | None:
        """Steering documents (not pair baselines) has no real effect to recover."""
        catalogue = self.metrics
        if catalogue is not None and args.target != "pairs":
            return catalogue.without("recovered", *PAIR_METRICS)
        return catalogue

    def run(self, ctx: ToolContext, args: SteeringArgs) -> ToolResult:
        retriever = ctx.retriever
        start = time.perf_counter()
        if args.layer is None:
            token_layers = layer_list(retriever, None, False)
            layer = token_layers[len(token_layers) // 2]
        else:
            layer = layer_list(retriever, [args.layer], False)[0]
        assert layer is not None
        direction_pairs, steered_pairs = _pairs_for(ctx, args)
        raw, label = _direction(ctx, args, layer, direction_pairs)
        if raw.shape != (retriever.hidden_size,):
            raise ValueError(
                f"the direction has shape {raw.shape}; the model's hidden size is "
                f"{retriever.hidden_size}"
            )
        norm = float(np.linalg.norm(raw))
        if norm == 0:
            raise ValueError("the steering direction is zero")
        direction = torch.from_numpy(raw / norm if args.normalize else raw).float()
        scales = sorted(set(args.scales) | {0.0})
        if args.target == "pairs":
            docs = [
                Document(p.qid, p.docno, p.query, p.baseline, p.relevance) for p in steered_pairs
            ]
            filler = [p.filler for p in steered_pairs]
            actual = (
                retriever.score(
                    [p.query for p in steered_pairs], [p.perturbed for p in steered_pairs]
                )
                - retriever.score(
                    [p.query for p in steered_pairs], [p.baseline for p in steered_pairs]
                )
            ).numpy()
        else:
            docs = sample_documents(
                ctx.data,
                args.n_docs,
                args.seed,
                per_query=args.docs_per_query,
                split=args.split,
                holdout_fraction=args.holdout_fraction,
                split_seed=args.split_seed,
            )
            filler, actual = None, None
        scores = np.zeros((len(scales), len(docs)))
        site_norms: list[float] = []
        n_positions = 0
        batches = length_batches(docs, args.batch_size)
        for idx in tqdm(batches, desc="steering", disable=not ctx.progress, leave=False):
            chosen = [docs[i] for i in idx]
            batch = retriever.encode_side(
                [d.query for d in chosen],
                [d.text for d in chosen],
                filler=[filler[i] for i in idx] if filler is not None else None,
            )
            mask = position_mask(batch, args.positions).bool()
            n_positions += int(mask.sum())
            for i, scale in enumerate(scales):
                if scale == 0.0:
                    h, base_scores = site_output_and_scores(retriever, batch, layer, args.site)
                    site_norms.extend(h[mask].norm(dim=-1).tolist())
                    scores[i, idx] = base_scores.numpy()
                else:
                    scores[i, idx] = steer_scores(
                        retriever, batch, layer, direction, scale, args.positions, args.site
                    ).numpy()
        if n_positions == 0:
            raise ValueError(f"no token of the steered texts is at positions {args.positions!r}")
        base = scores[scales.index(0.0)]
        groups = query_groups(docs)
        s = np.asarray(scales)
        centred = s - s.mean()
        slopes = (
            (centred[:, None] * (scores - scores.mean(0))).sum(0) / (centred**2).sum()
            if len(scales) > 1
            else np.zeros(len(docs))
        )
        slope = bootstrap_ci(slopes, seed=args.seed)
        actual_mean = float(np.mean(actual)) if actual is not None else None
        rows = []
        for i, scale in enumerate(scales):
            delta = scores[i] - base
            est = bootstrap_ci(delta, seed=args.seed)
            gain = solo_rank_change(groups, base, scores[i])
            agree = ranking_agreement(groups, base, scores[i])
            row = {
                "scale": float(scale),
                "mean_delta": est.value,
                "ci_low": est.ci_low,
                "ci_high": est.ci_high,
                "share_up": float(np.mean(delta > 0)),
                "rank_gain": float(np.nanmean(gain)) if np.isfinite(gain).any() else 0.0,
                "kendall": agree["kendall"],
            }
            if actual_mean:
                row["recovered"] = est.value / actual_mean
            rows.append(row)
        metrics: dict[str, float | int | None] = {
            "layer": layer,
            "n_docs": len(docs),
            "n_queries": len(groups),
            "n_positions": n_positions,
            "direction_norm": norm,
            "site_norm": float(np.mean(site_norms)) if site_norms else None,
            "slope": slope.value,
            "slope_ci_low": slope.ci_low,
            "slope_ci_high": slope.ci_high,
            "slope_positive": _slope(s, scores, 1),
            "slope_negative": _slope(s, scores, -1),
            "max_abs_delta": float(max(abs(r["mean_delta"]) for r in rows)),
            "base_score_std": float(np.std(base)),
        }
        if args.target == "pairs":
            metrics["actual_delta"] = actual_mean
            metrics["n_direction_pairs"] = len(direction_pairs)
            if actual_mean:
                metrics["best_recovered"] = max(r["recovered"] for r in rows)
        for r in rows:
            at = f"{r['scale']:g}"
            metrics[metric_key("mean_delta", s=at)] = r["mean_delta"]
            metrics[metric_key("share_up", s=at)] = r["share_up"]
            metrics[metric_key("rank_gain", s=at)] = r["rank_gain"]
            if "recovered" in r:
                metrics[metric_key("recovered", s=at)] = r["recovered"]
        where = f"{args.site} of L{layer} at {args.positions} positions"
        what = "pair baselines" if args.target == "pairs" else "documents"
        figure = dose_response_figure(
            ctx.artifact_path(f"steering_{args.direction}_L{layer}_{args.target}.png"),
            scales,
            [r["mean_delta"] for r in rows],
            [r["ci_low"] for r in rows],
            [r["ci_high"] for r in rows],
            [r["rank_gain"] for r in rows],
            f"{retriever.model_id}: steering {label}, {where} of {what}",
            reference=actual_mean,
        )
        summary = (
            f"Steering along {label} ({'unit norm' if args.normalize else 'raw'}, raw norm "
            f"{norm:.3g}) added to the {where} of {len(docs)} {what} of {len(groups)} queries "
            f"({retriever.model_id}); mean activation norm there {metrics['site_norm'] or 0:.3g}. "
            f"Score change per unit scale {slope.value:.4g} [{slope.ci_low:.4g}, "
            f"{slope.ci_high:.4g}]; on positive scales {_fmt(metrics['slope_positive'])}, on "
            f"negative scales {_fmt(metrics['slope_negative'])} (score sd "
            f"{metrics['base_score_std']:.3g})."
            + (
                f" Real {args.axiom}/{args.variant} effect on these pairs: {actual_mean:.4g}."
                if actual_mean is not None
                else ""
            )
            + "\n"
            + summarise_rows(
                rows,
                ["scale", "mean_delta", "share_up", "rank_gain"]
                + (["recovered"] if actual_mean else []),
                limit=9,
            )
        )
        return ToolResult(
            metrics=clean_metrics(metrics),
            summary=summary,
            tables={"dose_response": rows},
            run_facts={"seconds": time.perf_counter() - start},
            artifacts=[
                ArtifactFile(
                    path=figure,
                    media_type="image/png",
                    description="dose-response: mean score change and rank gain by scale",
                )
            ],
        )
