"""``Retriever.as_pyterrier_transformer()``: the studied model re-ranks in a PyTerrier pipeline
(skipped where the ``rankscope[pyterrier]`` extra is not installed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rankscope.tools.retrievers import load_retriever
from tests import tiny_models

pt = pytest.importorskip("pyterrier")


def test_transformer_scores_and_ranks_like_the_retriever(tmp_path: Path) -> None:
    import pandas as pd

    retriever = load_retriever(
        str(tiny_models.save_tiny_model(tmp_path / "m", "bert", kind="cross-encoder"))
    )
    docs = tiny_models.CORPUS[1:5]
    frame = pd.DataFrame(
        [
            {"qid": qid, "query": query, "docno": f"d{i}", "text": text}
            for qid, query in (("1", "capital of france"), ("2", "bread"))
            for i, text in enumerate(docs)
        ]
    )
    pipeline = pt.Transformer.identity() >> retriever.as_pyterrier_transformer(batch_size=3)
    out = pipeline(frame)
    expected = retriever.score(frame["query"].tolist(), frame["text"].tolist())
    merged = frame.merge(out, on=["qid", "docno"], suffixes=("", "_out"))
    assert len(merged) == len(frame)
    assert merged["score"].tolist() == pytest.approx(expected.tolist(), abs=1e-6)
    for _, group in out.groupby("qid"):
        by_score = group.sort_values("score", ascending=False)["rank"].tolist()
        assert by_score == list(range(len(group)))
    assert not pt.java.started()
    with pytest.raises(ValueError, match="lacks the columns \\['text'\\]"):
        retriever.as_pyterrier_transformer()(frame.drop(columns=["text"]))
