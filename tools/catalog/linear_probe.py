"""Layer-wise linear probes with control tasks (tool ``linear_probe``)."""

from __future__ import annotations

import time
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator
from tqdm.auto import tqdm

from rankscope.tools.contract import ArtifactFile, Tool, ToolContext, ToolResult, summarise_rows
from rankscope.tools.metric_keys import declare, metric_key, per_component
from rankscope.tools.registry import register
from rankscope.tools.representations.activations import (
    EMBEDDINGS,
    ActivationTable,
    collect_activations,
    layer_list,
)
from rankscope.tools.representations.corpus import DocumentArgs, collection_texts, sample_documents
from rankscope.tools.representations.plots import probe_accuracy_figure
from rankscope.tools.representations.probing import (
    ProbeWeights,
    fit_probe_weights,
    group_folds,
    probe_layer,
    save_probes,
)
from rankscope.tools.representations.properties import (
    DOCUMENT_PROPERTIES,
    TOKEN_PROPERTIES,
    Labels,
    content_vocab_mask,
    control_labels,
    document_labels,
    token_idf,
    token_labels,
)
from rankscope.tools.representations.results import clean_metrics

LAYER_COLUMNS = ("accuracy", "balanced_accuracy", "control", "selectivity")
"""The per-layer results stored as metrics: ``accuracy[L3]``, …"""


class ProbeArgs(DocumentArgs):
    property: Literal["qterm", "tf", "idf", "length", "relevance"] = Field(
        "qterm",
        description="What to predict. Token level: qterm (doc token is a query term), tf (its "
        "count in the document: 1/2/3+), idf (collection IDF tertile). Document level: qterm "
        "(holds "
        "a query content word), tf (query-word occurrences 0/1/2-3/4+), length (tertile), "
        "relevance (grade).",
    )
    level: Literal["token", "document"] = Field(
        "token", description="Probe document tokens, or pooled document representations."
    )
    pooling: Literal["cls", "mean"] = Field(
        "mean", description="Document level: pool the residual stream at CLS or by the mean."
    )
    layers: list[int] | None = Field(
        None, description="Layers whose output (residual stream) is probed; default: all."
    )
    include_embeddings: bool = Field(True, description="Also probe the embedding output.")
    n_docs: int = Field(200, ge=8, le=20_000, description="Documents drawn with the seed.")
    max_tokens_per_doc: int = Field(32, ge=1, le=512, description="Token level: tokens per doc.")
    content_tokens_only: bool = Field(
        True, description="Token level: leave out stop words, punctuation and special tokens."
    )
    folds: int = Field(5, ge=2, le=20, description="Cross-validation folds, grouped by query.")
    c: float = Field(1.0, gt=0, description="Inverse L2 regularisation of the logistic regression.")
    batch_size: int = Field(16, ge=1, le=512)

    @model_validator(mode="after")
    def _property_fits_level(self) -> ProbeArgs:
        allowed = TOKEN_PROPERTIES if self.level == "token" else DOCUMENT_PROPERTIES
        if self.property not in allowed:
            raise ValueError(
                f"property {self.property!r} has no {self.level}-level form; {self.level}-level "
                f"properties: {', '.join(allowed)}"
            )
        return self


def _labels(ctx: ToolContext, args: ProbeArgs, table: ActivationTable, docs: list) -> Labels:
    if args.level == "token":
        idf = None
        if args.property == "idf":
            idf, _ = token_idf(ctx.retriever.tokenizer, collection_texts(ctx.data, docs))
        return token_labels(args.property, table, idf)
    return document_labels(args.property, docs, table)


@register
class LinearProbe(Tool[ProbeArgs]):
    name = "linear_probe"
    description = (
        "Layer-wise linear probes (logistic regression, standardised features, folds grouped by "
        "query) for a property of document tokens or documents, each beside a control task "
        "(random labels per token type / per document) and the majority baseline. Metrics: "
        "accuracy[L], control[L], selectivity[L] (= accuracy - control), best_layer (-1 = "
        "embeddings), best_accuracy, best_selectivity. Saves the probe weights (a 'probe' "
        "direction for the steering tool) and a figure of accuracy by layer."
    )
    version = "1"
    Args = ProbeArgs
    metrics = declare(
        "best_layer",
        "best_accuracy",
        "best_selectivity",
        "best_selectivity_layer",
        "selectivity_at_best_layer",
        "majority_baseline",
        "n_rows",
        "n_docs",
        "n_queries",
        "n_classes",
        "n_folds",
        *(per_component(column) for column in LAYER_COLUMNS),
    ).describe(
        best_layer="layer (-1: embeddings) of the highest probe accuracy",
        best_accuracy=(
            "highest held-out probe accuracy over layers "
            "(probes are per token or document: descriptive)",
            "accuracy",
        ),
        best_selectivity=("highest accuracy − control accuracy over layers", "accuracy"),
        best_selectivity_layer="layer of best_selectivity",
        selectivity_at_best_layer=("selectivity at best_layer", "accuracy"),
        majority_baseline=("accuracy of always predicting the majority class", "accuracy"),
        n_rows=("tokens or documents probed", "rows"),
        n_docs=("documents read", "documents"),
        n_queries=("queries of the documents (folds are grouped by query)", "queries"),
        n_classes=("classes present", "classes"),
        n_folds=("cross-validation folds", "folds"),
        accuracy=(
            "held-out probe accuracy at a layer (probes are per token or document: descriptive)",
            "accuracy",
        ),
        balanced_accuracy=("held-out balanced accuracy at a layer", "accuracy"),
        control=("accuracy of the control task at a layer", "accuracy"),
        selectivity=("accuracy − control at a layer", "accuracy"),
    )

    def run(self, ctx: ToolContext, args: ProbeArgs) -> ToolResult:
        retriever = ctx.retriever
        start = time.perf_counter()
        docs = sample_documents(
            ctx.data,
            args.n_docs,
            args.seed,
            split=args.split,
            holdout_fraction=args.holdout_fraction,
            split_seed=args.split_seed,
        )
        layers = layer_list(retriever, args.layers, args.include_embeddings)
        table = collect_activations(
            retriever,
            docs,
            layers,
            pooling="tokens" if args.level == "token" else args.pooling,
            vocab_mask=content_vocab_mask(retriever.tokenizer)
            if args.level == "token" and args.content_tokens_only
            else None,
            max_tokens_per_doc=args.max_tokens_per_doc,
            batch_size=args.batch_size,
            seed=args.seed,
            progress=ctx.progress,
        )
        collect_seconds = time.perf_counter() - start
        labels = _labels(ctx, args, table, docs)
        keep = labels.y >= 0
        table = table.subset(keep)
        y = labels.y[keep]
        present = np.unique(y)
        if present.size < 2:
            raise ValueError(
                f"every row has the same {args.property} label ({labels.classes[present[0]]}): "
                "nothing to probe; use more or other documents"
            )
        qids = np.asarray([docs[d].qid for d in table.doc])
        types = table.token_id if args.level == "token" else table.doc
        control = control_labels(y, types, args.seed)
        folds = group_folds(qids, args.folds, args.seed)
        rows: list[dict[str, Any]] = []
        weights: dict[str, ProbeWeights] = {}
        for name in tqdm(table.layers, desc="probes", disable=not ctx.progress, leave=False):
            x = table.acts[name]
            result = probe_layer(name, x, y, control, folds, args.c, args.seed)
            rows.append(
                {
                    "layer": name,
                    "accuracy": result.accuracy,
                    "balanced_accuracy": result.balanced_accuracy,
                    "control": result.control,
                    "selectivity": result.selectivity,
                    "majority": result.majority,
                }
            )
            weights[name] = fit_probe_weights(x, y, args.c, args.seed)
        probe_seconds = time.perf_counter() - start - collect_seconds
        names = [r["layer"] for r in rows]
        acc = np.asarray([r["accuracy"] for r in rows])
        sel = np.asarray([r["selectivity"] for r in rows])
        best = int(np.argmax(acc))
        best_sel = int(np.argmax(sel))

        def index(name: str) -> int:
            return -1 if name == EMBEDDINGS else int(name[1:])

        metrics: dict[str, float | int | None] = {
            "best_layer": index(names[best]),
            "best_accuracy": float(acc[best]),
            "best_selectivity": float(sel[best_sel]),
            "best_selectivity_layer": index(names[best_sel]),
            "selectivity_at_best_layer": float(sel[best]),
            "majority_baseline": float(rows[0]["majority"]),
            "n_rows": int(y.size),
            "n_docs": len(docs),
            "n_queries": int(np.unique(qids).size),
            "n_classes": int(present.size),
            "n_folds": len(folds),
        }
        for r in rows:
            for column in LAYER_COLUMNS:
                metrics[metric_key(column, r["layer"])] = float(r[column])
        what = f"{args.property} ({args.level} level" + (
            f", {args.pooling} pooling)" if args.level == "document" else ")"
        )
        figure = probe_accuracy_figure(
            ctx.artifact_path(f"probe_{args.property}_{args.level}.png"),
            names,
            acc.tolist(),
            [r["control"] for r in rows],
            [r["majority"] for r in rows],
            f"{retriever.model_id}: linear probe for {what}",
        )
        weights_path = save_probes(
            ctx.artifact_path(f"probe_{args.property}_{args.level}.safetensors"),
            weights,
            {
                "property": args.property,
                "level": args.level,
                "pooling": args.pooling if args.level == "document" else None,
                "classes": [labels.classes[i] for i in range(len(labels.classes))],
                "site": "resid",
                "model_id": retriever.model_id,
            },
        )
        counts = np.bincount(y, minlength=len(labels.classes))
        class_rows = [
            {"class": c, "count": int(n)} for c, n in zip(labels.classes, counts, strict=True)
        ]
        summary = (
            f"Linear probe for {what} on {retriever.model_id}: {y.size} rows from {len(docs)} "
            f"documents of {metrics['n_queries']} queries, {len(folds)} folds by query; classes "
            + ", ".join(f"{r['class']}={r['count']}" for r in class_rows)
            + f". Best layer {names[best]}: accuracy {acc[best]:.3f} (control "
            f"{rows[best]['control']:.3f}, selectivity {sel[best]:.3f}; majority "
            f"{rows[0]['majority']:.3f}). Most selective: {names[best_sel]} "
            f"({sel[best_sel]:.3f})."
            + (
                " No layer beats the majority baseline: the property is not linearly decodable "
                "here."
                if acc[best] <= rows[0]["majority"]
                else ""
            )
            + "\n"
            + summarise_rows(
                sorted(rows, key=lambda r: -r["accuracy"]),
                ["layer", "accuracy", "control", "selectivity"],
            )
        )
        return ToolResult(
            metrics=clean_metrics(metrics),
            summary=summary,
            tables={"layers": rows, "classes": class_rows},
            run_facts={"collect_seconds": collect_seconds, "probe_seconds": probe_seconds},
            artifacts=[
                ArtifactFile(
                    path=figure,
                    media_type="image/png",
                    description="probe accuracy by layer, control task and majority baseline",
                ),
                ArtifactFile(
                    path=weights_path,
                    media_type="application/vnd.safetensors",
                    description="probe weights per layer in activation space ({layer}.coef, "
                    "{layer}.intercept); the steering tool's probe argument",
                ),
            ],
        )
