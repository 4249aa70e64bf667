"""Embedding-matrix SVD against numpy, correlations by hand, and the embedding_svd tool."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from rankscope.tools.registry import get_tool, validate_args
from rankscope.tools.representations.properties import token_idf
from rankscope.tools.representations.svd import component_correlations, embedding_svd
from rankscope.tools.retrievers import load_retriever
from tests.representations_support import (
    collection_source,
    make_context,
    pairs_source,
    synthetic_collection,
)

torch.set_num_threads(1)


def ranks(values: np.ndarray) -> np.ndarray:
    """Average ranks (ties share the mean of their positions)."""
    order = np.argsort(values, kind="stable")
    r = np.empty(values.size)
    r[order] = np.arange(values.size)
    for v in np.unique(values):
        tie = values == v
        r[tie] = r[tie].mean()
    return r


@pytest.mark.parametrize("center", [False, True])
def test_svd_matches_numpy(center):
    rng = np.random.default_rng(0)
    w = rng.normal(size=(300, 20)) + rng.normal(size=20)
    ours = embedding_svd(torch.from_numpy(w).float(), k=6, center=center)
    m = w - w.mean(0) if center else w
    u, s, vt = np.linalg.svd(m, full_matrices=False)
    assert np.allclose(ours.s, s[:6], rtol=1e-5)
    for j in range(6):
        sign = np.sign(u[:, j] @ ours.u[:, j])
        assert np.allclose(ours.u[:, j], sign * u[:, j], atol=1e-5)
        assert np.allclose(ours.vt[j], sign * vt[j], atol=1e-5)
        assert ours.u[np.argmax(np.abs(ours.u[:, j])), j] > 0
    assert np.allclose(ours.energy, s[:6] ** 2 / (s**2).sum(), rtol=1e-5)


def test_component_correlations_by_hand():
    rng = np.random.default_rng(1)
    u = rng.normal(size=(50, 3))
    tokens = np.arange(5, 45)
    values = np.round(u[tokens, 1] * 2 + rng.normal(size=40), 1)
    rho, p = component_correlations(u, values, tokens)
    for j in range(3):
        hand = np.corrcoef(ranks(u[tokens, j]), ranks(values))[0, 1]
        assert rho[j] == pytest.approx(hand, abs=1e-9)
    assert p[1] < 1e-3


def test_embedding_svd_tool_smoke(tiny_model_dir, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tiny = load_retriever(str(tiny_model_dir("bert")), kind="bi-encoder", pooling="mean")
    collection = synthetic_collection(n_queries=6, docs_per_query=6)
    data = collection_source(collection)
    tool = get_tool("embedding_svd")
    result = tool.run(make_context(tiny, data, tmp_path), validate_args(tool, {"n_components": 4}))
    m = result.metrics
    idf, df = token_idf(tiny.tokenizer, list(collection.docs.values()))
    special = set(tiny.tokenizer.all_special_ids)
    tokens = np.asarray([t for t in range(len(df)) if df[t] >= 1 and t not in special])
    w = tiny.encoder.get_input_embeddings().weight.detach().double().numpy()
    u = np.linalg.svd(w, full_matrices=False)[0][:, 0]
    hand = np.corrcoef(ranks(u[tokens]), ranks(idf[tokens]))[0, 1]
    assert abs(m["spearman_c1"]) == pytest.approx(abs(hand), abs=1e-6)
    assert m["n_tokens"] == tokens.size and m["n_docs"] == len(collection.docs)
    assert len(result.tables["components"]) == 4
    assert result.artifacts[0].path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    no_collection = tool.run(
        make_context(tiny, pairs_source(collection), tmp_path),
        validate_args(tool, {"n_components": 2, "n_docs": 12}),
    )
    assert no_collection.metrics["n_docs"] == 12


@pytest.mark.slow
def test_embedding_svd_on_minilm(minilm, tmp_path):
    data = collection_source(synthetic_collection(n_queries=10, docs_per_query=10, seed=4))
    tool = get_tool("embedding_svd")
    result = tool.run(make_context(minilm, data, tmp_path), validate_args(tool, {}))
    assert result.metrics["n_tokens"] > 20
    assert len(result.tables["components"]) == 10
