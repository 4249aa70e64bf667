"""Helpers of the representation tests: synthetic collections behind the project's data sources."""

from __future__ import annotations

import random
from pathlib import Path

from rankscope.tools.contract import ToolContext
from rankscope.tools.data.axioms import build_pairs
from rankscope.tools.data.source import CollectionSource, PairsSource
from rankscope.tools.data.types import Collection
from tests.tiny_models import CORPUS

WORDS = sorted({w for line in CORPUS for w in line.split()})
ENGLISH_WORDS = [
    "cat", "dog", "river", "bank", "money", "loan", "water", "fish", "bird", "tree", "house",
    "garden", "city", "music", "film", "actor", "school", "teacher", "doctor", "hospital",
    "medicine", "car", "engine", "road", "train", "station", "coffee", "tea", "bread", "cheese",
    "apple", "orange", "computer", "software", "market", "price", "energy", "solar", "wind",
    "storm", "ocean",
]  # fmt: skip
"""Common English words, all in MiniLM's vocabulary (for tests on the real model)."""


def synthetic_collection(
    n_queries: int = 8, docs_per_query: int = 8, seed: int = 0, words: list[str] | None = None
) -> Collection:
    """Queries of 2–3 words and documents of 6–24 words from ``words`` (default: the tiny
    models' corpus, so that every word is in their vocabulary); about half of each query's
    documents repeat its words 1–3 times."""
    rng = random.Random(seed)
    vocab = words or WORDS
    queries, docs, qrels, candidates = {}, {}, {}, {}
    for q in range(n_queries):
        qid = f"q{q}"
        qwords = rng.sample(vocab, rng.randint(2, 3))
        queries[qid] = " ".join(qwords)
        candidates[qid] = []
        qrels[qid] = {}
        for d in range(docs_per_query):
            docno = f"d{q}_{d}"
            body = rng.choices(vocab, k=rng.randint(6, 24))
            if d % 2 == 0:
                for _ in range(rng.randint(1, 3)):
                    body.insert(rng.randrange(len(body) + 1), rng.choice(qwords))
            docs[docno] = " ".join(body)
            candidates[qid].append(docno)
            qrels[qid][docno] = rng.randint(0, 3)
    return Collection("synthetic", queries, docs, qrels, candidates)


def collection_source(collection: Collection) -> CollectionSource:
    """The project's data source over an in-memory collection."""
    return CollectionSource(f"memory:{collection.name}", collection)


def pairs_source(collection: Collection) -> PairsSource:
    """A data source with fixed pairs and no collection (TFC1 appends of ``collection``)."""
    pairs = build_pairs(collection, "TFC1", "append")
    return PairsSource(f"memory-pairs:{collection.name}", pairs)


def make_context(retriever, data, folder: Path) -> ToolContext:
    return ToolContext(lambda: retriever, data, folder, progress=False)
