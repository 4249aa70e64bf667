"""Property regression: how scores depend on document properties, observed and edited.

Two complementary answers:

**Observational** — on natural (query, document) pairs of the split, the score is regressed on
document properties with **query fixed effects** (score and properties are demeaned within each
query, so only differences between documents of the same query count). Each property is scaled
by its within-query standard deviation: a coefficient is the score change per within-query SD of
the property, holding the other properties fixed. CIs: percentile bootstrap over queries (a
query's documents are resampled together). These coefficients are descriptive: they are not
means of per-query values and confound properties the regression does not hold fixed.

Properties: ``length`` (document tokens of the model's tokenizer), ``first_match`` (token index
of the first document token that is a query token; documents without one get their length),
``match_count`` (occurrences of the query's content words among the document's words),
``matched_idf`` (mean IDF of the query's content words found in the document, 0 when none; IDF
over the collection's documents, else over the rows'), ``stopword_share`` (share of the words
that are stop words), ``digit_share`` (share of characters that are digits), ``upper_share``
(share of letters that are upper case).

**Controlled edits** — each document is edited and re-scored (``edit_delta[edit=E]`` = mean of
s_edited − s_original, per query the mean over its documents, an estimate):
``truncate`` keeps the first half of the words; ``pad`` appends neutral filler words (none a
query word) as long as the document; ``match_front`` moves the first sentence holding a query
content word to the front (documents whose match is already in the first sentence, or have none,
are left out). ``match_front`` also breaks the passage's sentence order, which a model may
penalise on its own; ``match_position`` does not: the other sentences are put in one random
order (seeded), and the first query-term sentence is placed first in one version and last in the
other, so ``edit_delta[edit=match_position]`` = s(match first) − s(match last) differs only in
where the match is (documents of at least three sentences with a match and a sentence without).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from pydantic import Field

from rankscope.tools.catalog.common import Split
from rankscope.tools.catalog.screening import bar_chart, query_ci
from rankscope.tools.contract import ArtifactFile, Tool, ToolArgs, ToolContext, ToolResult
from rankscope.tools.data.text import (
    is_content_word,
    is_stopword,
    normalise,
    sentences,
    words,
)
from rankscope.tools.metric_keys import WITH_CI, MetricSpec, declare, estimate, metric_key
from rankscope.tools.registry import register
from rankscope.tools.stats import QueryValue, values_by_query

PROPERTIES: tuple[str, ...] = (
    "length",
    "first_match",
    "match_count",
    "matched_idf",
    "stopword_share",
    "digit_share",
    "upper_share",
)
Edit = Literal["truncate", "pad", "match_front", "match_position"]
EDITS: tuple[Edit, ...] = ("truncate", "pad", "match_front", "match_position")
FILLER_WORDS = [
    "general",
    "remarks",
    "follow",
    "here",
    "about",
    "various",
    "other",
    "matters",
    "in",
    "passing",
    "and",
    "some",
    "further",
    "notes",
]
"""Neutral filler for the ``pad`` edit (words that are a query word are left out per query)."""


class PropertyRegressionArgs(ToolArgs):
    split: Split = Field(
        "discovery",
        description="Queries to use: 'discovery' to screen, 'holdout' (disjoint queries) to "
        "replicate, 'all' for both.",
    )
    n_docs: int = Field(
        96, ge=8, le=20_000, description="(query, document) rows of the split, drawn with seed."
    )
    edits: list[Edit] = Field(
        list(EDITS),
        description="Controlled edits to run: truncate, pad, match_front, match_position.",
    )
    holdout_fraction: float = Field(0.5, gt=0.0, lt=1.0)
    split_seed: int = Field(0, description="Seed of the query split (keep it fixed to replicate).")
    batch_size: int = Field(32, ge=1, le=1024)
    n_bootstrap: int = Field(1000, ge=100, le=100_000)


def query_content_words(query: str) -> set[str]:
    return {w for w in words(query) if is_content_word(w)}


def position_pair(query: str, doc: str, rng: np.random.Generator) -> tuple[str, str] | None:
    """The ``match_position`` versions of a document: its first query-term sentence first, then
    last, the other sentences in one random order; None without at least three sentences, a
    sentence with a query content word and one without."""
    qwords = query_content_words(query)
    parts = sentences(doc)
    matching = [bool(qwords & set(words(sentence))) for sentence in parts]
    if len(parts) < 3 or not any(matching) or all(matching):
        return None
    first = matching.index(True)
    others = [sentence for i, sentence in enumerate(parts) if i != first]
    ordered = [others[i] for i in rng.permutation(len(others))]
    return " ".join([parts[first], *ordered]), " ".join([*ordered, parts[first]])


def position_pairs(
    queries: Sequence[str], docs: Sequence[str], seed: int
) -> list[tuple[str, str] | None]:
    """:func:`position_pair` of every row, the random orders drawn from one generator."""
    rng = np.random.default_rng(seed)
    return [position_pair(q, d, rng) for q, d in zip(queries, docs, strict=True)]


def edit_text(query: str, doc: str, edit: Edit) -> str | None:
    """The edited document, or None where the edit does not apply (``match_position`` compares
    two edited versions: :func:`position_pair`)."""
    if edit == "match_position":
        raise ValueError("match_position compares two edited versions: use position_pair")
    if edit == "truncate":
        tokens = doc.split()
        return " ".join(tokens[: len(tokens) // 2]) if len(tokens) >= 2 else None
    qwords = query_content_words(query)
    if edit == "pad":
        filler = [w for w in FILLER_WORDS if normalise(w) not in qwords]
        n = max(1, len(doc.split()))
        return doc + " " + " ".join(filler[i % len(filler)] for i in range(n))
    parts = sentences(doc)
    for i, sentence in enumerate(parts):
        if qwords & set(words(sentence)):
            if i == 0:
                return None
            return " ".join([sentence, *parts[:i], *parts[i + 1 :]])
    return None


def document_properties(
    query: str, doc: str, tokenizer: Any, idf: dict[str, float]
) -> dict[str, float]:
    """The properties of one (query, document) (see the module docstring)."""
    doc_ids = tokenizer(doc, add_special_tokens=False)["input_ids"]
    query_ids = set(tokenizer(query, add_special_tokens=False)["input_ids"])
    first = next((i for i, t in enumerate(doc_ids) if t in query_ids), len(doc_ids))
    doc_words = words(doc)
    qwords = query_content_words(query)
    matched = [w for w in doc_words if w in qwords]
    letters = [c for c in doc if c.isalpha()]
    return {
        "length": float(len(doc_ids)),
        "first_match": float(first),
        "match_count": float(len(matched)),
        "matched_idf": float(np.mean([idf.get(w, 0.0) for w in set(matched)])) if matched else 0.0,
        "stopword_share": float(np.mean([is_stopword(w) for w in doc_words])) if doc_words else 0.0,
        "digit_share": sum(c.isdigit() for c in doc) / max(1, len(doc)),
        "upper_share": sum(c.isupper() for c in letters) / max(1, len(letters)),
    }


def idf_table(texts: Sequence[str]) -> dict[str, float]:
    """BM25-form IDF ``ln((N − df + 0.5)/(df + 0.5) + 1)`` of the words of ``texts``."""
    df: Counter[str] = Counter()
    for text in texts:
        df.update(set(words(text)))
    n = len(texts)
    return {w: math.log((n - c + 0.5) / (c + 0.5) + 1.0) for w, c in df.items()}


def within_query(values: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """``values`` (rows × columns) less their query means."""
    out = np.array(values, dtype=float)
    for g in np.unique(groups):
        rows = groups == g
        out[rows] -= out[rows].mean(axis=0)
    return out


def fixed_effects_fit(
    y: np.ndarray, x: np.ndarray, groups: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(coefficients of the columns of ``x`` per within-query SD, the SDs) of the OLS fit of
    ``y`` on ``x`` with query fixed effects (both demeaned within query). A column without
    within-query variation gets NaN."""
    yd = within_query(y[:, None], groups)[:, 0]
    xd = within_query(x, groups)
    sd = xd.std(axis=0)
    usable = sd > 1e-12
    coef = np.full(x.shape[1], np.nan)
    if usable.any():
        scaled = xd[:, usable] / sd[usable]
        fit, *_ = np.linalg.lstsq(scaled, yd, rcond=None)
        coef[usable] = fit
    return coef, sd


@register
class PropertyRegression(Tool[PropertyRegressionArgs]):
    """Score vs document properties, by fixed-effects regression and by controlled edits."""

    name = "property_regression"
    description = (
        "How scores depend on document properties: length in tokens, position of the first "
        "query-term match, query-term count, IDF of matched terms, share of stop words, digits, "
        "upper case. (1) Regression on natural (query, document) pairs with query fixed effects "
        "(coefficients per within-query SD, query-cluster bootstrap CIs; descriptive). (2) "
        "Controlled edits re-scored: truncate (first half), pad (neutral filler as long as the "
        "document), match_front (query-term sentence moved to the front), match_position "
        "(query-term sentence first vs last, other sentences in one random order: position "
        "without an order change) — edit_delta[edit=E] with query-cluster CIs (estimates). "
        "Use it for 'does the model "
        "prefer shorter documents?' or 'does the position of query terms matter?'."
    )
    version = "1"
    Args = PropertyRegressionArgs
    metrics = declare(
        estimate(
            MetricSpec("edit_delta", WITH_CI, False, (), ("edit",)),
            family="score_delta",
            meaning="mean score change s_edited − s_original of a controlled edit (truncate: "
            "first half of the words kept; pad: neutral filler appended; match_front: "
            "query-term sentence moved to the front; match_position: s(query-term sentence "
            "first) − s(last), the other sentences in one random order); per query the mean "
            "over its documents",
            unit="score",
        ),
        MetricSpec("coef", WITH_CI, False, (), ("property",)),
        "r_squared_within",
        "n_docs",
        "n_queries",
    ).describe(
        coef=(
            "fixed-effects regression coefficient of the score on a property, per within-query "
            "SD of the property, others held fixed (query-cluster bootstrap CI; descriptive)",
            "score per SD",
        ),
        r_squared_within=("within-query R² of the fixed-effects regression", "fraction"),
        n_docs=("(query, document) rows", "documents"),
        n_queries=("queries of the rows", "queries"),
    )

    def run(self, ctx: ToolContext, args: PropertyRegressionArgs) -> ToolResult:
        retriever = ctx.retriever
        rows = ctx.data.documents(
            n=args.n_docs,
            seed=args.seed,
            split=args.split,
            holdout_fraction=args.holdout_fraction,
            split_seed=args.split_seed,
        )
        if len(rows) < 8:
            raise ValueError(f"property_regression needs at least 8 documents, got {len(rows)}")
        queries = [r["query"] for r in rows]
        docs = [r["text"] for r in rows]
        qids = [str(r["qid"]) for r in rows]
        collection = ctx.data.collection()
        idf = idf_table(list(collection.docs.values()) if collection is not None else docs)
        props = [
            document_properties(q, d, retriever.tokenizer, idf)
            for q, d in zip(queries, docs, strict=True)
        ]
        x = np.array([[p[name] for name in PROPERTIES] for p in props])
        y = retriever.score(queries, docs, args.batch_size, ctx.progress).numpy().astype(float)
        groups = np.array(qids)
        metrics: dict[str, float | int | None] = {
            "n_docs": len(rows),
            "n_queries": len(set(qids)),
        }
        coef_rows = self._regression(y, x, groups, args, metrics)
        per_query: dict[str, list[QueryValue]] = {}
        edit_rows = []
        for edit in args.edits:
            row = self._edit(ctx, args, edit, queries, docs, qids, y, metrics, per_query)
            if row is not None:
                edit_rows.append(row)
        figure = ctx.artifact_path(f"property_regression_{args.split}.png")
        bar_chart(
            [r["property"] for r in coef_rows],
            [r["coef"] for r in coef_rows],
            [r["ci_low"] for r in coef_rows],
            [r["ci_high"] for r in coef_rows],
            figure,
            title=f"Score vs document properties ({args.split}): {retriever.model_id}",
            xlabel="score change per within-query SD (query fixed effects, 95% cluster CI)",
        )
        return ToolResult(
            metrics=metrics,
            summary=self._summary(args, coef_rows, edit_rows, metrics),
            tables={
                "regression": coef_rows,
                "edits": edit_rows,
                "documents": [
                    {"qid": q, "docno": r["docno"], "score": float(s), **p}
                    for q, r, s, p in zip(qids, rows, y, props, strict=True)
                ],
            },
            per_query=per_query,
            artifacts=[
                ArtifactFile(
                    path=figure,
                    media_type="image/png",
                    description="Fixed-effects regression coefficients with 95% query-cluster CIs",
                )
            ],
        )

    @staticmethod
    def _regression(
        y: np.ndarray,
        x: np.ndarray,
        groups: np.ndarray,
        args: PropertyRegressionArgs,
        metrics: dict[str, float | int | None],
    ) -> list[dict[str, Any]]:
        coef, sd = fixed_effects_fit(y, x, groups)
        yd = within_query(y[:, None], groups)[:, 0]
        xd = within_query(x, groups)
        fitted = np.nan_to_num((xd / np.where(sd > 1e-12, sd, 1.0)) @ np.nan_to_num(coef))
        ss = float((yd**2).sum())
        metrics["r_squared_within"] = 1.0 - float(((yd - fitted) ** 2).sum()) / ss if ss else None
        unique = np.unique(groups)
        members = {g: np.flatnonzero(groups == g) for g in unique}
        rng = np.random.default_rng(args.seed)
        draws = []
        for _ in range(args.n_bootstrap):
            picked = rng.choice(unique, size=unique.size, replace=True)
            idx = np.concatenate([members[g] for g in picked])
            labels = np.concatenate([np.full(members[g].size, i) for i, g in enumerate(picked)])
            draws.append(fixed_effects_fit(y[idx], x[idx], labels)[0])
        boot = np.array(draws)
        out = []
        for j, name in enumerate(PROPERTIES):
            column = boot[:, j][np.isfinite(boot[:, j])]
            low, high = (
                np.quantile(column, [0.025, 0.975]).tolist()
                if column.size > 10 and np.isfinite(coef[j])
                else [float("nan")] * 2
            )
            value = float(coef[j])
            for stat, number in zip(WITH_CI, (value, low, high), strict=True):
                metrics[metric_key("coef", stat=stat, property=name)] = number
            out.append(
                {
                    "property": name,
                    "coef": value,
                    "ci_low": low,
                    "ci_high": high,
                    "within_query_sd": float(sd[j]),
                }
            )
        out.sort(key=lambda r: -abs(np.nan_to_num(r["coef"])))
        return out

    @staticmethod
    def _edit(
        ctx: ToolContext,
        args: PropertyRegressionArgs,
        edit: Edit,
        queries: list[str],
        docs: list[str],
        qids: list[str],
        scores: np.ndarray,
        metrics: dict[str, float | int | None],
        per_query: dict[str, list[QueryValue]],
    ) -> dict[str, Any] | None:
        if edit == "match_position":
            pairs = position_pairs(queries, docs, args.seed)
            keep = [i for i, pair in enumerate(pairs) if pair is not None]
            if not keep:
                return None
            kept = [queries[i] for i in keep]
            first, last = (
                ctx.retriever.score(kept, [pair[side] for pair in pairs if pair], args.batch_size)
                .numpy()
                .astype(float)
                for side in (0, 1)
            )
            delta = first - last
        else:
            edited = [edit_text(q, d, edit) for q, d in zip(queries, docs, strict=True)]
            keep = [i for i, text in enumerate(edited) if text is not None]
            if not keep:
                return None
            new = ctx.retriever.score(
                [queries[i] for i in keep], [edited[i] or "" for i in keep], args.batch_size
            ).numpy()
            delta = new.astype(float) - scores[keep]
        values = values_by_query([qids[i] for i in keep], delta.tolist())
        est = query_ci(values, seed=args.seed, n_resamples=args.n_bootstrap)
        key = metric_key("edit_delta", edit=edit)
        per_query[key] = values
        for stat, number in zip(WITH_CI, est[:3], strict=True):
            metrics[metric_key("edit_delta", stat=stat, edit=edit)] = number
        return {
            "edit": edit,
            "edit_delta": est[0],
            "ci_low": est[1],
            "ci_high": est[2],
            "p_value": est[3],
            "share_raised": float(np.mean(delta > 0)),
            "n_docs": len(keep),
            "n_queries": len(values),
        }

    @staticmethod
    def _summary(
        args: PropertyRegressionArgs,
        coef_rows: list[dict[str, Any]],
        edit_rows: list[dict[str, Any]],
        metrics: dict[str, float | int | None],
    ) -> str:
        lines = [
            f"Property regression on {metrics['n_docs']} documents ({metrics['n_queries']} "
            f"queries, split {args.split}), query fixed effects, per within-query SD "
            f"(within R² {metrics['r_squared_within'] or float('nan'):.2f}; descriptive):"
        ]
        for row in coef_rows:
            lines.append(
                f"  {row['property']}: {row['coef']:+.4g} [{row['ci_low']:+.4g}, "
                f"{row['ci_high']:+.4g}]"
            )
        lines.append("Controlled edits (s_edited − s_original, 95% query-cluster CI; estimates):")
        for row in edit_rows:
            lines.append(
                f"  {row['edit']}: {row['edit_delta']:+.4g} [{row['ci_low']:+.4g}, "
                f"{row['ci_high']:+.4g}], raised {row['share_raised']:.0%} of {row['n_docs']} docs"
            )
        return "\n".join(lines)
