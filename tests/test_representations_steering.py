"""Steering through nnsight against plain forward hooks and a hand computation."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from rankscope.tools.registry import ToolArgumentError, get_tool, validate_args
from rankscope.tools.representations.corpus import sample_documents
from rankscope.tools.representations.edits import (
    edit_scores,
    mean_difference,
    position_mask,
    steer_scores,
)
from rankscope.tools.retrievers import load_retriever
from tests.representations_support import collection_source, make_context, synthetic_collection

torch.set_num_threads(1)
PNG = b"\x89PNG\r\n\x1a\n"


def load_tiny(folder, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_retriever(str(folder), **kwargs)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_tiny(tiny_model_dir("bert"), kind="bi-encoder", pooling="mean", similarity="cosine")


@pytest.fixture(scope="module")
def source():
    return collection_source(synthetic_collection(n_queries=6, docs_per_query=6, seed=2))


def hook_scores(retriever, batch, layer, site, direction, scale, mask) -> torch.Tensor:
    """Reference: the same edit with a plain forward hook, no nnsight."""
    module, _ = retriever.component_module(layer, site)

    def hook(_module, _inputs, output):
        add = scale * mask.unsqueeze(-1) * direction
        if isinstance(output, tuple):
            return (output[0] + add, *output[1:])
        return output + add

    handle = module.register_forward_hook(hook)
    try:
        return retriever.score_side(batch).float()
    finally:
        handle.remove()


def check_against_hooks(retriever, docs, layers):
    batch = retriever.encode_side([d.query for d in docs], [d.text for d in docs])
    gen = torch.Generator().manual_seed(0)
    direction = torch.randn(retriever.hidden_size, generator=gen)
    for layer in layers:
        for site in ("resid", "attn", "mlp"):
            for positions in ("all", "doc", "cls", "qterm"):
                mask = position_mask(batch, positions)
                ours = steer_scores(retriever, batch, layer, direction, 1.5, positions, site)
                ref = hook_scores(retriever, batch, layer, site, direction, 1.5, mask)
                assert torch.allclose(ours, ref, atol=1e-5), (layer, site, positions)
    plain = retriever.score_side(batch).float()
    assert torch.allclose(edit_scores(retriever, batch, 0, lambda h: h), plain, atol=1e-6)


def test_nnsight_steering_matches_plain_hooks(tiny, source):
    docs = sample_documents(source, 6, seed=0)
    check_against_hooks(tiny, docs, range(tiny.n_layers))


def test_steering_the_last_layer_moves_scores_as_computed_by_hand(tiny_model_dir, source):
    """Mean pooling + dot product: adding s·v to every token of the last layer adds s·(q·v)."""
    dot = load_tiny(tiny_model_dir("bert"), kind="bi-encoder", pooling="mean", similarity="dot")
    docs = sample_documents(source, 8, seed=1)
    batch = dot.encode_side([d.query for d in docs], [d.text for d in docs])
    direction = torch.randn(dot.hidden_size, generator=torch.Generator().manual_seed(3))
    base = dot.score_side(batch).float()
    q = batch.context["query_emb"].float()
    for scale in (-2.0, 0.5, 3.0):
        steered = steer_scores(dot, batch, dot.n_layers - 1, direction, scale, "all")
        assert torch.allclose(steered - base, scale * (q @ direction), atol=1e-5)


def test_mean_difference_by_hand(tiny, source):
    pairs = list(source.pairs("TFC1", "append", tokenizer=tiny.tokenizer, n=6))
    vec, count = mean_difference(tiny, pairs, layer=1, batch_size=4)
    total, n = np.zeros(tiny.hidden_size), 0
    for p in pairs:
        base = tiny.encode_side([p.query], [p.baseline], filler=[p.filler])
        pert = tiny.encode_side([p.query], [p.perturbed], injected=[p.injected])
        with torch.no_grad():
            hb = tiny.encoder(**base.inputs, output_hidden_states=True).hidden_states[2][0]
            hp = tiny.encoder(**pert.inputs, output_hidden_states=True).hidden_states[2][0]
        pos = (pert.roles[0] == 6).nonzero().flatten()
        assert hb.shape == hp.shape
        total += (hp[pos] - hb[pos]).sum(0).numpy()
        n += pos.numel()
    assert count == n > 0
    assert np.allclose(vec, total / n, atol=1e-5)


def test_steering_tool_smoke(tiny, source, tmp_path):
    ctx = make_context(tiny, source, tmp_path)
    tool = get_tool("steering")
    args = validate_args(
        tool,
        {
            "layer": 1,
            "scales": [-2, 2, 4],
            "n_docs": 18,
            "docs_per_query": 6,
            "n_pairs": 6,
            "split": "all",
        },
    )
    result = tool.run(ctx, args)
    m = result.metrics
    rows = result.tables["dose_response"]
    assert [r["scale"] for r in rows] == [-2.0, 0.0, 2.0, 4.0]
    zero = rows[1]
    assert zero["mean_delta"] == 0.0 and zero["rank_gain"] == 0.0
    assert m["mean_delta[s=2]"] == rows[2]["mean_delta"]
    assert m["slope_ci_low"] <= m["slope"] <= m["slope_ci_high"]
    assert m["site_norm"] > 0 and m["n_queries"] == 3
    assert result.artifacts[0].path.read_bytes()[:8] == PNG

    probe = get_tool("linear_probe")
    probe_result = probe.run(ctx, validate_args(probe, {"n_docs": 24, "layers": [1], "folds": 2}))
    probe_path = str(probe_result.artifacts[1].path)
    steered = tool.run(
        ctx,
        validate_args(
            tool,
            {
                "direction": "probe",
                "probe": probe_path,
                "layer": 1,
                "scales": [1],
                "n_docs": 12,
            },
        ),
    )
    assert "probe qterm (L1)" in steered.summary
    with pytest.raises(ValueError, match="has no layer 'L0'"):
        tool.run(
            ctx,
            validate_args(tool, {"direction": "probe", "probe": probe_path, "layer": 0}),
        )


@pytest.mark.slow
def test_nnsight_steering_matches_plain_hooks_on_minilm(minilm, source):
    docs = sample_documents(source, 4, seed=0)
    check_against_hooks(minilm, docs, [0, 3, 5])


def test_steering_pair_baselines_at_filler_positions(tiny, source, tmp_path):
    ctx = make_context(tiny, source, tmp_path)
    tool = get_tool("steering")
    args = validate_args(
        tool,
        {
            "target": "pairs",
            "positions": "filler",
            "layer": 1,
            "scales": [1, 4],
            "normalize": False,
            "split": "all",
            "n_pairs": 24,
        },
    )
    result = tool.run(ctx, args)
    m = result.metrics
    pairs = source.pairs("TFC1", "append", tokenizer=tiny.tokenizer, split="all", n=24, seed=0)
    first, second = pairs.split_by_query(0.5, 0)
    assert m["n_direction_pairs"] == len(first) and m["n_docs"] == len(second)
    queries = [p.query for p in second]
    actual = tiny.score(queries, [p.perturbed for p in second]) - tiny.score(
        queries, [p.baseline for p in second]
    )
    assert m["actual_delta"] == pytest.approx(float(actual.mean()), abs=1e-6)
    assert m["recovered[s=4]"] == pytest.approx(m["mean_delta[s=4]"] / m["actual_delta"])
    assert m["n_positions"] > 0
    assert "recovered" in result.tables["dose_response"][0]
    with pytest.raises(ToolArgumentError, match="filler"):
        validate_args(tool, {"positions": "filler"})


def test_steering_along_an_sae_latent(tiny, source, tmp_path):
    from rankscope.tools.representations.sae import SparseAutoencoder

    sae = SparseAutoencoder.initialised(tiny.hidden_size, 8, k=2, seed=0)
    folder = tmp_path / "sae"
    sae.save(folder)
    tool = get_tool("steering")
    ctx = make_context(tiny, source, tmp_path)
    result = tool.run(
        ctx,
        validate_args(
            tool, {"direction": "sae", "sae": str(folder), "latent": 3, "layer": 0, "n_docs": 8}
        ),
    )
    assert "SAE latent 3" in result.summary
    assert result.metrics["direction_norm"] == pytest.approx(1.0, abs=1e-5)
