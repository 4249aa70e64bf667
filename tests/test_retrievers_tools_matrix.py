"""Every tool on every retriever kind (issue 14): each runs with finite metrics or refuses with a
clear reason, asserted here by its message.

Seven kinds, tiny random models saved and loaded through ``load_retriever``: BERT bi-encoder,
BERT cross-encoder, SPLADE, late interaction, monoT5, Qwen3-Reranker and RankLLaMA.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from rankscope.tools.registry import get_tool, validate_args
from rankscope.tools.retrievers import Retriever, load_retriever
from tests import tiny_models
from tests.representations_support import collection_source, make_context, synthetic_collection

KINDS: dict[str, Callable[[Path], Path]] = {
    "bi-encoder": lambda f: tiny_models.save_tiny_model(f, "bert"),
    "cross-encoder": lambda f: tiny_models.save_tiny_model(f, "bert", kind="cross-encoder"),
    "splade": tiny_models.save_tiny_splade,
    "late-interaction": tiny_models.save_tiny_late_interaction,
    "mono-t5": tiny_models.save_tiny_mono_t5,
    "qwen3-reranker": lambda f: tiny_models.save_tiny_decoder_reranker(f, "qwen3"),
    "rankllama": lambda f: tiny_models.save_tiny_decoder_reranker(f, "rankllama"),
}
PAIRS = {"split": "all", "n_pairs": 6}
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "behaviour": ("behavioural_test", {**PAIRS, "n_bootstrap": 200}),
    "patch-heads": ("activation_patching", {**PAIRS, "granularity": "heads"}),
    "patch-block-role": (
        "activation_patching",
        {**PAIRS, "granularity": "block", "positions": "role"},
    ),
    "patch-block-index": (
        "activation_patching",
        {**PAIRS, "granularity": "block", "positions": "index", "max_positions": 8},
    ),
    "patch-head-role": ("activation_patching", {**PAIRS, "granularity": "head_role"}),
    "path-final": ("path_patching", PAIRS),
    "path-q": ("path_patching", {**PAIRS, "senders": ["L0.H0", "L0.H1"], "receiver": "L1.H2.q"}),
    "path-k": ("path_patching", {**PAIRS, "senders": ["L0.H0"], "receiver": "L1.H2.k"}),
    "attribution-heads": ("attribution_patching", {**PAIRS, "granularity": "heads"}),
    "attribution-block-role": (
        "attribution_patching",
        {**PAIRS, "granularity": "block", "positions": "role"},
    ),
    "attribution-head-role": ("attribution_patching", {**PAIRS, "granularity": "head_role"}),
    "ablation": ("ablation", {**PAIRS, "components": ["L0.H1", "L1.mlp"]}),
    "attention-masking": ("attention_masking", PAIRS),
    "attention-by-role": ("attention_by_role", PAIRS),
    "probe": ("linear_probe", {"n_docs": 16, "folds": 2}),
    "features-neurons": ("feature_inspection", {"n_docs": 8}),
    "sae-final": ("train_sae", {"n_docs": 16, "epochs": 2}),
    "sae-layer-0": ("train_sae", {"n_docs": 16, "epochs": 2, "layer": 0}),
    "steering": ("steering", PAIRS),
    "embedding-svd": ("embedding_svd", {"n_docs": 16}),
    "term-contributions": ("term_contributions", PAIRS),
}

ONE_SEGMENT = "needs a cross-encoder; .* it encodes the document alone"
CAUSAL = "needs a cross-encoder; .* one causal sequence, whose causal mask this tool does not edit"
NO_EMBEDDING = "has no dense final document embedding: give a layer"
NOT_SPLADE = "term_contributions needs a SPLADE model"
GQA = "grouped-query attention: 4 query heads, 2 key/value heads"
REFUSALS: dict[tuple[str, str], str] = {
    **{
        (kind, "attention-masking"): ONE_SEGMENT
        for kind in ("bi-encoder", "splade", "late-interaction")
    },
    ("mono-t5", "attention-masking"): "needs a cross-encoder; .* T5's relative position bias",
    ("qwen3-reranker", "attention-masking"): CAUSAL,
    ("rankllama", "attention-masking"): CAUSAL,
    **{
        (kind, "sae-final"): NO_EMBEDDING
        for kind in (
            "cross-encoder",
            "splade",
            "late-interaction",
            "mono-t5",
            "qwen3-reranker",
            "rankllama",
        )
    },
    **{(kind, "term-contributions"): NOT_SPLADE for kind in KINDS if kind != "splade"},
    ("qwen3-reranker", "path-k"): GQA,
    ("rankllama", "path-k"): GQA,
}
"""(kind, case) -> the refusal's message (a regular expression); every other pair must run."""

DEGENERATE = ("p_value", "rank_gain_ci")
"""Metrics that are NaN when every query gives the same value (a patch that restores the whole
effect everywhere has no spread to test; six pairs can tie every rank): allowed NaN, not inf."""


@pytest.fixture(scope="module", params=list(KINDS))
def retriever(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Retriever:
    folder = tmp_path_factory.mktemp(f"tiny-{request.param}")
    loaded = load_retriever(str(KINDS[request.param](folder)))
    assert loaded.kind == request.param
    return loaded


@pytest.fixture(scope="module")
def data() -> Any:
    return collection_source(synthetic_collection())


@pytest.mark.parametrize("case", list(CASES))
def test_tool_runs_or_refuses_clearly(
    retriever: Retriever, data: Any, case: str, tmp_path: Path
) -> None:
    name, raw = CASES[case]
    tool = get_tool(name)
    ctx = make_context(retriever, data, tmp_path)
    refusal = REFUSALS.get((retriever.kind, case))
    if refusal is not None:
        with pytest.raises(ValueError, match=refusal):
            tool.run(ctx, validate_args(tool, raw))
        return
    result = tool.run(ctx, validate_args(tool, raw))
    numbers = {k: v for k, v in result.metrics.items() if isinstance(v, int | float)}
    assert numbers, f"{name} on {retriever.kind} gave no numeric metric"
    for key, value in numbers.items():
        if any(part in key for part in DEGENERATE):
            assert not math.isinf(value), key
        else:
            assert math.isfinite(value), f"{name} on {retriever.kind}: {key} = {value}"


def test_mono_t5_role_grids_skip_decoder_blocks(data: Any, tmp_path: Path) -> None:
    """Role and index positions exist in monoT5's encoder blocks only: the grids patch its
    decoder blocks at all positions and nowhere else; naming a decoder block for a
    token-level reading is refused."""
    from rankscope.tools.catalog.activation_patching import (
        ActivationPatchingArgs,
        build_interventions,
    )

    t5 = load_retriever(str(tiny_models.save_tiny_mono_t5(tmp_path / "t5")))
    decoder = range(t5.n_encoder_layers, t5.n_layers)
    args = ActivationPatchingArgs(granularity="block", positions="role")
    grid = build_interventions(t5, args)
    at_decoder = {p.positions for iv in grid for p in iv.patches if p.layer in decoder}
    assert at_decoder == {"all"}
    assert any(p.positions == "injected" for iv in grid for p in iv.patches)
    head_role = build_interventions(t5, ActivationPatchingArgs(granularity="head_role"))
    assert head_role and all(p.layer < t5.n_encoder_layers for iv in head_role for p in iv.patches)
    ctx = make_context(t5, data, tmp_path / "art")
    for name, raw, message in [
        ("linear_probe", {"n_docs": 16, "folds": 2, "layers": [2]}, "decoder blocks"),
        ("attention_by_role", {**PAIRS, "heads": ["L3.H0"]}, "decoder block"),
        ("steering", {**PAIRS, "layer": 3}, "decoder blocks"),
        ("train_sae", {"n_docs": 16, "epochs": 2, "layer": 2}, "decoder blocks"),
    ]:
        tool = get_tool(name)
        with pytest.raises(ValueError, match=message):
            tool.run(ctx, validate_args(tool, raw))
