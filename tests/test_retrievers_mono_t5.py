"""The monoT5 adapter against a hand computation with plain transformers."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer, T5ForConditionalGeneration

from rankscope.tools.retrievers import Role, load_retriever
from rankscope.tools.retrievers.mono_t5 import MonoT5
from tests.tiny_models import save_tiny_mono_t5

QUERIES = ["what is the capital of france", "vaccines", "bread"]
DOCS = [
    "paris is the capital and largest city of france",
    "vaccines train the immune system to recognise pathogens",
    "a good loaf of bread needs flour water salt and yeast",
]


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory):
    return save_tiny_mono_t5(tmp_path_factory.mktemp("tiny-mono-t5"))


@pytest.fixture(scope="module")
def mono_t5(t5_dir) -> MonoT5:
    retriever = load_retriever(str(t5_dir))
    assert isinstance(retriever, MonoT5)
    return retriever


def hand_scores(path) -> torch.Tensor:
    tok = AutoTokenizer.from_pretrained(path)
    model = T5ForConditionalGeneration.from_pretrained(path).eval()
    true_id, false_id = tok.convert_tokens_to_ids(["true", "false"])
    scores = []
    for q, d in zip(QUERIES, DOCS, strict=True):
        enc = tok(f"Query: {q} Document: {d} Relevant:", return_tensors="pt")
        with torch.no_grad():
            logits = model(**enc, decoder_input_ids=torch.tensor([[0]])).logits[0, 0]
        scores.append(logits[true_id] - logits[false_id])
    return torch.stack(scores)


def test_mono_t5_matches_hand_computation(mono_t5, t5_dir):
    assert mono_t5.kind == "mono-t5" and mono_t5.n_layers == 4
    expected = hand_scores(t5_dir)
    assert expected.abs().min() > 1e-4
    assert torch.allclose(mono_t5.score(QUERIES, DOCS), expected, atol=1e-5)


def test_roles(mono_t5):
    doc = "paris is the capital of france"
    batch = mono_t5.encode_side(
        ["capital of france"], [doc + " capital"], injected=[[(len(doc) + 1, len(doc) + 8)]]
    )
    roles = batch.roles[0].tolist()
    tokens = mono_t5.tokenizer.convert_ids_to_tokens(batch.inputs["input_ids"][0])
    assert tokens[:2] == ["Query", ":"] and roles[:2] == [Role.SEP, Role.SEP]
    assert roles[2:5] == [Role.QUERY] * 3
    assert roles[tokens.index("paris")] == Role.DOC
    assert roles[tokens.index("capital", 5)] == Role.QTERM
    assert roles[-4] == Role.INJECTED and roles[-3:] == [Role.SEP] * 3


@pytest.mark.parametrize(
    ("layer", "site", "path"),
    [
        (0, "heads", "encoder.block.0.layer.0.SelfAttention.o"),
        (1, "mlp", "encoder.block.1.layer.1.DenseReluDense.wo"),
        (2, "attn", "decoder.block.0.layer.0.SelfAttention.o"),
        (3, "mlp", "decoder.block.1.layer.2.DenseReluDense.wo"),
        (3, "resid", "decoder.block.1"),
        (3, "cross", "decoder.block.1.layer.1.EncDecAttention.o"),
    ],
)
def test_components_equal_plain_hooks(mono_t5, layer, site, path):
    got_path, port = mono_t5.module_path(layer, "cross_heads" if site == "cross" else site)
    if site == "cross":
        assert (got_path, port) == mono_t5.cross_attention_path(layer, per_head=True)
    assert got_path == path
    module = mono_t5.model.get_submodule(path)
    batch = mono_t5.encode_side(QUERIES, DOCS)
    captured = {}

    def hook(mod, args, output):
        value = args[0] if port == "input" else output
        captured["x"] = (value[0] if isinstance(value, tuple) else value).detach().clone()

    handle = module.register_forward_hook(hook)
    try:
        mono_t5.forward_hidden(batch)
    finally:
        handle.remove()
    envoy = mono_t5.envoy(path)
    with mono_t5.nn.trace(**batch.inputs):
        saved = (envoy.input if port == "input" else envoy.output).save()
    saved = saved[0] if isinstance(saved, tuple) else saved
    assert torch.allclose(saved, captured["x"], atol=1e-6)
