"""SVD of the token embedding matrix against collection IDF (tool ``embedding_svd``)."""

from __future__ import annotations

import time

import numpy as np
from pydantic import Field

from rankscope.tools.contract import (
    ArtifactFile,
    Tool,
    ToolArgs,
    ToolContext,
    ToolResult,
    summarise_rows,
)
from rankscope.tools.metric_keys import declare, metric_key, per_component
from rankscope.tools.registry import register
from rankscope.tools.representations.corpus import collection_texts, sample_documents
from rankscope.tools.representations.plots import svd_figure
from rankscope.tools.representations.properties import token_idf
from rankscope.tools.representations.results import clean_metrics
from rankscope.tools.representations.svd import component_correlations, embedding_svd


class EmbeddingSVDArgs(ToolArgs):
    n_components: int = Field(10, ge=1, le=256, description="Top singular components examined.")
    center: bool = Field(False, description="Remove the mean embedding before the SVD.")
    min_df: int = Field(1, ge=1, description="Only tokens in at least this many documents.")
    n_docs: int = Field(
        2000,
        ge=10,
        le=1_000_000,
        description="Documents for IDF when the data has no collection (else all its documents).",
    )


@register
class EmbeddingSVD(Tool[EmbeddingSVDArgs]):
    name = "embedding_svd"
    description = (
        "Top singular components of the token embedding matrix and the Spearman correlation of "
        "each left singular vector with token IDF computed on the collection (Lu, Chen & "
        "Eickhoff 2025: component 1 tracks IDF in a MiniLM cross-encoder). Metrics: "
        "spearman[c1].., abs_spearman_c1, best_component, best_abs_spearman, energy[c1]."
    )
    version = "1"
    Args = EmbeddingSVDArgs
    metrics = declare(
        "spearman_c1",
        "abs_spearman_c1",
        "p_c1",
        "best_component",
        "best_abs_spearman",
        "n_tokens",
        "n_docs",
        per_component("spearman"),
        per_component("energy"),
    ).describe(
        spearman_c1="Spearman ρ of SVD component 1 with token IDF (tokens, no per-query unit: descriptive)",
        abs_spearman_c1="|spearman_c1|",
        p_c1="the tool's own p-value of spearman_c1 (tokens, for readers)",
        best_component="component (1-based) with the largest |ρ| with IDF",
        best_abs_spearman="largest |ρ| with IDF over components",
        n_tokens=("tokens compared", "tokens"),
        n_docs=("documents the IDF is computed over", "documents"),
        spearman="Spearman ρ of one component with token IDF",
        energy=("share of the squared singular values in one component", "fraction"),
    )

    def run(self, ctx: ToolContext, args: EmbeddingSVDArgs) -> ToolResult:
        start = time.perf_counter()
        retriever = ctx.retriever
        weight = retriever.model.get_input_embeddings().weight
        docs = (
            []
            if ctx.data.collection() is not None
            else sample_documents(ctx.data, args.n_docs, args.seed)
        )
        texts = collection_texts(ctx.data, docs)
        idf, df = token_idf(retriever.tokenizer, texts)
        vocab = min(weight.shape[0], idf.shape[0])
        special = set(retriever.tokenizer.all_special_ids)
        tokens = np.asarray(
            [t for t in range(vocab) if df[t] >= args.min_df and t not in special], dtype=np.int64
        )
        if tokens.size < 3:
            raise ValueError(
                f"only {tokens.size} tokens occur in at least {args.min_df} documents; "
                "use more data"
            )
        svd = embedding_svd(weight, args.n_components, args.center)
        rho, p = component_correlations(svd.u, idf[tokens], tokens)
        rows = [
            {
                "component": j + 1,
                "singular_value": float(svd.s[j]),
                "energy": float(svd.energy[j]),
                "spearman": float(rho[j]),
                "p_value": float(p[j]),
            }
            for j in range(rho.size)
        ]
        best = int(np.argmax(np.abs(rho)))
        metrics: dict[str, float | int | None] = {
            "spearman_c1": float(rho[0]),
            "abs_spearman_c1": float(abs(rho[0])),
            "p_c1": float(p[0]),
            "best_component": best + 1,
            "best_abs_spearman": float(abs(rho[best])),
            "n_tokens": int(tokens.size),
            "n_docs": len(texts),
        }
        for r in rows:
            component = f"c{r['component']}"
            metrics[metric_key("spearman", component)] = r["spearman"]
            metrics[metric_key("energy", component)] = r["energy"]
        figure = svd_figure(
            ctx.artifact_path("embedding_svd_idf.png"),
            np.abs(rho).tolist(),
            svd.u[tokens, 0],
            idf[tokens],
            float(rho[0]),
            f"{retriever.model_id}: token embedding SVD vs IDF ({tokens.size} tokens, "
            f"{len(texts)} documents{', centred' if args.center else ''})",
        )
        summary = (
            f"SVD of the {weight.shape[0]}x{weight.shape[1]} token embedding matrix of "
            f"{retriever.model_id}{' (centred)' if args.center else ''}; IDF of {tokens.size} "
            f"tokens over {len(texts)} documents. Component 1: Spearman ρ with IDF {rho[0]:.3f} "
            f"(p={p[0]:.2g}, energy {svd.energy[0]:.3f}); strongest |ρ| is component {best + 1} "
            f"({rho[best]:.3f}).\n"
            + summarise_rows(
                sorted(rows, key=lambda r: -abs(r["spearman"])),
                ["component", "spearman", "energy"],
            )
        )
        return ToolResult(
            metrics=clean_metrics(metrics),
            summary=summary,
            tables={"components": rows},
            run_facts={"seconds": time.perf_counter() - start},
            artifacts=[
                ArtifactFile(
                    path=figure,
                    media_type="image/png",
                    description="|Spearman ρ| of each component with IDF; component 1 vs IDF",
                )
            ],
        )
