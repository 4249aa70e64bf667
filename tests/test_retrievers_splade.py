"""The SPLADE adapter and the term_contributions tool against a hand computation."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForMaskedLM, AutoTokenizer

from rankscope.tools.contract import ToolContext
from rankscope.tools.data.types import Pair, PairSet
from rankscope.tools.registry import get_tool, validate_args
from rankscope.tools.retrievers import load_retriever
from rankscope.tools.retrievers.splade import Splade
from tests.tiny_models import save_tiny_splade

QUERIES = ["what is the capital of france", "how do vaccines work", "bread recipe"]
DOCS = [
    "paris is the capital and largest city of france",
    "vaccines train the immune system to recognise pathogens quickly and safely",
    "a good loaf of bread needs flour water salt and yeast",
]


@pytest.fixture(scope="module")
def splade_dir(tmp_path_factory):
    return save_tiny_splade(tmp_path_factory.mktemp("tiny-splade"))


@pytest.fixture(scope="module")
def splade(splade_dir) -> Splade:
    retriever = load_retriever(str(splade_dir))
    assert isinstance(retriever, Splade)
    return retriever


def hand_vectors(path, texts: list[str]) -> torch.Tensor:
    """SPLADE max pooling with plain transformers, one text at a time (no padding at all)."""
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForMaskedLM.from_pretrained(path).eval()
    out = []
    for text in texts:
        enc = tok(text, return_tensors="pt")
        with torch.no_grad():
            logits = model(**enc).logits[0]
        out.append(torch.log(1 + torch.relu(logits)).max(dim=0).values)
    return torch.stack(out)


def test_splade_matches_hand_computation(splade, splade_dir):
    assert splade.kind == "splade"
    expected = (hand_vectors(splade_dir, QUERIES) * hand_vectors(splade_dir, DOCS)).sum(-1)
    assert expected.abs().min() > 1e-3
    assert torch.allclose(splade.score(QUERIES, DOCS), expected, atol=1e-5)


def test_explicit_kind_loads_a_plain_masked_lm(splade, splade_dir, tmp_path):
    import shutil

    folder = tmp_path / "plain"
    shutil.copytree(splade_dir, folder)
    (folder / "modules.json").unlink()
    retriever = load_retriever(str(folder), kind="splade")
    assert torch.allclose(retriever.score(QUERIES, DOCS), splade.score(QUERIES, DOCS), atol=1e-6)


def test_contributions_sum_to_the_score(splade, splade_dir):
    q_vec = hand_vectors(splade_dir, QUERIES[:1])[0]
    d_vec = hand_vectors(splade_dir, DOCS[:1])[0]
    rows = splade.term_contributions(QUERIES[0], DOCS[0])
    total = sum(r.contribution for r in rows)
    assert total == pytest.approx(float(splade.score(QUERIES[:1], DOCS[:1])[0]), abs=1e-5)
    for row in rows[:10]:
        assert row.contribution == pytest.approx(float(q_vec[row.token_id] * d_vec[row.token_id]))
    tok = splade.tokenizer
    capital = tok.convert_tokens_to_ids("capital")
    by_id = {r.token_id: r for r in rows}
    if capital in by_id:
        assert by_id[capital].kind == "matched"
    assert {r.kind for r in rows} <= {"matched", "query_expansion", "doc_expansion", "expansion"}


def test_nnsight_reads_equal_plain_hooks(splade):
    batch = splade.encode_side(QUERIES, DOCS)
    module, port = splade.component_module(1, "heads")
    captured = {}
    handle = module.register_forward_hook(
        lambda mod, args, out: captured.setdefault("x", args[0].detach().clone())
    )
    try:
        splade.forward_hidden(batch)
    finally:
        handle.remove()
    envoy, port = splade.site_envoy(1, "heads")
    with splade.nn.trace(**batch.inputs):
        saved = envoy.input.save()
    assert port == "input"
    assert splade.module_path(1, "heads")[0] == "encoder.layer.1.attention.output.dense"
    assert torch.allclose(saved, captured["x"], atol=1e-6)


def test_term_contributions_tool(splade, tmp_path):
    pairs = PairSet(
        "tfc1",
        tuple(
            Pair(
                qid=str(i),
                docno=f"d{i}",
                query=q,
                baseline=d,
                perturbed=f"{d} {q.split()[-1]}",
                axiom="TFC1",
                variant="append",
            )
            for i, (q, d) in enumerate(zip(QUERIES, DOCS, strict=True))
        ),
    )

    class Data:
        def pairs(self, *args, **kwargs):
            return pairs

    tool = get_tool("term_contributions")
    args = validate_args(tool, {"split": "all", "n_bootstrap": 200})
    result = tool.run(ToolContext(lambda: splade, Data(), tmp_path, progress=False), args)  # type: ignore[arg-type]
    m = result.metrics
    base = splade.score(QUERIES, DOCS)
    pert = splade.score(QUERIES, [p.perturbed for p in pairs])
    assert m["n_pairs"] == 3
    assert m["mean_delta"] == pytest.approx(float((pert - base).mean()), abs=1e-5)
    assert m["max_sum_error"] < 1e-4
    shares = [m[f"share_delta[kind={k}]"] for k in ("matched", "query_expansion", "doc_expansion")]
    assert sum(s for s in shares if s is not None) + (m["share_delta[kind=expansion]"] or 0) == (
        pytest.approx(1.0, abs=1e-6)
    )
    for key in m:
        assert tool.produces(args, key), key
    assert result.tables["terms"] and "top terms" in result.summary


def test_term_contributions_refuses_other_kinds(tiny_model_dir, tmp_path):
    retriever = load_retriever(str(tiny_model_dir("bert", "bi-encoder", st_pooling="cls")))
    tool = get_tool("term_contributions")
    ctx = ToolContext(lambda: retriever, None, tmp_path, progress=False)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs a SPLADE model"):
        tool.run(ctx, validate_args(tool, {}))
