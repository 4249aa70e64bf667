"""Activation patching against an independent implementation (plain torch hooks, one full
forward pass per intervention, no code shared with the engine), and its sanity checks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch

from rankscope.tools.interventions.metrics import normalised_effect
from rankscope.tools.interventions.patching import (
    Intervention,
    Patch,
    block_grid,
    heads_grid,
    patch_pairs,
)
from rankscope.tools.registry import get_tool, validate_args
from rankscope.tools.retrievers.base import Role
from tests.interventions_support import context, shared_tiny, tfc1_data, tfc1_pairs

TOL = 1e-5


@pytest.fixture(scope="module")
def tiny_bert():
    return shared_tiny("bert")


@pytest.fixture(scope="module")
def tiny_distilbert():
    return shared_tiny("distilbert")


@pytest.fixture(scope="module")
def tiny_modernbert():
    return shared_tiny("modernbert")


@pytest.fixture(scope="module")
def tiny_cross():
    return shared_tiny("bert", "cross-encoder")


# --- the independent reference --------------------------------------------------------------


@dataclass
class PlainModel:
    """How the reference reaches a model without the engine: ``where(layer, site)`` gives the
    module (by direct attribute access) and its port, ``"in"`` or ``"out"``; ``score(side)`` runs
    one full forward pass of a side batch and returns its scores."""

    where: Callable[[int, str], tuple[torch.nn.Module, str]]
    score: Callable[[Any], torch.Tensor]


def plain_encoder(retriever) -> PlainModel:
    """The reference view of a BERT-family or DistilBERT encoder: modules by attribute, the score
    from the encoder's last hidden state through the adapter's readout."""
    enc = retriever.encoder
    if retriever.arch.model_type == "distilbert":
        layers = enc.transformer.layer
        mods = [(layer.attention.out_lin, layer.ffn.lin2) for layer in layers]
    else:
        layers = enc.encoder.layer
        mods = [(layer.attention.output.dense, layer.output.dense) for layer in layers]

    def where(layer, site):
        attn_out, mlp_out = mods[layer]
        return {
            "heads": (attn_out, "in"),
            "attn": (attn_out, "out"),
            "mlp": (mlp_out, "out"),
            "resid": (layers[layer], "out"),
        }[site]

    return PlainModel(where, lambda side: retriever.readout(enc(**side.inputs)[0], side))


def _first(value):
    return value[0] if isinstance(value, tuple) else value


def reference_scores(retriever, queries, targets, sources, patches, roles, plain=None):
    """Scores of the target docs with ``patches`` = [(layer, site, head, role or None)] copied
    from the source docs, each intervention one full forward pass with torch hooks."""
    plain = plain or plain_encoder(retriever)
    target = retriever.encode_side(queries, targets)
    source = retriever.encode_side(queries, sources)
    out = []
    for layer, site, head, role in patches:
        module, port = plain.where(layer, site)
        box = {}
        if port == "in":
            handle = module.register_forward_pre_hook(lambda m, a, b=box: b.update(v=a[0].clone()))
        else:
            handle = module.register_forward_hook(
                lambda m, a, o, b=box: b.update(v=_first(o).clone())
            )
        with torch.no_grad():
            plain.score(source)
        handle.remove()
        src = box["v"]
        d = src.shape[-1] // retriever.n_heads
        cols = torch.zeros(src.shape[-1], dtype=torch.bool)
        cols[slice(head * d, (head + 1) * d) if head is not None else slice(None)] = True
        pos = torch.ones_like(roles, dtype=torch.bool) if role is None else roles == role
        sel = pos[..., None] & cols if role is not None else cols

        def swap(x, src=src, sel=sel):
            return torch.where(sel, src, x)

        if port == "in":
            handle = module.register_forward_pre_hook(lambda m, a, f=swap: (f(a[0]), *a[1:]))
        else:

            def post(m, a, o, f=swap):
                return (f(o[0]), *o[1:]) if isinstance(o, tuple) else f(o)

            handle = module.register_forward_hook(post)
        with torch.no_grad():
            out.append(plain.score(target).float())
        handle.remove()
    with torch.no_grad():
        s_target = plain.score(target).float()
        s_source = plain.score(source).float()
    return s_target.numpy(), s_source.numpy(), torch.stack(out, 1).numpy()


ROLE_OF = {"injected": Role.INJECTED, "qterm": Role.QTERM}


def check_against_reference(retriever, pairs, interventions, direction, plain=None):
    """Both engines against :func:`reference_scores` (``plain``: the model's reference view,
    by default :func:`plain_encoder`)."""
    queries = [p.query for p in pairs]
    base = [p.baseline for p in pairs]
    pert = [p.perturbed for p in pairs]
    injected = [list(p.injected) for p in pairs]
    targets, sources = (base, pert) if direction == "denoising" else (pert, base)
    specs = []
    for iv in interventions:
        (patch,) = iv.patches
        role = None if patch.positions == "all" else ROLE_OF[patch.positions]
        specs.append((patch.layer, patch.site, patch.head, role))
    roles = retriever.encode_side(queries, pert, injected=injected).roles
    ref_t, ref_s, ref_patched = reference_scores(
        retriever, queries, targets, sources, specs, roles, plain
    )
    ref_base, ref_pert = (ref_t, ref_s) if direction == "denoising" else (ref_s, ref_t)
    for engine in ("cached", "nnsight"):
        res = patch_pairs(
            retriever, pairs, interventions, direction, engine=engine, batch_size=3, max_tokens=2000
        )
        np.testing.assert_allclose(res.s_base, ref_base, atol=TOL, rtol=0)
        np.testing.assert_allclose(res.s_pert, ref_pert, atol=TOL, rtol=0)
        np.testing.assert_allclose(res.s_patched, ref_patched, atol=TOL, rtol=0)
        for metric in ("classic", "robust"):
            ours = normalised_effect(res.s_base, res.s_pert, res.s_patched, direction, metric)
            delta = ref_pert - ref_base
            num = ref_patched - ref_base[:, None]
            if direction == "noising":
                num = ref_pert[:, None] - ref_patched
            den = delta[:, None] if metric == "classic" else np.sqrt(1 + delta[:, None] ** 2)
            np.testing.assert_allclose(
                ours, num / den, atol=TOL * 100 if metric == "classic" else TOL
            )
    return res


def grid(retriever):
    n_layers, n_heads = retriever.n_layers, retriever.n_heads
    return heads_grid(n_layers, n_heads) + block_grid(
        n_layers, ["resid", "attn", "mlp"], ["all", "injected", "qterm"]
    )


@pytest.mark.parametrize("arch", ["tiny_bert", "tiny_distilbert"])
@pytest.mark.parametrize("direction", ["denoising", "noising"])
def test_engines_match_independent_reference(arch, direction, request, shared_data):
    retriever = request.getfixturevalue(arch)
    pairs = tfc1_pairs(shared_data, retriever, n=5, seed=1)
    res = check_against_reference(retriever, pairs, grid(retriever), direction)
    assert np.abs(res.s_pert - res.s_base).min() > 1e-4


def test_engines_match_independent_reference_on_minilm(minilm, shared_data):
    pairs = tfc1_pairs(shared_data, minilm, n=3, seed=2)
    interventions = (
        heads_grid(minilm.n_layers, minilm.n_heads)[::7]
        + block_grid(minilm.n_layers, ["resid", "attn", "mlp"], ["injected"])[::2]
    )
    check_against_reference(minilm, pairs, interventions, "denoising")


def test_cached_and_nnsight_agree_on_modernbert_and_cross_encoder(
    tiny_modernbert, tiny_cross, shared_data
):
    for retriever in (tiny_modernbert, tiny_cross):
        pairs = tfc1_pairs(shared_data, retriever, n=4, seed=3)
        interventions = grid(retriever)
        a = patch_pairs(retriever, pairs, interventions, engine="cached", batch_size=2)
        b = patch_pairs(retriever, pairs, interventions, engine="nnsight", batch_size=4)
        np.testing.assert_allclose(a.s_patched, b.s_patched, atol=TOL, rtol=0)
        full = [i for i, iv in enumerate(interventions) if iv.name.endswith(".resid")]
        np.testing.assert_allclose(
            a.s_patched[:, full], a.s_pert[:, None].repeat(len(full), 1), atol=TOL
        )


@pytest.mark.parametrize("direction", ["denoising", "noising"])
def test_whole_residual_recovers_one_and_nothing_gives_zero(tiny_bert, shared_data, direction):
    pairs = tfc1_pairs(shared_data, tiny_bert, n=6, seed=4)
    interventions = [
        Intervention(f"L{layer}.resid", (Patch(layer, "resid"),))
        for layer in range(tiny_bert.n_layers)
    ] + [Intervention("nothing", ())]
    for engine in ("cached", "nnsight"):
        res = patch_pairs(tiny_bert, pairs, interventions, direction, engine=engine)
        classic = normalised_effect(res.s_base, res.s_pert, res.s_patched, direction, "classic")
        np.testing.assert_allclose(classic[:, :-1], 1.0, atol=1e-4)
        np.testing.assert_allclose(classic[:, -1], 0.0, atol=1e-4)
        # Both directions by their definitions: denoising reaches s_pert, noising s_base.
        reached = res.s_pert if direction == "denoising" else res.s_base
        untouched = res.s_base if direction == "denoising" else res.s_pert
        np.testing.assert_allclose(res.s_patched[:, 0], reached, atol=TOL)
        np.testing.assert_allclose(res.s_patched[:, -1], untouched, atol=TOL)


def test_metric_definitions():
    s_base, s_pert = np.array([1.0, 2.0]), np.array([3.0, 2.0])
    patched = np.array([[2.0], [5.0]])
    classic = normalised_effect(s_base, s_pert, patched, "denoising", "classic")
    assert classic[0, 0] == pytest.approx(0.5) and np.isnan(classic[1, 0])
    robust = normalised_effect(s_base, s_pert, patched, "denoising", "robust")
    assert robust[0, 0] == pytest.approx(1 / np.sqrt(5)) and robust[1, 0] == pytest.approx(3.0)
    noising = normalised_effect(s_base, s_pert, patched, "noising", "classic")
    assert noising[0, 0] == pytest.approx((3 - 2) / 2)
    robust_n = normalised_effect(s_base, s_pert, patched, "noising", "robust")
    assert robust_n[0, 0] == pytest.approx(1 / np.sqrt(5))


def test_activation_patching_tool_heads(tiny_bert, shared_data, tmp_path):
    tool = get_tool("activation_patching")
    ctx = context(tiny_bert, tfc1_data(shared_data), tmp_path)
    args = validate_args(tool, {"split": "all", "n_pairs": 8, "seed": 5, "batch_size": 4})
    result = tool.run(ctx, args)
    m = result.metrics
    n_heads = tiny_bert.n_layers * tiny_bert.n_heads
    assert m["n_pairs"] + m["n_dropped"] == 8 and m["n_components"] == n_heads
    rows = result.tables["effects"]
    assert len(rows) == n_heads
    assert abs(rows[0]["effect"]) >= abs(rows[-1]["effect"])
    assert m["top_effect"] == rows[0]["effect"] and m["top_effect_ci_low"] == rows[0]["ci_low"]
    top = rows[0]["component"]
    assert m[f"effect[{top}]"] == rows[0]["effect"] and f"p_value[{top}]" in m
    assert rows[0]["ci_low"] <= rows[0]["effect"] <= rows[0]["ci_high"]
    assert "effect_robust" in rows[0]
    assert all(isinstance(v, (int, float)) or v is None for v in m.values())
    assert top in result.summary and f"{n_heads - 5} more rows" in result.summary
    pngs = [a.path for a in result.artifacts if a.media_type == "image/png"]
    assert [p.name for p in pngs] == ["patching_layer_head.png"] and pngs[0].stat().st_size > 0
    assert {r["relevance"] for r in result.tables["effects_by_relevance"]} <= {0, 1, 2, 3}


def test_activation_patching_tool_block_roles_and_threshold(tiny_bert, shared_data, tmp_path):
    tool = get_tool("activation_patching")
    ctx = context(tiny_bert, tfc1_data(shared_data), tmp_path)
    raw = {
        "split": "all",
        "n_pairs": 6,
        "granularity": "block",
        "positions": "role",
        "direction": "noising",
        "metric": "robust",
    }
    result = tool.run(ctx, validate_args(tool, raw))
    names = {r["component"] for r in result.tables["effects"]}
    assert "L1.resid" in names and "L0.mlp@injected" in names and "L1.attn@cls" in names
    assert any(a.path.name == "patching_layer_position.png" for a in result.artifacts)
    saved = np.load(next(a.path for a in result.artifacts if a.path.suffix == ".npz"))
    delta = saved["s_pert"] - saved["s_base"]
    # Noising the whole last residual stream removes the whole delta: the effect is the fraction
    # 1 whatever the metric argument; in score units it is Δ; the robust per-pair metric,
    # Δ / sqrt(1 + Δ²), is a descriptive column.
    assert result.metrics["effect[L1.resid]"] == pytest.approx(1.0, abs=1e-5)
    assert result.metrics["effect_score[L1.resid]"] == pytest.approx(float(delta.mean()), abs=1e-6)
    row = next(r for r in result.tables["effects"] if r["component"] == "L1.resid")
    robust = float(np.mean(delta / np.sqrt(1 + delta**2)))
    assert row["effect_robust"] == pytest.approx(robust, abs=1e-5) == row["pair_effect"]
    threshold = float(np.median(np.abs(delta)))
    strict = tool.run(ctx, validate_args(tool, {**raw, "min_abs_delta": threshold}))
    assert strict.metrics["n_dropped"] >= 2 and strict.metrics["n_pairs"] <= 4


def test_activation_patching_tool_components_joint(tiny_bert, shared_data, tmp_path):
    tool = get_tool("activation_patching")
    ctx = context(tiny_bert, tfc1_data(shared_data), tmp_path)
    raw = {
        "split": "all",
        "n_pairs": 4,
        "components": [f"L1.H{h}" for h in range(tiny_bert.n_heads)],
        "joint": True,
    }
    result = tool.run(ctx, validate_args(tool, raw))
    joint = "+".join(raw["components"])
    m = result.metrics
    assert m[f"effect[{joint}]"] == pytest.approx(
        tool.run(
            ctx, validate_args(tool, {**raw, "components": ["L1.attn"], "joint": False})
        ).metrics["effect[L1.attn]"],
        abs=1e-4,
    )


def test_effect_is_the_same_fraction_whatever_the_metric(tiny_bert, shared_data, tmp_path):
    """Regression (issue 21): ``effect[X]`` changed its unit with ``metric`` (classic: a mean of
    per-pair fractions; robust: score units) under one SESOI. It is now the fraction of the
    behaviour's score change the component restores, per query a ratio of means, for both
    metrics, and matches a computation with plain torch hooks."""
    from rankscope.tools.catalog.common import load_pairs

    tool = get_tool("activation_patching")
    ctx = context(tiny_bert, tfc1_data(shared_data), tmp_path)
    components = ["L0.H1", "L1.H2", "L1.mlp"]
    raw = {"split": "all", "n_pairs": 10, "seed": 4, "components": components}
    results = {
        metric: tool.run(ctx, validate_args(tool, {**raw, "metric": metric}))
        for metric in ("classic", "robust")
    }
    pairs = list(load_pairs(ctx, validate_args(tool, raw)))
    queries = [p.query for p in pairs]
    base, pert = [p.baseline for p in pairs], [p.perturbed for p in pairs]
    roles = tiny_bert.encode_side(queries, pert).roles
    specs = [(0, "heads", 1, None), (1, "heads", 2, None), (1, "mlp", None, None)]
    s_base, s_pert, patched = reference_scores(tiny_bert, queries, base, pert, specs, roles)
    for j, component in enumerate(components):
        num: dict[str, float] = {}
        den: dict[str, float] = {}
        for i, pair in enumerate(pairs):
            num[pair.qid] = num.get(pair.qid, 0.0) + float(patched[i, j] - s_base[i])
            den[pair.qid] = den.get(pair.qid, 0.0) + float(s_pert[i] - s_base[i])
        by_hand = {q: num[q] / den[q] for q in num}
        key = f"effect[{component}]"
        classic, robust = results["classic"], results["robust"]
        assert classic.metrics[key] == robust.metrics[key]
        assert classic.metrics[key] == pytest.approx(np.mean(list(by_hand.values())), abs=1e-4)
        got = {v.qid: v.value for v in classic.per_query[key]}
        assert got == pytest.approx(by_hand, abs=1e-4)
        assert classic.metrics[f"effect_score[{component}]"] == pytest.approx(
            float(np.mean(patched[:, j] - s_base)), abs=1e-6
        )
        for metric in ("classic", "robust"):
            spec = tool.metric_spec(validate_args(tool, {**raw, "metric": metric}), key)
            assert (spec.family, spec.kind) == ("patching_fraction", "estimate")
            assert "fraction" in spec.unit


def test_activation_patching_tool_head_role(tiny_bert, shared_data, tmp_path):
    tool = get_tool("activation_patching")
    ctx = context(tiny_bert, tfc1_data(shared_data), tmp_path)
    raw = {"split": "all", "n_pairs": 4, "granularity": "head_role", "roles": ["injected", "doc"]}
    result = tool.run(ctx, validate_args(tool, raw))
    names = {r["component"] for r in result.tables["effects"]}
    assert names == {
        f"L{layer}.H{h}@{role}"
        for layer in range(tiny_bert.n_layers)
        for h in range(tiny_bert.n_heads)
        for role in ("injected", "doc")
    }
    assert result.metrics["top_layer"] in range(tiny_bert.n_layers)
    assert any(a.path.name == "patching_head_role.png" for a in result.artifacts)


def test_activation_patching_args_errors():
    from rankscope.tools.registry import ToolArgumentError

    tool = get_tool("activation_patching")
    with pytest.raises(ToolArgumentError, match="bad component name"):
        validate_args(tool, {"components": ["layer1 head6"]})
    with pytest.raises(ToolArgumentError, match="granularity"):
        validate_args(tool, {"granularity": "neurons"})


@pytest.mark.parametrize(
    ("component", "layer", "head"),
    [
        ("L1.H6", 1, 6),
        ("L11.H11@doc", 11, 11),
        ("L1.mlp", 1, None),
        ("L0.resid@p5", 0, None),
        ("L3.cross.H5", 3, None),
        ("L1.H6+L2.H3", None, None),
    ],
)
def test_top_location_reads_the_component_name(component, layer, head):
    from rankscope.tools.interventions.report import top_location

    assert top_location([{"component": component}]) == {"top_layer": layer, "top_head": head}
