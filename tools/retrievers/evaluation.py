"""Effectiveness of the studied model: nDCG@10 of its re-ranking of a collection's candidates.

Each judged query's candidate documents are scored with :meth:`Retriever.score` and ranked by
score; ``ir_measures`` (the ``rankscope[eval]`` extra, backed by ``pytrec_eval``) computes
nDCG@10 against the collection's graded judgements (trec_eval's definition: linear gains,
``log2(rank + 1)`` discounts, the ideal ranking from every judged document of the query).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rankscope.tools.data.types import Collection
    from rankscope.tools.retrievers.base import Retriever

MEASURE = "nDCG@10"
EXTRA_NEEDED = (
    "nDCG@10 is computed with ir_measures, which is not installed: "
    "pip install 'rankscope[eval]' (or pip install ir-measures)"
)


@dataclass(frozen=True)
class Effectiveness:
    """nDCG@10 over the judged queries (their mean) and per query."""

    ndcg_at_10: float
    per_query: dict[str, float]
    n_queries: int
    n_docs: int


def rerank_run(
    retriever: Retriever, collection: Collection, batch_size: int = 32, progress: bool = False
) -> dict[str, dict[str, float]]:
    """``{qid: {docno: score}}`` for the candidates of every query that has judgements."""
    items = [
        (qid, docno)
        for qid in collection.queries
        if collection.qrels.get(qid)
        for docno in collection.candidates_of(qid)
    ]
    if not items:
        raise ValueError(
            f"collection {collection.name!r} has no judged query with candidates: nDCG@10 needs "
            "relevance labels"
        )
    scores = retriever.score(
        [collection.queries[q] for q, _ in items],
        [collection.docs[d] for _, d in items],
        batch_size=batch_size,
        progress=progress,
    )
    run: dict[str, dict[str, float]] = {}
    for (qid, docno), score in zip(items, scores.tolist(), strict=True):
        run.setdefault(qid, {})[docno] = float(score)
    return run


def ndcg_at_10(
    retriever: Retriever, collection: Collection, batch_size: int = 32, progress: bool = False
) -> Effectiveness:
    """nDCG@10 of ``retriever`` re-ranking ``collection``'s candidates (see the module)."""
    try:
        import ir_measures
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(EXTRA_NEEDED) from err
    run = rerank_run(retriever, collection, batch_size, progress)
    qrels = {qid: dict(collection.qrels[qid]) for qid in run}
    measure = ir_measures.parse_measure(MEASURE)
    per_query = {m.query_id: float(m.value) for m in ir_measures.iter_calc([measure], qrels, run)}
    mean = float(ir_measures.calc_aggregate([measure], qrels, run)[measure])
    return Effectiveness(mean, per_query, len(run), sum(len(docs) for docs in run.values()))
