"""Attention by role (read through nnsight) against the model's own ``output_attentions``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rankscope.tools.interventions.attention import attention_by_role
from rankscope.tools.registry import ToolArgumentError, get_tool, validate_args
from rankscope.tools.retrievers.base import Role
from tests.interventions_support import context, shared_tiny, tfc1_data, tfc1_pairs


def hand_masses(retriever, pairs, from_role, to_role):
    """[pairs, layers, heads] mean mass from ``from_role`` tokens to ``to_role`` tokens (or to
    other positions with the same token id when ``to_role`` is None), from output_attentions."""
    side = retriever.encode_side(
        [p.query for p in pairs], [p.perturbed for p in pairs], injected=[p.injected for p in pairs]
    )
    with torch.no_grad():
        attentions = retriever.encoder(**side.inputs, output_attentions=True).attentions
    probs = torch.stack(attentions, 1)  # [B, L, H, S, S]
    out = np.full(probs.shape[:3], np.nan)
    ids = side.inputs["input_ids"]
    positions = torch.arange(ids.shape[1])
    for b in range(probs.shape[0]):
        real = side.roles[b] != Role.PAD
        sources = (side.roles[b] == from_role).nonzero().flatten().tolist()
        if not sources:
            continue
        masses = []
        for i in sources:
            if to_role is None:
                targets = (ids[b] == ids[b, i]) & (positions != i) & real
            else:
                targets = side.roles[b] == to_role
            masses.append(probs[b, :, :, i, targets].sum(-1))
        out[b] = torch.stack(masses).mean(0).numpy()
    return out


@pytest.mark.parametrize("which", ["distilbert", "modernbert", "minilm"])
def test_attention_by_role_matches_output_attentions(which, request, shared_data):
    retriever = request.getfixturevalue("minilm") if which == "minilm" else shared_tiny(which)
    pairs = tfc1_pairs(shared_data, retriever, n=4, seed=11)
    res = attention_by_role(
        retriever,
        pairs,
        range(retriever.n_layers),
        ["injected", "doc"],
        ["qterm", "same_token", "cls"],
        batch_size=3,
    )
    for fi, from_role in enumerate([Role.INJECTED, Role.DOC]):
        for ti, to_role in enumerate([Role.QTERM, None, Role.CLS]):
            expected = hand_masses(retriever, pairs, from_role, to_role)
            np.testing.assert_allclose(res.values[:, :, :, fi, ti], expected, atol=1e-5)


def test_attention_by_role_tool(minilm, shared_data, tmp_path):
    tool = get_tool("attention_by_role")
    ctx = context(minilm, tfc1_data(shared_data), tmp_path)
    args = validate_args(
        tool,
        {"split": "all", "n_pairs": 4, "heads": ["L1", "L2.H3"], "to_roles": ["qterm", "cls"]},
    )
    result = tool.run(ctx, args)
    rows = result.tables["attention"]
    assert {r["head"] for r in rows} == {f"L1.H{h}" for h in range(12)} | {"L2.H3"}
    assert {r["to_role"] for r in rows} == {"qterm", "cls", "same_token"}  # focus target added
    m = result.metrics
    assert m["n_heads"] == 13 and m["top_attention"] is not None
    top = max(
        (r for r in rows if r["from_role"] == "injected" and r["to_role"] == "same_token"),
        key=lambda r: r["attention"],
    )
    assert m["top_attention"] == top["attention"] and top["head"] in result.summary
    assert m[f"attention[{top['head']}|injected->same_token]"] == top["attention"]
    assert all(0.0 <= r["attention"] <= 1.0 + 1e-6 for r in rows)
    assert result.artifacts[0].path.name == "attention_by_role.png"
    with pytest.raises(ToolArgumentError, match="focus"):
        validate_args(tool, {"focus": "injected->nowhere"})


def test_parse_heads_reads_heads_and_whole_layers():
    from types import SimpleNamespace

    from rankscope.tools.catalog.attention_by_role import parse_heads

    model = SimpleNamespace(n_layers=2, n_heads=3)
    assert parse_heads(model, ["L1.H2", " L0 ", "L1.H2"]) == [(1, 2), (0, 0), (0, 1), (0, 2)]
    for bad in ("L1.mlp", "L1.cross.H0", "H1", "L1.H"):
        with pytest.raises(ValueError, match="bad head"):
            parse_heads(model, [bad])
    with pytest.raises(ValueError, match="layer 2 does not exist"):
        parse_heads(model, ["L2"])
    with pytest.raises(ValueError, match="head 3 does not exist"):
        parse_heads(model, ["L0.H3"])
