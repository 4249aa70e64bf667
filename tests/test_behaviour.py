"""The behavioural axiom test against a hand computation on the real MiniLM."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer

from rankscope.tools.catalog.behavioural_test import rank_changes
from rankscope.tools.contract import ToolContext
from rankscope.tools.data.source import resolve_data
from rankscope.tools.registry import ToolArgumentError, get_tool, validate_args
from rankscope.tools.retrievers.loading import default_model_path


@pytest.fixture(scope="module")
def st_model():
    return SentenceTransformer(str(default_model_path()), device="cpu")


def hand_scores(st_model, queries, docs) -> np.ndarray:
    q = st_model.encode(queries, convert_to_tensor=True, normalize_embeddings=True)
    d = st_model.encode(docs, convert_to_tensor=True, normalize_embeddings=True)
    return (q * d).sum(-1).cpu().numpy()


def test_behavioural_test_matches_hand_computation(minilm, shared_data, st_model, tmp_path):
    data = resolve_data(f"{shared_data / 'dl1920_tfc1_pairs.tsv'}#perturbation=TFC1/append")
    tool = get_tool("behavioural_test")
    args = validate_args(tool, {"split": "all", "n_pairs": 48, "seed": 3, "n_bootstrap": 500})
    ctx = ToolContext(lambda: minilm, data, tmp_path, progress=False)
    result = tool.run(ctx, args)

    pairs = data.pairs("TFC1", "append", split="all", n=48, seed=3)
    queries = [p.query for p in pairs]
    base = hand_scores(st_model, queries, [p.baseline for p in pairs])
    pert = hand_scores(st_model, queries, [p.perturbed for p in pairs])
    delta = pert - base
    m = result.metrics
    assert m["n_pairs"] == 48
    assert m["share_moved_predicted"] == pytest.approx(np.mean(delta > 0), abs=1e-9)
    assert m["mean_delta"] == pytest.approx(delta.mean(), abs=1e-5)
    assert m["median_delta"] == pytest.approx(np.median(delta), abs=1e-5)
    assert m["mean_delta_ci_low"] <= m["mean_delta"] <= m["mean_delta_ci_high"]
    for grade in range(4):
        idx = np.array([p.relevance == grade for p in pairs])
        if idx.any():
            assert m[f"mean_delta[grade={grade}]"] == pytest.approx(delta[idx].mean(), abs=1e-5)
    rows = {(r["qid"], r["docno"]): r for r in result.tables["pairs"]}
    for p, d in zip(pairs, delta, strict=True):
        assert rows[(p.qid, p.docno)]["delta"] == pytest.approx(float(d), abs=1e-5)
    figure = result.artifacts[0].path
    assert figure.exists() and figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "more" not in result.summary or len(result.summary) < 2000


def test_rank_changes_by_hand():
    from rankscope.tools.data.types import Pair, PairSet

    pairs = PairSet(
        "t",
        tuple(
            Pair(qid=q, docno=d, query="q", baseline="b", perturbed="p", axiom="TFC1")
            for q, d in [("1", "a"), ("1", "b"), ("1", "c"), ("2", "x")]
        ),
    )
    base = np.array([0.1, 0.5, 0.3, 0.2])
    pert = np.array([0.6, 0.4, 0.2, 0.9])
    # a: rank 3 among (0.5, 0.3) -> rank 1 with 0.6: gain 2. b: 1 -> 1 (0.4 > 0.3, 0.1): 0.
    # c: rank 2 (behind 0.5) -> 0.2 < 0.1? no, 0.2 > 0.1 so still rank 2: gain 0. x alone: 0.
    assert rank_changes(pairs, base, pert).tolist() == [2, 0, 0, 0]


def test_bad_arguments_are_reported_by_name():
    tool = get_tool("behavioural_test")
    with pytest.raises(ToolArgumentError, match="n_pairs.*greater than or equal to 1"):
        validate_args(tool, {"n_pairs": 0})
    with pytest.raises(ToolArgumentError, match="bogus.*Extra inputs are not permitted"):
        validate_args(tool, {"bogus": 1})


def test_scores_are_deterministic(minilm):
    q, d = ["capital of france"], ["Paris is the capital of France."]
    assert torch.equal(minilm.score(q, d), minilm.score(q, d))
