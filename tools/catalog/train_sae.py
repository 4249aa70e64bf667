"""The ``train_sae`` tool: a small TopK sparse autoencoder on a layer's activations, with held-out faithfulness."""

from __future__ import annotations

import numpy as np
from pydantic import Field

from rankscope.tools.contract import ArtifactFile, Tool, ToolContext, ToolResult
from rankscope.tools.metric_keys import declare
from rankscope.tools.registry import register
from rankscope.tools.representations.activations import (
    has_final_embedding,
    layer_list,
)
from rankscope.tools.representations.corpus import (
    DocumentArgs,
    sample_documents,
)
from rankscope.tools.representations.plots import sae_figure
from rankscope.tools.representations.results import clean_metrics
from rankscope.tools.representations.sae import SparseAutoencoder
from rankscope.tools.representations.sae_eval import (
    SAEReport,
    train_and_evaluate,
)

SAE_DESCRIPTION = "folder in the sae-lens format (cfg.json + sae_weights.safetensors)"


class TrainSAEArgs(DocumentArgs):
    layer: int | None = Field(
        None,
        description="Train on the residual stream after this layer (all non-padding tokens); "
        "default: the bi-encoder's final document embeddings.",
    )
    width: int | None = Field(None, ge=2, le=65_536, description="Latents; default 4 x input.")
    k: int = Field(16, ge=1, le=1024, description="Active latents per row (TopK).")
    n_docs: int = Field(400, ge=8, le=50_000, description="Documents drawn with the seed.")
    docs_per_query: int = Field(
        20, ge=2, le=1000, description="Documents per query (rankings for faithfulness)."
    )
    max_tokens_per_doc: int | None = Field(
        64, ge=1, description="Layer SAEs: tokens per document used for training."
    )
    epochs: int = Field(30, ge=1, le=1000)
    batch_size: int = Field(256, ge=8, le=65_536, description="SAE training batch (rows).")
    lr: float = Field(1e-3, gt=0, le=1.0, description="Adam learning rate.")
    holdout_fraction: float = Field(
        0.25, gt=0, lt=1, description="Share of queries held out to evaluate the SAE."
    )
    model_batch_size: int = Field(16, ge=1, le=512, description="Documents per forward pass.")


def train_sae_report(ctx: ToolContext, args: TrainSAEArgs) -> SAEReport:
    retriever = ctx.retriever
    if args.layer is None and not has_final_embedding(retriever):
        raise ValueError(
            f"a {retriever.kind} has no dense final document embedding: give a layer to train "
            "on its residual stream"
        )
    if args.layer is not None:
        layer_list(retriever, [args.layer], False)
    docs = sample_documents(
        ctx.data,
        args.n_docs,
        args.seed,
        per_query=args.docs_per_query,
        split=args.split,
        holdout_fraction=args.holdout_fraction,
        split_seed=args.split_seed,
    )
    width = args.width or 4 * retriever.hidden_size
    if args.k > width:
        raise ValueError(f"k={args.k} exceeds the SAE width {width}")
    return train_and_evaluate(
        retriever,
        docs,
        args.layer,
        width,
        args.k,
        args.epochs,
        args.batch_size,
        args.lr,
        args.holdout_fraction,
        args.max_tokens_per_doc,
        args.model_batch_size,
        args.seed,
        ctx.progress,
    )


def save_sae_artifacts(
    ctx: ToolContext, sae: SparseAutoencoder, layer: int | None
) -> list[ArtifactFile]:
    where = "emb_final" if layer is None else f"L{layer}"
    folder = ctx.artifact_path(f"sae_{where}_w{sae.d_sae}_k{sae.k}")
    weights, cfg = sae.save(folder)
    return [
        ArtifactFile(
            path=weights,
            media_type="application/vnd.safetensors",
            description=f"SAE weights (sae-lens format; folder {folder.name})",
        ),
        ArtifactFile(
            path=cfg, media_type="application/json", description="SAE config (sae-lens cfg.json)"
        ),
    ]


@register
class TrainSAE(Tool[TrainSAEArgs]):
    name = "train_sae"
    description = (
        "Train a TopK sparse autoencoder (seeded, Adam, unit-norm decoder rows) on a layer's "
        "residual stream or on the bi-encoder's final document embeddings; evaluate it on "
        "held-out queries: reconstruction (fvu, explained_variance, mse, dead_latents) and "
        "retrieval faithfulness with the reconstruction in place (score_mae, spearman, kendall, "
        "top1_agreement, top10_overlap). Saves the SAE in the sae-lens format (use its folder as "
        "the `sae` argument of feature_inspection and steering) and a figure."
    )
    version = "1"
    Args = TrainSAEArgs
    metrics = declare(
        "fvu",
        "explained_variance",
        "mse",
        "cosine",
        "l0",
        "train_fvu",
        "dead_latents",
        "dead_fraction",
        "width",
        "k",
        "n_train_rows",
        "n_eval_rows",
        "score_mae",
        "score_delta_mean",
        "score_std",
        "spearman",
        "kendall",
        "top1_agreement",
        "top10_overlap",
        "n_eval_queries",
    ).describe(
        fvu="held-out fraction of variance unexplained by the SAE (rows: descriptive)",
        explained_variance="held-out explained variance (1 − fvu)",
        mse="held-out reconstruction mean squared error",
        cosine="held-out mean cosine of activations and reconstructions",
        l0=("mean active latents per row", "latents"),
        train_fvu="fvu on the training rows",
        dead_latents=("latents never active", "latents"),
        dead_fraction=("dead latents / width", "fraction"),
        width=("SAE latents", "latents"),
        k=("TopK: latents kept per row", "latents"),
        n_train_rows=("training rows", "rows"),
        n_eval_rows=("held-out rows", "rows"),
        score_mae=("mean |score change| when retrieving with the reconstruction", "score"),
        score_delta_mean=("mean score change when retrieving with the reconstruction", "score"),
        score_std=("standard deviation of the original scores", "score"),
        spearman="mean per-query Spearman ρ of original and reconstructed scores",
        kendall="mean per-query Kendall τ of original and reconstructed scores",
        top1_agreement=("share of queries with the same top document", "fraction"),
        top10_overlap=("mean overlap of the top 10 documents", "fraction"),
        n_eval_queries=("held-out queries", "queries"),
    )

    def run(self, ctx: ToolContext, args: TrainSAEArgs) -> ToolResult:
        report = train_sae_report(ctx, args)
        sae, ev, faith = report.sae, report.eval_stats, report.faithfulness
        where = (
            "final embeddings" if report.layer is None else f"residual stream after L{report.layer}"
        )
        metrics: dict[str, float | int | None] = {
            "fvu": ev.fvu,
            "explained_variance": ev.explained_variance,
            "mse": ev.mse,
            "cosine": ev.cosine,
            "l0": ev.l0,
            "train_fvu": report.train_stats.fvu,
            "dead_latents": report.dead,
            "dead_fraction": report.dead / sae.d_sae,
            "width": sae.d_sae,
            "k": int(sae.k or 0),
            "n_train_rows": report.n_train,
            "n_eval_rows": report.n_eval,
            "score_mae": faith.mean_abs_delta,
            "score_delta_mean": float(np.mean(faith.new - faith.base)),
            "score_std": float(np.std(faith.base)),
            "spearman": faith.agreement["spearman"],
            "kendall": faith.agreement["kendall"],
            "top1_agreement": faith.agreement["top1_agreement"],
            "top10_overlap": faith.agreement["top10_overlap"],
            "n_eval_queries": int(faith.agreement["n_queries"]),
        }
        figure = sae_figure(
            ctx.artifact_path(f"sae_{'emb' if report.layer is None else f'L{report.layer}'}.png"),
            np.maximum(report.train_stats.frequency, report.eval_stats.frequency),
            faith.base,
            faith.new,
            faith.per_query_spearman,
            f"{ctx.retriever.model_id}: TopK SAE on {where} (width {sae.d_sae}, k {sae.k}); "
            f"held-out FVU {ev.fvu:.3f}",
        )
        artifacts = [
            ArtifactFile(
                path=figure,
                media_type="image/png",
                description="latent frequencies, scores with the reconstruction, per-query ρ",
            ),
            *save_sae_artifacts(ctx, sae, report.layer),
        ]
        rows = [{"epoch": i + 1, "train_mse_scaled": loss} for i, loss in enumerate(report.losses)]
        summary = (
            f"TopK SAE (width {sae.d_sae}, k {sae.k}) on the {where} of {ctx.retriever.model_id}, "
            f"trained on {report.n_train} rows in {report.seconds['train']:.1f} s. Held-out "
            f"queries ({report.n_eval} rows): FVU {ev.fvu:.3f} (explained variance "
            f"{ev.explained_variance:.3f}), cosine {ev.cosine:.3f}, dead latents {report.dead}. "
            f"Retrieval with the reconstruction: mean |Δscore| {faith.mean_abs_delta:.4f} "
            f"(score sd {metrics['score_std']:.4f}), Spearman "
            f"{faith.agreement['spearman']:.3f}, Kendall {faith.agreement['kendall']:.3f}, top-1 "
            "agreement "
            f"{faith.agreement['top1_agreement']:.2f}, top-10 overlap "
            f"{faith.agreement['top10_overlap']:.2f} over {metrics['n_eval_queries']} queries. "
            f"SAE folder (the sae argument): {artifacts[1].path.parent}"
        )
        return ToolResult(
            metrics=clean_metrics(metrics),
            summary=summary,
            tables={"training": rows},
            run_facts={f"{phase}_seconds": t for phase, t in report.seconds.items()},
            artifacts=artifacts,
        )
