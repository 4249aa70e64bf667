"""The ``circuit`` tool: joint patching of component sets and the random-set control against an
independent plain-hook computation, recovery of heads a rule was trained into (and no circuit in
a model without the rule), and the discovery-only ranking."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rankscope.tools.catalog.common import load_pairs
from rankscope.tools.data.source import resolve_data
from rankscope.tools.interventions.circuits import (
    SetFractions,
    alternatives,
    curve_area,
    random_sets,
    random_test,
    selection_frequency,
)
from rankscope.tools.registry import ToolArgumentError, get_tool, validate_args
from rankscope.tools.retrievers import Retriever, load_retriever
from rankscope.tools.retrievers.loading import default_model_path
from tests.interventions_support import context, shared_tiny
from tests.tiny_models import tiny_config

SESOI = 0.05
"""The default SESOI of the patching_fraction family (agent/policy.py)."""
PLANTED = ("L1.H1", "L1.H2")


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """One thread: on a shared 2-core machine two threads per process stall each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data():
    return resolve_data(None)


# --- the independent reference: plain forward hooks on a BertModel ----------------------------


def _mean_pooled(model, tokenizer, texts: Sequence[str], hooks=()) -> torch.Tensor:
    enc = tokenizer(list(texts), padding=True, truncation=True, max_length=256, return_tensors="pt")
    handles = [module.register_forward_pre_hook(fn) for module, fn in hooks]
    try:
        with torch.no_grad():
            hidden = model(**enc)[0]
    finally:
        for handle in handles:
            handle.remove()
    mask = enc["attention_mask"].unsqueeze(-1).float()
    return (hidden * mask).sum(1) / mask.sum(1)


class Reference:
    """Per query, the fraction of the TFC1 score change that patching a set of heads together
    restores (denoising) or removes (noising), computed with plain forward pre-hooks on each
    layer's attention output projection (its input holds the heads' outputs side by side): the
    source run's slices of the set's heads copied into the target run; mean pooling and the dot
    product with the query's vector written out here."""

    def __init__(self, retriever: Retriever, pairs, direction: str) -> None:
        self.model, self.tokenizer = retriever.encoder, retriever.tokenizer
        self.pairs, self.direction = pairs, direction
        config = self.model.config
        self.d = config.hidden_size // config.num_attention_heads
        self.dense = [layer.attention.output.dense for layer in self.model.encoder.layer]
        self.query = _mean_pooled(self.model, self.tokenizer, [p.query for p in pairs])
        base, pert = [p.baseline for p in pairs], [p.perturbed for p in pairs]
        self.target, source = (base, pert) if direction == "denoising" else (pert, base)
        self.saved: dict[int, torch.Tensor] = {}

        def save(layer: int):
            return lambda _m, args: self.saved.__setitem__(layer, args[0].clone())

        hooks = [(module, save(i)) for i, module in enumerate(self.dense)]
        s_source = self.score(source, hooks)
        s_target = self.score(self.target)
        self.s_base, self.s_pert = (
            (s_target, s_source) if direction == "denoising" else (s_source, s_target)
        )

    def score(self, docs: Sequence[str], hooks=()) -> torch.Tensor:
        return (self.query * _mean_pooled(self.model, self.tokenizer, docs, hooks)).sum(-1)

    def fractions(self, members: Sequence[str]) -> dict[str, float]:
        heads: dict[int, list[int]] = defaultdict(list)
        for name in members:
            layer, head = name.split(".")
            heads[int(layer[1:])].append(int(head[1:]))
        d = self.d

        def swap(layer: int):
            def fn(_m, args):
                x = args[0].clone()
                for h in heads[layer]:
                    x[..., h * d : (h + 1) * d] = self.saved[layer][..., h * d : (h + 1) * d]
                return (x, *args[1:])

            return fn

        patched = self.score(self.target, [(self.dense[i], swap(i)) for i in heads])
        num = patched - self.s_base if self.direction == "denoising" else self.s_pert - patched
        sums: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
        deltas = (self.s_pert - self.s_base).tolist()
        for pair, n, delta in zip(self.pairs, num.tolist(), deltas, strict=True):
            sums[pair.qid][0] += n
            sums[pair.qid][1] += delta
        self.denominators = {q: den for q, (_, den) in sums.items()}
        return {q: n / den for q, (n, den) in sums.items() if den != 0}

    def mean_tolerance(self) -> float:
        """The absolute tolerance of a mean over queries of their fractions."""
        return float(np.mean([self.tolerance(q) for q in self.denominators]))

    def tolerance(self, qid: str) -> float:
        """The absolute tolerance of a query's fraction: float32 scores agree to ~1e-5 score
        units between batchings, and a fraction divides that by the query's score change."""
        return 2e-5 / abs(self.denominators[qid])


def by_qid(values) -> dict[str, float]:
    return {v.qid: v.value for v in values}


def test_joint_patching_and_random_control_match_plain_hooks(data, tmp_path):
    retriever = shared_tiny("bert")
    tool = get_tool("circuit")
    args = validate_args(
        tool,
        {"n_pairs": 24, "max_k": 3, "k": 3, "n_random": 100, "n_random_curve": 0, "seed": 3},
    )
    result = tool.run(context(retriever, data, tmp_path), args)
    pairs = list(load_pairs(context(retriever, data, tmp_path), args))
    members = [row["component"] for row in result.tables["members"]]
    assert len(members) == 3 and result.metrics["k"] == 3

    # joint sufficiency and necessity of the 3-set, per query
    denoise, noise = (
        Reference(retriever, pairs, "denoising"),
        Reference(retriever, pairs, "noising"),
    )
    suff, nec = denoise.fractions(members), noise.fractions(members)
    got = by_qid(result.per_query["faithfulness"])
    assert got.keys() == suff.keys()
    for qid, value in suff.items():
        assert got[qid] == pytest.approx(value, rel=1e-4, abs=denoise.tolerance(qid)), qid
    for qid, value in by_qid(result.per_query["necessity"]).items():
        assert value == pytest.approx(nec[qid], rel=1e-4, abs=noise.tolerance(qid)), qid
    assert result.metrics["faithfulness"] == pytest.approx(
        np.mean(list(suff.values())), abs=denoise.mean_tolerance()
    )

    # the curve's first points are the top-1 and top-2 sets patched jointly
    for row in result.tables["curve"][:2]:
        ref = denoise.fractions(row["members"].split("+"))
        assert row["sufficiency"] == pytest.approx(
            np.mean(list(ref.values())), abs=denoise.mean_tolerance()
        )

    # the random sets: drawn from the pool, each re-measured by hand
    rows = [r for r in result.tables["random_sets"] if r["k"] == 3]
    assert len(rows) == 100
    pool = {f"L{i}.H{h}" for i in range(retriever.n_layers) for h in range(retriever.n_heads)}
    per_set: list[dict[str, float]] = []
    for row in rows:
        chosen = row["members"].split("+")
        assert len(set(chosen)) == 3 and set(chosen) <= pool
        ref = denoise.fractions(chosen)
        per_set.append(ref)
        assert row["faithfulness"] == pytest.approx(
            np.mean(list(ref.values())), abs=denoise.mean_tolerance()
        )
    set_means = np.array([np.mean(list(ref.values())) for ref in per_set])
    circuit = float(np.mean(list(suff.values())))
    assert result.metrics["random_mean"] == pytest.approx(
        set_means.mean(), abs=denoise.mean_tolerance()
    )
    expected_p = (1 + np.sum(set_means >= circuit - 1e-9)) / (1 + len(set_means))
    assert result.metrics["random_p_value"] == pytest.approx(expected_p)
    assert result.metrics["random_percentile"] == pytest.approx(
        100 * np.mean(set_means < circuit - 1e-9)
    )
    beats = by_qid(result.per_query["beats_random"])
    for qid, value in suff.items():
        random_q = np.mean([ref[qid] for ref in per_set])
        assert beats[qid] == pytest.approx(value - random_q, abs=2 * denoise.tolerance(qid)), qid

    # leave-one-out: the 3-set less each member
    for member in members:
        rest = [m for m in members if m != member]
        ref = denoise.fractions(rest)
        drops = by_qid(result.per_query[f"loo_drop[{member}]"])
        for qid, value in suff.items():
            assert drops[qid] == pytest.approx(value - ref[qid], abs=2 * denoise.tolerance(qid))

    # the export and the figure
    (png,) = [a.path for a in result.artifacts if a.media_type == "image/png"]
    assert png.stat().st_size > 0
    (doc_path,) = [a.path for a in result.artifacts if a.path.name == "circuit.json"]
    doc = json.loads(doc_path.read_text())
    assert [n["component"] for n in doc["nodes"]] == members
    assert doc["behaviour"]["axiom"] == "TFC1" and doc["k"] == 3 and doc["target"] == 0.6
    assert doc["model"]["weights_hash"] == retriever.weights_hash
    assert doc["scores"]["faithfulness"]["value"] == pytest.approx(result.metrics["faithfulness"])
    assert "Circuit of 3" in result.summary


# --- recovery of planted heads -------------------------------------------------------------


def _pooled(model, tokenizer, texts: Sequence[str]) -> torch.Tensor:
    enc = tokenizer(list(texts), padding=True, truncation=True, max_length=256, return_tensors="pt")
    hidden = model(**enc)[0]
    mask = enc["attention_mask"].unsqueeze(-1).float()
    return (hidden * mask).sum(1) / mask.sum(1)


def train_head(retriever: Retriever, pairs, carrier: str, rise: float, steps: int = 50) -> None:
    """Train one head (its q, k, v rows and its columns of the output projection; nothing else
    moves) to raise the TFC1 score change by ``rise`` while keeping the baseline scores."""
    model, tokenizer = retriever.encoder, retriever.tokenizer
    layer, head = (int(x[1:]) for x in carrier.split("."))
    d = model.config.hidden_size // model.config.num_attention_heads
    rows = slice(head * d, (head + 1) * d)
    params = dict(model.named_parameters())
    masks: dict[str, torch.Tensor] = {}
    prefix = f"encoder.layer.{layer}.attention."
    for proj in ("query", "key", "value"):
        for kind in ("weight", "bias"):
            masks[f"{prefix}self.{proj}.{kind}"] = torch.zeros_like(
                params[f"{prefix}self.{proj}.{kind}"]
            )
            masks[f"{prefix}self.{proj}.{kind}"][rows] = 1.0
    masks[f"{prefix}output.dense.weight"] = torch.zeros_like(params[f"{prefix}output.dense.weight"])
    masks[f"{prefix}output.dense.weight"][:, rows] = 1.0
    for name, p in params.items():
        p.requires_grad_(name in masks)
    with torch.no_grad():
        q0 = _pooled(model, tokenizer, [p.query for p in pairs])
        b0 = (q0 * _pooled(model, tokenizer, [p.baseline for p in pairs])).sum(-1)
        p0 = (q0 * _pooled(model, tokenizer, [p.perturbed for p in pairs])).sum(-1)
    optimiser = torch.optim.Adam([params[k] for k in masks], lr=3e-2)
    generator = torch.Generator().manual_seed(0)
    with torch.enable_grad():
        for _ in range(steps):
            idx = torch.randperm(len(pairs), generator=generator)[:16].tolist()
            batch = [pairs[i] for i in idx]
            q = _pooled(model, tokenizer, [p.query for p in batch])
            sb = (q * _pooled(model, tokenizer, [p.baseline for p in batch])).sum(-1)
            sp = (q * _pooled(model, tokenizer, [p.perturbed for p in batch])).sum(-1)
            loss = F.mse_loss(sp - sb, p0[idx] - b0[idx] + rise) + F.mse_loss(sb, b0[idx])
            optimiser.zero_grad()
            loss.backward()
            for key, mask in masks.items():
                params[key].grad.mul_(mask)
            optimiser.step()
    for p in params.values():
        p.requires_grad_(False)
    model.eval()


def tiny_bi_encoder(folder: Path, seed: int = 0) -> Retriever:
    """A tiny BERT bi-encoder (2 layers, 8 heads of width 4, small initial weights: the TFC1
    change flows mostly straight from the added token into the mean-pooled vector), the MiniLM
    tokenizer, mean pooling, dot product."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(default_model_path())
    config = tiny_config("bert", len(tokenizer), tokenizer, cross=False, initializer_range=0.02)
    config.num_attention_heads = 8
    torch.manual_seed(seed)
    AutoModel.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return load_retriever(str(folder), kind="bi-encoder", pooling="mean", similarity="dot")


@pytest.fixture(scope="module")
def planted(tmp_path_factory, data) -> Retriever:
    """The tiny bi-encoder with TFC1 amplified by training L1.H1, then L1.H2 (each alone)."""
    retriever = tiny_bi_encoder(tmp_path_factory.mktemp("planted"))
    pairs = list(
        data.pairs("TFC1", "append", tokenizer=retriever.tokenizer, split="all", n=None, seed=0)
    )
    for carrier in PLANTED:
        train_head(retriever, pairs, carrier, rise=0.3)
    return retriever


def discover_then_replicate(retriever: Retriever, data, folder: Path, target: float):
    """The protocol's use: rank and size the circuit on discovery queries, then measure the same
    members and k on held-out queries."""
    tool = get_tool("circuit")
    common = {"n_pairs": 48, "max_k": 4, "target": target, "n_random_curve": 0}
    found = tool.run(context(retriever, data, folder / "d"), validate_args(tool, common))
    ranking = [row["component"] for row in found.tables["ranking"]][:4]
    k = int(found.metrics["k"])
    held = tool.run(
        context(retriever, data, folder / "h"),
        validate_args(tool, {**common, "split": "holdout", "members": ranking, "k": k}),
    )
    return found, held


def test_circuit_recovers_planted_heads_and_beats_random(planted, data, tmp_path):
    found, held = discover_then_replicate(planted, data, tmp_path, target=0.9)
    circuit = {row["component"] for row in found.tables["members"]}
    precision = len(circuit & set(PLANTED)) / len(circuit)
    recall = len(circuit & set(PLANTED)) / len(PLANTED)
    message = (
        f"circuit {sorted(circuit)} vs planted {list(PLANTED)}: precision {precision:.2f}, "
        f"recall {recall:.2f}\n{found.summary}"
    )
    assert precision == 1.0 and recall == 1.0, message
    assert found.metrics["smallest_k"] == 2, message
    assert all(found.metrics[f"stability[{h}]"] == 1.0 for h in PLANTED), message
    m = held.metrics
    # together they restore and remove most of the effect on held-out queries
    assert m["faithfulness_ci_low"] > 0.6 and m["necessity_ci_low"] > 0.6, held.summary
    assert m["faithfulness"] > 0.8 and m["necessity"] > 0.8, held.summary
    # beats random 2-sets of the 16 heads by more than the SESOI, and is at their top
    assert m["beats_random_ci_low"] > SESOI, held.summary
    assert m["random_p_value"] < 0.05 and m["random_percentile"] > 95, held.summary
    assert all(m[f"loo_drop_ci_low[{h}]"] > SESOI for h in PLANTED), held.summary
    assert m["all_heads_faithfulness"] > 0.8, held.summary
    assert m["alternative_faithfulness"] < m["faithfulness"] - SESOI, held.summary


def test_no_circuit_without_the_rule(data, tmp_path):
    """The same tiny bi-encoder before any head was trained: its TFC1 change does not flow
    through a few heads, so the circuit found on discovery queries does not beat random sets of
    its size on held-out queries (no group claim could be supported)."""
    base = tiny_bi_encoder(tmp_path / "base")
    found, held = discover_then_replicate(base, data, tmp_path, target=0.9)
    m = held.metrics
    assert not (m["beats_random_ci_low"] > SESOI and m["random_p_value"] < 0.05), held.summary
    assert m["faithfulness_ci_low"] < 0.9, held.summary


def test_members_none_is_refused_outside_discovery():
    tool = get_tool("circuit")
    for split in ("holdout", "all"):
        with pytest.raises(ToolArgumentError, match="ranking must come from discovery"):
            validate_args(tool, {"split": split})
    validate_args(tool, {"split": "holdout", "members": ["L1.H1", "L0.mlp"], "k": 2})
    with pytest.raises(ToolArgumentError, match="larger than the 1 members"):
        validate_args(tool, {"members": ["L1.H1"], "k": 2})
    with pytest.raises(ToolArgumentError, match="at least 100"):
        validate_args(tool, {"n_random": 10})
    no_control = validate_args(tool, {"n_random": 0, "members": ["L1.H1"]})
    assert not tool.produces(no_control, "beats_random")
    assert not tool.produces(no_control, "stability[L1.H1]")
    assert tool.produces(no_control, "faithfulness") and tool.produces(
        no_control, "loo_drop[L1.H1]"
    )


def test_a_run_without_random_control_declares_what_it_gives(data, tmp_path):
    """The group claim's run (members fixed, n_random=0: the control is a call of its own)
    produces only metrics its arguments declare, with per-query values for every estimate."""
    retriever = shared_tiny("bert")
    tool = get_tool("circuit")
    args = validate_args(
        tool,
        {
            "split": "holdout",
            "n_pairs": 16,
            "members": ["L1.H2", "L0.H3", "L1.H0"],
            "k": 2,
            "n_random": 0,
            "max_k": 3,
        },
    )
    result = tool.run(context(retriever, data, tmp_path), args)
    assert "beats_random" not in result.metrics and "random_p_value" not in result.metrics
    assert all(tool.produces(args, key) for key in result.metrics), result.metrics
    estimates = {k for k in result.metrics if tool.metric_spec(args, k).kind == "estimate"}
    assert (
        estimates
        == set(result.per_query)
        == {"faithfulness", "necessity", "loo_drop[L1.H2]", "loo_drop[L0.H3]"}
    )
    assert "no random-set control" in result.summary
    assert [r["component"] for r in result.tables["members"]] == ["L1.H2", "L0.H3"]
    # the curve's band still draws n_random_curve sets at the other sizes, none at k
    assert {r["k"] for r in result.tables["random_sets"]} == {1, 3}


# --- the pieces --------------------------------------------------------------------------------


def test_random_sets_are_seeded_and_the_test_counts_ties():
    pool = [f"L0.H{h}" for h in range(6)]
    sets = random_sets(pool, 3, 50, seed=1)
    assert sets == random_sets(pool, 3, 50, seed=1) != random_sets(pool, 3, 50, seed=2)
    assert all(len(set(s)) == 3 and set(s) <= set(pool) for s in sets)
    percentile, p = random_test(0.5, [0.1, 0.5, 0.7, 0.2])
    assert percentile == pytest.approx(50.0) and p == pytest.approx(3 / 5)


def test_curve_area_alternatives_and_selection_frequency():
    assert curve_area([1.0, 1.0]) == pytest.approx(0.75)
    assert curve_area([0.5]) == pytest.approx(0.25)
    ranking = ["a", "b", "c", "d", "e"]
    assert alternatives(ranking, 2)[0] == ("c", "d")
    assert ("a", "c") in alternatives(ranking, 2) and ("b", "c") in alternatives(ranking, 2)
    assert alternatives(ranking, 4)[0] == ("a", "b", "c", "e")
    assert alternatives(ranking, 5) == []
    # component 'a' restores everything on every query, 'b' on one query only
    fractions = SetFractions(
        names=["a", "b", "c"],
        numerators=np.array([[1.0, 0.0, 0.1], [1.0, 0.0, 0.1], [1.0, 5.0, 0.1]]),
        deltas=np.ones(3),
        qids=["q1", "q2", "q3"],
        s_base=np.zeros(3),
        s_pert=np.ones(3),
    )
    freq = selection_frequency(fractions, 1, 200, seed=0)
    # 'b' wins the ratio of means whenever q3 is drawn at least once in 3 draws
    assert freq["b"] == pytest.approx(1 - (2 / 3) ** 3, abs=0.08)
    assert freq["a"] + freq["b"] == pytest.approx(1.0) and freq["c"] == 0.0
