"""nDCG@10 of the studied model on the built-in collection (`rankscope eval`, ir_measures),
checked against a hand computation of trec_eval's definition."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rankscope.agent.cli import app
from rankscope.tools.data.builtin import load_builtin
from rankscope.tools.retrievers import Retriever, load_retriever
from rankscope.tools.retrievers.evaluation import ndcg_at_10, rerank_run
from tests import tiny_models

pytest.importorskip("ir_measures")


def hand_ndcg_at_10(scores: dict[str, float], qrels: dict[str, int]) -> float:
    """trec_eval's ndcg_cut_10: linear gains, 1 / log2(rank + 1) discounts, ties broken by
    docno descending, the ideal DCG from every judged document of the query."""
    ranked = sorted(scores, key=lambda d: (scores[d], d), reverse=True)[:10]
    dcg = sum(qrels.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranked))
    ideal = sorted(qrels.values(), reverse=True)[:10]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg else 0.0


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_models.save_tiny_model(
        tmp_path_factory.mktemp("tiny-ce"), "bert", kind="cross-encoder"
    )


@pytest.fixture(scope="module")
def retriever(model_dir: Path) -> Retriever:
    return load_retriever(str(model_dir))


def test_ndcg_at_10_equals_hand_computation_on_builtin(retriever: Retriever) -> None:
    collection = load_builtin()
    result = ndcg_at_10(retriever, collection)
    run = rerank_run(retriever, collection)
    hand = {qid: hand_ndcg_at_10(run[qid], collection.qrels[qid]) for qid in run}
    assert result.n_queries == len(collection.queries) == 28
    assert result.n_docs == 28 * 8
    assert set(result.per_query) == set(hand)
    for qid, value in hand.items():
        assert result.per_query[qid] == pytest.approx(value, abs=1e-6)
    assert result.ndcg_at_10 == pytest.approx(sum(hand.values()) / len(hand), abs=1e-6)
    assert 0 < result.ndcg_at_10 < 1


def test_rankscope_eval_prints_ndcg(model_dir: Path, retriever: Retriever) -> None:
    runner = CliRunner()
    expected = ndcg_at_10(retriever, load_builtin()).ndcg_at_10
    out = runner.invoke(app, ["eval", "--model", str(model_dir), "--no-progress"])
    assert out.exit_code == 0, out.output
    assert f"nDCG@10 {expected:.4f}" in out.output
    assert "28 judged queries" in out.output
    as_json = runner.invoke(app, ["eval", "--model", str(model_dir), "--json"])
    assert as_json.exit_code == 0, as_json.output
    payload = json.loads(as_json.stdout[as_json.stdout.index("{") :])
    assert payload["nDCG@10"] == pytest.approx(expected, abs=1e-9)
    assert len(payload["per_query"]) == 28


def test_rankscope_eval_refuses_fixed_pairs(model_dir: Path, tmp_path: Path) -> None:
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("qid\tdocno\tquery\ttext\tperturbed_text\n1\td\tq\ta b\ta b q\n")
    out = CliRunner().invoke(app, ["eval", "--model", str(model_dir), "--data", str(pairs)])
    assert out.exit_code == 1
    assert "not a judged collection" in out.output
