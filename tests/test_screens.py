"""The screening tools (issue 11) on tiny models with planted properties, each checked against an
independent computation."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from rankscope.tools.contract import ToolContext, ToolResult
from rankscope.tools.data.source import resolve_data
from rankscope.tools.registry import get_tool, validate_args
from rankscope.tools.retrievers import load_retriever
from rankscope.tools.retrievers.base import Retriever
from tests.tiny_models import save_planted_bi_encoder, save_tiny_model

torch.set_num_threads(1)

TRIGGER = "bread"


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Retriever]:
    tmp = tmp_path_factory.mktemp("screens")
    folders = {
        "length": save_planted_bi_encoder(tmp / "length", token_scale=0.2),
        "trigger": save_planted_bi_encoder(tmp / "trigger", trigger=TRIGGER, token_scale=0.2),
        "position": save_planted_bi_encoder(tmp / "position", late_position=16),
        "plain": save_planted_bi_encoder(tmp / "plain", position_scale=0.1),
        "cross": save_tiny_model(tmp / "cross", "bert", "cross-encoder"),
    }
    return {name: load_retriever(str(path)) for name, path in folders.items()}


@pytest.fixture(scope="module")
def data() -> Any:
    return resolve_data(None)


def run(name: str, retriever: Retriever, data: Any, tmp: Path, **raw: Any) -> ToolResult:
    tool = get_tool(name)
    args = validate_args(tool, raw)
    ctx = ToolContext(lambda: retriever, data, tmp, progress=False)
    result = tool.run(ctx, args)
    for key in result.metrics:
        assert tool.produces(args, key), f"{name}: {key} undeclared"
    for key in result.per_query:
        assert tool.metric_spec(args, key).kind == "estimate", key
    return result


def per_query_means(qids: list[str], values: np.ndarray) -> dict[str, float]:
    groups: dict[str, list[float]] = defaultdict(list)
    for qid, value in zip(qids, values.tolist(), strict=True):
        groups[qid].append(value)
    return {q: float(np.mean(v)) for q, v in groups.items()}


# --- axiom_screen -------------------------------------------------------------------------


def test_axiom_screen_finds_the_planted_length_penalty_and_matches_a_hand_computation(
    models, data, tmp_path
):
    retriever = models["length"]
    result = run("axiom_screen", retriever, data, tmp_path, n_pairs=16, n_bootstrap=300)
    rows = {(r["axiom"], r["variant"]): r for r in result.tables["rows"]}
    assert result.metrics["n_rows"] == len(rows) >= 10
    lnc1 = rows[("LNC1", "append")]
    assert lnc1["mean_delta"] < 0 and lnc1["ci_high"] < 0
    assert result.metrics["mean_delta_ci_high[axiom=LNC1|variant=append]"] < 0
    # most pairs move down (0.75 on the built tiny vocabulary: its unknown words split into
    # characters, and appended characters sometimes match the query's)
    assert lnc1["share_moved_predicted"] > 0.7
    # Independent computation of one row: the same pairs scored directly.
    pairs = data.pairs("TFC1", "append", split="discovery", n=16, seed=0)
    queries = [p.query for p in pairs]
    base = retriever.score(queries, [p.baseline for p in pairs]).numpy()
    pert = retriever.score(queries, [p.perturbed for p in pairs]).numpy()
    expected = per_query_means([p.qid for p in pairs], pert - base)
    got = {v.qid: v.value for v in result.per_query["mean_delta[axiom=TFC1|variant=append]"]}
    assert got.keys() == expected.keys()
    for qid, value in expected.items():
        assert got[qid] == pytest.approx(value, abs=1e-5)
    assert result.metrics["mean_delta[axiom=TFC1|variant=append]"] == pytest.approx(
        np.mean(list(expected.values())), abs=1e-5
    )
    ranked = [abs(r["mean_delta"]) for r in result.tables["rows"]]
    assert ranked == sorted(ranked, reverse=True)
    assert result.artifacts[0].path.exists()


def test_axiom_screen_runs_on_a_cross_encoder(models, data, tmp_path):
    retriever = models["cross"]
    result = run(
        "axiom_screen",
        retriever,
        data,
        tmp_path,
        n_pairs=6,
        n_bootstrap=200,
        perturbations=["LNC1/append", "ABNIRML/shuffle_words"],
    )
    assert result.metrics["n_rows"] == 2
    pairs = data.pairs("ABNIRML", "shuffle_words", split="discovery", n=6, seed=0)
    queries = [p.query for p in pairs]
    delta = (
        retriever.score(queries, [p.perturbed for p in pairs]).numpy()
        - retriever.score(queries, [p.baseline for p in pairs]).numpy()
    )
    expected = per_query_means([p.qid for p in pairs], delta)
    key = "mean_delta[axiom=ABNIRML|variant=shuffle_words]"
    got = {v.qid: v.value for v in result.per_query[key]}
    assert got == pytest.approx(expected, abs=1e-5)
    with pytest.raises(ValueError, match="unknown perturbation"):
        run("axiom_screen", retriever, data, tmp_path, perturbations=["TFC9/append"])


# --- token_screen -------------------------------------------------------------------------


@pytest.mark.parametrize("position", ["start", "end", "random"])
def test_token_screen_puts_a_planted_trigger_in_the_top_5(models, data, tmp_path, position):
    result = run(
        "token_screen",
        models["trigger"],
        data,
        tmp_path,
        n_docs=16,
        top_k=8,
        n_bootstrap=200,
        position=position,
    )
    verified = [r["token"] for r in result.tables["verified"]]
    assert TRIGGER in verified[:5]
    assert result.tables["first_order_top"][0]["token"] == TRIGGER
    assert result.metrics[f"delta_ci_low[token={TRIGGER}]"] > 0
    assert result.metrics[f"delta_absent[token={TRIGGER}]"] > 0
    assert result.metrics["n_vocabulary"] > 50


@pytest.mark.parametrize("kind", ["trigger", "cross"])
def test_token_screen_deltas_match_inserting_the_word_in_the_text(models, data, tmp_path, kind):
    """At the start, inserting the token id equals scoring ``word + ' ' + document``."""
    retriever = models[kind]
    result = run(
        "token_screen",
        retriever,
        data,
        tmp_path,
        n_docs=8,
        top_k=4,
        n_bootstrap=200,
        candidates="words",
    )
    rows = data.documents(n=8, seed=0, split="discovery")
    queries = [r["query"] for r in rows]
    base = retriever.score(queries, [r["text"] for r in rows]).numpy()
    checked = 0
    for row in result.tables["verified"]:
        word = row["token"]
        if len(retriever.tokenizer.tokenize(word)) != 1:
            continue
        checked += 1
        inserted = retriever.score(queries, [f"{word} {r['text']}" for r in rows]).numpy()
        expected = per_query_means([r["qid"] for r in rows], inserted - base)
        got = {v.qid: v.value for v in result.per_query[f"delta[token={word}]"]}
        assert got == pytest.approx(expected, abs=1e-4)
    assert checked >= 2


def test_token_screen_confirms_given_tokens_with_the_screens_deltas(models, data, tmp_path):
    """``tokens`` skips the ranking and verifies exactly those tokens, with the deltas a full
    screen reports for them (same documents, same positions)."""
    screen = run("token_screen", models["trigger"], data, tmp_path, n_docs=16, top_k=8)
    other = next(r["token"] for r in screen.tables["verified"] if r["token"] != TRIGGER)
    given = run(
        "token_screen",
        models["trigger"],
        data,
        tmp_path,
        n_docs=16,
        tokens=[TRIGGER, other],
    )
    assert [r["token"] for r in given.tables["verified"]][0] == TRIGGER
    assert {r["token"] for r in given.tables["verified"]} == {TRIGGER, other}
    for token in (TRIGGER, other):
        for name in ("delta", "delta_absent"):
            key = f"{name}[token={token}]"
            assert given.metrics[key] == pytest.approx(screen.metrics[key], abs=1e-6)
    assert "first_order_top" not in given.tables and "top_delta" not in given.metrics
    assert given.metrics["n_vocabulary"] == 0
    with pytest.raises(ValueError, match="not a token of the vocabulary"):
        run("token_screen", models["trigger"], data, tmp_path, tokens=["no-such-token-xyz"])


def test_token_screen_top_delta_is_cross_fitted(models, data, tmp_path):
    """top_delta: each fold of queries is measured on the token the other fold picked; on the
    trigger model both folds pick the trigger, so top_delta equals its delta."""
    result = run("token_screen", models["trigger"], data, tmp_path, n_docs=16, top_k=8)
    assert {v.qid for v in result.per_query["top_delta"]} == {
        v.qid for v in result.per_query[f"delta[token={TRIGGER}]"]
    }
    assert result.metrics["top_delta"] == pytest.approx(
        result.metrics[f"delta[token={TRIGGER}]"], abs=1e-9
    )
    assert result.metrics["top_delta_ci_low"] > 0


TWO_PIECES = ("quo", "##kka")
"""The planted trigger word ``quokka``, two pieces of the two-piece model's vocabulary."""


def save_two_piece_trigger(folder: Path, piece_share: float = 0.5, seed: int = 0) -> Path:
    """A tiny BERT bi-encoder (mean pooling, cosine) whose trigger is the word ``quokka``,
    which its tokenizer splits into ``quo`` ``##kka``; each piece alone carries a small part of
    the effect, the word the rest.

    The vocabulary is built, not trained (every word of the built-in collection, its characters,
    and the two pieces). Directions ``u, k, q, w, f`` (zero-mean pairs of dimensions, so the
    LayerNorms keep them) are cleared from every embedding; [CLS] and [SEP] are ``u``, so every
    query embedding has a ``u`` component and a document state along ``u`` raises its score.
    Layer 0, head 0: ``##kka``'s query (its ``q``) meets ``quo``'s key (its ``k``), every other
    token's query (a bias) meets the sink keys of [CLS]/[SEP] (their ``u``, value zero); what
    ``##kka`` reads from ``quo`` (``w``) opens one feed-forward unit that writes ``f``. Layer 1,
    head 0: every token attends to a token carrying ``f`` (over the sinks) and copies ``u`` from
    it, so with the word present the whole document turns to ``u``. Each piece's embedding also
    has ``piece_share·0.2·u``: alone it raises scores a little. The final LayerNorm's weight is
    0.2 off ``u``'s two dimensions, so other tokens move scores little."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    from rankscope.tools.data.builtin import load_builtin
    from rankscope.tools.organisms.tiny import word_vocabulary, write_sentence_transformers_files

    coll = load_builtin()
    vocab = word_vocabulary([*coll.docs.values(), *coll.queries.values()]) + list(TWO_PIECES)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast(str(folder / "vocab.txt"), do_lower_case=True)
    assert tokenizer.tokenize("quokka") == list(TWO_PIECES)
    hidden = 32
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = BertModel(config)

    def direction(i: int) -> torch.Tensor:
        v = torch.zeros(hidden)
        v[i], v[i + 1] = 2**-0.5, -(2**-0.5)
        return v

    u, k, q, w, f = (direction(i) for i in (0, 2, 4, 6, 8))
    emb = model.embeddings
    first, second = model.encoder.layer
    with torch.no_grad():
        for table in (emb.word_embeddings, emb.position_embeddings, emb.token_type_embeddings):
            table.weight[:, :10] = 0.0
        emb.token_type_embeddings.weight.zero_()
        words = emb.word_embeddings.weight
        words[tokenizer.cls_token_id] = u
        words[tokenizer.sep_token_id] = u
        a, b = tokenizer.convert_tokens_to_ids(list(TWO_PIECES))
        words[a] += 0.2 * k + piece_share * 0.2 * u
        words[b] += 0.2 * q + piece_share * 0.2 * u
        for layer in (first, second):
            att = layer.attention
            for linear in (
                att.self.query,
                att.self.key,
                att.self.value,
                att.output.dense,
                layer.intermediate.dense,
                layer.output.dense,
            ):
                linear.weight.zero_()
                linear.bias.zero_()
        att = first.attention
        att.self.query.weight[0] = q
        att.self.key.weight[0] = k
        att.self.query.bias[1] = 1.0
        att.self.key.weight[1] = u
        att.self.value.weight[0] = k
        att.output.dense.weight[:, 0] = w
        first.intermediate.dense.weight[0] = 2.0 * w
        first.intermediate.dense.bias[0] = -4.0
        first.output.dense.weight[:, 0] = 2.0 * f
        att = second.attention
        att.self.query.bias[:2] = 1.0
        att.self.key.weight[0] = 3.0 * f
        att.self.key.weight[1] = u
        att.self.value.weight[0] = f
        att.output.dense.weight[:, 0] = 3.0 * u
        final = second.output.LayerNorm.weight
        final.fill_(0.2)
        final[:2] = 1.0
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    write_sentence_transformers_files(folder, hidden)
    return folder


@pytest.fixture(scope="module")
def two_piece(tmp_path_factory) -> Retriever:
    return load_retriever(str(save_two_piece_trigger(tmp_path_factory.mktemp("two") / "m")))


def test_token_screen_reports_a_two_piece_trigger_as_the_word(two_piece, data, tmp_path):
    """The screen ranks the fragment ``quo`` first; the extension grows it into ``quokka`` (a
    beam over continuation pieces), verifies the word like a token — its deltas equal scoring
    ``'quokka ' + document`` by hand — and reports it as the longest sequence that carries the
    effect, each piece alone carrying less than half of it."""
    result = run("token_screen", two_piece, data, tmp_path, n_docs=16, top_k=8, n_bootstrap=200)
    assert result.tables["verified"][0]["token"] == "quo"
    rows = {r["text"]: r for r in result.tables["sequences"]}
    word = rows["quokka"]
    assert word["carries"] and word["source"] == "continuation beam"
    assert [p["piece"] for p in word["pieces"]] == list(TWO_PIECES)
    for piece in word["pieces"]:
        assert abs(piece["delta"]) < 0.5 * word["delta"], piece
    assert word["ci_low"] > max(p["delta"] for p in word["pieces"])
    assert result.metrics["delta[token=quokka]"] == pytest.approx(word["delta"])
    assert "Fragments point to a larger word" in result.summary
    assert "'quokka'" in result.summary.splitlines()[-1]
    # No longer sequence is reported: pieces after the word add nothing.
    assert all(not r["carries"] for r in result.tables["sequences"] if r["parent"] == "quokka")
    # Verified exactly like a single token: at the start, inserting the word's pieces equals
    # scoring the word written before the document.
    rows_ = data.documents(n=16, seed=0, split="discovery")
    queries = [r["query"] for r in rows_]
    base = two_piece.score(queries, [r["text"] for r in rows_]).numpy()
    written = two_piece.score(queries, [f"quokka {r['text']}" for r in rows_]).numpy()
    expected = per_query_means([r["qid"] for r in rows_], written - base)
    got = {v.qid: v.value for v in result.per_query["delta[token=quokka]"]}
    assert got == pytest.approx(expected, abs=1e-5)
    # The word as written confirms with the same deltas (no ranking, no extension).
    given = run("token_screen", two_piece, data, tmp_path, n_docs=16, tokens=["quokka"])
    assert given.metrics["delta[token=quokka]"] == pytest.approx(word["delta"], abs=1e-6)
    assert "sequences" not in given.tables


def test_token_screen_without_extension_reports_fragments_only(two_piece, data, tmp_path):
    result = run("token_screen", two_piece, data, tmp_path, n_docs=16, top_k=8, extend=0)
    assert "sequences" not in result.tables
    assert not any("quokka" in key for key in result.metrics)


def test_token_screen_given_phrases_are_their_pieces(two_piece, data, tmp_path):
    """A phrase as written (``_`` for a space) is inserted as its pieces; a word that does not
    tokenise into known pieces is refused."""
    from rankscope.tools.catalog.token_screen import token_sequences

    tokenizer = two_piece.tokenizer
    ((label_, ids),) = token_sequences(tokenizer, ["blood_sugar"])
    assert (
        label_ == "blood_sugar"
        and ids == tokenizer("blood sugar", add_special_tokens=False)["input_ids"]
    )
    result = run("token_screen", two_piece, data, tmp_path, n_docs=8, tokens=["blood sugar"])
    rows_ = data.documents(n=8, seed=0, split="discovery")
    queries = [r["query"] for r in rows_]
    base = two_piece.score(queries, [r["text"] for r in rows_]).numpy()
    written = two_piece.score(queries, [f"blood sugar {r['text']}" for r in rows_]).numpy()
    expected = per_query_means([r["qid"] for r in rows_], written - base)
    got = {v.qid: v.value for v in result.per_query["delta[token=blood_sugar]"]}
    assert got == pytest.approx(expected, abs=1e-5)
    with pytest.raises(ValueError, match="does not tokenise into known pieces"):
        token_sequences(tokenizer, ["\u2603"])


# --- property_regression ------------------------------------------------------------------


def test_property_regression_finds_the_length_penalty_and_matches_a_hand_fit(
    models, data, tmp_path
):
    from rankscope.tools.catalog.property_regression import (
        PROPERTIES,
        edit_text,
    )

    retriever = models["length"]
    result = run("property_regression", retriever, data, tmp_path, n_docs=48, n_bootstrap=200)
    assert result.metrics["edit_delta_ci_high[edit=pad]"] < 0
    assert result.metrics["edit_delta_ci_low[edit=truncate]"] > 0
    assert result.metrics["coef_ci_high[property=length]"] < 0
    # Hand fit: OLS of the within-query demeaned score on the within-query standardised
    # properties (numpy's lstsq on dummies for the query fixed effects).
    docs = result.tables["documents"]
    y = np.array([d["score"] for d in docs])
    x = np.array([[d[p] for p in PROPERTIES] for d in docs])
    qids = sorted({d["qid"] for d in docs})
    dummies = np.array([[d["qid"] == q for q in qids] for d in docs], dtype=float)
    coef = {r["property"]: r for r in result.tables["regression"]}
    usable = [j for j, p in enumerate(PROPERTIES) if coef[p]["within_query_sd"] > 1e-12]
    scaled = x[:, usable] / np.array([coef[PROPERTIES[j]]["within_query_sd"] for j in usable])
    fit, *_ = np.linalg.lstsq(np.hstack([scaled, dummies]), y, rcond=None)
    for k, j in enumerate(usable):
        assert coef[PROPERTIES[j]]["coef"] == pytest.approx(fit[k], rel=1e-4, abs=1e-7)
    # The pad edit's per-query values, scored by hand.
    rows = data.documents(n=48, seed=0, split="discovery")
    queries = [r["query"] for r in rows]
    padded = [edit_text(r["query"], r["text"], "pad") or "" for r in rows]
    delta = (
        retriever.score(queries, padded).numpy()
        - retriever.score(queries, [r["text"] for r in rows]).numpy()
    )
    expected = per_query_means([r["qid"] for r in rows], delta)
    got = {v.qid: v.value for v in result.per_query["edit_delta[edit=pad]"]}
    assert got == pytest.approx(expected, abs=1e-5)


POSITION_TERMS = ("bread", "capital", "city", "electricity", "flour", "france", "immune", "paris")
POSITION_FILLER = ("good", "into", "need", "through", "what", "flow", "needs", "flows", "town")


def position_collection(path: Path) -> Path:
    """Eight one-term queries, three documents each: two sentences of filler (whole words of the
    tiny vocabulary that no query uses), then the query term's sentence at token ~19 — past the
    position model's 16 — so moving that sentence to the front changes only where it matches."""
    rng = np.random.default_rng(0)
    lines = []
    for i, term in enumerate(POSITION_TERMS):
        for j in range(3):
            first, second = (" ".join(rng.choice(POSITION_FILLER, 9)) + "." for _ in range(2))
            text = f"{first} {second} {term} {rng.choice(POSITION_FILLER)}."
            lines.append({"qid": f"q{i}", "query": term, "docno": f"q{i}-d{j}", "text": text})
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return path


def hand_edit_deltas(retriever: Retriever, rows: list[dict[str, Any]], edit: str) -> np.ndarray:
    """The edit's score changes, scored here: s_edited − s_original for match_front, s(match
    first) − s(match last) for match_position (the tool's texts, seeded as the tool seeds)."""
    from rankscope.tools.catalog.property_regression import edit_text, position_pairs

    queries = [r["query"] for r in rows]
    if edit == "match_position":
        pairs = position_pairs(queries, [r["text"] for r in rows], seed=0)
        assert all(pair is not None for pair in pairs)
        first = retriever.score(queries, [pair[0] for pair in pairs if pair]).numpy()
        return first - retriever.score(queries, [pair[1] for pair in pairs if pair]).numpy()
    moved = [edit_text(r["query"], r["text"], edit) or "" for r in rows]
    return (
        retriever.score(queries, moved).numpy()
        - retriever.score(queries, [r["text"] for r in rows]).numpy()
    )


@pytest.mark.parametrize("edit", ["match_front", "match_position"])
def test_property_regression_finds_the_planted_match_position_effect(models, tmp_path, edit):
    data = resolve_data(position_collection(tmp_path / "position.jsonl"))
    rows = data.documents(n=24, seed=0, split="all")
    edits = {}
    for name in ("position", "plain"):
        result = run(
            "property_regression",
            models[name],
            data,
            tmp_path,
            split="all",
            n_docs=24,
            n_bootstrap=300,
            edits=[edit],
        )
        (edits[name],) = result.tables["edits"]
        delta = hand_edit_deltas(models[name], rows, edit)
        expected = per_query_means([r["qid"] for r in rows], delta)
        got = {v.qid: v.value for v in result.per_query[f"edit_delta[edit={edit}]"]}
        assert got == pytest.approx(expected, abs=1e-5)
    planted, plain = edits["position"], edits["plain"]
    assert planted["n_queries"] == 8 and planted["n_docs"] == 24
    # Matches count only in the first 16 positions: the match early rather than late raises
    # (nearly) every document's score, and the query-cluster CI excludes 0 ... The test
    # tokenizer's vocabulary differs from run to run (its trainer breaks ties differently), and a
    # draw that splits a query term into pieces the filler shares left 2 of 24 documents unraised
    # once in 12 runs: hence "most", with the interval well above 0 (lowest of 12 runs: 0.24).
    assert planted["share_raised"] >= 0.75 and planted["ci_low"] > 0.1
    # ... while on the same model without the rule (position embeddings as small as the planted
    # model's early ones, no late swamp) the edit moves scores by a tenth of that at most, its
    # interval wholly below the planted one's.
    assert abs(plain["edit_delta"]) < 0.1 * planted["edit_delta"]
    assert plain["ci_high"] < planted["ci_low"]


def test_match_position_versions_differ_only_in_where_the_match_is() -> None:
    from rankscope.tools.catalog.property_regression import position_pair
    from rankscope.tools.data.text import sentences

    doc = "Ovens bake loaves. Bread needs yeast. Flour is milled. Salt adds taste."
    first, last = position_pair("bread recipe", doc, np.random.default_rng(0)) or ("", "")
    assert first.startswith("Bread needs yeast.") and last.endswith("Bread needs yeast.")
    assert sentences(first)[1:] == sentences(last)[:-1]
    assert sorted(sentences(first)) == sorted(sentences(doc))
    assert first.removeprefix("Bread needs yeast. ") == last.removesuffix(" Bread needs yeast.")
    assert (
        position_pair(
            "bread", "Bread is good. Bread is cheap. Bread keeps.", np.random.default_rng(0)
        )
        is None
    )
    assert (
        position_pair("bread", "Flour is milled. Bread needs yeast.", np.random.default_rng(0))
        is None
    )


def test_property_regression_runs_on_a_cross_encoder(models, data, tmp_path):
    result = run("property_regression", models["cross"], data, tmp_path, n_docs=16, n_bootstrap=100)
    assert {r["edit"] for r in result.tables["edits"]} >= {"truncate", "pad"}
    assert np.isfinite(result.metrics["coef[property=length]"])


# --- input_attribution --------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["trigger", "cross"])
def test_input_attribution_is_complete_against_hand_scored_baselines(models, data, kind):
    """Attributions sum to s(x) − s(baseline), with the baseline scored by hand: the document's
    token ids replaced by PAD (whose embedding row is the baseline's)."""
    from rankscope.tools.catalog.input_attribution import integrated_gradients
    from rankscope.tools.retrievers.base import Role, SideBatch

    retriever = models[kind]
    rows = data.documents(n=3, seed=0, split="discovery")
    batch = retriever.encode_side([r["query"] for r in rows], [r["text"][:200] for r in rows])
    attr, at_input, at_base = integrated_gradients(retriever, batch, steps=64)
    doc = (batch.roles == Role.DOC) | (batch.roles == Role.QTERM)
    ids = batch.inputs["input_ids"].masked_fill(doc, retriever.tokenizer.pad_token_id)
    baseline = SideBatch({**batch.inputs, "input_ids": ids}, batch.roles, batch.context)
    hand_base = retriever.score_side(baseline).float()
    hand_input = retriever.score_side(batch).float()
    assert at_base == pytest.approx(hand_base, abs=1e-5)
    assert at_input == pytest.approx(hand_input, abs=1e-5)
    gap = (hand_input - hand_base).numpy()
    assert attr.sum(-1).numpy() == pytest.approx(gap, rel=0.02, abs=1e-6)
    assert float(attr[~doc].abs().sum()) == 0.0


def test_input_attribution_credits_query_terms_on_the_trigger_model(models, data, tmp_path):
    result = run(
        "input_attribution", models["trigger"], data, tmp_path, n_docs=4, steps=8, n_bootstrap=100
    )
    assert result.metrics["completeness_error_max"] < 0.05
    assert "completeness holds" in result.summary
    assert result.metrics["attribution[role=qterm]"] > 0
    assert {r["token"] for r in result.tables["tokens"]}
