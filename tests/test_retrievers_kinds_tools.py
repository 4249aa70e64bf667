"""Existing tools on the new retriever kinds, through the adapter contract alone."""

from __future__ import annotations

import math

import pytest

from rankscope.tools.contract import ToolContext
from rankscope.tools.data.types import Pair, PairSet
from rankscope.tools.interventions.patching import (
    Patch,
    block_grid,
    check_patch,
    heads_grid,
    parse_target,
    single,
)
from rankscope.tools.registry import get_tool, validate_args
from rankscope.tools.retrievers import Component, load_retriever
from tests import tiny_models
from tests.test_interventions_patching import PlainModel, check_against_reference, plain_encoder

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
            injected=((len(d) + 1, len(d) + 1 + len(q.split()[-1])),),
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


def test_activation_patching_runs_on_every_kind(retriever, tmp_path):
    result = run_tool(
        retriever, "activation_patching", {"split": "all", "granularity": "heads"}, tmp_path
    )
    assert result.metrics["n_pairs"] == 3
    assert all(v is None or math.isfinite(v) for v in result.metrics.values())


# --- per-head patching against the plain-hook reference of tests/test_interventions_patching --


def plain_mono_t5(retriever) -> PlainModel:
    """monoT5 by attribute: encoder blocks, then decoder blocks; the score from the model's own
    first-step logits."""
    model = retriever.model
    blocks = [*model.encoder.block, *model.decoder.block]
    true_id, false_id = retriever.tokenizer.convert_tokens_to_ids(["true", "false"])

    def where(layer, site):
        block = blocks[layer]
        if site in ("cross", "cross_heads"):
            return block.layer[1].EncDecAttention.o, "in" if site == "cross_heads" else "out"
        return {
            "heads": (block.layer[0].SelfAttention.o, "in"),
            "attn": (block.layer[0].SelfAttention.o, "out"),
            "mlp": (block.layer[-1].DenseReluDense.wo, "out"),
            "resid": (block, "out"),
        }[site]

    def score(side):
        logits = model(**side.inputs).logits[:, 0]
        return logits[:, true_id] - logits[:, false_id]

    return PlainModel(where, score)


def plain_decoder(retriever) -> PlainModel:
    """A decoder reranker by attribute (``model.model.layers``); the score from the model's own
    logits: yes − no at the last position, or RankLLaMA's pooled classification logit."""
    model = retriever.model
    layers = model.model.layers

    def where(layer, site):
        block = layers[layer]
        return {
            "heads": (block.self_attn.o_proj, "in"),
            "attn": (block.self_attn.o_proj, "out"),
            "mlp": (block.mlp.down_proj, "out"),
            "resid": (block, "out"),
        }[site]

    def score(side):
        logits = model(**side.inputs).logits
        if retriever.kind == "rankllama":
            return logits[:, 0]
        yes, no = retriever.tokenizer.convert_tokens_to_ids(["yes", "no"])
        return logits[:, -1, yes] - logits[:, -1, no]

    return PlainModel(where, score)


PLAIN = {
    "splade": plain_encoder,
    "late-interaction": plain_encoder,
    "mono-t5": plain_mono_t5,
    "qwen3-reranker": plain_decoder,
    "rankllama": plain_decoder,
}


@pytest.mark.parametrize("direction", ["denoising", "noising"])
def test_per_head_patching_equals_plain_hooks_on_every_kind(retriever, direction):
    """Both engines, every head and every block site (at all positions, and at the injected and
    query-term positions where a layer runs over the input's tokens), within 1e-5."""
    token_layers = [
        layer for layer in range(retriever.n_layers) if retriever.layer_reads_tokens(layer)
    ]
    interventions = (
        heads_grid(retriever.n_layers, retriever.n_heads)
        + block_grid(retriever.n_layers, ["resid", "attn", "mlp"], ["all"])
        + [
            iv
            for iv in block_grid(retriever.n_layers, ["resid", "mlp"], ["injected", "qterm"])
            if iv.patches[0].layer in token_layers
        ]
    )
    res = check_against_reference(
        retriever, list(PAIRS), interventions, direction, PLAIN[retriever.kind](retriever)
    )
    assert (abs(res.s_pert - res.s_base) > 1e-4).all()
    moved = abs(res.s_patched - (res.s_base if direction == "denoising" else res.s_pert)[:, None])
    assert (moved.max(axis=0) > 1e-6).sum() > len(interventions) // 2


@pytest.fixture(scope="module")
def mono_t5(tmp_path_factory):
    return load_retriever(str(tiny_models.save_tiny_mono_t5(tmp_path_factory.mktemp("t5"))))


def test_decoder_position_selectors_refused_on_mono_t5(mono_t5):
    encoder_last = mono_t5.n_encoder_layers - 1
    check_patch(mono_t5, Patch(encoder_last, "mlp", positions="injected"))
    check_patch(mono_t5, Patch(encoder_last + 1, "mlp"))
    with pytest.raises(ValueError, match="decoder"):
        check_patch(mono_t5, Patch(encoder_last + 1, "mlp", positions="injected"))


def test_cross_attention_components_patch_like_plain_hooks(mono_t5):
    """``cross`` and ``cross_heads`` are sites of monoT5's decoder layers only: named, parsed,
    listed, and patched (both engines, both directions) as the plain-hook reference does."""
    decoder_layers = list(range(mono_t5.n_encoder_layers, mono_t5.n_layers))
    heads = mono_t5.components("cross_heads")
    assert [c.name for c in mono_t5.components("cross")] == [f"L{x}.cross" for x in decoder_layers]
    assert len(heads) == len(decoder_layers) * mono_t5.n_heads
    assert heads[1].name == f"L{decoder_layers[0]}.cross.H1"
    assert all(Component.parse(c.name) == c for c in heads)
    assert parse_target("L3.cross.H2@all") == Patch(3, "cross_heads", 2)
    with pytest.raises(ValueError, match="no 'cross' site"):
        check_patch(mono_t5, Patch(0, "cross"))
    interventions = [single(Patch(c.layer, c.site, c.head)) for c in heads] + [
        single(Patch(layer, "cross")) for layer in decoder_layers
    ]
    for direction in ("denoising", "noising"):
        res = check_against_reference(
            mono_t5, list(PAIRS), interventions, direction, plain_mono_t5(mono_t5)
        )
        assert abs(res.s_patched - res.s_base[:, None]).max() > 1e-4


def test_cross_sites_refused_on_single_stack_kinds(retriever):
    assert retriever.kind == "mono-t5" or retriever.components("cross_heads") == []
    if retriever.kind != "mono-t5":
        with pytest.raises(ValueError, match="no 'cross_heads' site"):
            check_patch(retriever, Patch(0, "cross_heads", 0))
