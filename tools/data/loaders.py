"""Readers of diagnostic data: the shared TFC1 files, generic TSV/JSONL collections, ir_datasets.

Every reader checks its input and raises :class:`DataFormatError` naming the file, the line where
one applies, what was wrong and what format is expected. TSV and JSONL files are read a line at a
time (memory is what the rows hold, not the file's text as well); a JSON corpus, which is parsed
whole, is refused above :data:`MAX_JSON_BYTES`. A UTF-8 byte order mark at the start of a file is
dropped.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rankscope.tools.data.errors import DataFormatError, DataSpecError, DataUnavailableError
from rankscope.tools.data.labels import UNLABELLED, parse_perturbation
from rankscope.tools.data.types import Collection, Pair, PairSet

PAIRS_REQUIRED = ("qid", "docno", "text", "perturbed_text", "query")
PAIRS_OPTIONAL = ("relevance", "score_delta", "perturbation", "axiom", "variant")
PAIRS_FORMAT = (
    "a tab-separated file, UTF-8, with a header row naming the columns qid, docno, text, "
    "perturbed_text, query (optional: relevance as an integer grade, score_delta, and the "
    "declared perturbation of the row as perturbation=AXIOM[/VARIANT] or as axiom and variant), "
    "one pair a line"
)
QUERIES_FORMAT = (
    "a tab-separated file, UTF-8, with the header row 'qid<TAB>query<TAB>selected_term' "
    "(selected_term optional), one query a line"
)
CORPUS_FORMAT = (
    'a JSON object {"corpus": {qid: {docid: {"title": str, "text": str, ...}}}} whose texts start '
    'with the filler "a "'
)
COLLECTION_COLUMNS = ("qid", "query", "docno", "text")
COLLECTION_OPTIONAL = ("relevance", "selected_term")
TSV_FORMAT = (
    "a tab-separated file, UTF-8, with a header row naming the columns {cols} (optional: "
    "{opt}), one (query, passage) a line"
)
JSONL_FORMAT = (
    "one JSON object a line with the keys {cols} (optional: {opt}); relevance an integer grade"
)
LEADING_FILLER = "a "


MAX_JSON_BYTES = 512 * 1024 * 1024
"""The largest JSON corpus read: JSON is parsed whole (it takes several times its size in
memory), unlike the TSV and JSONL files, which are read a line at a time."""


def _check_file(path: Path, expected: str) -> None:
    if not path.exists():
        raise DataFormatError(path, "the file does not exist", expected)
    if not path.is_file():
        raise DataFormatError(path, "this is not a file", expected)


def _read_text(path: Path, expected: str, max_bytes: int | None = None) -> str:
    """The whole text of a small file (a UTF-8 byte order mark dropped); ``max_bytes`` bounds
    it, with the reason."""
    _check_file(path, expected)
    if max_bytes is not None and path.stat().st_size > max_bytes:
        raise DataFormatError(
            path,
            f"the file has {path.stat().st_size / 1e6:.0f} MB; a JSON file is read whole, which "
            f"takes several times its size in memory, so RankScope reads at most "
            f"{max_bytes / 1e6:.0f} MB of it. Convert it to a JSONL or TSV collection (read a "
            "line at a time, of any size)",
            expected,
        )
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataFormatError(path, f"the file is not UTF-8 text ({err.reason})", expected) from err
    if not text.strip():
        raise DataFormatError(path, "the file is empty", expected)
    return text


def _lines(path: Path, expected: str) -> Iterator[tuple[int, str]]:
    """(1-based line number, line without its end-of-line) of each non-blank line of a UTF-8
    file, read a line at a time (a byte order mark at the start is dropped). The file's checks
    run at the call; decoding errors name their line."""
    _check_file(path, expected)

    def lines() -> Iterator[tuple[int, str]]:
        seen = False
        with path.open("rb") as fh:
            for number, raw in enumerate(fh, start=1):
                if number == 1 and raw.startswith(codecs.BOM_UTF8):
                    raw = raw[len(codecs.BOM_UTF8) :]
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    raise DataFormatError(
                        path, f"the file is not UTF-8 text ({err.reason})", expected, number
                    ) from None
                line = line.removesuffix("\n").rstrip("\r")
                if line.strip():
                    seen = True
                    yield number, line
        if not seen:
            raise DataFormatError(path, "the file is empty", expected)

    return lines()


def _columns(given: Mapping[str, str] | None, names: tuple[str, ...]) -> dict[str, str]:
    """The file's column name for each canonical name (``given`` overrides the default names)."""
    given = dict(given or {})
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise ValueError(f"unknown column name(s) {unknown}; overridable: {', '.join(names)}")
    return {name: given.get(name, name) for name in names}


def read_tsv(
    path: str | Path, required: tuple[str, ...], expected: str
) -> tuple[list[str], Iterator[tuple[int, dict[str, str]]]]:
    """The header and the rows (line number, {column: value}) of a TSV file with a header row."""
    path = Path(path)
    lines = _lines(path, expected)
    _, header_line = next(lines)
    header = header_line.split("\t")
    if len(set(header)) != len(header):
        raise DataFormatError(path, f"the header row repeats a column name: {header}", expected, 1)
    missing = [c for c in required if c not in header]
    if missing:
        raise DataFormatError(
            path,
            f"the header row lacks the column(s) {', '.join(missing)} "
            f"(it has: {', '.join(header)})",
            expected,
            1,
        )

    def rows() -> Iterator[tuple[int, dict[str, str]]]:
        for number, line in lines:
            fields = line.split("\t")
            if len(fields) != len(header):
                raise DataFormatError(
                    path,
                    f"{len(fields)} tab-separated fields where the header has {len(header)}",
                    expected,
                    number,
                )
            yield number, dict(zip(header, fields, strict=True))

    return header, rows()


def _relevance(value: Any, path: Path, line: int | None, expected: str) -> int | None:
    """An integer grade from a cell or JSON value; None for an empty cell or null."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise DataFormatError(path, f"relevance {value!r} is not an integer grade", expected, line)
    if isinstance(value, int):
        return value
    try:
        return int(value.strip())
    except ValueError:
        raise DataFormatError(
            path, f"relevance {value!r} is not an integer grade", expected, line
        ) from None


def _injected_span(text: str, perturbed: str) -> tuple[str, tuple[int, int]] | None:
    """(variant, span of what ``perturbed`` adds to ``text``) by diffing the two texts."""
    if perturbed.startswith(text) and len(perturbed) > len(text):
        start, end, variant = len(text), len(perturbed), "append"
    elif perturbed.endswith(text) and len(perturbed) > len(text):
        start, end, variant = 0, len(perturbed) - len(text), "prepend"
    else:
        pre = 0
        while pre < min(len(text), len(perturbed)) and text[pre] == perturbed[pre]:
            pre += 1
        suf = 0
        limit = min(len(text), len(perturbed)) - pre
        while suf < limit and text[len(text) - 1 - suf] == perturbed[len(perturbed) - 1 - suf]:
            suf += 1
        start, end, variant = pre, len(perturbed) - suf, "insert"
    while start < end and perturbed[start].isspace():
        start += 1
    while end > start and perturbed[end - 1].isspace():
        end -= 1
    if start == end:
        return None
    return variant, (start, end)


def _declared(
    row: Mapping[str, str], path: Path, line: int, declared: tuple[str, str] | None
) -> tuple[str, str] | None:
    """The (AXIOM, variant) a row declares (its ``perturbation`` or ``axiom``/``variant``
    columns), else ``declared`` (the spec's); a row that disagrees with the spec is an error."""
    text = row.get("perturbation", "").strip()
    axiom = row.get("axiom", "").strip()
    variant = row.get("variant", "").strip()
    if text and axiom:
        raise DataFormatError(
            path,
            "the row declares its perturbation twice (perturbation and axiom columns)",
            PAIRS_FORMAT,
            line,
        )
    if not text and not axiom and variant:
        raise DataFormatError(
            path, f"the row names the variant {variant!r} but no axiom", PAIRS_FORMAT, line
        )
    if axiom:
        text = f"{axiom}/{variant}" if variant else axiom
    if not text:
        return declared
    try:
        own = parse_perturbation(text)
    except ValueError as err:
        raise DataFormatError(path, str(err), PAIRS_FORMAT, line) from None
    if declared is not None and (
        own[0] != declared[0] or (own[1] and declared[1] and own[1] != declared[1])
    ):
        raise DataFormatError(
            path,
            f"the row declares {'/'.join(filter(None, own))} but the data spec declares "
            f"{'/'.join(filter(None, declared))}",
            PAIRS_FORMAT,
            line,
        )
    return own if own[1] or declared is None else (own[0], declared[1])


def load_pairs_tsv(
    path: str | Path,
    *,
    perturbation: tuple[str, str] | None = None,
    name: str | None = None,
) -> PairSet:
    """Fixed perturbation pairs from a TSV with the columns of ``dl1920_tfc1_pairs.tsv``.

    Baseline = ``text``, perturbed = ``perturbed_text``; the injected span is what the perturbed
    text adds (found by diffing: appended → "append", prepended → "prepend", else "insert");
    ``term`` is that added text. ``score_delta`` is not kept.

    The pairs' axiom is what is declared: a row's ``perturbation`` (``AXIOM`` or
    ``AXIOM/VARIANT``) or ``axiom`` (and ``variant``) column, else ``perturbation`` (the
    caller's declaration, e.g. from the data spec; a row may not contradict it). Pairs nobody
    declared get the axiom :data:`~rankscope.tools.data.labels.UNLABELLED` ("unlabelled
    pairs"). A declaration without a variant takes the diffed one.
    """
    path = Path(path)
    _, rows = read_tsv(path, PAIRS_REQUIRED, PAIRS_FORMAT)
    pairs = []
    for number, row in rows:
        found = _injected_span(row["text"], row["perturbed_text"])
        if found is None:
            raise DataFormatError(path, "perturbed_text adds nothing to text", PAIRS_FORMAT, number)
        diffed, span = found
        axiom, variant = _declared(row, path, number, perturbation) or (UNLABELLED, "")
        pairs.append(
            Pair(
                qid=row["qid"],
                docno=row["docno"],
                query=row["query"],
                baseline=row["text"],
                perturbed=row["perturbed_text"],
                axiom=axiom,
                variant=variant or diffed,
                relevance=_relevance(row.get("relevance"), path, number, PAIRS_FORMAT),
                injected=(span,),
                term=row["perturbed_text"][span[0] : span[1]],
            )
        )
    if not pairs:
        raise DataFormatError(path, "the file has a header row but no pairs", PAIRS_FORMAT)
    return PairSet(name or path.stem, tuple(pairs))


def load_tfc1_pairs(path: str | Path, *, axiom: str = "TFC1", name: str | None = None) -> PairSet:
    """Pairs of a file its caller knows to hold ``axiom`` pairs (default TFC1, as
    ``dl1920_tfc1_pairs.tsv``): :func:`load_pairs_tsv` with that declaration."""
    return load_pairs_tsv(path, perturbation=parse_perturbation(axiom), name=name)


def load_queries_tsv(path: str | Path) -> tuple[dict[str, str], dict[str, str]]:
    """(queries, selected terms) from a TSV like ``tfc1_queries.tsv``."""
    path = Path(path)
    header, rows = read_tsv(path, ("qid", "query"), QUERIES_FORMAT)
    queries: dict[str, str] = {}
    terms: dict[str, str] = {}
    for number, row in rows:
        qid = row["qid"]
        if qid in queries and queries[qid] != row["query"]:
            raise DataFormatError(
                path, f"query {qid} appears twice, differently", QUERIES_FORMAT, number
            )
        queries[qid] = row["query"]
        term = row.get("selected_term", "").strip()
        if term:
            terms[qid] = term
    if not queries:
        raise DataFormatError(path, "the file has a header row but no queries", QUERIES_FORMAT)
    return queries, terms


def load_tfc1_corpus(
    corpus_path: str | Path, queries_path: str | Path | None = None, *, name: str | None = None
) -> Collection:
    """A collection from ``tfc1_baseline_corpus.json`` and its ``tfc1_queries.tsv``.

    The queries file defaults to ``tfc1_queries.tsv`` beside the corpus. Each text loses its
    leading filler ``"a "`` (texts without it are kept as they are); titles are not used. The
    candidates of a query are its passages in file order; selected terms come from the queries
    file; there are no qrels.
    """
    corpus_path = Path(corpus_path)
    queries_path = Path(queries_path) if queries_path else corpus_path.parent / "tfc1_queries.tsv"
    raw = _read_text(corpus_path, CORPUS_FORMAT, MAX_JSON_BYTES)
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as err:
        raise DataFormatError(
            corpus_path, f"the file is not valid JSON ({err.msg})", CORPUS_FORMAT, err.lineno
        ) from err
    corpus = data.get("corpus") if isinstance(data, dict) else None
    if not isinstance(corpus, dict):
        raise DataFormatError(corpus_path, 'no "corpus" object at the top level', CORPUS_FORMAT)
    queries, terms = load_queries_tsv(queries_path)
    docs: dict[str, str] = {}
    candidates: dict[str, list[str]] = {}
    for qid, passages in corpus.items():
        if not isinstance(passages, dict):
            raise DataFormatError(
                corpus_path, f"corpus[{qid!r}] is not an object of passages", CORPUS_FORMAT
            )
        for docno, entry in passages.items():
            text = entry.get("text") if isinstance(entry, dict) else None
            if not isinstance(text, str):
                raise DataFormatError(
                    corpus_path, f'corpus[{qid!r}][{docno!r}] has no string "text"', CORPUS_FORMAT
                )
            text = text[len(LEADING_FILLER) :] if text.startswith(LEADING_FILLER) else text
            if docs.get(docno, text) != text:
                raise DataFormatError(
                    corpus_path, f"passage {docno} has two different texts", CORPUS_FORMAT
                )
            docs[docno] = text
            candidates.setdefault(str(qid), []).append(str(docno))
    missing = sorted(set(candidates) - set(queries))
    if missing:
        raise DataFormatError(
            queries_path,
            f"{len(missing)} query id(s) of {corpus_path.name} have no query text here "
            f"(first: {missing[0]})",
            QUERIES_FORMAT,
        )
    return Collection(
        name=name or corpus_path.stem,
        queries={q: queries[q] for q in candidates},
        docs=docs,
        candidates=candidates,
        selected_terms={q: t for q, t in terms.items() if q in candidates},
    )


@dataclass
class _CollectionBuilder:
    """Accumulates (query, passage) rows into a Collection, checking that they agree."""

    path: Path
    expected: str
    queries: dict[str, str] = field(default_factory=dict)
    docs: dict[str, str] = field(default_factory=dict)
    qrels: dict[str, dict[str, int]] = field(default_factory=dict)
    candidates: dict[str, list[str]] = field(default_factory=dict)
    selected: dict[str, str] = field(default_factory=dict)

    def add(
        self,
        line: int,
        qid: str,
        query: str,
        docno: str,
        text: str,
        relevance: int | None,
        selected_term: str = "",
    ) -> None:
        if not qid or not docno:
            raise DataFormatError(self.path, "an empty qid or docno", self.expected, line)
        if self.queries.get(qid, query) != query:
            raise DataFormatError(
                self.path, f"query {qid} has another text on an earlier line", self.expected, line
            )
        if self.docs.get(docno, text) != text:
            raise DataFormatError(
                self.path,
                f"passage {docno} has another text on an earlier line",
                self.expected,
                line,
            )
        self.queries[qid] = query
        self.docs[docno] = text
        cands = self.candidates.setdefault(qid, [])
        if docno not in cands:
            cands.append(docno)
        if relevance is not None:
            self.qrels.setdefault(qid, {})[docno] = relevance
        if selected_term:
            self.selected[qid] = selected_term

    def build(self, name: str) -> Collection:
        if not self.queries:
            raise DataFormatError(self.path, "the file holds no rows", self.expected)
        return Collection(
            name=name,
            queries=self.queries,
            docs=self.docs,
            qrels=self.qrels,
            candidates=self.candidates,
            selected_terms=self.selected,
        )


def load_tsv_collection(
    path: str | Path, *, columns: Mapping[str, str] | None = None, name: str | None = None
) -> Collection:
    """A collection from a TSV of (query, passage) rows with a header row.

    Columns (names overridable with ``columns``, e.g. ``{"docno": "pid"}``): qid, query, docno,
    text; optional relevance (integer grade; empty = unjudged) and selected_term. A query's
    candidates are its passages in file order; qrels hold the rows with a relevance.
    """
    path = Path(path)
    cols = _columns(columns, COLLECTION_COLUMNS + COLLECTION_OPTIONAL)
    expected = TSV_FORMAT.format(
        cols=", ".join(cols[c] for c in COLLECTION_COLUMNS),
        opt=", ".join(cols[c] for c in COLLECTION_OPTIONAL),
    )
    _, rows = read_tsv(path, tuple(cols[c] for c in COLLECTION_COLUMNS), expected)
    builder = _CollectionBuilder(path, expected)
    for number, row in rows:
        builder.add(
            number,
            row[cols["qid"]],
            row[cols["query"]],
            row[cols["docno"]],
            row[cols["text"]],
            _relevance(row.get(cols["relevance"]), path, number, expected),
            row.get(cols["selected_term"], "").strip(),
        )
    return builder.build(name or path.stem)


def load_jsonl_collection(
    path: str | Path, *, columns: Mapping[str, str] | None = None, name: str | None = None
) -> Collection:
    """A collection from a JSONL file of (query, passage) objects.

    Keys as for :func:`load_tsv_collection` (overridable with ``columns``); ids may be strings or
    integers; relevance an integer, a string of one, or null.
    """
    path = Path(path)
    cols = _columns(columns, COLLECTION_COLUMNS + COLLECTION_OPTIONAL)
    expected = JSONL_FORMAT.format(
        cols=", ".join(cols[c] for c in COLLECTION_COLUMNS),
        opt=", ".join(cols[c] for c in COLLECTION_OPTIONAL),
    )
    builder = _CollectionBuilder(path, expected)
    for number, line in _lines(path, expected):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataFormatError(
                path, f"the line is not valid JSON ({err.msg})", expected, number
            ) from err
        if not isinstance(obj, dict):
            raise DataFormatError(
                path, f"the line holds a JSON {type(obj).__name__}, not an object", expected, number
            )
        missing = [cols[c] for c in COLLECTION_COLUMNS if cols[c] not in obj]
        if missing:
            raise DataFormatError(
                path, f"the object lacks the key(s) {', '.join(missing)}", expected, number
            )
        values = {}
        for c in ("qid", "docno", "query", "text", "selected_term"):
            value = obj.get(cols[c], "")
            if c in ("qid", "docno") and isinstance(value, int) and not isinstance(value, bool):
                value = str(value)
            if not isinstance(value, str):
                raise DataFormatError(
                    path, f"{cols[c]} is {value!r}, not a string", expected, number
                )
            values[c] = value
        builder.add(
            number,
            values["qid"],
            values["query"],
            values["docno"],
            values["text"],
            _relevance(obj.get(cols["relevance"]), path, number, expected),
            values["selected_term"].strip(),
        )
    return builder.build(name or path.stem)


def _default_text(record: Any) -> str:
    if hasattr(record, "default_text"):
        return str(record.default_text())
    return str(getattr(record, "text", ""))


def load_irds_collection(
    dataset_id: str,
    *,
    max_queries: int | None = None,
    max_candidates: int = 100,
    name: str | None = None,
) -> Collection:
    """A collection from an ``ir_datasets`` id (needs the optional extra ``rankscope[irds]``).

    Queries and qrels come from the dataset; a query's candidates are its top ``max_candidates``
    scored documents when the dataset has them, else its judged documents. ``max_queries`` keeps
    the first queries (in id order) that have candidates. Nothing is downloaded unless ir_datasets
    already has the data or can fetch it; offline, an uncached id raises DataUnavailableError.
    """
    try:
        import ir_datasets
    except ImportError as err:
        raise DataUnavailableError(
            f"reading the ir_datasets id {dataset_id!r} needs the optional package ir_datasets: "
            "pip install 'rankscope[irds]'"
        ) from err
    try:
        dataset = ir_datasets.load(dataset_id)
    except KeyError as err:
        raise DataSpecError(f"ir_datasets knows no dataset id {dataset_id!r}") from err
    try:
        queries = {str(q.query_id): _default_text(q) for q in dataset.queries_iter()}
        qrels: dict[str, dict[str, int]] = {}
        if dataset.has_qrels():
            for r in dataset.qrels_iter():
                qrels.setdefault(str(r.query_id), {})[str(r.doc_id)] = int(r.relevance)
        candidates: dict[str, list[str]] = {}
        if dataset.has_scoreddocs():
            scored: dict[str, list[tuple[float, str]]] = {}
            for s in dataset.scoreddocs_iter():
                scored.setdefault(str(s.query_id), []).append((-float(s.score), str(s.doc_id)))
            for qid, rows in scored.items():
                candidates[qid] = [d for _, d in sorted(rows)[:max_candidates]]
        else:
            candidates = {q: sorted(judged)[:max_candidates] for q, judged in qrels.items()}
        kept = sorted(q for q in candidates if q in queries and candidates[q])
        if max_queries is not None:
            kept = kept[:max_queries]
        wanted = sorted({d for q in kept for d in candidates[q]})
        store = dataset.docs_store()
        docs = {str(d.doc_id): _default_text(d) for d in store.get_many_iter(wanted)}
    except Exception as err:
        raise DataUnavailableError(
            f"could not fetch the ir_datasets id {dataset_id!r} ({type(err).__name__}: {err}); "
            "offline, only data ir_datasets has already downloaded can be read: pass a local "
            "file instead (a TSV/JSONL collection or a pairs TSV, see `--data`)"
        ) from err
    kept = [q for q in kept if any(d in docs for d in candidates[q])]
    if not kept:
        raise DataUnavailableError(f"the ir_datasets id {dataset_id!r} gave no query with passages")
    return Collection(
        name=name or f"irds:{dataset_id}",
        queries={q: queries[q] for q in kept},
        docs=docs,
        qrels={q: qrels[q] for q in kept if q in qrels},
        candidates={q: [d for d in candidates[q] if d in docs] for q in kept},
    )
