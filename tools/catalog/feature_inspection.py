"""The ``feature_inspection`` tool: top-activating documents and tokens of MLP neurons or SAE latents."""

from __future__ import annotations

import time
from functools import partial
from typing import Literal

import numpy as np
import torch
from pydantic import Field
from scipy import stats

from rankscope.tools.catalog.train_sae import (
    SAE_DESCRIPTION,
    TrainSAEArgs,
    save_sae_artifacts,
    train_sae_report,
)
from rankscope.tools.contract import ArtifactFile, Tool, ToolContext, ToolResult, summarise_rows
from rankscope.tools.metric_keys import MetricCatalogue, declare, metric_key, per_component
from rankscope.tools.registry import register
from rankscope.tools.representations.activations import (
    DOC_ROLES,
    ActivationTable,
    collect_activations,
    document_embeddings,
    layer_list,
    layer_name,
)
from rankscope.tools.representations.corpus import (
    Document,
    DocumentArgs,
    collection_texts,
    sample_documents,
)
from rankscope.tools.representations.plots import feature_figure
from rankscope.tools.representations.properties import (
    DOCUMENT_PROPERTIES,
    Labels,
    document_labels,
    token_idf,
    token_labels,
)
from rankscope.tools.representations.results import clean_metrics
from rankscope.tools.representations.sae import load_sae
from rankscope.tools.representations.sae_eval import (
    check_fits,
    hook_name,
    sae_layer,
)
from rankscope.tools.retrievers.base import Retriever

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
        sae = train_sae_report(ctx, train_args).sae
        layer = args.layer
        extra = save_sae_artifacts(ctx, sae, layer)
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
