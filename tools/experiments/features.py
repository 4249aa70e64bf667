"""MLP neurons and SAE latents: inspection (``feature_inspection``), training (``train_sae``)."""

from __future__ import annotations

import time
from functools import partial
from typing import Literal

import numpy as np
import torch
from pydantic import Field
from scipy import stats

from rankscope.tools.contract import ArtifactFile, Tool, ToolContext, ToolResult, summarise_rows
from rankscope.tools.metric_keys import MetricCatalogue, declare, metric_key, per_component
from rankscope.tools.registry import register
from rankscope.tools.representations.activations import (
    DOC_ROLES,
    ActivationTable,
    collect_activations,
    document_embeddings,
    has_final_embedding,
    layer_list,
    layer_name,
)
from rankscope.tools.representations.corpus import (
    Document,
    DocumentArgs,
    collection_texts,
    sample_documents,
)
from rankscope.tools.representations.figures import feature_figure, sae_figure
from rankscope.tools.representations.properties import (
    DOCUMENT_PROPERTIES,
    Labels,
    document_labels,
    token_idf,
    token_labels,
)
from rankscope.tools.representations.results import clean_metrics
from rankscope.tools.representations.sae import SparseAutoencoder, load_sae
from rankscope.tools.representations.sae_eval import (
    SAEReport,
    check_fits,
    hook_name,
    sae_layer,
    train_and_evaluate,
)
from rankscope.tools.retrievers.base import Retriever

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


def _train(ctx: ToolContext, args: TrainSAEArgs) -> SAEReport:
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


def _save_sae(ctx: ToolContext, sae: SparseAutoencoder, layer: int | None) -> list[ArtifactFile]:
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
        report = _train(ctx, args)
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
            *_save_sae(ctx, sae, report.layer),
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


CORRELATION_METRICS = ("best_unit", "best_correlation", "best_p_bonferroni")
"""The scalars of the unit most correlated with the property (none without a property)."""


class FeatureArgs(DocumentArgs):
    unit_type: Literal["neuron", "sae"] = Field(
        "neuron", description="MLP neurons of a layer, or the latents of an SAE."
    )
    layer: int | None = Field(
        None,
        description="Neurons: the layer (default: last). SAE: the layer it reads (default: from "
        "its cfg.json; none = final document embeddings).",
    )
    sae: str | None = Field(
        None,
        description=f"PATH of an SAE {SAE_DESCRIPTION}; without one a small TopK SAE is trained.",
    )
    units: list[int] | None = Field(
        None, description="Units to inspect; default: the n_units most correlated with property."
    )
    n_units: int = Field(8, ge=1, le=64)
    property: Literal["qterm", "tf", "idf", "length", "relevance"] | None = Field(
        "qterm",
        description="Property to correlate units with (point-biserial for two classes, Spearman "
        "otherwise); token units use the token-level form of qterm/tf/idf and the per-document "
        "maximum for length/relevance. None: rank units by activation spread.",
    )
    n_docs: int = Field(100, ge=4, le=20_000)
    max_tokens_per_doc: int | None = Field(None, ge=1, description="Token rows per document.")
    top_k: int = Field(5, ge=1, le=50, description="Top-activating tokens/documents per unit.")
    context_tokens: int = Field(6, ge=0, le=64, description="Tokens of context on each side.")
    batch_size: int = Field(16, ge=1, le=512)


def _context(tokenizer, ids: np.ndarray, pos: int, window: int) -> str:
    """The tokens around ``pos`` with the token at ``pos`` in ``[[ ]]``; WordPiece continuations
    (``##x``) are joined to the token before them."""
    toks = tokenizer.convert_ids_to_tokens(ids.tolist())
    lo, hi = max(0, pos - window), min(len(toks), pos + window + 1)
    text = "… " if lo > 0 else ""
    for i in range(lo, hi):
        tok = toks[i]
        joined = tok.startswith("##") and i > lo
        piece = tok[2:] if joined else tok
        piece = f"[[{piece}]]" if i == pos else piece
        text += piece if joined or i == lo else " " + piece
    return text + (" …" if hi < len(toks) else "")


def _correlations(acts: np.ndarray, labels: Labels) -> tuple[np.ndarray, np.ndarray]:
    """(r, two-sided p) of every column with the labels: point-biserial or Spearman."""
    values = labels.y.astype(float) if labels.binary else stats.rankdata(labels.values)
    cols = acts if labels.binary else stats.rankdata(acts, axis=0)
    a = cols - cols.mean(0)
    b = values - values.mean()
    denom = np.sqrt((a**2).sum(0) * (b**2).sum())
    r = np.divide(a.T @ b, denom, out=np.zeros(acts.shape[1]), where=denom > 0)
    n = acts.shape[0]
    t = r * np.sqrt(max(n - 2, 1) / np.clip(1 - r**2, 1e-12, None))
    p = 2 * stats.t.sf(np.abs(t), max(n - 2, 1))
    return r, p


def _unit_activations(
    ctx: ToolContext, args: FeatureArgs
) -> tuple[np.ndarray, ActivationTable | None, list[Document], str, list[ArtifactFile], int | None]:
    """(activations [rows, units], token table or None, docs, what, extra artifacts, layer)."""
    retriever: Retriever = ctx.retriever
    docs = sample_documents(
        ctx.data,
        args.n_docs,
        args.seed,
        split=args.split,
        holdout_fraction=args.holdout_fraction,
        split_seed=args.split_seed,
    )
    collect = partial(
        collect_activations,
        roles=DOC_ROLES,
        max_tokens_per_doc=args.max_tokens_per_doc,
        batch_size=args.batch_size,
        seed=args.seed,
        progress=ctx.progress,
    )
    if args.unit_type == "neuron":
        neurons = layer_list(retriever, None if args.layer is None else [args.layer], False)[-1]
        assert neurons is not None
        table = collect(retriever, docs, [neurons], site="neurons")
        return (
            table.acts[layer_name(neurons)],
            table,
            docs,
            f"MLP neurons of L{neurons}",
            [],
            neurons,
        )
    extra: list[ArtifactFile] = []
    if args.sae:
        sae = load_sae(args.sae)
        check_fits(retriever, sae)
        layer = sae_layer(retriever, sae, args.layer)
    else:
        train_args = TrainSAEArgs(
            layer=args.layer,
            n_docs=max(args.n_docs, 40),
            epochs=20,
            seed=args.seed,
            split=args.split,
            holdout_fraction=args.holdout_fraction,
            split_seed=args.split_seed,
        )
        sae = _train(ctx, train_args).sae
        layer = args.layer
        extra = _save_sae(ctx, sae, layer)
    if layer is None:
        emb = torch.from_numpy(document_embeddings(retriever, docs, args.batch_size, ctx.progress))
        with torch.no_grad():
            acts = sae.encode(emb).numpy()
        return (
            acts,
            None,
            docs,
            f"SAE latents of the final embeddings ({hook_name(retriever, None)})",
            extra,
            None,
        )
    table = collect(retriever, docs, [layer])
    with torch.no_grad():
        acts = sae.encode(torch.from_numpy(table.acts[layer_name(layer)])).numpy()
    return acts, table, docs, f"SAE latents of L{layer} residual stream", extra, layer


def _labels_for(
    ctx: ToolContext, args: FeatureArgs, acts: np.ndarray, table: ActivationTable | None, docs
) -> tuple[np.ndarray, Labels | None]:
    """(rows to correlate [rows, units], labels) — per-document maxima for document properties."""
    if args.property is None:
        return acts, None
    if table is None:
        if args.property not in DOCUMENT_PROPERTIES:
            raise ValueError(
                f"document-level units (final embeddings) have no {args.property!r} property; "
                f"use one of {', '.join(DOCUMENT_PROPERTIES)}"
            )
        return acts, document_labels(args.property, docs)
    if args.property in ("length", "relevance"):
        per_doc = np.full((len(docs), acts.shape[1]), np.nan)
        for d in np.unique(table.doc):
            per_doc[d] = acts[table.doc == d].max(0)
        keep = ~np.isnan(per_doc[:, 0])
        labels = document_labels(args.property, docs, table)
        sub = Labels(labels.y[keep], labels.classes, labels.values[keep], labels.ordinal)
        return per_doc[keep], sub
    idf = None
    if args.property == "idf":
        idf, _ = token_idf(ctx.retriever.tokenizer, collection_texts(ctx.data, docs))
    return acts, token_labels(args.property, table, idf)


@register
class FeatureInspection(Tool[FeatureArgs]):
    name = "feature_inspection"
    description = (
        "Inspect MLP neurons or SAE latents over documents: activation statistics (mean, std, "
        "active_frac), correlation with a property (qterm, tf, idf, length, relevance) with "
        "Bonferroni-corrected p-values, and the top-activating tokens (in context) and documents "
        "per unit. Loads an SAE in the sae-lens format from `sae` (a folder), or trains a small "
        "one."
    )
    version = "1"
    Args = FeatureArgs
    metrics = declare(
        "n_rows",
        "n_docs",
        "n_units_total",
        "n_units_tested",
        "mean_active_frac",
        *CORRELATION_METRICS,
        per_component("active_frac"),
        per_component("mean"),
        per_component("corr"),
    ).describe(
        corr="correlation of one unit with the property (tokens)",
        n_rows=("token rows read", "rows"),
        n_docs=("documents read", "documents"),
        n_units_total=("units of the layer or SAE", "units"),
        n_units_tested=("units tested against the property", "units"),
        mean_active_frac=(
            "mean share of rows where a unit is active (per token: descriptive)",
            "fraction",
        ),
        best_unit="unit most correlated with the property",
        best_correlation="its correlation with the property (tokens)",
        best_p_bonferroni="its Bonferroni-corrected p-value (tokens, for readers)",
        active_frac=("share of rows where the unit is active", "fraction"),
        mean="mean activation of the unit",
    )

    def metrics_for(self, args: FeatureArgs) -> MetricCatalogue | None:
        """Without a property there are no correlations."""
        catalogue = self.metrics
        if catalogue is not None and args.property is None:
            return catalogue.without("corr", *CORRELATION_METRICS)
        return catalogue

    def run(self, ctx: ToolContext, args: FeatureArgs) -> ToolResult:
        start = time.perf_counter()
        acts, table, docs, what, artifacts, _ = _unit_activations(ctx, args)
        n_units_total = acts.shape[1]
        if args.units:
            bad = [u for u in args.units if not 0 <= u < n_units_total]
            if bad:
                raise ValueError(f"units {bad} do not exist (0..{n_units_total - 1})")
        rows_for_corr, labels = _labels_for(ctx, args, acts, table, docs)
        corr = p = None
        if labels is not None:
            if np.unique(labels.y).size < 2:
                raise ValueError(
                    f"every row has the same {args.property} label; use more or other documents"
                )
            corr, p = _correlations(rows_for_corr, labels)
        if args.units:
            units = list(args.units)
        elif corr is not None:
            units = [int(u) for u in np.argsort(-np.abs(np.nan_to_num(corr)))[: args.n_units]]
        else:
            units = [int(u) for u in np.argsort(-acts.std(0))[: args.n_units]]
        sel = acts[:, units]
        n_tests = n_units_total if not args.units else len(units)
        unit_rows, token_rows, doc_rows = [], [], []
        tokenizer = ctx.retriever.tokenizer
        doc_index = table.doc if table is not None else np.arange(len(docs))
        for j, unit in enumerate(units):
            a = sel[:, j]
            row = {
                "unit": unit,
                "mean": float(a.mean()),
                "std": float(a.std()),
                "max": float(a.max()),
                "active_frac": float(np.mean(a > 0)),
            }
            if corr is not None and p is not None:
                row["correlation"] = float(corr[unit])
                row["p_bonferroni"] = float(min(1.0, p[unit] * n_tests))
            unit_rows.append(row)
            if table is not None:
                for rank, r in enumerate(np.argsort(-a)[: args.top_k], 1):
                    d = int(table.doc[r])
                    pos = int(table.position[r])
                    token_rows.append(
                        {
                            "unit": unit,
                            "rank": rank,
                            "activation": float(a[r]),
                            "token": tokenizer.convert_ids_to_tokens(int(table.token_id[r])),
                            "context": _context(
                                tokenizer, table.doc_ids[d], pos, args.context_tokens
                            ),
                            "qid": docs[d].qid,
                            "docno": docs[d].docno,
                        }
                    )
            per_doc = np.full(len(docs), -np.inf)
            np.maximum.at(per_doc, doc_index, a)
            for rank, d in enumerate(np.argsort(-per_doc)[: args.top_k], 1):
                doc_rows.append(
                    {
                        "unit": unit,
                        "rank": rank,
                        "max_activation": float(per_doc[d]),
                        "qid": docs[d].qid,
                        "docno": docs[d].docno,
                        "snippet": docs[d].text[:160],
                    }
                )
        metrics: dict[str, float | int | None] = {
            "n_rows": int(acts.shape[0]),
            "n_docs": len(docs),
            "n_units_total": int(n_units_total),
            "n_units_tested": int(n_tests),
            "mean_active_frac": float(np.mean(acts > 0)),
        }
        for r in unit_rows:
            unit_name = str(r["unit"])
            metrics[metric_key("active_frac", unit_name)] = r["active_frac"]
            metrics[metric_key("mean", unit_name)] = r["mean"]
            if "correlation" in r:
                metrics[metric_key("corr", unit_name)] = r["correlation"]
        if corr is not None:
            best = max(unit_rows, key=lambda r: abs(r["correlation"]))
            metrics["best_unit"] = best["unit"]
            metrics["best_correlation"] = best["correlation"]
            metrics["best_p_bonferroni"] = best["p_bonferroni"]
        figure = feature_figure(
            ctx.artifact_path(f"features_{args.unit_type}.png"),
            units,
            sel,
            [r["correlation"] for r in unit_rows] if corr is not None else None,
            f"{ctx.retriever.model_id}: {what}"
            + (f" vs {args.property}" if corr is not None else ""),
        )
        artifacts.insert(
            0,
            ArtifactFile(
                path=figure,
                media_type="image/png",
                description="activation histograms and correlation with the property",
            ),
        )
        head = (
            f"{what}: {acts.shape[0]} rows from {len(docs)} documents, {n_units_total} units"
            + (
                f"; units ranked by |correlation| with {args.property} (Bonferroni over {n_tests})"
                if corr is not None and not args.units
                else ""
            )
            + ".\n"
        )
        cols = ["unit", "mean", "std", "active_frac"] + (
            ["correlation", "p_bonferroni"] if corr is not None else []
        )
        tops = [r for r in (token_rows or doc_rows) if r["rank"] == 1]
        top_text = "\n".join(
            f"  unit {r['unit']}: " + (r.get("context") or r["snippet"][:80]) for r in tops[:5]
        )
        summary = head + summarise_rows(unit_rows, cols) + "\nTop activation per unit:\n" + top_text
        return ToolResult(
            metrics=clean_metrics(metrics),
            summary=summary,
            tables={"units": unit_rows, "top_tokens": token_rows, "top_documents": doc_rows},
            run_facts={"seconds": time.perf_counter() - start},
            artifacts=artifacts,
        )
