"""The built-in collection: its shape, its grades, and pairs for every axiom from it."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from rankscope.tools.data.axioms import build_pairs, registered
from rankscope.tools.data.builtin import builtin_path, collection_from_json, load_builtin
from rankscope.tools.data.errors import DataFormatError
from rankscope.tools.data.text import STOPWORDS, sentences, words


def test_shape_and_grades() -> None:
    c = load_builtin()
    assert 24 <= len(c.queries) <= 30
    assert len(c.docs) >= 7 * len(c.queries)
    for qid, query in c.queries.items():
        candidates = c.candidates_of(qid)
        assert len(candidates) == 8 and len(set(candidates)) == 8
        grades = Counter(c.relevance(qid, d) for d in candidates)
        assert 2 <= grades[3] + grades[2] <= 3, qid
        assert grades[1] >= 1 and grades[0] >= 2, qid
        assert c.selected_terms[qid] in words(query)
        assert c.selected_terms[qid] not in STOPWORDS
        # The selected term occurs in most highly relevant passages.
        best = [d for d in candidates if (c.relevance(qid, d) or 0) >= 2]
        with_term = [d for d in best if c.selected_terms[qid] in words(c.docs[d])]
        assert len(with_term) >= len(best) - 1 >= 1, qid
    for docno, text in c.docs.items():
        assert 40 <= len(text.split()) <= 90, docno
        assert len(sentences(text)) >= 2, docno
        assert any(w in STOPWORDS for w in words(text))
    inner = [t for t in c.docs.values() if any(p in t for p in ",;:()")]
    assert len(inner) >= 0.8 * len(c.docs)
    assert c.content_hash() == load_builtin().content_hash()


def test_every_axiom_yields_pairs_for_every_query() -> None:
    c = load_builtin()
    for axiom, variant in registered():
        pairs = build_pairs(c, axiom, variant)
        covered = set(pairs.qids())
        assert covered == set(c.queries), (axiom, variant, set(c.queries) - covered)
        per_doc = 10 if axiom == "TFC2" else 1
        assert len(pairs) >= 0.9 * per_doc * sum(len(c.candidates_of(q)) for q in c.queries)


def test_file_is_package_data_and_validated() -> None:
    data = json.loads(Path(builtin_path()).read_text(encoding="utf-8"))
    assert data["name"] == load_builtin().name
    broken = json.loads(json.dumps(data))
    broken["queries"][0]["candidates"][0]["relevance"] = 5
    with pytest.raises(DataFormatError, match="not 0-3"):
        collection_from_json(broken)
    broken = json.loads(json.dumps(data))
    broken["queries"][0]["selected_term"] = "zebra"
    with pytest.raises(DataFormatError, match="not a word of its query"):
        collection_from_json(broken)
    broken = json.loads(json.dumps(data))
    del broken["docs"][broken["queries"][0]["candidates"][0]["docno"]]
    with pytest.raises(DataFormatError, match="has no text in docs"):
        collection_from_json(broken)
