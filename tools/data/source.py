"""Data sources: what ``--data SPEC`` names, and the pairs and documents the tools draw from it.

:func:`resolve_data` turns a spec into a :class:`DataSource`. A source built on a collection
(the built-in one, a shared-format corpus, a TSV/JSONL collection, an ir_datasets id) makes pairs
for any registered perturbation; a fixed-pairs source (a pairs TSV) gives only its own pairs.

Splits are by query: ``split="discovery"`` and ``split="holdout"`` partition the query ids with
``split_seed`` (0 unless given), independently of ``seed``, which draws the sample and seeds the
perturbations. Replication therefore runs on ``split="holdout"`` with a NEW ``seed`` and the SAME
``split_seed``, and never sees a query of the discovery run. A collection source partitions all
its queries that have candidates, so every axiom sees the same partition.
"""

from __future__ import annotations

import json
import os
import random
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from rankscope.tools.data.alignment import align_many
from rankscope.tools.data.axioms import (
    CollectionStats,
    build_pairs,
    check_perturbation,
    registered,
)
from rankscope.tools.data.builtin import load_builtin
from rankscope.tools.data.errors import (
    AlignmentError,
    AlignmentWarning,
    DataError,
    DataFormatError,
    DataSpecError,
    UnknownPerturbationError,
)
from rankscope.tools.data.labels import (
    is_unlabelled,
    parse_perturbation,
    perturbation_label,
)
from rankscope.tools.data.loaders import (
    PAIRS_REQUIRED,
    load_irds_collection,
    load_jsonl_collection,
    load_pairs_tsv,
    load_tfc1_corpus,
    load_tsv_collection,
    read_tsv,
)
from rankscope.tools.data.types import Collection, Pair, PairSet, split_qids

SPLITS = ("all", "discovery", "holdout")
ALIGN_BATCH = 64
ACCEPTED_SPECS = """accepted data specs:
  builtin (or no spec)        the built-in collection (28 queries x 8 graded passages)
  PATH.tsv                    fixed perturbation pairs when the header has the columns
                              qid docno text perturbed_text query [relevance] (as
                              dl1920_tfc1_pairs.tsv); otherwise a collection with the columns
                              qid query docno text [relevance selected_term]
  PATH.tsv#perturbation=AXIOM/VARIANT
                              the same pairs, declared to be AXIOM/VARIANT pairs (e.g.
                              TFC1/append, LNC1/append); a perturbation (or axiom and variant)
                              column declares row by row; undeclared pairs are "unlabelled pairs"
  PATH.jsonl                  a collection, one JSON object a line with the keys
                              qid query docno text [relevance selected_term]
  PATH.json                   a corpus in the shared TFC1 format, with tfc1_queries.tsv beside it
  PATH.json::QUERIES.tsv      the same, naming its queries file
  irds:ID                     an ir_datasets id (pip install 'rankscope[irds]'; offline only
                              when ir_datasets has the data already)"""


def _split_name(split: str, holdout_fraction: float, split_seed: int) -> str:
    return split if split == "all" else f"{split}[{holdout_fraction}@{split_seed}]"


def _key(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=repr)


class DataSource(ABC):
    """Diagnostic data behind one spec: a collection to perturb, or fixed pairs."""

    def __init__(self, spec: str, name: str) -> None:
        self.spec = spec
        self.name = name
        self._cache: dict[str, tuple[Any, PairSet]] = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(spec={self.spec!r}, name={self.name!r})"

    @abstractmethod
    def content_hash(self) -> str:
        """sha256 of the data's content (collection or pairs), for provenance."""

    @abstractmethod
    def collection(self) -> Collection | None:
        """The collection behind the source; None for fixed pairs."""

    @abstractmethod
    def axioms(self) -> list[tuple[str, str]]:
        """The (axiom, variant) pairs this source can give."""

    @abstractmethod
    def _groups(
        self,
        axiom: str,
        variant: str,
        split: str,
        seed: int,
        holdout_fraction: float,
        split_seed: int,
        options: Mapping[str, Any] | None,
    ) -> tuple[str, int, Callable[[int], list[Pair]]]:
        """(pair set name, number of groups, make(i) -> the pairs of group i), in source order.

        A group is the pairs of one (query, document): one pair, or a series (TFC2 levels).
        """

    @abstractmethod
    def _items(self) -> list[dict[str, Any]]:
        """Every (query, document) of the source as a ``documents()`` row, in source order."""

    def pairs(
        self,
        axiom: str,
        variant: str = "",
        *,
        tokenizer: Any = None,
        split: str = "all",
        n: int | None = None,
        seed: int = 0,
        holdout_fraction: float = 0.5,
        max_length: int = 256,
        split_seed: int = 0,
        options: Mapping[str, Any] | None = None,
        with_query: bool = True,
    ) -> PairSet:
        """Perturbation pairs of ``axiom``/``variant`` (variant "" = the axiom's default one).

        ``split`` ("all", "discovery", "holdout") selects queries by the partition drawn with
        ``split_seed`` and ``holdout_fraction``. ``seed`` seeds the perturbations (shuffles,
        typos, word and sentence choices) and draws ``n`` pairs (all when None), a (query,
        document)'s series kept together where it fits, returned in source order.
        With a ``tokenizer`` every pair is length-aligned (:func:`align_many`; ``max_length`` is
        the model's sequence length, special tokens included, and ``with_query=False`` lets a
        bi-encoder's document use all of it, where the default also leaves room for the query);
        pairs that cannot be aligned are skipped and counted in one
        :class:`AlignmentWarning`, and others are drawn in their place. ``options`` go to the
        perturbation (e.g. ``{"max_copies": 5}`` for TFC2). Results are cached per arguments.
        """
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
        if n is not None and n < 1:
            raise DataError(f"n must be a positive number of pairs or None, got {n}")
        key = _key(
            [
                axiom,
                variant,
                split,
                n,
                seed,
                holdout_fraction,
                max_length,
                split_seed,
                options,
                with_query,
            ]
        )
        key += f"|tok{id(tokenizer)}" if tokenizer is not None else ""
        hit = self._cache.get(key)
        if hit is not None and hit[0] is tokenizer:
            return hit[1]
        name, n_groups, make = self._groups(
            axiom, variant, split, seed, holdout_fraction, split_seed, options
        )
        order = list(range(n_groups))
        if n is not None:
            random.Random(seed).shuffle(order)
        chosen: dict[int, list[Pair]] = {}
        total = 0
        failures: list[str] = []
        for start in range(0, len(order), ALIGN_BATCH):
            if n is not None and total >= n:
                break
            batch: list[tuple[int, list[Pair], list[str]]] = [
                (i, make(i), []) for i in order[start : start + ALIGN_BATCH]
            ]
            if tokenizer is not None:
                flat = [p for _, group, _ in batch for p in group]
                results = iter(align_many(flat, tokenizer, max_length, with_query=with_query))
                aligned_batch = []
                for i, group, errors in batch:
                    kept = []
                    for result in [next(results) for _ in group]:
                        if isinstance(result, AlignmentError):
                            errors.append(str(result))
                        else:
                            kept.append(result)
                    aligned_batch.append((i, kept, errors))
                batch = aligned_batch
            for i, group, errors in batch:
                if n is not None and total >= n:
                    break
                failures.extend(errors)
                if n is not None:
                    group = group[: n - total]
                if group:
                    chosen[i] = group
                    total += len(group)
        if failures:
            warnings.warn(
                f"{len(failures)} pairs of {name!r} skipped: they cannot be length-aligned "
                f"(first: {failures[0]})",
                AlignmentWarning,
                stacklevel=2,
            )
        suffix = f"@{seed}" if n is None else f":n{n}@{seed}"
        suffix += ":aligned" if tokenizer is not None else ""
        pair_set = PairSet(name + suffix, tuple(p for i in sorted(chosen) for p in chosen[i]))
        self._cache[key] = (tokenizer, pair_set)
        return pair_set

    def documents(
        self,
        n: int | None = None,
        seed: int = 0,
        *,
        split: str = "all",
        holdout_fraction: float = 0.5,
        split_seed: int = 0,
    ) -> list[dict[str, Any]]:
        """(query, document) rows — qid, docno, query, text, relevance — for probes and features.

        ``n`` rows drawn with ``seed`` (all when None), kept in source order; ``split`` as in
        :meth:`pairs`.
        """
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
        rows = self._items()
        if split != "all":
            parts = split_qids([r["qid"] for r in rows], holdout_fraction, split_seed)
            keep = set(parts[0] if split == "discovery" else parts[1])
            rows = [r for r in rows if r["qid"] in keep]
        if n is None or n >= len(rows):
            return [dict(r) for r in rows]
        idx = sorted(random.Random(seed).sample(range(len(rows)), n))
        return [dict(rows[i]) for i in idx]


class CollectionSource(DataSource):
    """A collection whose (query, candidate) pairs any registered perturbation can perturb."""

    def __init__(self, spec: str, collection: Collection, name: str | None = None) -> None:
        super().__init__(spec, name or collection.name)
        self._collection = collection
        self._stats = CollectionStats(collection)
        self._hash: str | None = None

    def content_hash(self) -> str:
        if self._hash is None:
            self._hash = self._collection.content_hash()
        return self._hash

    def collection(self) -> Collection:
        return self._collection

    def axioms(self) -> list[tuple[str, str]]:
        return registered()

    def _qids(self) -> list[str]:
        return [q for q in self._collection.queries if self._collection.candidates_of(q)]

    def _groups(
        self,
        axiom: str,
        variant: str,
        split: str,
        seed: int,
        holdout_fraction: float,
        split_seed: int,
        options: Mapping[str, Any] | None,
    ) -> tuple[str, int, Callable[[int], list[Pair]]]:
        axiom, variant = check_perturbation(axiom, variant, options)
        qids = self._qids()
        if split != "all":
            parts = split_qids(qids, holdout_fraction, split_seed)
            keep = set(parts[0] if split == "discovery" else parts[1])
            qids = [q for q in qids if q in keep]
        items = [(q, d) for q in qids for d in self._collection.candidates_of(q)]

        def make(i: int) -> list[Pair]:
            built = build_pairs(
                self._collection,
                axiom,
                variant,
                seed=seed,
                options=options,
                items=[items[i]],
                stats=self._stats,
            )
            return list(built.pairs)

        name = f"{self.name}:{axiom}/{variant}:{_split_name(split, holdout_fraction, split_seed)}"
        return name, len(items), make

    def _items(self) -> list[dict[str, Any]]:
        c = self._collection
        return [
            {
                "qid": q,
                "docno": d,
                "query": c.queries[q],
                "text": c.docs[d],
                "relevance": c.relevance(q, d),
            }
            for q in self._qids()
            for d in c.candidates_of(q)
        ]


class PairsSource(DataSource):
    """Fixed pairs read from a file: only their own axiom and variant are available.

    The axiom is what the file or the spec declared; undeclared pairs are unlabelled (axiom
    :data:`~rankscope.tools.data.labels.UNLABELLED`) and are asked for by that name. The
    source's name ends with the labels of what it holds, e.g. ``pairs[LNC1 append]`` or
    ``pairs[unlabelled pairs]``, so the name recorded with every result says what was declared.
    """

    def __init__(self, spec: str, pairs: PairSet, name: str | None = None) -> None:
        labels = ", ".join(
            dict.fromkeys(perturbation_label(p.axiom, p.variant) for p in pairs.pairs)
        )
        super().__init__(spec, f"{name or pairs.name}[{labels}]")
        self._pairs = pairs
        self._hash: str | None = None

    def content_hash(self) -> str:
        if self._hash is None:
            self._hash = self._pairs.content_hash()
        return self._hash

    def collection(self) -> None:
        return None

    def axioms(self) -> list[tuple[str, str]]:
        return list(dict.fromkeys((p.axiom, p.variant) for p in self._pairs))

    def _groups(
        self,
        axiom: str,
        variant: str,
        split: str,
        seed: int,
        holdout_fraction: float,
        split_seed: int,
        options: Mapping[str, Any] | None,
    ) -> tuple[str, int, Callable[[int], list[Pair]]]:
        own = self.axioms()
        wanted = [
            (a, v) for a, v in own if a == axiom.upper() and (not variant or v == variant.lower())
        ]
        if not wanted:
            have = ", ".join(
                "unlabelled pairs (axiom UNLABELLED)" if is_unlabelled(a) else f"{a}/{v}"
                for a, v in own
            )
            declare = (
                " The pairs' perturbation was not declared: declare it with "
                f"{self.spec.partition('#')[0]}#perturbation=AXIOM/VARIANT or a perturbation "
                "column if you know it, or ask for axiom UNLABELLED."
                if any(is_unlabelled(a) for a, _ in own)
                else ""
            )
            raise UnknownPerturbationError(
                f"the data source {self.spec!r} holds fixed pairs of {have} only, not "
                f"{axiom}/{variant or '*'}; use a collection source (builtin, a TSV/JSONL "
                f"collection, a shared-format corpus) to build other perturbations.{declare}"
            )
        if options:
            raise DataError(f"fixed pairs from {self.spec!r} take no perturbation options")
        subset = self._pairs.with_pairs(
            (p for p in self._pairs if (p.axiom, p.variant) in wanted), ""
        )
        subset = subset.split(split, seed=split_seed, holdout_fraction=holdout_fraction)
        pairs: Sequence[Pair] = subset.pairs
        split_name = _split_name(split, holdout_fraction, split_seed)
        name = f"{self.name}:{axiom.upper()}/{variant.lower() or wanted[0][1]}:{split_name}"
        return name, len(pairs), lambda i: [pairs[i]]

    def _items(self) -> list[dict[str, Any]]:
        rows: dict[tuple[str, str], dict[str, Any]] = {}
        for p in self._pairs:
            rows.setdefault(
                (p.qid, p.docno),
                {
                    "qid": p.qid,
                    "docno": p.docno,
                    "query": p.query,
                    "text": p.baseline,
                    "relevance": p.relevance,
                },
            )
        return list(rows.values())


def _refuse_broken_pairs_header(path: Path, header: list[str]) -> None:
    """A TSV whose header looks like a pairs file's (a column named or spelt like
    ``perturbed_text``) but lacks a required pairs column is an error naming the column, never
    silently read as a plain collection."""
    import difflib

    pair_only = [c for c in PAIRS_REQUIRED if c == "perturbed_text"]
    near = {
        column: match[0]
        for column in header
        if column not in PAIRS_REQUIRED
        and (match := difflib.get_close_matches(column.lower(), pair_only, n=1, cutoff=0.6))
    }
    perturbed_like = [c for c in header if "perturb" in c.lower()]
    if not (near or perturbed_like or "perturbed_text" in header):
        return
    missing = [c for c in PAIRS_REQUIRED if c not in header]
    hints = "; ".join(f"is {found!r} a misspelling of {want!r}?" for found, want in near.items())
    raise DataFormatError(
        path,
        f"the header looks like a pairs file's but lacks the column(s) {', '.join(missing)}"
        + (f" ({hints})" if hints else ""),
        "a pairs TSV with the columns " + ", ".join(PAIRS_REQUIRED) + " (fix the header), or a "
        "collection TSV without perturbed columns",
        1,
    )


def _spec_error(problem: str) -> DataSpecError:
    return DataSpecError(f"{problem}\n{ACCEPTED_SPECS}")


DECLARATION = "#perturbation="


def split_declaration(spec: str) -> tuple[str, tuple[str, str] | None]:
    """(the spec without its declaration, the declared (AXIOM, variant) or None) of a spec
    ``PATH#perturbation=AXIOM[/VARIANT]``."""
    base, found, declared = spec.rpartition(DECLARATION)
    if not found:
        return spec, None
    try:
        return base.strip(), parse_perturbation(declared)
    except ValueError as err:
        raise _spec_error(f"in the data spec {spec!r}: {err}") from None


def resolve_data(spec: str | os.PathLike[str] | None) -> DataSource:
    """The data source a ``--data`` spec names (see ``ACCEPTED_SPECS``); files are read now."""
    if spec is not None:
        spec = os.fspath(spec)
    if spec is not None and DECLARATION in spec:
        return _resolve_declared(spec.strip())
    if spec is None or spec.strip() in ("", "builtin"):
        return CollectionSource("builtin", load_builtin(), name="builtin")
    spec = spec.strip()
    if spec.startswith("irds:"):
        dataset_id = spec[len("irds:") :]
        if not dataset_id:
            raise _spec_error("the spec 'irds:' names no ir_datasets id")
        return CollectionSource(spec, load_irds_collection(dataset_id), name=spec)
    if "::" in spec:
        corpus, queries = (Path(part).expanduser() for part in spec.split("::", 1))
        if corpus.suffix.lower() != ".json":
            raise _spec_error(f"in {spec!r}, the part before '::' must be a .json corpus")
        for path in (corpus, queries):
            if not path.is_file():
                raise _spec_error(f"no file {str(path)!r} (from the data spec {spec!r})")
        return CollectionSource(spec, load_tfc1_corpus(corpus, queries))
    path = Path(spec).expanduser()
    if not path.exists():
        raise _spec_error(f"the data spec {spec!r} is neither 'builtin', 'irds:ID' nor a file")
    if not path.is_file():
        raise _spec_error(f"the data spec {spec!r} is a directory, not a file")
    suffix = path.suffix.lower()
    if suffix == ".json":
        queries = path.parent / "tfc1_queries.tsv"
        if not queries.is_file():
            raise _spec_error(
                f"no queries file for the corpus {spec!r}: put tfc1_queries.tsv beside it or "
                f"name it as {spec}::QUERIES.tsv"
            )
        return CollectionSource(spec, load_tfc1_corpus(path, queries))
    if suffix == ".tsv":
        header, _ = read_tsv(path, (), "a tab-separated file with a header row")
        if all(column in header for column in PAIRS_REQUIRED):
            return PairsSource(spec, load_pairs_tsv(path))
        _refuse_broken_pairs_header(path, header)
        return CollectionSource(spec, load_tsv_collection(path))
    if suffix == ".jsonl":
        return CollectionSource(spec, load_jsonl_collection(path))
    raise _spec_error(f"the file {spec!r} has the extension {suffix or '(none)'!r}")


def _resolve_declared(spec: str) -> PairsSource:
    """A pairs file with the perturbation its spec declares; any other spec is an error (only
    fixed pairs need a declaration: a collection's pairs are built by a named perturbation)."""
    base, declared = split_declaration(spec)
    path = Path(base).expanduser()
    if path.suffix.lower() != ".tsv" or not path.is_file():
        raise _spec_error(
            f"the data spec {spec!r} declares a perturbation, which only a pairs TSV file "
            f"takes; {base!r} is not one"
        )
    header, _ = read_tsv(path, (), "a tab-separated file with a header row")
    if not all(column in header for column in PAIRS_REQUIRED):
        _refuse_broken_pairs_header(path, header)
        raise _spec_error(
            f"the data spec {spec!r} declares a perturbation, but {base!r} is a collection "
            "(its header has no perturbed_text): a collection's pairs are built by the "
            "perturbation a tool names"
        )
    return PairsSource(spec, load_pairs_tsv(path, perturbation=declared))


_FIXED: dict[tuple[str, float], list[tuple[str, str]]] = {}


def fixed_perturbations(spec: str | None) -> list[tuple[str, str]] | None:
    """The (axiom, variant) pairs a fixed-pairs spec holds (axiom ``UNLABELLED`` where nothing
    was declared); None for a spec of a collection, or one that cannot be read (running it
    reports why). Cheap for collection specs: only a ``.tsv`` file's header is read."""
    if not spec:
        return None
    base, _ = split_declaration(spec.strip()) if DECLARATION in spec else (spec.strip(), None)
    path = Path(base).expanduser()
    if path.suffix.lower() != ".tsv" or not path.is_file():
        return None
    key = (spec, path.stat().st_mtime)
    if key not in _FIXED:
        try:
            source = resolve_data(spec)
        except DataError:
            return None
        if not isinstance(source, PairsSource):
            return None
        _FIXED[key] = source.axioms()
    return list(_FIXED[key])
