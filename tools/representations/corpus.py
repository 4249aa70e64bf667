"""The documents the representation tools read, drawn from a tool context's data source."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import Field

from rankscope.tools.contract import ToolArgs
from rankscope.tools.data.types import Collection, split_qids


class DocumentArgs(ToolArgs):
    """Which queries' documents a representation tool reads (splits as in the pair tools)."""

    split: Literal["all", "discovery", "holdout"] = Field(
        "discovery",
        description="Queries to use: 'discovery' for a first test, 'holdout' (disjoint queries) to "
        "replicate, 'all' for both.",
    )
    holdout_fraction: float = Field(0.5, gt=0.0, lt=1.0)
    split_seed: int = Field(0, description="Seed of the query split (keep it fixed to replicate).")


@dataclass(frozen=True)
class Document:
    """One (query, document) item: the document text with the query it was retrieved for."""

    qid: str
    docno: str
    query: str
    text: str
    relevance: int | None = None


def split_query_ids(
    collection: Collection, split: str, holdout_fraction: float, split_seed: int
) -> list[str]:
    """The collection's query ids (those with candidates) in ``split``, partitioned as the data
    sources partition them (``split_qids`` over every query with candidates)."""
    qids = [q for q in collection.queries if collection.candidates_of(q)]
    if split == "all":
        return sorted(qids)
    discovery, holdout = split_qids(qids, holdout_fraction, split_seed)
    if split == "discovery":
        return discovery
    if split == "holdout":
        return holdout
    raise ValueError(f"unknown split {split!r}; use 'all', 'discovery' or 'holdout'")


def _from_collection(
    collection: Collection, n_docs: int, per_query: int, seed: int, qids: list[str]
) -> list[Document]:
    rng = random.Random(seed)
    qids = [q for q in qids if len(collection.candidates_of(q)) >= 2]
    rng.shuffle(qids)
    docs: list[Document] = []
    for qid in qids:
        if len(docs) >= n_docs:
            break
        candidates = [d for d in collection.candidates_of(qid) if d in collection.docs]
        take = min(per_query, len(candidates), n_docs - len(docs))
        for docno in sorted(rng.sample(candidates, take)):
            docs.append(
                Document(
                    qid,
                    docno,
                    collection.queries[qid],
                    collection.docs[docno],
                    collection.relevance(qid, docno),
                )
            )
    return docs


def sample_documents(
    data: Any,
    n_docs: int,
    seed: int = 0,
    per_query: int | None = None,
    split: str = "all",
    holdout_fraction: float = 0.5,
    split_seed: int = 0,
) -> list[Document]:
    """``n_docs`` documents of the queries of ``split``, with their queries, drawn with ``seed``.

    With ``per_query`` and a data source that has a collection, whole query groups are drawn:
    seeded queries, each with up to ``per_query`` of its candidate passages (rankings need several
    documents per query). Otherwise ``data.documents(...)`` gives the documents. Splits are by
    query, as the data source makes them (``split_seed``, ``holdout_fraction``).
    """
    collection = data.collection() if per_query else None
    if collection is not None:
        qids = split_query_ids(collection, split, holdout_fraction, split_seed)
        docs = _from_collection(collection, n_docs, per_query or 1, seed, qids)
        if docs:
            return docs
    rows = data.documents(
        n=n_docs, seed=seed, split=split, holdout_fraction=holdout_fraction, split_seed=split_seed
    )
    return [
        Document(str(r["qid"]), str(r["docno"]), r["query"], r["text"], r.get("relevance"))
        for r in rows
    ]


def collection_texts(data: Any, docs: list[Document]) -> list[str]:
    """The texts statistics such as IDF are computed on: the whole collection when the data
    source has one, else the given documents (one text per distinct docno)."""
    collection = data.collection()
    if collection is not None and collection.docs:
        return list(collection.docs.values())
    return list({d.docno: d.text for d in docs}.values())


def query_groups(docs: list[Document]) -> list[np.ndarray]:
    """Indices of the documents of each query (queries in order of first appearance)."""
    groups: dict[str, list[int]] = {}
    for i, doc in enumerate(docs):
        groups.setdefault(doc.qid, []).append(i)
    return [np.asarray(v) for v in groups.values()]


def split_documents(
    docs: list[Document], holdout_fraction: float, seed: int
) -> tuple[list[Document], list[Document]]:
    """(train, holdout) documents with disjoint queries (the project's split rule)."""
    _, held = split_qids([d.qid for d in docs], holdout_fraction, seed)
    held_set = set(held)
    return [d for d in docs if d.qid not in held_set], [d for d in docs if d.qid in held_set]
