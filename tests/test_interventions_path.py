"""Path patching: against an independent hook implementation, and against activation patching
where theory says they agree."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rankscope.tools.interventions.cache import capture
from rankscope.tools.interventions.pairs import encode_pairs
from rankscope.tools.interventions.patching import Intervention, Patch, patch_pairs
from rankscope.tools.interventions.path import Receiver, path_patch
from rankscope.tools.registry import ToolArgumentError, get_tool, validate_args
from tests.interventions_support import context, shared_tiny, tfc1_data, tfc1_pairs

TOL = 1e-5


@pytest.fixture(scope="module")
def tiny_bert():
    return shared_tiny("bert")


@pytest.fixture(scope="module")
def batch(tiny_bert, shared_data):
    pairs = tfc1_pairs(shared_data, tiny_bert, n=4, seed=7)
    return pairs, encode_pairs(tiny_bert, pairs, np.arange(len(pairs)))


def runs(retriever, batch):
    sites = [(layer, "heads") for layer in range(retriever.n_layers)]
    return capture(retriever, batch.base, sites), capture(retriever, batch.pert, sites)


def reference_path(retriever, batch, sender, receiver):
    """Wang et al.'s two steps with plain torch hooks and full forward passes."""
    enc = retriever.encoder
    layers = enc.encoder.layer
    d = retriever.head_dim
    outs = [layer.attention.output.dense for layer in layers]

    def record_inputs(side):
        box = {}
        handles = [
            m.register_forward_pre_hook(lambda _m, a, i=i: box.update({i: a[0].clone()}))
            for i, m in enumerate(outs)
        ]
        with torch.no_grad():
            enc(**side.inputs)
        for h in handles:
            h.remove()
        return box

    clean, corrupt = record_inputs(batch.base), record_inputs(batch.pert)
    s_layer, s_head = sender
    stop = len(layers) if receiver.layer is None else receiver.layer

    def freeze(i):
        def fn(_m, a):
            if i == s_layer:
                x = a[0].clone()
                x[..., s_head * d : (s_head + 1) * d] = corrupt[i][
                    ..., s_head * d : (s_head + 1) * d
                ]
                return (x,)
            if s_layer < i < stop:
                return (clean[i],)
            return None

        return fn

    handles = [m.register_forward_pre_hook(freeze(i)) for i, m in enumerate(outs)]
    box = {}
    if receiver.layer is not None:
        proj = getattr(
            layers[receiver.layer].attention.self,
            {"q": "query", "k": "key", "v": "value"}[receiver.port],
        )
        handles.append(proj.register_forward_hook(lambda _m, _a, o: box.update(v=o.clone())))
    with torch.no_grad():
        hidden = enc(**batch.base.inputs)[0]
    for h in handles:
        h.remove()
    if receiver.layer is None:
        return retriever.readout(hidden, batch.base).float().numpy()
    cols = slice(receiver.head * d, (receiver.head + 1) * d)

    def swap(_m, _a, o):
        o = o.clone()
        o[..., cols] = box["v"][..., cols]
        return o

    handle = proj.register_forward_hook(swap)
    with torch.no_grad():
        hidden = enc(**batch.base.inputs)[0]
    handle.remove()
    return retriever.readout(hidden, batch.base).float().numpy()


@pytest.mark.parametrize("receiver", ["final", "L1.H2.q", "L1.H0.k", "L1.H3.v"])
def test_path_patching_matches_independent_reference(tiny_bert, batch, receiver):
    _, pair_batch = batch
    target, source = runs(tiny_bert, pair_batch)
    rec = Receiver.parse(receiver)
    senders = [(0, h) for h in range(tiny_bert.n_heads)]
    ours = path_patch(tiny_bert, target, source, [(s,) for s in senders], rec).numpy()
    for j, sender in enumerate(senders):
        expected = reference_path(tiny_bert, pair_batch, sender, rec)
        np.testing.assert_allclose(ours[:, j], expected, atol=TOL, rtol=0)


def test_last_layer_heads_into_final_equal_activation_patching(tiny_bert, batch):
    pairs, pair_batch = batch
    target, source = runs(tiny_bert, pair_batch)
    last = tiny_bert.n_layers - 1
    heads = tuple((last, h) for h in range(tiny_bert.n_heads))
    singles = [(h,) for h in heads]
    paths = path_patch(tiny_bert, target, source, [*singles, heads], Receiver()).numpy()
    interventions = [Intervention(f"L{last}.H{h}", (Patch(last, "heads", h),)) for _, h in heads]
    interventions.append(Intervention("all", tuple(Patch(last, "heads", h) for _, h in heads)))
    interventions.append(Intervention("attn", (Patch(last, "attn"),)))
    act = patch_pairs(tiny_bert, pairs, interventions, batch_size=len(pairs), engine="nnsight")
    # pair_batch is in pair order (index = arange), as is patch_pairs' output.
    np.testing.assert_allclose(paths, act.s_patched[:, :-1], atol=TOL)
    np.testing.assert_allclose(paths[:, -1], act.s_patched[:, -1], atol=TOL)


def test_path_patching_tool(tiny_bert, shared_data, tmp_path):
    tool = get_tool("path_patching")
    ctx = context(tiny_bert, tfc1_data(shared_data), tmp_path)
    args = validate_args(tool, {"split": "all", "n_pairs": 6, "receiver": "L1.H1.k"})
    result = tool.run(ctx, args)
    rows = result.tables["effects"]
    assert len(rows) == tiny_bert.n_heads  # the senders: every head of layer 0
    assert result.metrics["n_pairs"] + result.metrics["n_dropped"] == 6
    assert "L1.H1.k" in result.summary
    assert any(a.media_type == "image/png" for a in result.artifacts)
    joint = tool.run(
        ctx,
        validate_args(
            tool, {"split": "all", "n_pairs": 6, "senders": ["L0.H1", "L0.H2"], "joint": True}
        ),
    )
    assert "effect[L0.H1+L0.H2]" in joint.metrics


def test_path_patching_rejects_bad_paths(tiny_bert, shared_data, tmp_path):
    tool = get_tool("path_patching")
    with pytest.raises(ToolArgumentError, match="receiver"):
        validate_args(tool, {"receiver": "L1.H2"})
    ctx = context(tiny_bert, tfc1_data(shared_data), tmp_path)
    args = validate_args(tool, {"n_pairs": 2, "senders": ["L1.H0"], "receiver": "L1.H2.q"})
    with pytest.raises(ValueError, match="not before the receiver"):
        tool.run(ctx, args)


@pytest.mark.parametrize("text", ["final", "L2.H3.k", "L0.H0.q", "L10.H11.v"])
def test_receiver_names_round_trip(text):
    assert Receiver.parse(f" {text} ").name == text


@pytest.mark.parametrize("text", ["L2.H3", "L2.H3.x", "L2.cross.H3.k", "L2.mlp.v", "H3.k"])
def test_receiver_parse_refuses_what_is_not_a_head_port(text):
    with pytest.raises(ValueError, match="bad receiver"):
        Receiver.parse(text)
