"""Loaders: the real shared TFC1 files, generic TSV/JSONL collections, ir_datasets, bad files."""

from __future__ import annotations

import json
import sys
import types
from collections import Counter
from pathlib import Path

import pytest

from rankscope.tools.data.errors import DataFormatError, DataSpecError, DataUnavailableError
from rankscope.tools.data.loaders import (
    load_irds_collection,
    load_jsonl_collection,
    load_queries_tsv,
    load_tfc1_corpus,
    load_tfc1_pairs,
    load_tsv_collection,
)

PAIRS_HEADER = "qid\tdocno\tscore_delta\ttext\tperturbed_text\tquery\trelevance"


def test_shared_pairs_file(shared_data: Path) -> None:
    pairs = load_tfc1_pairs(shared_data / "dl1920_tfc1_pairs.tsv")
    assert len(pairs) == 4000
    assert Counter(p.relevance for p in pairs) == {0: 1000, 1: 1000, 2: 1000, 3: 1000}
    assert len(pairs.qids()) == 97
    for pair in pairs:
        assert (pair.axiom, pair.variant) == ("TFC1", "append")
        ((start, end),) = pair.injected
        assert pair.perturbed[start:end] == pair.term and end == len(pair.perturbed)
        assert pair.perturbed == pair.baseline + " " + pair.term
    first = pairs.pairs[0]
    assert (first.qid, first.docno, first.query, first.term) == (
        "768208",
        "3186011",
        "what is mamey",
        "mamey",
    )


def test_shared_corpus_and_queries(shared_data: Path) -> None:
    collection = load_tfc1_corpus(shared_data / "tfc1_baseline_corpus.json")
    assert len(collection.queries) == 100
    assert {len(c) for c in collection.candidates.values()} == {100}
    assert len(collection.docs) == 9943  # passages shared between queries appear once
    assert collection.qrels == {}
    assert len(collection.selected_terms) == 100
    assert collection.selected_terms["1101090"] == "azadpour"
    assert collection.queries["1101090"] == "dr azadpour phone number"
    # The leading filler "a " is stripped.
    assert collection.docs["8123117"].startswith("Dr. Kristin E Berry")
    raw = json.loads((shared_data / "tfc1_baseline_corpus.json").read_text(encoding="utf-8"))
    for qid, passages in raw["corpus"].items():
        for docno, entry in passages.items():
            assert "a " + collection.docs[docno] == entry["text"]
        assert collection.candidates[qid] == list(passages)
    queries, terms = load_queries_tsv(shared_data / "tfc1_queries.tsv")
    assert len(queries) == len(terms) == 100


def test_generic_tsv_collection(tmp_path: Path) -> None:
    path = tmp_path / "c.tsv"
    path.write_text(
        "qid\tquery\tdocno\ttext\trelevance\n"
        "1\tbees honey\td1\tBees make honey.\t2\n"
        "1\tbees honey\td2\tWasps do not.\t\n"
        "2\tice floats\td2\tWasps do not.\t0\n",
        encoding="utf-8",
    )
    c = load_tsv_collection(path)
    assert c.name == "c"
    assert c.queries == {"1": "bees honey", "2": "ice floats"}
    assert c.candidates == {"1": ["d1", "d2"], "2": ["d2"]}
    assert c.qrels == {"1": {"d1": 2}, "2": {"d2": 0}}
    renamed = tmp_path / "r.tsv"
    renamed.write_text("query_id\tq\tpid\tpassage\n7\tx y\tp\tSome text.\n", encoding="utf-8")
    r = load_tsv_collection(
        renamed, columns={"qid": "query_id", "query": "q", "docno": "pid", "text": "passage"}
    )
    assert r.docs == {"p": "Some text."} and r.queries == {"7": "x y"} and r.qrels == {}


def test_generic_jsonl_collection(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    rows = [
        {
            "qid": 1,
            "query": "bees honey",
            "docno": "d1",
            "text": "Bees make honey.",
            "relevance": 3,
        },
        {"qid": 1, "query": "bees honey", "docno": "d2", "text": "Wasps.", "relevance": "1"},
        {"qid": "2", "query": "ice", "docno": "d3", "text": "Ice.", "relevance": None},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    c = load_jsonl_collection(path, name="mine")
    assert c.name == "mine" and c.qrels == {"1": {"d1": 3, "d2": 1}}
    assert c.candidates == {"1": ["d1", "d2"], "2": ["d3"]}
    other = tmp_path / "o.jsonl"
    other.write_text(json.dumps({"id": "q", "query": "a", "docno": "d", "body": "t"}) + "\n")
    c2 = load_jsonl_collection(other, columns={"qid": "id", "text": "body"})
    assert c2.docs == {"d": "t"}


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def check(
    err: pytest.ExceptionInfo[DataFormatError], path: Path, line: int | None, what: str
) -> None:
    message = str(err.value)
    assert str(path) in message
    assert what in message
    assert "Expected:" in message
    assert err.value.line == line
    if line is not None:
        assert f"line {line}" in message


def test_malformed_pairs_files(tmp_path: Path) -> None:
    row = "1\td\t0.5\tSome text.\tSome text. term\tq term\t{rel}"
    cases = [
        ("missing.tsv", None, None, "does not exist"),
        ("empty.tsv", "\n\n", None, "the file is empty"),
        (
            "column.tsv",
            "qid\tdocno\ttext\tquery\n1\td\tt\tq\n",
            1,
            "lacks the column(s) perturbed_text",
        ),
        (
            "fields.tsv",
            f"{PAIRS_HEADER}\n{row.format(rel=1)}\n1\td\tonly three\n",
            3,
            "3 tab-separated fields",
        ),
        (
            "relevance.tsv",
            f"{PAIRS_HEADER}\n{row.format(rel='high')}\n",
            2,
            "relevance 'high' is not an integer",
        ),
        ("same.tsv", f"{PAIRS_HEADER}\n1\td\t0\tSame.\tSame.\tq\t1\n", 2, "adds nothing"),
        ("header_only.tsv", f"{PAIRS_HEADER}\n", None, "no pairs"),
    ]
    for name, content, line, what in cases:
        path = tmp_path / name
        if content is not None:
            write(path, content)
        with pytest.raises(DataFormatError) as err:
            load_tfc1_pairs(path)
        check(err, path, line, what)
        assert "perturbed_text" in str(err.value)  # the expected format names the columns


def test_malformed_corpus_files(tmp_path: Path) -> None:
    queries = write(
        tmp_path / "tfc1_queries.tsv", "qid\tquery\tselected_term\n1\tbees honey\thoney\n"
    )
    bad_json = write(tmp_path / "bad.json", '{"corpus": {"1": \n {"d1": {"text": "a x",}}}}')
    with pytest.raises(DataFormatError) as err:
        load_tfc1_corpus(bad_json)
    check(err, bad_json, 2, "not valid JSON")
    no_corpus = write(tmp_path / "nocorpus.json", '{"passages": {}}')
    with pytest.raises(DataFormatError, match='no "corpus" object'):
        load_tfc1_corpus(no_corpus)
    no_text = write(tmp_path / "notext.json", '{"corpus": {"1": {"d1": {"title": ""}}}}')
    with pytest.raises(DataFormatError, match=r"corpus\['1'\]\['d1'\] has no string \"text\""):
        load_tfc1_corpus(no_text)
    unknown_query = write(tmp_path / "unknown.json", '{"corpus": {"9": {"d1": {"text": "a x"}}}}')
    with pytest.raises(DataFormatError) as err:
        load_tfc1_corpus(unknown_query, queries)
    check(err, queries, None, "have no query text here (first: 9)")
    good = write(tmp_path / "good.json", '{"corpus": {"1": {"d1": {"text": "a Bees."}}}}')
    assert load_tfc1_corpus(good).docs == {"d1": "Bees."}
    with pytest.raises(DataFormatError) as err:
        load_tfc1_corpus(good, tmp_path / "nowhere.tsv")
    check(err, tmp_path / "nowhere.tsv", None, "does not exist")


def test_malformed_collection_files(tmp_path: Path) -> None:
    header = "qid\tquery\tdocno\ttext\trelevance\n"
    tsv_cases = [
        ("column.tsv", "qid\tquery\ttext\n1\tq\tt\n", 1, "lacks the column(s) docno"),
        ("fields.tsv", header + "1\tq\td\tt\t1\textra\n", 2, "6 tab-separated fields"),
        ("relevance.tsv", header + "1\tq\td\tt\t0\n1\tq\te\tt\t2.5\n", 3, "relevance '2.5'"),
        (
            "conflict.tsv",
            header + "1\tq\td\tt\t0\n1\tother\te\tu\t1\n",
            3,
            "query 1 has another text",
        ),
        ("empty.tsv", "", None, "the file is empty"),
    ]
    for name, content, line, what in tsv_cases:
        path = write(tmp_path / name, content)
        with pytest.raises(DataFormatError) as err:
            load_tsv_collection(path)
        check(err, path, line, what)
        assert "qid, query, docno, text" in str(err.value)
    good = '{"qid": "1", "query": "q", "docno": "d", "text": "t"}'
    jsonl_cases = [
        ("json.jsonl", good + "\n{not json}\n", 2, "not valid JSON"),
        ("array.jsonl", "[1, 2]\n", 1, "a JSON list, not an object"),
        (
            "key.jsonl",
            good + '\n{"qid": "1", "query": "q", "text": "t"}\n',
            2,
            "lacks the key(s) docno",
        ),
        (
            "relevance.jsonl",
            '{"qid": "1", "query": "q", "docno": "d", "text": "t", "relevance": "x"}',
            1,
            "relevance 'x'",
        ),
        (
            "bool.jsonl",
            '{"qid": "1", "query": "q", "docno": "d", "text": "t", "relevance": true}',
            1,
            "relevance True",
        ),
        (
            "type.jsonl",
            '{"qid": "1", "query": 5, "docno": "d", "text": "t"}',
            1,
            "query is 5, not a string",
        ),
        ("empty.jsonl", "\n", None, "the file is empty"),
    ]
    for name, content, line, what in jsonl_cases:
        path = write(tmp_path / name, content)
        with pytest.raises(DataFormatError) as err:
            load_jsonl_collection(path)
        check(err, path, line, what)
    with pytest.raises(DataFormatError) as err:
        load_jsonl_collection(tmp_path / "absent.jsonl")
    check(err, tmp_path / "absent.jsonl", None, "does not exist")
    with pytest.raises(ValueError, match="unknown column name"):
        load_tsv_collection(tmp_path / "fields.tsv", columns={"passage": "text"})


def test_irds_without_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ir_datasets", None)
    with pytest.raises(DataUnavailableError, match=r"pip install 'rankscope\[irds\]'"):
        load_irds_collection("msmarco-passage/trec-dl-2019")


def test_irds_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    class Offline:
        def queries_iter(self) -> None:
            raise ConnectionError("no network")

    def load(dataset_id: str) -> Offline:
        if dataset_id == "nope":
            raise KeyError(dataset_id)
        return Offline()

    monkeypatch.setitem(sys.modules, "ir_datasets", types.SimpleNamespace(load=load))
    with pytest.raises(DataUnavailableError) as err:
        load_irds_collection("msmarco-passage/trec-dl-2019")
    message = str(err.value)
    assert "could not fetch the ir_datasets id 'msmarco-passage/trec-dl-2019'" in message
    assert "offline" in message and "pass a local file" in message
    with pytest.raises(DataSpecError, match="knows no dataset id 'nope'"):
        load_irds_collection("nope")


def test_irds_with_a_cached_dataset(monkeypatch: pytest.MonkeyPatch) -> None:
    """The reading logic, against a stand-in for a dataset ir_datasets already has."""
    from collections import namedtuple

    Query = namedtuple("Query", "query_id text")
    Qrel = namedtuple("Qrel", "query_id doc_id relevance iteration")
    Doc = namedtuple("Doc", "doc_id text")

    class Dataset:
        def queries_iter(self) -> list:
            return [Query("1", "bees honey"), Query("2", "ice")]

        def has_qrels(self) -> bool:
            return True

        def qrels_iter(self) -> list:
            return [Qrel("1", "d2", 2, "0"), Qrel("1", "d1", 0, "0"), Qrel("2", "d3", 1, "0")]

        def has_scoreddocs(self) -> bool:
            return False

        def docs_store(self) -> Dataset:
            return self

        def get_many_iter(self, ids: list[str]) -> list:
            return [Doc(i, f"text of {i}") for i in ids]

    fake = types.SimpleNamespace(load=lambda dataset_id: Dataset())
    monkeypatch.setitem(sys.modules, "ir_datasets", fake)
    c = load_irds_collection("fake/set", max_queries=1)
    assert c.name == "irds:fake/set"
    assert c.queries == {"1": "bees honey"}
    assert c.candidates == {"1": ["d1", "d2"]}
    assert c.qrels == {"1": {"d2": 2, "d1": 0}}
    assert c.docs == {"d1": "text of d1", "d2": "text of d2"}
