"""Construction of each axiomatic perturbation, on a tiny hand-checked collection and builtin."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import pytest

from rankscope.tools.data.axioms import (
    STOPWORDS,
    CollectionStats,
    build_pairs,
    check_perturbation,
    default_variant,
    get_perturbation,
    perturb,
    registered,
)
from rankscope.tools.data.builtin import load_builtin
from rankscope.tools.data.errors import DataError, UnknownPerturbationError
from rankscope.tools.data.text import count_term, is_punctuation, sentences, words
from rankscope.tools.data.types import Collection, Pair

DOCS = {
    "d1": "Apple pie with a flaky crust is a classic dessert. Serve it warm with cream.",
    "d2": "An apple a day keeps the doctor away. Fresh fruit is good for you.",
    "d3": "This apple recipe uses cinnamon and a buttery crust. Bake it for forty minutes.",
    "d4": "A recipe card lists the ingredients first. Read the whole recipe before you start.",
    "d5": "Trains run on steel rails across the country. The station opens early every morning.",
    "d6": "The museum opens at nine. Tickets for the gallery are sold at the station kiosk.",
}
QUERY = "apple pie recipe"


def tiny(selected: dict[str, str] | None = None) -> Collection:
    return Collection(
        name="tiny",
        queries={"q1": QUERY, "q2": "train station hours"},
        docs=DOCS,
        qrels={"q1": {"d1": 3, "d2": 1, "d3": 2, "d4": 0}, "q2": {"d5": 1, "d6": 2}},
        candidates={"q1": ["d1", "d2", "d3", "d4"], "q2": ["d5", "d6"]},
        selected_terms=selected or {},
    )


def one(collection: Collection, axiom: str, variant: str, docno: str = "d2", **kw: Any) -> Pair:
    pairs = build_pairs(collection, axiom, variant, items=[("q1", docno)], **kw)
    assert len(pairs) == 1
    return pairs.pairs[0]


def injected_text(pair: Pair) -> list[str]:
    return [pair.perturbed[s:e] for s, e in pair.injected]


def test_registry_names() -> None:
    assert registered() == [
        ("TFC1", "append"),
        ("TFC1", "prepend"),
        ("TFC1", "replace"),
        ("TFC2", "append"),
        ("TDC", "append"),
        ("STMC1", "append"),
        ("LNC1", "append"),
        ("LNC2", "repeat"),
        ("ABNIRML", "shuffle_words"),
        ("ABNIRML", "shuffle_sentences"),
        ("ABNIRML", "reverse_words"),
        ("ABNIRML", "delete_stopwords"),
        ("ABNIRML", "delete_punctuation"),
        ("ABNIRML", "typos"),
    ]
    assert default_variant("tfc1") == "append"
    assert check_perturbation("abnirml", "TYPOS") == ("ABNIRML", "typos")
    assert callable(get_perturbation("LNC2"))
    with pytest.raises(UnknownPerturbationError, match="known: TFC1/append"):
        get_perturbation("TFC9")
    with pytest.raises(UnknownPerturbationError, match="variant 'sideways'"):
        check_perturbation("TFC1", "sideways")
    with pytest.raises(DataError, match=r"unknown option\(s\) \['copies'\] for TFC2/append"):
        check_perturbation("TFC2", options={"copies": 3})


def test_idf_and_selected_term_by_hand() -> None:
    stats = CollectionStats(tiny())
    n = 6
    for term, df in (("apple", 3), ("recipe", 2), ("pie", 1), ("nowhere", 0)):
        assert stats.idf(term) == pytest.approx(math.log((n - df + 0.5) / (df + 0.5) + 1))
    assert stats.query_terms("what is the apple pie") == ["apple", "pie"]
    assert stats.query_terms("what is it") == ["what", "is", "it"]
    assert stats.selected_term("q1", QUERY) == "pie"  # highest IDF
    assert CollectionStats(tiny({"q1": "apple"})).selected_term("q1", QUERY) == "apple"


def test_tfc1_append_uses_selected_term_else_highest_idf() -> None:
    pair = one(tiny(), "TFC1", "append")
    assert pair.baseline == DOCS["d2"]
    assert pair.perturbed == DOCS["d2"] + " pie"
    assert injected_text(pair) == ["pie"] and pair.term == "pie"
    assert pair.relevance == 1 and (pair.qid, pair.docno, pair.query) == ("q1", "d2", QUERY)
    chosen = one(tiny({"q1": "apple"}), "TFC1", "append")
    assert chosen.perturbed == DOCS["d2"] + " apple" and injected_text(chosen) == ["apple"]
    assert count_term(chosen.perturbed, "apple") == count_term(chosen.baseline, "apple") + 1


def test_tfc1_prepend_and_replace() -> None:
    pre = one(tiny(), "TFC1", "prepend")
    assert pre.perturbed == "pie " + DOCS["d2"] and pre.injected == ((0, 3),)
    rep = one(tiny(), "TFC1", "replace", seed=4)
    before, after = rep.baseline.split(), rep.perturbed.split()
    assert len(before) == len(after)
    changed = [(b, a) for b, a in zip(before, after, strict=True) if b != a]
    assert len(changed) == 1 and changed[0][1].startswith("pie")
    replaced = words(changed[0][0])[0]
    assert replaced not in STOPWORDS and replaced not in QUERY.split()
    assert injected_text(rep) == ["pie"]
    assert count_term(rep.perturbed, "pie") == count_term(rep.baseline, "pie") + 1
    assert one(tiny(), "TFC1", "replace", seed=4) == rep


def test_tfc2_saturation_series() -> None:
    pairs = build_pairs(tiny(), "TFC2", items=[("q1", "d3")]).pairs
    assert [p.level for p in pairs] == list(range(1, 11))
    for p in pairs:
        assert p.baseline == DOCS["d3"]
        assert count_term(p.perturbed, "pie") - count_term(p.baseline, "pie") == p.level
        assert injected_text(p) == ["pie"] * p.level
        assert p.perturbed == DOCS["d3"] + " pie" * p.level
    short = build_pairs(tiny(), "TFC2", items=[("q1", "d3")], options={"max_copies": 3})
    assert [p.level for p in short] == [1, 2, 3]


def test_tdc_appends_highest_idf_term_against_lowest() -> None:
    pair = one(tiny(), "TDC", "append")
    # idf(pie) = ln(5.5/1.5 + 1) > idf(recipe) = ln(4.5/2.5 + 1) > idf(apple) = ln(3.5/3.5 + 1)
    assert pair.perturbed == DOCS["d2"] + " pie" and pair.term == "pie"
    assert pair.baseline == DOCS["d2"] + " apple"
    assert injected_text(pair) == ["pie"]
    one_term = Collection("t", {"q1": "apple"}, DOCS, candidates={"q1": ["d1"]})
    assert len(build_pairs(one_term, "TDC")) == 0


def test_stmc1_related_term_from_cooccurrence_and_from_a_list() -> None:
    pair = one(tiny(), "STMC1", "append")
    # 'crust' is the only content word in two documents with a query term (d1, d3).
    assert pair.perturbed == DOCS["d2"] + " crust" and injected_text(pair) == ["crust"]
    unrelated = pair.baseline.rsplit(" ", 1)[1]
    stats = CollectionStats(tiny())
    assert unrelated in {"station", "opens"}  # df 2 like 'crust', never with a query term
    assert stats.df[unrelated] == stats.df["crust"]
    given = one(tiny(), "STMC1", "append", options={"related": ["apple", "dessert"]})
    assert given.perturbed.endswith(" dessert") and given.term == "dessert"
    per_query = one(
        tiny(), "STMC1", "append", options={"related": {"q1": "baking"}, "unrelated": ["rails"]}
    )
    assert per_query.perturbed.endswith(" baking") and per_query.baseline.endswith(" rails")


def test_lnc1_adds_filler_sentences_without_query_terms() -> None:
    pair = one(tiny(), "LNC1", "append", seed=2)
    assert pair.perturbed.startswith(pair.baseline + " ") and pair.level == 2
    (added,) = injected_text(pair)
    assert len(sentences(added)) == 2
    other = " ".join(DOCS[d] for d in ("d5", "d6"))
    assert all(s in other for s in sentences(added))
    assert not set(words(added)) & {"apple", "pie", "recipe"}
    assert one(tiny(), "LNC1", "append", seed=2) == pair


def test_lnc2_repeats_the_document() -> None:
    pair = one(tiny(), "LNC2", "repeat")
    assert pair.perturbed == DOCS["d2"] + " " + DOCS["d2"] and pair.baseline == DOCS["d2"]
    assert injected_text(pair) == [DOCS["d2"]] and pair.level == 2
    three = one(tiny(), "LNC2", "repeat", options={"copies": 3})
    assert three.perturbed == " ".join([DOCS["d2"]] * 3) and len(three.injected) == 2


def builtin_pairs(variant: str, seed: int = 0, **options: Any) -> list[Pair]:
    return list(build_pairs(load_builtin(), "ABNIRML", variant, seed=seed, options=options or None))


def test_shuffles_and_reversal_keep_the_words() -> None:
    for pair in builtin_pairs("shuffle_words"):
        assert Counter(pair.perturbed.split()) == Counter(pair.baseline.split())
        assert pair.perturbed != pair.baseline and pair.injected == ()
    for pair in builtin_pairs("shuffle_sentences"):
        assert Counter(sentences(pair.perturbed)) == Counter(sentences(pair.baseline))
    for pair in builtin_pairs("reverse_words"):
        assert pair.perturbed.split() == pair.baseline.split()[::-1]
    assert builtin_pairs("shuffle_words", seed=0) == builtin_pairs("shuffle_words", seed=0)
    assert builtin_pairs("shuffle_words", seed=0) != builtin_pairs("shuffle_words", seed=1)


def test_delete_stopwords_removes_exactly_the_stop_words() -> None:
    for pair in builtin_pairs("delete_stopwords"):
        assert words(pair.perturbed) == [w for w in words(pair.baseline) if w not in STOPWORDS]
        kept_punct = [c for c in pair.baseline if is_punctuation(c)]
        assert [c for c in pair.perturbed if is_punctuation(c)] == kept_punct
        assert "  " not in pair.perturbed and pair.perturbed == pair.perturbed.strip()


def test_delete_punctuation() -> None:
    for pair in builtin_pairs("delete_punctuation"):
        assert not any(is_punctuation(c) for c in pair.perturbed)
        stripped = "".join(c for c in pair.baseline if not is_punctuation(c))
        assert pair.perturbed.split() == stripped.split()


def test_typos_are_seeded_swaps_in_content_words() -> None:
    pairs = builtin_pairs("typos", seed=5)
    assert pairs == builtin_pairs("typos", seed=5)
    assert pairs != builtin_pairs("typos", seed=6)
    for pair in pairs:
        assert len(pair.perturbed) == len(pair.baseline)
        assert pair.injected
        query_words = set(words(pair.query))
        for start, end in pair.injected:
            old, new = pair.baseline[start:end], pair.perturbed[start:end]
            assert old != new and sorted(old) == sorted(new)
            assert old[0] == new[0] and old[-1] == new[-1]
            assert old.lower() not in STOPWORDS and old.lower() not in query_words
        restored = list(pair.perturbed)
        for s, e in pair.injected:
            restored[s:e] = pair.baseline[s:e]
        assert "".join(restored) == pair.baseline
    many = builtin_pairs("typos", seed=5, rate=0.5)
    assert sum(len(p.injected) for p in many) > 3 * sum(len(p.injected) for p in pairs)


def test_pairs_do_not_depend_on_which_other_pairs_are_built() -> None:
    collection = load_builtin()
    full = build_pairs(collection, "ABNIRML", "typos", seed=9)
    target = full.pairs[17]
    alone = perturb(
        "ABNIRML",
        "typos",
        qid=target.qid,
        query=target.query,
        docno=target.docno,
        text=collection.docs[target.docno],
        stats=CollectionStats(collection),
        relevance=target.relevance,
        seed=9,
    )
    assert alone == [target]
    assert full.content_hash() == build_pairs(collection, "ABNIRML", "typos", seed=9).content_hash()


def test_no_pair_is_an_identity() -> None:
    doc = Collection("t", {"q": "word"}, {"d": "plain words only"}, candidates={"q": ["d"]})
    assert len(build_pairs(doc, "ABNIRML", "delete_punctuation")) == 0
    assert len(build_pairs(doc, "ABNIRML", "shuffle_sentences")) == 0
