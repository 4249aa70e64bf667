"""Decoder LLM rerankers (Qwen3-Reranker and RankLLaMA styles) against hand computations."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from rankscope.tools.retrievers import Role, load_retriever
from rankscope.tools.retrievers.decoder_reranker import (
    QWEN3_INSTRUCTION,
    QWEN3_PREFIX,
    QWEN3_SUFFIX,
    Qwen3Reranker,
    RankLlama,
)
from tests.tiny_models import save_tiny_decoder_reranker

QUERIES = ["what is the capital of france", "vaccines", "bread"]
DOCS = [
    "paris is the capital and largest city of france",
    "vaccines train the immune system to recognise pathogens",
    "a good loaf of bread needs flour water salt and yeast",
]


@pytest.fixture(scope="module", params=["qwen3", "rankllama"])
def decoder(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"tiny-{request.param}")
    path = save_tiny_decoder_reranker(folder, style=request.param)
    return request.param, path, load_retriever(str(path))


def hand_scores(style: str, path) -> torch.Tensor:
    """Each pair scored alone (no padding) with plain transformers."""
    tok = AutoTokenizer.from_pretrained(path)
    scores = []
    if style == "qwen3":
        model = AutoModelForCausalLM.from_pretrained(path).eval()
        yes, no = tok.convert_tokens_to_ids(["yes", "no"])
        for q, d in zip(QUERIES, DOCS, strict=True):
            text = f"{QWEN3_PREFIX}<Instruct>: {QWEN3_INSTRUCTION}\n<Query>: {q}\n<Document>: {d}"
            enc = tok(text + QWEN3_SUFFIX, return_tensors="pt")
            with torch.no_grad():
                logits = model(**enc).logits[0, -1]
            scores.append(logits[yes] - logits[no])
    else:
        model = AutoModelForSequenceClassification.from_pretrained(path).eval()
        for q, d in zip(QUERIES, DOCS, strict=True):
            enc = tok(f"query: {q}", f"document: {d}", return_tensors="pt")
            with torch.no_grad():
                scores.append(model(**enc).logits[0, 0])
    return torch.stack(scores)


def test_decoder_reranker_matches_hand_computation(decoder):
    style, path, retriever = decoder
    assert isinstance(retriever, Qwen3Reranker if style == "qwen3" else RankLlama)
    expected = hand_scores(style, path)
    assert expected.abs().min() > 1e-5
    assert torch.allclose(retriever.score(QUERIES, DOCS), expected, atol=1e-5)


def test_roles_left_padded(decoder):
    _, _, retriever = decoder
    doc = "paris is the capital of france"
    batch = retriever.encode_side(
        ["capital of france", "bread"],
        [doc + " capital", "bread"],
        injected=[[(len(doc) + 1, len(doc) + 8)], []],
    )
    roles = batch.roles.tolist()
    tokens = retriever.tokenizer.convert_ids_to_tokens(batch.inputs["input_ids"][0])
    assert roles[1][0] == Role.PAD and batch.inputs["attention_mask"][1, -1] == 1
    assert roles[0].count(Role.QUERY) == 3
    assert roles[0][tokens.index("paris")] == Role.DOC
    assert Role.QTERM in roles[0] and roles[0].count(Role.INJECTED) == 1
    assert roles[0][tokens.index("paris") - 1] == Role.SEP


@pytest.mark.parametrize("site", ["resid", "attn", "mlp", "heads"])
def test_components_equal_plain_hooks(decoder, site):
    _, _, retriever = decoder
    path, port = retriever.module_path(1, site)
    expected_path = {
        "resid": "layers.1",
        "attn": "layers.1.self_attn.o_proj",
        "heads": "layers.1.self_attn.o_proj",
        "mlp": "layers.1.mlp.down_proj",
    }[site]
    assert path == expected_path
    assert retriever.encoder is retriever.model.model
    batch = retriever.encode_side(QUERIES, DOCS)
    module, _ = retriever.component_module(1, site)
    captured = {}

    def hook(mod, args, output):
        value = args[0] if port == "input" else output
        captured["x"] = (value[0] if isinstance(value, tuple) else value).detach().clone()

    handle = module.register_forward_hook(hook)
    try:
        retriever.forward_hidden(batch)
    finally:
        handle.remove()
    envoy, _ = retriever.site_envoy(1, site)
    with retriever.nn.trace(**batch.inputs):
        saved = (envoy.input if port == "input" else envoy.output).save()
    saved = saved[0] if isinstance(saved, tuple) else saved
    assert torch.allclose(saved, captured["x"], atol=1e-6)
    if site == "heads":
        assert saved.shape[-1] == retriever.n_heads * retriever.head_dim
