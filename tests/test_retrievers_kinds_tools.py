"""Existing tools on the new retriever kinds, through the adapter contract alone."""

from __future__ import annotations

import math

import pytest

from rankscope.tools.contract import ToolContext
from rankscope.tools.diagnostics.types import Pair, PairSet
from rankscope.tools.registry import get_tool, validate_args
from rankscope.tools.retrievers import load_retriever
from tests import tiny_models

QUERIES = ["what is the capital of france", "vaccines", "bread"]
DOCS = [
    "paris is the capital and largest city of france",
    "vaccines train the immune system",
    "a good loaf of bread needs flour",
]
PAIRS = PairSet(
    "tfc1",
    tuple(
        Pair(
            qid=str(i),
            docno=f"d{i}",
            query=q,
            baseline=f"{d} and",
            perturbed=f"{d} {q.split()[-1]}",
            axiom="TFC1",
            variant="append",
        )
        for i, (q, d) in enumerate(zip(QUERIES, DOCS, strict=True))
    ),
)
BUILDERS = {
    "splade": tiny_models.save_tiny_splade,
    "late-interaction": tiny_models.save_tiny_late_interaction,
    "mono-t5": tiny_models.save_tiny_mono_t5,
    "qwen3-reranker": lambda f: tiny_models.save_tiny_decoder_reranker(f, "qwen3"),
    "rankllama": lambda f: tiny_models.save_tiny_decoder_reranker(f, "rankllama"),
}


class FixedPairs:
    """A data source that always returns ``PAIRS``."""

    def pairs(self, *args: object, **kwargs: object) -> PairSet:
        return PAIRS


@pytest.fixture(scope="module", params=list(BUILDERS))
def retriever(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"tiny-{request.param}")
    loaded = load_retriever(str(BUILDERS[request.param](folder)))
    assert loaded.kind == request.param
    return loaded


def run_tool(retriever, name: str, raw: dict, tmp_path):
    tool = get_tool(name)
    ctx = ToolContext(lambda: retriever, FixedPairs(), tmp_path, progress=False)  # type: ignore[arg-type]
    return tool.run(ctx, validate_args(tool, raw))


def test_behavioural_test_runs_on_every_kind(retriever, tmp_path):
    result = run_tool(retriever, "behavioural_test", {"split": "all", "n_bootstrap": 200}, tmp_path)
    base = retriever.score(QUERIES, [p.baseline for p in PAIRS])
    pert = retriever.score(QUERIES, [p.perturbed for p in PAIRS])
    assert result.metrics["n_pairs"] == 3
    assert result.metrics["mean_delta"] == pytest.approx(float((pert - base).mean()), abs=1e-5)


def test_activation_patching_on_encoder_side_kinds(retriever, tmp_path):
    """Per-head patching runs on SPLADE and late interaction (their patched side is a BERT
    encoder); the cached patching engine assumes the score is read from the last layer's hidden
    state, which monoT5 and the decoder rerankers (scored from logits) do not satisfy yet."""
    if retriever.kind not in ("splade", "late-interaction"):
        pytest.skip(f"activation patching does not support {retriever.kind} yet (see docstring)")
    result = run_tool(
        retriever, "activation_patching", {"split": "all", "granularity": "heads"}, tmp_path
    )
    assert result.metrics["n_pairs"] == 3
    assert all(v is None or math.isfinite(v) for v in result.metrics.values())
