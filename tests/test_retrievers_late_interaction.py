"""The late-interaction (ColBERT / PyLate) adapter against a hand computation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import AutoModel, AutoTokenizer

from rankscope.tools.retrievers import Role, load_retriever
from rankscope.tools.retrievers.late_interaction import LateInteraction
from tests.tiny_models import save_tiny_late_interaction

QUERIES = ["what is the capital of france", "how do vaccines work", "bread recipe"]
DOCS = [
    "paris is the capital and largest city of france",
    "vaccines train the immune system to recognise pathogens quickly and safely",
    "a good loaf of bread needs flour water salt and yeast",
]


@pytest.fixture(scope="module", params=["pylate", "colbert"])
def layout_dir(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"tiny-li-{request.param}")
    return request.param, save_tiny_late_interaction(folder, layout=request.param)


def hand_scores(path, layout: str) -> torch.Tensor:
    """MaxSim written out with plain transformers, one text at a time."""
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    weights = (
        load_file(str(path / "1_Dense" / "model.safetensors"))
        if layout == "pylate"
        else load_file(str(path / "model.safetensors"))
    )
    proj = weights["linear.weight"]

    def vectors(text: str, query: bool) -> torch.Tensor:
        if layout == "pylate":
            text = ("[Q] " if query else "[D] ") + text
        if layout == "pylate" and query:
            enc = tok(text, padding="max_length", max_length=12, return_tensors="pt")
            enc["input_ids"][enc["attention_mask"] == 0] = tok.mask_token_id
        else:
            enc = tok(text, return_tensors="pt")
        with torch.no_grad():
            hidden = model(**enc).last_hidden_state[0]
        return F.normalize(hidden @ proj.T, dim=-1)

    scores = []
    for q, d in zip(QUERIES, DOCS, strict=True):
        sims = vectors(q, True) @ vectors(d, False).T
        scores.append(sims.max(dim=1).values.sum())
    return torch.stack(scores)


def test_late_interaction_matches_hand_computation(layout_dir):
    layout, path = layout_dir
    retriever = load_retriever(str(path))
    assert isinstance(retriever, LateInteraction) and retriever.kind == "late-interaction"
    assert torch.allclose(retriever.score(QUERIES, DOCS), hand_scores(path, layout), atol=1e-5)


def test_token_matches_sum_to_the_score(layout_dir):
    layout, path = layout_dir
    retriever = load_retriever(str(path))
    matches = retriever.token_matches(QUERIES[0], DOCS[0])
    assert len(matches) == (12 if layout == "pylate" else len(matches))
    score = float(retriever.score(QUERIES[:1], DOCS[:1])[0])
    assert sum(m.contribution for m in matches) == pytest.approx(score, abs=1e-5)
    assert all(m.doc_token != "[PAD]" for m in matches)


def test_roles_and_hooks(layout_dir):
    layout, path = layout_dir
    retriever = load_retriever(str(path))
    doc = "paris is the capital of france"
    batch = retriever.encode_side(
        ["capital of france"], [doc + " capital"], injected=[[(len(doc) + 1, len(doc) + 8)]]
    )
    roles = batch.roles[0].tolist()
    assert roles[0] == Role.CLS and Role.QTERM in roles and roles[-2] == Role.INJECTED
    if layout == "pylate":
        assert roles[1] == Role.SEP
    module, port = retriever.component_module(1, "mlp")
    captured = {}
    handle = module.register_forward_hook(
        lambda mod, args, out: captured.setdefault("x", out.detach().clone())
    )
    try:
        retriever.forward_hidden(batch)
    finally:
        handle.remove()
    envoy, _ = retriever.site_envoy(1, "mlp")
    with retriever.nn.trace(**batch.inputs):
        saved = envoy.output.save()
    assert torch.allclose(saved, captured["x"], atol=1e-6)
