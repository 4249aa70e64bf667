"""Axiomatic perturbations: small registered functions that turn (query, document) into pairs.

Each perturbation is registered under ``(axiom, variant)`` with :func:`perturbation` and has the
signature ``fn(query, doc, ctx) -> list[Edit]``: the query text, the document text and a
:class:`PerturbationContext` (query and document ids, collection statistics, a seeded random
generator, options). An :class:`Edit` is the (baseline, perturbed) text of one pair with the spans
the perturbation added; :func:`perturb` and :func:`build_pairs` wrap edits into
:class:`~rankscope.tools.data.types.Pair` objects with ids and relevance. A perturbation returns no
edit where it does not apply (a query with one term for TDC, a one-sentence document for a
sentence shuffle): pairs are never identical texts.

Every perturbation is deterministic: its random generator is seeded from (seed, axiom, variant,
qid, docno), so a pair does not depend on which other pairs are built or in what order.

Registered (axiom, variant) names: TFC1 append/prepend/replace, TFC2 append, TDC append, STMC1
append, LNC1 append, LNC2 repeat, ABNIRML shuffle_words/shuffle_sentences/reverse_words/
delete_stopwords/delete_punctuation/typos.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, TypeVar

from rankscope.tools.data.errors import DataError, UnknownPerturbationError
from rankscope.tools.data.text import (
    STOPWORDS,
    count_term,
    is_content_word,
    is_punctuation,
    normalise,
    sentences,
    word_matches,
    words,
)
from rankscope.tools.data.types import Collection, Pair, PairSet, Span

__all__ = [
    "STOPWORDS",
    "CollectionStats",
    "Edit",
    "Perturbation",
    "PerturbationContext",
    "build_pairs",
    "check_perturbation",
    "count_term",
    "default_variant",
    "get_perturbation",
    "perturb",
    "perturbation",
    "registered",
    "stable_seed",
]

MIN_FILLER_WORDS = 5
MAX_FILLER_WORDS = 40
_STEM_PREFIX = 5


def stable_seed(*parts: object) -> int:
    """A 64-bit seed from ``parts`` that is the same in every process (unlike ``hash``)."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big")


def _same_stem(a: str, b: str) -> bool:
    """Crude morphological match: ``vaccine``/``vaccines``/``vaccination``, ``bee``/``bees``."""
    if a == b:
        return True
    n = min(len(a), len(b), _STEM_PREFIX)
    return n >= 3 and a[:n] == b[:n]


class CollectionStats:
    """Term statistics of a collection that the perturbations draw on (computed lazily, cached).

    IDF is the BM25 form ``ln((N - df + 0.5) / (df + 0.5) + 1)`` over the collection's documents,
    with words as :func:`rankscope.tools.data.text.words` gives them (lower case).
    """

    def __init__(self, collection: Collection) -> None:
        self.collection = collection
        self._related: dict[str, str | None] = {}
        self._unrelated: dict[str, str | None] = {}

    @cached_property
    def doc_words(self) -> dict[str, frozenset[str]]:
        return {docno: frozenset(words(text)) for docno, text in self.collection.docs.items()}

    @cached_property
    def df(self) -> Counter[str]:
        counts: Counter[str] = Counter()
        for ws in self.doc_words.values():
            counts.update(ws)
        return counts

    @cached_property
    def postings(self) -> dict[str, list[str]]:
        index: dict[str, list[str]] = {}
        for docno, ws in self.doc_words.items():
            for w in ws:
                index.setdefault(w, []).append(docno)
        return index

    @property
    def n_docs(self) -> int:
        return len(self.collection.docs)

    def idf(self, term: str) -> float:
        df = self.df.get(normalise(term), 0)
        return math.log((self.n_docs - df + 0.5) / (df + 0.5) + 1.0)

    def query_terms(self, query: str) -> list[str]:
        """The query's distinct non-stop words in order (all its distinct words if all are stop)."""
        ws = list(dict.fromkeys(words(query)))
        content = [w for w in ws if w not in STOPWORDS]
        return content or ws

    def selected_term(self, qid: str, query: str) -> str | None:
        """The collection's term for ``qid``, else the query's highest-IDF term (first one wins)."""
        chosen = self.collection.selected_terms.get(qid)
        if chosen:
            return chosen
        terms = self.query_terms(query)
        if not terms:
            return None
        return max(terms, key=self.idf)

    def _is_query_like(self, word: str, query_words: Iterable[str]) -> bool:
        return any(_same_stem(word, q) for q in query_words)

    def _docs_with(self, terms: Iterable[str]) -> set[str]:
        docs: set[str] = set()
        for term in terms:
            docs.update(self.postings.get(normalise(term), ()))
        return docs

    def _counts(self, docs: Iterable[str]) -> Counter[str]:
        counts: Counter[str] = Counter()
        for docno in docs:
            counts.update(self.doc_words[docno])
        return counts

    def cooccurrence(self, qid: str, query: str) -> tuple[int, Counter[str]]:
        """(number of documents with the query's selected term, word document counts in them).

        Falls back to the documents with any query term when fewer than two hold the selected
        term (see :meth:`selected_term`).
        """
        term = self.selected_term(qid, query)
        docs = self._docs_with([term] if term else [])
        if len(docs) < 2:
            docs = self._docs_with(self.query_terms(query))
        return len(docs), self._counts(docs)

    def related_term(self, qid: str, query: str) -> str | None:
        """The non-query content word that co-occurs most strongly with the query.

        Score: ``c · ln(N·c / (n_q · df))`` where ``n_q`` is the number of documents holding the
        query's selected term, ``c`` the number of those that also hold the word and ``df`` the
        word's document frequency (co-occurrence-weighted PMI); ``c >= 2``; ties by word. Words
        sharing a stem-like prefix with a query word are excluded.
        """
        key = f"{qid}\x1f{query}"
        if key in self._related:
            return self._related[key]
        n_q, counts = self.cooccurrence(qid, query)
        query_words = set(words(query))
        best: tuple[float, str] | None = None
        for word, c in counts.items():
            if c < 2 or not is_content_word(word) or self._is_query_like(word, query_words):
                continue
            score = c * math.log(self.n_docs * c / (n_q * self.df[word]))
            if score <= 0:
                continue
            if best is None or score > best[0] or (score == best[0] and word < best[1]):
                best = (score, word)
        result = best[1] if best else None
        self._related[key] = result
        return result

    @cached_property
    def content_words_by_df(self) -> list[tuple[int, list[str]]]:
        """(df, sorted content words with that df), by increasing df."""
        groups: dict[int, list[str]] = {}
        for word, df in self.df.items():
            if is_content_word(word):
                groups.setdefault(df, []).append(word)
        return sorted((df, sorted(ws)) for df, ws in groups.items())

    def unrelated_term(self, qid: str, query: str, like: str) -> str | None:
        """A content word in no document with a query term, of df closest to ``like``'s.

        Closeness is ``|ln df(word) − ln df(like)|`` (df of an unseen ``like`` counts as 1; the
        smaller df first at equal closeness); among words of that df, the least hash of
        (qid, word), so queries do not all get the same word.
        """
        key = f"{qid}\x1f{query}\x1f{like}"
        if key in self._unrelated:
            return self._unrelated[key]
        related_docs = self._docs_with(self.query_terms(query))
        query_words = set(words(query))
        target = math.log(max(1, self.df.get(normalise(like), 0)))
        groups = sorted(
            self.content_words_by_df, key=lambda g: (abs(math.log(g[0]) - target), g[0])
        )
        result = None
        for _, group in groups:
            eligible = [
                w
                for w in group
                if w != normalise(like)
                and not self._is_query_like(w, query_words)
                and related_docs.isdisjoint(self.postings[w])
            ]
            if eligible:
                result = min(eligible, key=lambda w: (stable_seed(qid, w), w))
                break
        self._unrelated[key] = result
        return result

    @cached_property
    def sentence_pool(self) -> list[tuple[str, str, frozenset[str]]]:
        """(docno, sentence, words) of every candidate document's sentences of 5–40 words."""
        docnos = sorted({d for ds in self.collection.candidates.values() for d in ds})
        if not docnos:
            docnos = sorted(self.collection.docs)
        pool = []
        for docno in docnos:
            for sentence in sentences(self.collection.docs.get(docno, "")):
                ws = words(sentence)
                if MIN_FILLER_WORDS <= len(ws) <= MAX_FILLER_WORDS and sentence[-1] in ".!?":
                    pool.append((docno, sentence, frozenset(ws)))
        return pool

    def filler_sentences(
        self, qid: str, query: str, k: int, rng: random.Random, avoid: Iterable[str] = ()
    ) -> list[str] | None:
        """``k`` distinct sentences from other queries' non-relevant documents without query terms.

        A sentence qualifies when its document is not a candidate of ``qid``, is not judged
        relevant (grade > 0) to ``qid``, and none of its words is a query term, a word sharing a
        query word's stem, or one of ``avoid``. None when fewer than ``k`` sentences qualify.
        """
        own = set(self.collection.candidates_of(qid))
        judged = self.collection.qrels.get(qid, {})
        banned = set(self.query_terms(query)) | {normalise(a) for a in avoid}

        def ok(entry: tuple[str, str, frozenset[str]]) -> bool:
            docno, _, ws = entry
            if docno in own or judged.get(docno, 0) > 0:
                return False
            return not any(_same_stem(w, b) for w in ws for b in banned)

        pool = self.sentence_pool
        chosen: list[int] = []
        texts: set[str] = set()
        for _ in range(50 * k):
            if len(chosen) == k or not pool:
                break
            i = rng.randrange(len(pool))
            if pool[i][1] not in texts and ok(pool[i]):
                chosen.append(i)
                texts.add(pool[i][1])
        if len(chosen) < k:
            order = list(range(len(pool)))
            rng.shuffle(order)
            for i in order:
                if len(chosen) == k:
                    break
                if pool[i][1] not in texts and ok(pool[i]):
                    chosen.append(i)
                    texts.add(pool[i][1])
        if len(chosen) < k:
            return None
        return [pool[i][1] for i in chosen]


@dataclass(frozen=True)
class Edit:
    """The texts of one pair as a perturbation makes them (before ids, relevance, alignment)."""

    baseline: str
    perturbed: str
    injected: tuple[Span, ...] = ()
    term: str = ""
    level: int = 0


@dataclass
class PerturbationContext:
    """What a perturbation may use besides the query and document text."""

    qid: str
    docno: str
    stats: CollectionStats
    rng: random.Random
    options: Mapping[str, Any] = field(default_factory=dict)

    def option(self, name: str) -> Any:
        return self.options[name]

    def term(self, query: str) -> str | None:
        """The query term to inject (see :meth:`CollectionStats.selected_term`)."""
        return self.stats.selected_term(self.qid, query)


Perturbation = Callable[[str, str, PerturbationContext], list[Edit]]
F = TypeVar("F", bound=Perturbation)


@dataclass(frozen=True)
class _Entry:
    fn: Perturbation
    options: Mapping[str, Any]


_REGISTRY: dict[tuple[str, str], _Entry] = {}


def perturbation(
    axiom: str, variant: str, options: Mapping[str, Any] | None = None
) -> Callable[[F], F]:
    """Register a perturbation under ``(axiom, variant)`` with its options and their defaults."""

    def decorate(fn: F) -> F:
        key = (axiom.upper(), variant.lower())
        if key in _REGISTRY and _REGISTRY[key].fn is not fn:
            raise ValueError(f"two perturbations are registered under {key}")
        _REGISTRY[key] = _Entry(fn, dict(options or {}))
        return fn

    return decorate


def registered() -> list[tuple[str, str]]:
    """Every registered (axiom, variant), in registration order."""
    return list(_REGISTRY)


def default_variant(axiom: str) -> str:
    """The first variant registered for ``axiom``."""
    for a, v in _REGISTRY:
        if a == axiom.upper():
            return v
    raise UnknownPerturbationError(_unknown_message(axiom, ""))


def _unknown_message(axiom: str, variant: str) -> str:
    names = ", ".join(f"{a}/{v}" for a, v in _REGISTRY)
    return f"no perturbation is registered for axiom {axiom!r} variant {variant!r}; known: {names}"


def _entry(axiom: str, variant: str = "") -> tuple[tuple[str, str], _Entry]:
    key = (axiom.upper(), variant.lower() or default_variant(axiom))
    if key not in _REGISTRY:
        raise UnknownPerturbationError(_unknown_message(axiom, variant))
    return key, _REGISTRY[key]


def get_perturbation(axiom: str, variant: str = "") -> Perturbation:
    """The function registered under ``(axiom, variant)``; variant "" picks the default one."""
    return _entry(axiom, variant)[1].fn


def check_perturbation(
    axiom: str, variant: str = "", options: Mapping[str, Any] | None = None
) -> tuple[str, str]:
    """The canonical (axiom, variant) for a request, after checking it and its options."""
    key, entry = _entry(axiom, variant)
    _options(key, entry, options)
    return key


def _options(key: tuple[str, str], entry: _Entry, given: Mapping[str, Any] | None) -> dict:
    unknown = sorted(set(given or {}) - set(entry.options))
    if unknown:
        allowed = ", ".join(entry.options) or "none"
        raise DataError(f"unknown option(s) {unknown} for {key[0]}/{key[1]}; allowed: {allowed}")
    return {**entry.options, **(given or {})}


def perturb(
    axiom: str,
    variant: str = "",
    *,
    qid: str,
    query: str,
    docno: str,
    text: str,
    stats: CollectionStats,
    relevance: int | None = None,
    seed: int = 0,
    options: Mapping[str, Any] | None = None,
) -> list[Pair]:
    """The pairs one perturbation makes from one (query, document)."""
    key, entry = _entry(axiom, variant)
    ctx = PerturbationContext(
        qid=qid,
        docno=docno,
        stats=stats,
        rng=random.Random(stable_seed(seed, key[0], key[1], qid, docno)),
        options=_options(key, entry, options),
    )
    return [
        Pair(
            qid=qid,
            docno=docno,
            query=query,
            baseline=e.baseline,
            perturbed=e.perturbed,
            axiom=key[0],
            variant=key[1],
            relevance=relevance,
            injected=e.injected,
            term=e.term,
            level=e.level,
        )
        for e in entry.fn(query, text.strip(), ctx)
        if e.baseline != e.perturbed
    ]


def build_pairs(
    collection: Collection,
    axiom: str,
    variant: str = "",
    *,
    seed: int = 0,
    options: Mapping[str, Any] | None = None,
    items: Iterable[tuple[str, str]] | None = None,
    stats: CollectionStats | None = None,
) -> PairSet:
    """Pairs of one perturbation over (qid, docno) ``items`` (default: every query's candidates).

    Relevance comes from the collection's qrels (None where a pair is unjudged).
    """
    key, entry = _entry(axiom, variant)
    _options(key, entry, options)
    stats = stats or CollectionStats(collection)
    if items is None:
        items = [(q, d) for q in collection.queries for d in collection.candidates_of(q)]
    pairs: list[Pair] = []
    for qid, docno in items:
        if docno not in collection.docs:
            raise DataError(f"collection {collection.name!r}: candidate {docno!r} has no text")
        pairs.extend(
            perturb(
                key[0],
                key[1],
                qid=qid,
                query=collection.queries[qid],
                docno=docno,
                text=collection.docs[docno],
                stats=stats,
                relevance=collection.relevance(qid, docno),
                seed=seed,
                options=options,
            )
        )
    return PairSet(f"{collection.name}:{key[0]}/{key[1]}@{seed}", tuple(pairs))


def _appended(doc: str, addition: str) -> tuple[str, Span]:
    """``doc`` with ``addition`` appended after a space, and the span of the addition."""
    start = len(doc) + 1 if doc else 0
    return (f"{doc} {addition}" if doc else addition), (start, start + len(addition))


def _append_edit(doc: str, term: str, level: int = 0) -> Edit:
    perturbed, span = _appended(doc, term)
    return Edit(doc, perturbed, (span,), term=term, level=level)


@perturbation("TFC1", "append")
def tfc1_append(query: str, doc: str, ctx: PerturbationContext) -> list[Edit]:
    """Baseline: the document. Perturbed: the document with the query term appended."""
    term = ctx.term(query)
    return [_append_edit(doc, term)] if term else []


@perturbation("TFC1", "prepend")
def tfc1_prepend(query: str, doc: str, ctx: PerturbationContext) -> list[Edit]:
    """Baseline: the document. Perturbed: the query term, a space, the document."""
    term = ctx.term(query)
    if not term:
        return []
    return [Edit(doc, f"{term} {doc}", ((0, len(term)),), term=term)]


@perturbation("TFC1", "replace")
def tfc1_replace(query: str, doc: str, ctx: PerturbationContext) -> list[Edit]:
    """Baseline: the document. Perturbed: one non-query content word (seeded choice) replaced by
    the query term, so the term count rises by one with little change in length."""
    term = ctx.term(query)
    if not term:
        return []
    query_words = set(words(query)) | {normalise(term)}
    spots = [
        m
        for m in word_matches(doc)
        if is_content_word(m.group())
        and not any(_same_stem(normalise(m.group()), q) for q in query_words)
    ]
    if not spots:
        return []
    m = ctx.rng.choice(spots)
    perturbed = doc[: m.start()] + term + doc[m.end() :]
    return [Edit(doc, perturbed, ((m.start(), m.start() + len(term)),), term=term)]


@perturbation("TFC2", "append", {"max_copies": 10})
def tfc2_append(query: str, doc: str, ctx: PerturbationContext) -> list[Edit]:
    """Saturation series: for K = 1 … ``max_copies``, baseline = the document, perturbed = the
    document with K copies of the query term appended (``level`` = K)."""
    term = ctx.term(query)
    if not term:
        return []
    edits = []
    for k in range(1, int(ctx.option("max_copies")) + 1):
        perturbed, spans = doc, []
        for _ in range(k):
            perturbed, span = _appended(perturbed, term)
            spans.append(span)
        edits.append(Edit(doc, perturbed, tuple(spans), term=term, level=k))
    return edits


@perturbation("TDC", "append")
def tdc_append(query: str, doc: str, ctx: PerturbationContext) -> list[Edit]:
    """Term discrimination. Baseline: the document with the query's LOWEST-IDF term appended.
    Perturbed: the document with its HIGHEST-IDF term appended (``term``; the injected span).
    IDF from the collection; no pair when the query's terms all have the same IDF."""
    terms = ctx.stats.query_terms(query)
    if len(terms) < 2:
        return []
    high = max(terms, key=ctx.stats.idf)
    low = min(reversed(terms), key=ctx.stats.idf)
    if ctx.stats.idf(high) <= ctx.stats.idf(low):
        return []
    baseline, _ = _appended(doc, low)
    perturbed, span = _appended(doc, high)
    return [Edit(baseline, perturbed, (span,), term=high)]


def _given_term(value: Any, qid: str, query: str) -> str | None:
    """A term from an option: a {qid: term or [terms]} mapping, or one list for every query."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        value = value.get(qid)
        if value is None:
            return None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, Sequence):
        raise DataError(f"a term option must be a string, a list or a mapping, got {value!r}")
    query_words = set(words(query))
    for term in value:
        if normalise(term) not in query_words:
            return str(term)
    return None


@perturbation("STMC1", "append", {"related": None, "unrelated": None})
def stmc1_append(query: str, doc: str, ctx: PerturbationContext) -> list[Edit]:
    """Semantic term matching. Perturbed: the document with a related non-query term appended —
    from option ``related`` ({qid: term or [terms]} or one list; the first non-query term), else
    the collection's strongest co-occurring term (:meth:`CollectionStats.related_term`).
    Baseline: the document with an unrelated term of similar document frequency appended (option
    ``unrelated``, else :meth:`CollectionStats.unrelated_term`)."""
    related = _given_term(ctx.option("related"), ctx.qid, query) or ctx.stats.related_term(
        ctx.qid, query
    )
    if not related:
        return []
    unrelated = _given_term(ctx.option("unrelated"), ctx.qid, query) or ctx.stats.unrelated_term(
        ctx.qid, query, related
    )
    if not unrelated or normalise(unrelated) == normalise(related):
        return []
    baseline, _ = _appended(doc, unrelated)
    perturbed, span = _appended(doc, related)
    return [Edit(baseline, perturbed, (span,), term=related)]


@perturbation("LNC1", "append", {"sentences": 2})
def lnc1_append(query: str, doc: str, ctx: PerturbationContext) -> list[Edit]:
    """Length normalisation. Baseline: the document. Perturbed: the document lengthened with
    ``sentences`` filler sentences (``level``) taken from other queries' non-relevant documents
    that contain no query term (:meth:`CollectionStats.filler_sentences`)."""
    k = int(ctx.option("sentences"))
    term = ctx.term(query)
    filler = ctx.stats.filler_sentences(ctx.qid, query, k, ctx.rng, avoid=[term] if term else [])
    if not filler:
        return []
    perturbed, span = _appended(doc, " ".join(filler))
    return [Edit(doc, perturbed, (span,), level=k)]


@perturbation("LNC2", "repeat", {"copies": 2})
def lnc2_repeat(query: str, doc: str, ctx: PerturbationContext) -> list[Edit]:
    """Repeated content. Perturbed: the document concatenated with itself ``copies`` times
    (space-separated; ``level`` = copies; the copies after the first are the injected spans).
    Baseline: the document itself; alignment pads it with filler tokens ("a") at its end to the
    perturbed text's token length, so the baseline of an aligned pair is the document plus filler.
    """
    k = int(ctx.option("copies"))
    if k < 2 or not doc:
        return []
    perturbed, spans = doc, []
    for _ in range(k - 1):
        perturbed, span = _appended(perturbed, doc)
        spans.append(span)
    return [Edit(doc, perturbed, tuple(spans), level=k)]


def _tokens(doc: str) -> list[str]:
    return doc.split()


def _shuffled(items: list[str], rng: random.Random) -> list[str] | None:
    """A seeded permutation of ``items`` that differs from them; None when none can."""
    if len(set(items)) < 2:
        return None
    for _ in range(20):
        out = items[:]
        rng.shuffle(out)
        if out != items:
            return out
    return items[1:] + items[:1]


@perturbation("ABNIRML", "shuffle_words")
def shuffle_words(query: str, doc: str, ctx: PerturbationContext) -> list[Edit]:
    """Perturbed: the document's white-space-separated words in a seeded random order (single
    spaces; punctuation travels with its word). Nothing is injected."""
    out = _shuffled(_tokens(doc), ctx.rng)
    return [Edit(doc, " ".join(out))] if out else []


@perturbation("ABNIRML", "shuffle_sentences")
def shuffle_sentences(query: str, doc: str, ctx: PerturbationContext) -> list[Edit]:
    """Perturbed: the document's sentences in a seeded random order. Nothing is injected."""
    out = _shuffled(sentences(doc), ctx.rng)
    return [Edit(doc, " ".join(out))] if out else []


@perturbation("ABNIRML", "reverse_words")
def reverse_words(query: str, doc: str, ctx: PerturbationContext) -> list[Edit]:
    """Perturbed: the document's white-space-separated words in reverse order."""
    tokens = _tokens(doc)
    return [Edit(doc, " ".join(reversed(tokens)))] if len(tokens) > 1 else []


def _squeeze(text: str) -> str:
    return " ".join(text.split())


@perturbation("ABNIRML", "delete_stopwords")
def delete_stopwords(query: str, doc: str, ctx: PerturbationContext) -> list[Edit]:
    """Perturbed: the document without its stop words (``STOPWORDS``). Each stop word goes with the
    white space after it (before it, when punctuation or the end follows); the rest is unchanged."""
    drop: list[Span] = []
    for m in word_matches(doc):
        if normalise(m.group()) not in STOPWORDS:
            continue
        start, end = m.start(), m.end()
        after = end
        while after < len(doc) and doc[after].isspace():
            after += 1
        if after > end and after < len(doc):
            end = after
        else:
            while start > 0 and doc[start - 1].isspace():
                start -= 1
        drop.append((start, end))
    parts, last = [], 0
    for start, end in drop:
        start = max(start, last)
        parts.append(doc[last:start])
        last = max(last, end)
    parts.append(doc[last:])
    return [Edit(doc, "".join(parts).strip())]


@perturbation("ABNIRML", "delete_punctuation")
def delete_punctuation(query: str, doc: str, ctx: PerturbationContext) -> list[Edit]:
    """Perturbed: the document without punctuation characters (Unicode category P*), white space
    squeezed to single spaces."""
    return [Edit(doc, _squeeze("".join(c for c in doc if not is_punctuation(c))))]


@perturbation("ABNIRML", "typos", {"rate": 0.1, "include_query_terms": False})
def typos(query: str, doc: str, ctx: PerturbationContext) -> list[Edit]:
    """Perturbed: a seeded ``rate`` share (at least one) of the content words of 4+ letters get a
    typo — two adjacent inner letters swapped. Query words are left intact unless
    ``include_query_terms``. The changed words are the injected spans (same places as in the
    baseline: swaps keep the length)."""
    query_words = set() if ctx.option("include_query_terms") else set(words(query))
    spots = []
    for m in word_matches(doc):
        w = m.group()
        inner = [i for i in range(1, len(w) - 2) if w[i] != w[i + 1]]
        if len(w) >= 4 and is_content_word(w) and normalise(w) not in query_words and inner:
            spots.append((m, inner))
    if not spots:
        return []
    k = max(1, round(len(spots) * float(ctx.option("rate"))))
    chosen = sorted(ctx.rng.sample(range(len(spots)), min(k, len(spots))))
    chars = list(doc)
    injected = []
    for idx in chosen:
        m, inner = spots[idx]
        i = m.start() + ctx.rng.choice(inner)
        chars[i], chars[i + 1] = chars[i + 1], chars[i]
        injected.append((m.start(), m.end()))
    return [Edit(doc, "".join(chars), tuple(injected))]
