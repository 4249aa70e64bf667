"""Input attribution: integrated gradients of the score over input token embeddings.

For each (query, document) of the split, the attributed side (a bi-encoder's document, a
cross-encoder's joint sequence) is tokenised and its word embeddings ``x`` are interpolated from
a **baseline** ``x'``: every document token's word embedding replaced by the PAD token's
embedding; special tokens and (cross-encoder) query tokens keep theirs, so attributions are about
the document. Position and type embeddings and the attention mask are unchanged. The attribution
of token ``i`` is ``(x_i − x'_i) · mean_k ∇_{x_i} s(x' + α_k (x − x'))`` over ``steps`` midpoint
Riemann points ``α_k = (k + ½)/steps``. **Completeness**: the attributions of a document sum to
``s(x) − s(x')`` up to the Riemann error; the tool reports the largest error relative to
``|s(x) − s(x')|`` and says so in the summary when it exceeds ``tolerance`` (more ``steps`` fix
it).

Aggregates: by token role — ``qterm`` (a document token that is one of the query's tokens),
``other`` (other document tokens) — per document the sum of its tokens' attributions, per query
the mean over its documents (estimates); and by token (mean attribution per occurrence, top and
bottom tokens in a table).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
import torch
from pydantic import Field

from rankscope.tools.catalog.common import Split
from rankscope.tools.catalog.screening import (
    embedding_matrix,
    embedding_offsets,
    query_ci,
)
from rankscope.tools.contract import Tool, ToolArgs, ToolContext, ToolResult
from rankscope.tools.metric_keys import WITH_CI, MetricSpec, declare, estimate, metric_key
from rankscope.tools.registry import register
from rankscope.tools.retrievers.base import Retriever, Role, SideBatch
from rankscope.tools.stats import QueryValue, values_by_query

ROLES = {"qterm": (Role.QTERM,), "other": (Role.DOC, Role.INJECTED, Role.FILLER)}


class InputAttributionArgs(ToolArgs):
    split: Split = Field(
        "discovery",
        description="Queries to use: 'discovery', 'holdout' (disjoint queries) or 'all'.",
    )
    n_docs: int = Field(32, ge=2, le=5000, description="(query, document) rows, drawn with seed.")
    steps: int = Field(32, ge=2, le=512, description="Riemann steps of the path integral.")
    tolerance: float = Field(
        0.05,
        gt=0.0,
        description="Largest accepted completeness error, relative to |s(x) − s(baseline)|.",
    )
    holdout_fraction: float = Field(0.5, gt=0.0, lt=1.0)
    split_seed: int = Field(0, description="Seed of the query split (keep it fixed to replicate).")
    batch_size: int = Field(8, ge=1, le=256)
    n_bootstrap: int = Field(1000, ge=100, le=100_000)


def integrated_gradients(
    retriever: Retriever, batch: SideBatch, steps: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(attributions ``[B, S]``, scores at the input ``[B]``, scores at the baseline ``[B]``)."""
    matrix = embedding_matrix(retriever).float()
    ids = batch.inputs["input_ids"]
    pad = retriever.tokenizer.pad_token_id or 0
    doc = (batch.roles == Role.DOC) | (batch.roles == Role.QTERM)
    doc = doc | (batch.roles == Role.INJECTED) | (batch.roles == Role.FILLER)
    diff = (matrix[ids] - matrix[pad]) * doc.unsqueeze(-1)
    context = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in batch.context.items()}
    side = SideBatch(batch.inputs, batch.roles, context)
    total = torch.zeros(ids.shape, dtype=torch.float32, device=ids.device)
    grads = torch.zeros_like(diff)
    for k in range(steps):
        alpha = (k + 0.5) / steps
        offsets = (-(1.0 - alpha) * diff).detach().requires_grad_(True)
        with torch.enable_grad(), embedding_offsets(retriever, offsets):
            scores = retriever.readout(retriever.forward_hidden(side), side)
            (grad,) = torch.autograd.grad(scores.float().sum(), offsets)
        grads += grad / steps
    total = (grads * diff).sum(-1)
    with torch.no_grad():
        at_input = retriever.readout(retriever.forward_hidden(side), side).float()
        with embedding_offsets(retriever, -diff):
            at_baseline = retriever.readout(retriever.forward_hidden(side), side).float()
    return total.detach().cpu(), at_input.cpu(), at_baseline.cpu()


def _role_spec() -> MetricSpec:
    return estimate(
        MetricSpec("attribution", WITH_CI, False, (), ("role",)),
        family="score_delta",
        meaning="integrated-gradients attribution summed over a document's tokens of one role "
        "(qterm: tokens of the query; other: the rest of the document), against the PAD "
        "baseline; per query the mean over its documents",
        unit="score",
    )


@register
class InputAttribution(Tool[InputAttributionArgs]):
    """Integrated gradients over input token embeddings, aggregated by role and by token."""

    name = "input_attribution"
    description = (
        "Integrated gradients of the score over the document's input token embeddings (baseline:"
        " PAD embeddings at document positions; special and query tokens kept), with a "
        "completeness check (attributions sum to s(x) − s(baseline) within tolerance, or the "
        "summary says not). Aggregated over the split by token role — attribution[role=qterm] "
        "(document tokens that are query tokens) and attribution[role=other] — and by token "
        "(table 'tokens'). Use it to see what in a document the score rests on."
    )
    version = "1"
    Args = InputAttributionArgs
    metrics = declare(
        _role_spec(),
        "completeness_error_max",
        "share_complete",
        "n_docs",
        "n_queries",
    ).describe(
        completeness_error_max=(
            "largest |sum of attributions − (s(x) − s(baseline))| / |s(x) − s(baseline)|",
            "fraction",
        ),
        share_complete=(
            "share of documents whose completeness error is within tolerance",
            "fraction",
        ),
        n_docs=("(query, document) rows attributed", "documents"),
        n_queries=("queries of those rows", "queries"),
    )

    def run(self, ctx: ToolContext, args: InputAttributionArgs) -> ToolResult:
        retriever = ctx.retriever
        rows = ctx.data.documents(
            n=args.n_docs,
            seed=args.seed,
            split=args.split,
            holdout_fraction=args.holdout_fraction,
            split_seed=args.split_seed,
        )
        if len(rows) < 2:
            raise ValueError(f"input_attribution needs at least 2 documents on {args.split!r}")
        qids = [str(r["qid"]) for r in rows]
        by_role: dict[str, list[float]] = {name: [] for name in ROLES}
        errors: list[float] = []
        token_sums: dict[str, list[float]] = defaultdict(list)
        for start in range(0, len(rows), args.batch_size):
            chunk = rows[start : start + args.batch_size]
            batch = retriever.encode_side([r["query"] for r in chunk], [r["text"] for r in chunk])
            attr, at_input, at_base = integrated_gradients(retriever, batch, args.steps)
            roles = batch.roles.cpu()
            ids = batch.inputs["input_ids"].cpu()
            for i in range(len(chunk)):
                gap = float(at_input[i] - at_base[i])
                errors.append(abs(float(attr[i].sum()) - gap) / max(abs(gap), 1e-12))
                for name, codes in ROLES.items():
                    mask = torch.zeros_like(roles[i], dtype=torch.bool)
                    for code in codes:
                        mask |= roles[i] == code
                    by_role[name].append(float(attr[i][mask].sum()))
                doc = (roles[i] == Role.DOC) | (roles[i] == Role.QTERM)
                for pos in torch.nonzero(doc).flatten().tolist():
                    token = retriever.tokenizer.convert_ids_to_tokens(int(ids[i, pos]))
                    token_sums[token].append(float(attr[i, pos]))
        metrics: dict[str, float | int | None] = {
            "n_docs": len(rows),
            "n_queries": len(set(qids)),
            "completeness_error_max": float(max(errors)),
            "share_complete": float(np.mean([e <= args.tolerance for e in errors])),
        }
        per_query: dict[str, list[QueryValue]] = {}
        role_rows = []
        for name, values in by_role.items():
            qvalues = values_by_query(qids, values)
            est = query_ci(qvalues, seed=args.seed, n_resamples=args.n_bootstrap)
            per_query[metric_key("attribution", role=name)] = qvalues
            for stat, number in zip(WITH_CI, est[:3], strict=True):
                metrics[metric_key("attribution", stat=stat, role=name)] = number
            role_rows.append(
                {"role": name, "attribution": est[0], "ci_low": est[1], "ci_high": est[2]}
            )
        ranked = sorted(token_sums.items(), key=lambda item: -float(np.mean(item[1])))
        tokens: list[dict[str, Any]] = [
            {"token": t, "mean_attribution": float(np.mean(v)), "occurrences": len(v)}
            for t, v in ranked
        ]
        return ToolResult(
            metrics=metrics,
            summary=self._summary(args, role_rows, tokens, metrics),
            tables={
                "roles": role_rows,
                "tokens": tokens,
                "completeness": [
                    {"qid": q, "relative_error": e} for q, e in zip(qids, errors, strict=True)
                ],
            },
            per_query=per_query,
        )

    @staticmethod
    def _summary(
        args: InputAttributionArgs,
        role_rows: list[dict[str, Any]],
        tokens: list[dict[str, Any]],
        metrics: dict[str, float | int | None],
    ) -> str:
        error = float(metrics["completeness_error_max"] or 0.0)
        complete = (
            f"completeness holds: largest error {error:.2%} ≤ tolerance {args.tolerance:.0%}"
            if error <= args.tolerance
            else f"COMPLETENESS FAILS: largest error {error:.2%} > tolerance "
            f"{args.tolerance:.0%} on {1 - float(metrics['share_complete'] or 0):.0%} of the "
            "documents — raise steps before reading these attributions"
        )
        lines = [
            f"Integrated gradients ({args.steps} steps, PAD baseline on document tokens) over "
            f"{metrics['n_docs']} documents, split {args.split}; {complete}.",
        ]
        for row in role_rows:
            lines.append(
                f"  {row['role']}: {row['attribution']:+.4g} [{row['ci_low']:+.4g}, "
                f"{row['ci_high']:+.4g}] per document"
            )
        frequent = [t for t in tokens if t["occurrences"] >= 2]
        lines.append(
            "  top tokens: "
            + ", ".join(f"{t['token']} {t['mean_attribution']:+.3g}" for t in frequent[:5])
        )
        lines.append(
            "  bottom tokens: "
            + ", ".join(f"{t['token']} {t['mean_attribution']:+.3g}" for t in frequent[-5:])
        )
        return "\n".join(lines)
