"""Attribution patching: exact where the score is linear in the activation, close to exact
patching in ranking on MiniLM, and marked approximate."""

from __future__ import annotations

import numpy as np
import pytest

from rankscope.tools.interventions.attribution import attribute_pairs
from rankscope.tools.interventions.metrics import normalised_effect, spearman, top_overlap
from rankscope.tools.interventions.patching import block_grid, heads_grid, patch_pairs
from rankscope.tools.registry import get_tool, validate_args
from tests.interventions_support import context, shared_tiny, tfc1_data, tfc1_pairs


def test_attribution_is_exact_where_the_score_is_linear(shared_data):
    # Mean pooling + dot product: the score is linear in the last layer's output.
    retriever = shared_tiny("bert")
    assert retriever.similarity == "dot" and retriever.pooling == "mean"
    pairs = tfc1_pairs(shared_data, retriever, n=5, seed=12)
    last = retriever.n_layers - 1
    interventions = block_grid(retriever.n_layers, ["resid"], ["all", "injected", "doc"])
    for direction in ("denoising", "noising"):
        approx = attribute_pairs(retriever, pairs, interventions, direction, batch_size=2)
        exact = patch_pairs(retriever, pairs, interventions, direction, batch_size=2)
        np.testing.assert_allclose(approx.s_base, exact.s_base, atol=1e-5)
        linear = [i for i, iv in enumerate(interventions) if iv.patches[0].layer == last]
        np.testing.assert_allclose(
            approx.s_patched[:, linear], exact.s_patched[:, linear], atol=1e-4, rtol=1e-5
        )


def _head_effects(scores):
    effects = normalised_effect(
        scores.s_base, scores.s_pert, scores.s_patched, "denoising", "robust"
    )
    return effects.mean(0)


def test_attribution_top_heads_agree_with_exact_on_minilm(minilm, shared_data):
    pairs = tfc1_pairs(shared_data, minilm, n=6, seed=13)
    heads = heads_grid(minilm.n_layers, minilm.n_heads)
    exact = _head_effects(patch_pairs(minilm, pairs, heads, batch_size=6))
    approx = _head_effects(attribute_pairs(minilm, pairs, heads, batch_size=6))
    assert spearman(np.abs(exact), np.abs(approx)) > 0.6
    assert top_overlap(exact, approx, k=5) >= 3


@pytest.mark.slow
def test_attribution_top5_heads_agree_with_exact_on_minilm_at_scale(minilm, shared_data):
    pairs = tfc1_pairs(shared_data, minilm, n=32, seed=14)
    heads = heads_grid(minilm.n_layers, minilm.n_heads)
    exact = _head_effects(patch_pairs(minilm, pairs, heads, batch_size=16))
    approx = _head_effects(attribute_pairs(minilm, pairs, heads, batch_size=16))
    assert spearman(np.abs(exact), np.abs(approx)) > 0.8
    assert top_overlap(exact, approx, k=5) >= 4


def test_attribution_tool_is_marked_approximate(minilm, shared_data, tmp_path):
    tool = get_tool("attribution_patching")
    ctx = context(minilm, tfc1_data(shared_data), tmp_path)
    result = tool.run(ctx, validate_args(tool, {"split": "all", "n_pairs": 4}))
    assert result.approximate is True
    assert result.summary.startswith("APPROXIMATE")
    assert len(result.tables["effects"]) == minilm.n_layers * minilm.n_heads
    assert any(a.path.name == "attribution_layer_head.png" for a in result.artifacts)
    blocks = tool.run(
        ctx, validate_args(tool, {"split": "all", "n_pairs": 4, "granularity": "block"})
    )
    assert "L5.resid@injected" in {r["component"] for r in blocks.tables["effects"]}
