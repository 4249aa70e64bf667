"""Zero/mean ablation against hand computations; attention masking against an independent
hook implementation; the ranking helpers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rankscope.tools.interventions.ablation_runs import (
    ablate_pairs,
    kendall_by_query,
    rank_gains,
    site_means,
)
from rankscope.tools.interventions.cache import capture
from rankscope.tools.interventions.masking import Block, SingleSegmentError, masked_scores
from rankscope.tools.interventions.patching import Intervention, Patch
from rankscope.tools.registry import get_tool, validate_args
from rankscope.tools.retrievers.base import Role
from tests.interventions_support import context, shared_tiny, tfc1_data, tfc1_pairs

TOL = 1e-5


@pytest.fixture(scope="module")
def tiny_bert():
    return shared_tiny("bert")


@pytest.fixture(scope="module")
def tiny_cross():
    return shared_tiny("bert", "cross-encoder")


def hand_last_layer(retriever, side, attn_write=None, mlp_zero=False):
    """Score with the last BERT layer recomputed by hand from its input: the attention write
    replaced by ``attn_write`` (None: computed normally), or the MLP write set to zero."""
    enc = retriever.encoder
    layer = enc.encoder.layer[-1]
    with torch.no_grad():
        hidden = enc(**side.inputs, output_hidden_states=True).hidden_states[-2]
        if attn_write is None:
            keep = side.inputs["attention_mask"][:, None, None, :].float()
            mask = (1.0 - keep) * torch.finfo(torch.float32).min
            a = layer.attention(hidden, mask)[0]
        else:
            a = layer.attention.output.LayerNorm(attn_write + hidden)
        out = layer.output.LayerNorm(a) if mlp_zero else layer.output(layer.intermediate(a), a)
        return retriever.readout(out, side).float().numpy()


def test_zero_ablation_of_last_layer_heads_and_mlp_by_hand(tiny_bert, shared_data):
    pairs = tfc1_pairs(shared_data, tiny_bert, n=5, seed=8)
    last = tiny_bert.n_layers - 1
    heads = tuple(Patch(last, "heads", h, value="zero") for h in range(tiny_bert.n_heads))
    ivs = [Intervention("heads", heads), Intervention("mlp", (Patch(last, "mlp", value="zero"),))]
    res = ablate_pairs(tiny_bert, pairs, ivs, batch_size=2)
    bias = tiny_bert.encoder.encoder.layer[-1].attention.output.dense.bias
    for side_name, ours in (("baseline", res.base_ablated), ("perturbed", res.pert_ablated)):
        texts = [p.baseline if side_name == "baseline" else p.perturbed for p in pairs]
        side = tiny_bert.encode_side([p.query for p in pairs], texts)
        # all heads zero: the output projection emits its bias alone
        expected = hand_last_layer(tiny_bert, side, attn_write=bias.expand(1, 1, -1))
        np.testing.assert_allclose(ours[:, 0], expected, atol=TOL)
        np.testing.assert_allclose(
            ours[:, 1], hand_last_layer(tiny_bert, side, mlp_zero=True), atol=TOL
        )


def test_mean_ablation_uses_baseline_token_means(tiny_bert, shared_data):
    pairs = tfc1_pairs(shared_data, tiny_bert, n=4, seed=9)
    means = site_means(tiny_bert, pairs, [(0, "heads")], batch_size=3)
    side = tiny_bert.encode_side([p.query for p in pairs], [p.baseline for p in pairs])
    run = capture(tiny_bert, side, [(0, "heads")])
    real = side.roles != Role.PAD
    np.testing.assert_allclose(
        means[(0, "heads")].numpy(), run.acts[(0, "heads")][real].mean(0).numpy(), atol=1e-6
    )
    res = ablate_pairs(
        tiny_bert, pairs, [Intervention("m", (Patch(0, "heads", 1, value="mean"),))], means
    )
    d = tiny_bert.head_dim
    module = tiny_bert.encoder.encoder.layer[0].attention.output.dense

    def swap(_m, a):
        x = a[0].clone()
        x[..., d : 2 * d] = means[(0, "heads")][d : 2 * d]
        return (x,)

    handle = module.register_forward_pre_hook(swap)
    with torch.no_grad():
        expected = tiny_bert.readout(tiny_bert.encoder(**side.inputs)[0], side).numpy()
    handle.remove()
    np.testing.assert_allclose(res.base_ablated[:, 0], expected, atol=TOL)


def test_rank_helpers():
    qids = ["a", "a", "a", "b"]
    s_base = np.array([3.0, 2.0, 1.0, 5.0])
    s_pert = np.array([3.5, 2.5, 3.0, 6.0])
    gains = rank_gains(qids, s_base, s_pert)
    assert gains[:3].tolist() == [0.0, 0.0, 2.0] and np.isnan(gains[3])
    assert kendall_by_query(qids, s_base, s_base) == pytest.approx(1.0)
    assert kendall_by_query(qids, s_base, -s_base) == pytest.approx(-1.0)


def test_ablation_tool(tiny_bert, shared_data, tmp_path):
    tool = get_tool("ablation")
    ctx = context(tiny_bert, tfc1_data(shared_data), tmp_path)
    args = validate_args(
        tool, {"split": "all", "n_pairs": 8, "components": ["L0.H1", "L1.mlp"], "mode": "mean"}
    )
    result = tool.run(ctx, args)
    names = {r["component"] for r in result.tables["ablations"]}
    assert names == {"L0.H1", "L1.mlp", "L0.H1+L1.mlp"}
    m = result.metrics
    for name in names:
        assert f"delta_change[{name}]" in m and f"p_value[{name}]" in m
        assert f"kendall_tau[{name}]" in m
    row = result.tables["ablations"][0]
    assert row["delta_ablated"] - row["delta"] == pytest.approx(row["delta_change"], abs=1e-9)
    assert "Mean ablation" in result.summary
    with pytest.raises(Exception, match="residual stream"):
        validate_args(tool, {"components": ["L1.resid"]})


def reference_masked(retriever, side, source_roles, dest_roles, layers):
    """Cross-encoder scores with attention from ``source_roles`` to ``dest_roles`` blocked at
    ``layers``: a pre-hook on ``attention.self`` edits the mask it receives."""
    layer_mods = retriever.encoder.encoder.layer
    src = torch.isin(side.roles, torch.tensor(source_roles))
    dst = torch.isin(side.roles, torch.tensor(dest_roles))
    blocked = (src.unsqueeze(2) & dst.unsqueeze(1)).unsqueeze(1)

    def edit(_m, args, kwargs):
        mask = kwargs["attention_mask"]
        low = torch.finfo(mask.dtype).min
        kwargs = dict(kwargs, attention_mask=mask.masked_fill(blocked, low))
        return args, kwargs

    handles = [
        layer_mods[i].attention.self.register_forward_pre_hook(edit, with_kwargs=True)
        for i in layers
    ]
    with torch.no_grad():
        out = retriever.readout(retriever.encoder(**side.inputs)[0], side).float().numpy()
    for h in handles:
        h.remove()
    return out


def test_attention_masking_matches_reference(tiny_cross, shared_data):
    pairs = tfc1_pairs(shared_data, tiny_cross, n=4, seed=10)
    side = tiny_cross.encode_side([p.query for p in pairs], [p.perturbed for p in pairs])
    run = capture(tiny_cross, side)
    doc = [int(Role.DOC), int(Role.QTERM), int(Role.INJECTED), int(Role.FILLER)]
    configs = [
        (Block("doc", "query", (0, 1)),),
        (Block("query", "doc", (1,)),),
        (Block("cls", "doc", (0,)), Block("doc", "query", (1,))),
    ]
    ours = masked_scores(tiny_cross, run, configs).numpy()
    np.testing.assert_allclose(
        ours[:, 0], reference_masked(tiny_cross, side, doc, [int(Role.QUERY)], [0, 1]), atol=TOL
    )
    np.testing.assert_allclose(
        ours[:, 1], reference_masked(tiny_cross, side, [int(Role.QUERY)], doc, [1]), atol=TOL
    )
    assert np.abs(ours[:, 0] - run.scores.numpy()).max() > 1e-4


def test_attention_masking_tool_and_bi_encoder_error(tiny_cross, tiny_bert, shared_data, tmp_path):
    tool = get_tool("attention_masking")
    data = tfc1_data(shared_data)
    args = validate_args(tool, {"split": "all", "n_pairs": 4, "per_layer": True, "joint": True})
    result = tool.run(context(tiny_cross, data, tmp_path), args)
    names = [r["block"] for r in result.tables["masking"]]
    assert "doc->query@L0,1" in names and "doc->query@L1" in names
    assert "doc->query@L0,1+query->doc@L0,1" in names
    assert f"delta_change[{names[0]}]" in result.metrics
    with pytest.raises(SingleSegmentError, match="one segment"):
        tool.run(context(tiny_bert, data, tmp_path), args)
