"""RankScope's built-in collection: the offline default dataset, written for the project.

``builtin_collection.json`` (package data) holds 28 queries on varied topics (health, science,
history, technology, cooking, law, sport, geography, environment, astronomy, finance, biology,
art, language, agriculture, chemistry, transport, computing, medicine), each with 8 candidate
passages of 40–70 words graded 0–3 (TREC DL scale: 3 perfectly relevant, 2 highly relevant,
1 related, 0 not relevant) — two or three highly relevant, two partially relevant, two topical
but not relevant (often sharing a query word in another sense), and one off-topic passage of
another query — plus the query term chosen for TFC1 injection.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Any

from rankscope.tools.data.errors import DataFormatError
from rankscope.tools.data.text import words
from rankscope.tools.data.types import Collection

BUILTIN_FILE = "builtin_collection.json"
BUILTIN_FORMAT = (
    '{"name": str, "queries": [{"qid", "query", "selected_term", "candidates": '
    '[{"docno", "relevance": 0-3}]}], "docs": {docno: text}}'
)


def builtin_path() -> str:
    """Where the built-in collection's JSON file lies (inside the installed package)."""
    return str(resources.files("rankscope.tools.data").joinpath(BUILTIN_FILE))


def collection_from_json(data: Any, source: str = BUILTIN_FILE) -> Collection:
    """A collection from the built-in JSON layout, checked (see ``BUILTIN_FORMAT``)."""

    def fail(problem: str) -> DataFormatError:
        return DataFormatError(source, problem, BUILTIN_FORMAT)

    if not isinstance(data, dict) or not isinstance(data.get("docs"), dict):
        raise fail('no "docs" object at the top level')
    if not isinstance(data.get("queries"), list) or not data["queries"]:
        raise fail('no "queries" list at the top level')
    docs = {str(k): str(v) for k, v in data["docs"].items()}
    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    candidates: dict[str, list[str]] = {}
    selected: dict[str, str] = {}
    for entry in data["queries"]:
        qid, query = str(entry.get("qid", "")), entry.get("query")
        if not qid or not isinstance(query, str) or qid in queries:
            raise fail(f"query entry {entry.get('qid')!r} lacks a query text or repeats a qid")
        queries[qid] = query
        term = entry.get("selected_term")
        if term:
            if term not in words(query):
                raise fail(f"selected term {term!r} of {qid} is not a word of its query")
            selected[qid] = term
        candidates[qid] = []
        qrels[qid] = {}
        for cand in entry.get("candidates", []):
            docno, grade = str(cand.get("docno")), cand.get("relevance")
            if docno not in docs:
                raise fail(f"candidate {docno!r} of {qid} has no text in docs")
            if not isinstance(grade, int) or isinstance(grade, bool) or not 0 <= grade <= 3:
                raise fail(f"candidate {docno!r} of {qid} has relevance {grade!r}, not 0-3")
            candidates[qid].append(docno)
            qrels[qid][docno] = grade
    return Collection(
        name=str(data.get("name", "builtin")),
        queries=queries,
        docs=docs,
        qrels=qrels,
        candidates=candidates,
        selected_terms=selected,
    )


@lru_cache(maxsize=1)
def load_builtin() -> Collection:
    """The built-in collection (read once per process; treat it as read-only)."""
    text = resources.files("rankscope.tools.data").joinpath(BUILTIN_FILE).read_text("utf-8")
    return collection_from_json(json.loads(text))
