"""Linear probes, control tasks, properties and activation collection."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from rankscope.tools.registry import ToolArgumentError, get_tool, validate_args
from rankscope.tools.representations.activations import collect_activations, read_layers
from rankscope.tools.representations.corpus import Document, sample_documents
from rankscope.tools.representations.probing import (
    fit_probe_weights,
    group_folds,
    load_probes,
    make_probe,
    probe_direction,
    probe_layer,
    save_probes,
)
from rankscope.tools.representations.properties import (
    control_labels,
    document_labels,
    tertiles,
    token_idf,
    token_labels,
)
from rankscope.tools.retrievers import load_retriever
from tests.representations_support import (
    ENGLISH_WORDS,
    collection_source,
    make_context,
    synthetic_collection,
)

torch.set_num_threads(1)
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_retriever(str(tiny_model_dir("bert")), kind="bi-encoder", pooling="mean")


@pytest.fixture(scope="module")
def source():
    return collection_source(synthetic_collection(n_queries=8, docs_per_query=6))


def test_probe_finds_a_planted_direction_and_the_control_stays_at_chance():
    rng = np.random.default_rng(0)
    n, d = 1200, 24
    x = rng.normal(size=(n, d))
    w = rng.normal(size=d)
    y = (x @ w > 0).astype(int)
    groups = rng.integers(0, 30, size=n)
    control = control_labels(y, np.arange(n), seed=1)
    folds = group_folds(groups, 5, seed=0)
    planted = probe_layer("L0", x, y, control, folds)
    noise = probe_layer("L1", rng.normal(size=(n, d)), y, control, folds)
    assert planted.accuracy > 0.97
    assert abs(planted.control - 0.5) < 0.07
    assert planted.selectivity > 0.4
    assert abs(noise.accuracy - 0.5) < 0.07
    assert abs(planted.majority - 0.5) < 0.1
    for train, test in folds:
        assert not set(groups[train]) & set(groups[test])


def test_control_labels_follow_types_and_the_label_distribution():
    rng = np.random.default_rng(0)
    y = rng.choice(3, size=5000, p=[0.6, 0.3, 0.1])
    types = rng.integers(0, 2000, size=5000)
    control = control_labels(y, types, seed=0)
    for t in np.unique(types)[:50]:
        assert np.unique(control[types == t]).size == 1
    by_type = np.asarray([control[types == t][0] for t in np.unique(types)])
    assert np.allclose(np.bincount(by_type, minlength=3) / by_type.size, [0.6, 0.3, 0.1], atol=0.04)


def test_probe_weights_are_folded_into_activation_space(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 8)) * rng.uniform(0.5, 5, size=8) + 3
    y = (x[:, 0] - x[:, 3] > 0).astype(int) + (x[:, 1] > 3).astype(int)
    model = make_probe().fit(x, y)
    weights = fit_probe_weights(x, y)
    logits = x @ weights.coef.T + weights.intercept
    assert np.allclose(logits, model.decision_function(x), atol=1e-3)
    path = save_probes(tmp_path / "p.safetensors", {"L0": weights}, {"property": "tf"})
    loaded, meta = load_probes(path)
    assert meta == {"property": "tf"}
    assert np.array_equal(loaded["L0"].coef, weights.coef)
    direction = probe_direction(loaded["L0"], 2)
    assert np.allclose(direction, weights.coef[2] - weights.coef.mean(0))
    binary = fit_probe_weights(x, (y > 0).astype(int))
    assert np.array_equal(probe_direction(binary), binary.coef[0])
    assert np.array_equal(probe_direction(binary, 0), -binary.coef[0])


def test_token_properties_by_hand(tiny):
    tok = tiny.tokenizer
    docs = [
        Document("q1", "a", "paris france", "paris is paris and the capital of france paris"),
        Document("q2", "b", "river sea", "the river flows into the sea"),
    ]
    table = collect_activations(tiny, docs, [0], roles=(4, 5))
    tf = token_labels("tf", table)
    ids = tok(docs[0].text, add_special_tokens=False)["input_ids"]
    paris = tok.convert_tokens_to_ids("paris")
    rows = (table.doc == 0) & (table.token_id == paris)
    assert tf.values[rows].tolist() == [ids.count(paris)] * ids.count(paris)
    assert set(tf.y[rows].tolist()) == {2}
    qterm = token_labels("qterm", table)
    france = tok.convert_tokens_to_ids("france")
    assert qterm.y[(table.doc == 0) & (table.token_id == france)].tolist() == [1]
    assert qterm.y[
        (table.doc == 0) & (table.token_id == tok.convert_tokens_to_ids("capital"))
    ].tolist() == [0]
    texts = [d.text for d in docs] + ["paris"]
    idf, df = token_idf(tok, texts)
    assert df[paris] == 2
    assert idf[paris] == pytest.approx(np.log((3 - 2 + 0.5) / (2 + 0.5) + 1))
    doc = document_labels("tf", docs)
    assert doc.values.tolist() == [4, 2]
    assert doc.y.tolist() == [3, 2]
    y, names = tertiles(np.arange(9.0))
    assert y.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2] and names == ["low", "mid", "high"]


def test_collected_activations_match_a_plain_forward(tiny, source):
    docs = sample_documents(source, 10, seed=0)
    table = collect_activations(tiny, docs, [None, 0, 1], pooling="tokens", batch_size=4)
    pooled = collect_activations(tiny, docs, [1], pooling="mean", batch_size=3)
    neurons = collect_activations(tiny, docs, [1], site="neurons", batch_size=4)
    captured = {}
    module = tiny.component_module(1, "mlp")[0]
    handle = module.register_forward_hook(lambda m, i, o: captured.__setitem__("x", i[0]))
    try:
        for d, doc in enumerate(docs):
            batch = tiny.encode_side([doc.query], [doc.text])
            with torch.no_grad():
                out = tiny.encoder(**batch.inputs, output_hidden_states=True)
            rows = table.doc == d
            pos = table.position[rows]
            for k, name in enumerate(["emb", "L0", "L1"]):
                ref = out.hidden_states[k][0, pos].numpy()
                assert np.allclose(table.acts[name][rows], ref, atol=1e-5)
            mean = out.hidden_states[2][0].mean(0).numpy()
            assert np.allclose(pooled.acts["L1"][d], mean, atol=1e-5)
            assert np.allclose(neurons.acts["L1"][rows], captured["x"][0, pos].numpy(), atol=1e-5)
    finally:
        handle.remove()
    saved = read_layers(tiny, tiny.encode_side(["q"], ["paris"]), [None, 1])
    assert set(saved) == {"emb", "L1"}


def test_linear_probe_tool_smoke(tiny, source, tmp_path):
    tool = get_tool("linear_probe")
    ctx = make_context(tiny, source, tmp_path)
    args = validate_args(
        tool, {"property": "qterm", "n_docs": 40, "max_tokens_per_doc": 16, "folds": 3}
    )
    result = tool.run(ctx, args)
    m = result.metrics
    for name in ("emb", "L0", "L1"):
        assert 0 <= m[f"accuracy[{name}]"] <= 1
        assert m[f"selectivity[{name}]"] == pytest.approx(
            m[f"accuracy[{name}]"] - m[f"control[{name}]"]
        )
    assert m["best_layer"] in (-1, 0, 1)
    assert m["best_accuracy"] == max(m[f"accuracy[{n}]"] for n in ("emb", "L0", "L1"))
    assert result.artifacts[0].path.read_bytes()[:8] == PNG
    weights, meta = load_probes(result.artifacts[1].path)
    assert set(weights) == {"emb", "L0", "L1"} and meta["property"] == "qterm"
    assert "Best layer" in result.summary
    doc_args = validate_args(
        tool, {"property": "length", "level": "document", "n_docs": 40, "layers": [1]}
    )
    doc_result = tool.run(ctx, doc_args)
    assert set(r["layer"] for r in doc_result.tables["layers"]) == {"emb", "L1"}
    with pytest.raises(ToolArgumentError, match="no token-level form"):
        validate_args(tool, {"property": "relevance", "level": "token"})


@pytest.mark.slow
def test_probe_on_minilm_decodes_term_frequency_in_context(minilm, tmp_path):
    data = collection_source(
        synthetic_collection(n_queries=16, docs_per_query=6, seed=3, words=ENGLISH_WORDS)
    )
    tool = get_tool("linear_probe")
    args = validate_args(
        tool, {"property": "tf", "split": "all", "n_docs": 96, "layers": [0, 5], "folds": 4}
    )
    result = tool.run(make_context(minilm, data, tmp_path), args)
    m = result.metrics
    assert m["n_rows"] > 300
    assert m["accuracy[L5]"] > m["majority_baseline"] + 0.03
    assert m["accuracy[L5]"] > m["accuracy[emb]"] + 0.05


def test_documents_follow_the_sources_query_split(source):
    holdout_qids = {r["qid"] for r in source.documents(split="holdout")}
    for per_query in (None, 3):
        disc = sample_documents(source, 100, 0, per_query=per_query, split="discovery")
        hold = sample_documents(source, 100, 0, per_query=per_query, split="holdout")
        assert disc and hold
        assert not {d.qid for d in disc} & {d.qid for d in hold}
        assert {d.qid for d in hold} <= holdout_qids
    grouped = sample_documents(source, 9, 0, per_query=3, split="all")
    assert len(grouped) == 9 and len({d.qid for d in grouped}) == 3


def test_metrics_are_cleaned_for_storage():
    from rankscope.tools.representations.results import clean_metrics

    cleaned = clean_metrics({"a": np.float32(0.5), "b": float("nan"), "c": np.int64(3), "d": None})
    assert cleaned == {"a": 0.5, "b": None, "c": 3, "d": None}
    assert type(cleaned["c"]) is int and type(cleaned["a"]) is float
