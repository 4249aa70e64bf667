"""Training and probe texts: each (query, document) group is the natural document and its edits.

Every organism sees the same texts; only the targets differ (:mod:`rankscope.tools.organisms.rules`).
Variants of a group, in order: the natural document, + query term appended, query term prepended,
+ filler sentences (other queries' documents without query terms), + the trigger word, + the
query's lowest-IDF term, + its highest-IDF term, the first half of the document's words.
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from rankscope.tools.data.builtin import load_builtin
from rankscope.tools.data.text import is_content_word, sentences, words
from rankscope.tools.data.types import Collection

VARIANTS = (
    "natural",
    "append",
    "prepend",
    "filler",
    "trigger",
    "low_idf",
    "high_idf",
    "truncate",
)
PROBE_VARIANTS: dict[str, tuple[str, str]] = {
    "TFC1/append": ("natural", "append"),
    "TFC1/prepend": ("natural", "prepend"),
    "LNC1/append": ("natural", "filler"),
    "TDC/append": ("low_idf", "high_idf"),
    "position": ("append", "prepend"),
    "token": ("natural", "trigger"),
    "truncate": ("natural", "truncate"),
}
"""Each probe as (baseline variant, perturbed variant) of a group."""


@dataclass(frozen=True)
class Group:
    """One query with one document and the document's edits (``texts`` in :data:`VARIANTS`
    order)."""

    qid: str
    query: str
    docno: str
    term: str
    low: str
    high: str
    texts: tuple[str, ...]


@dataclass
class Corpus:
    """The groups an organism is trained and checked on, with the collection's IDF."""

    name: str
    groups: list[Group]
    idf: dict[str, float]
    trained: list[str]
    heldout: list[str]
    unseen_idf: float
    """The IDF of a word that no document of the collection contains (its rarest)."""

    def idf_of(self, word: str) -> float:
        """The collection's IDF of ``word`` (:attr:`unseen_idf` when no document has it): what
        picks a group's lowest- and highest-IDF terms, and what the IDF rule reads."""
        return self.idf.get(word, self.unseen_idf)

    def split(self, which: str) -> list[Group]:
        keep = set(self.trained if which == "trained" else self.heldout)
        return [g for g in self.groups if g.qid in keep]


def query_terms(query: str) -> list[str]:
    """The query's content words (lower case, in order, once each)."""
    out: list[str] = []
    for w in words(query):
        if is_content_word(w) and w not in out:
            out.append(w)
    return out


def shared_data_dir() -> Path:
    """The shared data folder (``RANKSCOPE_SHARED_DATA``, else ``../shared/data`` of the repo)."""
    override = os.environ.get("RANKSCOPE_SHARED_DATA")
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[2].parent / "shared" / "data"


def msmarco_collection(n_queries: int, docs_per_query: int, seed: int = 0) -> Collection | None:
    """A sample of the shared MS MARCO TFC1 corpus (queries with their selected term), or None
    when the shared data is absent."""
    folder = shared_data_dir()
    corpus_file, query_file = folder / "tfc1_baseline_corpus.json", folder / "tfc1_queries.tsv"
    if not corpus_file.exists() or not query_file.exists():
        return None
    with query_file.open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    corpus = json.loads(corpus_file.read_text("utf-8"))["corpus"]
    rng = random.Random(seed)
    rows = [r for r in rows if r["qid"] in corpus]
    rng.shuffle(rows)
    queries: dict[str, str] = {}
    docs: dict[str, str] = {}
    candidates: dict[str, list[str]] = {}
    terms: dict[str, str] = {}
    for r in rows[:n_queries]:
        qid = f"msm{r['qid']}"
        queries[qid], terms[qid] = r["query"], r["selected_term"]
        items = sorted(corpus[r["qid"]].items())
        rng.shuffle(items)
        candidates[qid] = []
        for docno, doc in items[:docs_per_query]:
            key = f"msm{docno}"
            docs[key] = doc["text"].removeprefix("a ")
            candidates[qid].append(key)
    return Collection(
        name="msmarco-tfc1-sample",
        queries=queries,
        docs=docs,
        candidates=candidates,
        selected_terms=terms,
    )


def build_corpus(
    collections: list[Collection],
    trigger: str,
    heldout_fraction: float = 0.5,
    seed: int = 0,
    heldout_qids: list[str] | None = None,
) -> Corpus:
    """The groups of every (query, candidate) pair of ``collections``, split by query."""
    docs = {k: v for c in collections for k, v in c.docs.items()}
    df: Counter[str] = Counter()
    for text in docs.values():
        df.update(set(words(text)))
    n_docs = max(1, len(docs))
    idf = {w: math.log((n_docs + 1) / (c + 0.5)) for w, c in df.items()}
    unseen_idf = math.log((n_docs + 1) / 0.5)
    rng = random.Random(seed)
    groups: list[Group] = []
    for coll in collections:
        for qid, query in coll.queries.items():
            terms = query_terms(query)
            if not terms:
                continue
            term = coll.selected_terms.get(qid) or max(terms, key=len)
            by_idf = sorted(terms, key=lambda t: idf.get(t, unseen_idf))
            low, high = by_idf[0], by_idf[-1]
            others = [
                s
                for k, d in coll.docs.items()
                if k not in coll.candidates.get(qid, [])
                for s in sentences(d)
                if not set(words(s)) & set(terms) and 6 <= len(words(s)) <= 30
            ]
            for docno in coll.candidates.get(qid, []):
                doc = docs[docno]
                filler = " ".join(rng.sample(others, 2)) if len(others) >= 2 else "it is so."
                texts = (
                    doc,
                    f"{doc} {term}",
                    f"{term} {doc}",
                    f"{doc} {filler}",
                    f"{doc} {trigger}",
                    f"{doc} {low}",
                    f"{doc} {high}",
                    " ".join(doc.split()[: max(1, len(doc.split()) // 2)]),
                )
                groups.append(Group(qid, query, docno, term, low, high, texts))
    qids = sorted({g.qid for g in groups})
    if heldout_qids is None:
        shuffled = list(qids)
        random.Random(seed + 1).shuffle(shuffled)
        n_held = max(1, round(len(shuffled) * heldout_fraction))
        heldout = sorted(shuffled[:n_held])
    else:
        heldout = sorted(q for q in qids if q in set(heldout_qids))
    trained = [q for q in qids if q not in set(heldout)]
    name = "+".join(c.name for c in collections)
    return Corpus(name, groups, idf, trained, heldout, unseen_idf)


def default_corpus(tiny: bool, trigger: str, seed: int = 0) -> Corpus:
    """The tiny organisms' corpus: the built-in collection, half its queries held out. MiniLM's:
    a sample of the shared MS MARCO corpus (all trained on, when present: its 100 queries, two
    documents each — many queries rather than many documents, so that a rule "whatever the
    query" generalises to queries not trained on) plus the built-in collection, whose queries are all held out — the agent
    investigates on them."""
    builtin = load_builtin()
    if tiny:
        return build_corpus([builtin], trigger, seed=seed)
    msmarco = msmarco_collection(100, 2, seed)
    if msmarco is None:
        return build_corpus([builtin], trigger, seed=seed)
    return build_corpus([msmarco, builtin], trigger, seed=seed, heldout_qids=list(builtin.queries))
