"""Value types of the diagnostic datasets: a collection, a perturbation pair, a set of pairs."""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace

Span = tuple[int, int]


def split_qids(
    qids: Iterable[str], holdout_fraction: float = 0.5, seed: int = 0
) -> tuple[list[str], list[str]]:
    """(discovery, holdout) query ids: a seeded partition of the sorted, distinct ``qids``.

    Both parts are non-empty and returned sorted. The one partition rule of the project: pair sets
    and data sources split with it, so the same ids and seed always give the same partition.
    """
    if not 0.0 < holdout_fraction < 1.0:
        raise ValueError(f"holdout_fraction must lie in (0, 1), got {holdout_fraction}")
    ordered = sorted(set(qids))
    if len(ordered) < 2:
        raise ValueError(f"{len(ordered)} query id(s); a split by query needs 2 or more")
    rng = random.Random(seed)
    rng.shuffle(ordered)
    n_hold = min(len(ordered) - 1, max(1, round(len(ordered) * holdout_fraction)))
    return sorted(ordered[n_hold:]), sorted(ordered[:n_hold])


def _canonical(payload: object) -> str:
    return json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def content_hash(payload: object) -> str:
    """sha256 of the canonical JSON form of ``payload``."""
    return hashlib.sha256(_canonical(payload).encode("utf-8")).hexdigest()


def _canonical_chunks(payload: object, depth: int) -> Iterator[str]:
    """The canonical JSON text of ``payload`` in pieces: lists and string-keyed dicts down to
    ``depth`` levels are written an item at a time, so a large collection is never one string."""
    if depth > 0 and isinstance(payload, list | tuple):
        yield "["
        for i, item in enumerate(payload):
            if i:
                yield ","
            yield from _canonical_chunks(item, depth - 1)
        yield "]"
    elif depth > 0 and isinstance(payload, dict) and all(isinstance(k, str) for k in payload):
        yield "{"
        for i, key in enumerate(sorted(payload)):
            yield ("," if i else "") + _canonical(key) + ":"
            yield from _canonical_chunks(payload[key], depth - 1)
        yield "}"
    else:
        yield _canonical(payload)


def streamed_content_hash(payload: object, depth: int = 2) -> str:
    """:func:`content_hash` of ``payload`` (the same digest), computed without building its
    JSON text at once."""
    digest = hashlib.sha256()
    for chunk in _canonical_chunks(payload, depth):
        digest.update(chunk.encode("utf-8"))
    return digest.hexdigest()


@dataclass(frozen=True)
class Collection:
    """Queries, passages, graded relevance labels and each query's candidate passages."""

    name: str
    queries: dict[str, str]
    docs: dict[str, str]
    qrels: dict[str, dict[str, int]] = field(default_factory=dict)
    candidates: dict[str, list[str]] = field(default_factory=dict)
    selected_terms: dict[str, str] = field(default_factory=dict)

    def content_hash(self) -> str:
        return streamed_content_hash(
            {
                "queries": self.queries,
                "docs": self.docs,
                "qrels": self.qrels,
                "candidates": self.candidates,
                "selected_terms": self.selected_terms,
            }
        )

    def candidates_of(self, qid: str) -> list[str]:
        """A query's candidate passages: the given list, else its judged passages."""
        if qid in self.candidates:
            return self.candidates[qid]
        return sorted(self.qrels.get(qid, {}))

    def relevance(self, qid: str, docno: str) -> int | None:
        return self.qrels.get(qid, {}).get(docno)


@dataclass(frozen=True)
class Pair:
    """A (baseline, perturbed) document pair for one query.

    ``injected`` are character spans in ``perturbed`` that the perturbation added; ``filler`` are
    character spans in ``baseline`` of filler text added so both tokenise to the same length.
    ``perturbed_filler`` are filler spans in ``perturbed``: alignment pads whichever text is
    shorter, and that is the perturbed text when the perturbation removes text (deletions).
    """

    qid: str
    docno: str
    query: str
    baseline: str
    perturbed: str
    axiom: str
    variant: str = ""
    relevance: int | None = None
    injected: tuple[Span, ...] = ()
    filler: tuple[Span, ...] = ()
    term: str = ""
    level: int = 0
    perturbed_filler: tuple[Span, ...] = ()

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class PairSet:
    """An ordered set of pairs with a name; hashable by content, splittable by query."""

    name: str
    pairs: tuple[Pair, ...]

    def __len__(self) -> int:
        return len(self.pairs)

    def __iter__(self) -> Iterator[Pair]:
        return iter(self.pairs)

    def content_hash(self) -> str:
        """sha256 of the canonical JSON of the list of the pairs (each pair's JSON is made and
        hashed in turn: a large pair set is never one string)."""
        digest = hashlib.sha256(b"[")
        for i, pair in enumerate(self.pairs):
            digest.update((("," if i else "") + _canonical(pair.to_json())).encode("utf-8"))
        digest.update(b"]")
        return digest.hexdigest()

    def qids(self) -> list[str]:
        return sorted({p.qid for p in self.pairs})

    def with_pairs(self, pairs: Iterable[Pair], suffix: str) -> PairSet:
        return replace(self, name=f"{self.name}{suffix}", pairs=tuple(pairs))

    def split_by_query(
        self, holdout_fraction: float = 0.5, seed: int = 0
    ) -> tuple[PairSet, PairSet]:
        """(discovery, holdout): disjoint query ids, chosen with ``seed``."""
        qids = self.qids()
        if len(qids) < 2:
            raise ValueError(
                f"pair set {self.name!r} has {len(qids)} query id(s); "
                "a split by query needs 2 or more"
            )
        held = set(split_qids(qids, holdout_fraction, seed)[1])
        discovery = [p for p in self.pairs if p.qid not in held]
        holdout = [p for p in self.pairs if p.qid in held]
        return self.with_pairs(discovery, ":discovery"), self.with_pairs(holdout, ":holdout")

    def split(self, name: str, seed: int = 0, holdout_fraction: float = 0.5) -> PairSet:
        """The pairs of split ``name``: ``all``, ``discovery`` or ``holdout``."""
        if name == "all":
            return self
        discovery, holdout = self.split_by_query(holdout_fraction, seed)
        if name == "discovery":
            return discovery
        if name == "holdout":
            return holdout
        raise ValueError(f"unknown split {name!r}; use 'all', 'discovery' or 'holdout'")

    def sample(self, n: int | None, seed: int = 0) -> PairSet:
        """``n`` pairs drawn without replacement with ``seed`` (all when n is None or larger)."""
        if n is None or n >= len(self.pairs):
            return self
        rng = random.Random(seed)
        idx = sorted(rng.sample(range(len(self.pairs)), n))
        return self.with_pairs((self.pairs[i] for i in idx), f":sample{n}@{seed}")
