"""Retriever adapters against plain transformers (and sentence-transformers for MiniLM)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

from rankscope.tools.retrievers import Component, Role, load_retriever
from rankscope.tools.retrievers.architectures import submodule
from rankscope.tools.retrievers.loading import RetrieverLoadError, default_model_path
from tests.tiny_models import ARCHS

QUERIES = ["what is the capital of france", "how do vaccines work", "bread recipe"]
DOCS = [
    "paris is the capital and largest city of france",
    "vaccines train the immune system to recognise pathogens quickly and safely",
    "a good loaf of bread needs flour water salt and yeast",
]


def plain_bi_scores(path, pooling: str, similarity: str) -> torch.Tensor:
    """Scores computed with plain transformers, independently of the adapter."""
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()

    def embed(texts):
        enc = tok(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
        with torch.no_grad():
            hidden = model(**enc).last_hidden_state
        if pooling == "cls":
            emb = hidden[:, 0]
        else:
            mask = enc["attention_mask"].unsqueeze(-1).float()
            emb = (hidden * mask).sum(1) / mask.sum(1)
        return F.normalize(emb, dim=-1) if similarity == "cosine" else emb

    return (embed(QUERIES) * embed(DOCS)).sum(-1)


def plain_cross_scores(path) -> torch.Tensor:
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    enc = tok(
        QUERIES, DOCS, padding=True, truncation="only_second", max_length=256, return_tensors="pt"
    )
    with torch.no_grad():
        return model(**enc).logits[:, 0]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize(("pooling", "similarity"), [("cls", "dot"), ("mean", "cosine")])
def test_bi_encoder_matches_transformers(tiny_model_dir, arch, pooling, similarity):
    path = tiny_model_dir(arch, "bi-encoder", st_pooling=pooling)
    retriever = load_retriever(str(path))
    assert (retriever.kind, retriever.pooling, retriever.similarity) == (
        "bi-encoder",
        pooling,
        similarity,
    )
    expected = plain_bi_scores(path, pooling, similarity)
    assert torch.allclose(retriever.score(QUERIES, DOCS), expected, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_cross_encoder_matches_transformers(tiny_model_dir, arch):
    path = tiny_model_dir(arch, "cross-encoder")
    retriever = load_retriever(str(path))
    assert retriever.kind == "cross-encoder"
    assert torch.allclose(retriever.score(QUERIES, DOCS), plain_cross_scores(path), atol=1e-5)


def test_overrides_beat_sentence_transformers_config(tiny_model_dir):
    path = tiny_model_dir("bert", "bi-encoder", st_pooling="mean")
    retriever = load_retriever(str(path), pooling="cls", similarity="dot")
    assert torch.allclose(
        retriever.score(QUERIES, DOCS), plain_bi_scores(path, "cls", "dot"), atol=1e-5
    )


def test_minilm_matches_sentence_transformers(minilm):
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(default_model_path()), device="cpu")
    q = st.encode(QUERIES, convert_to_tensor=True, normalize_embeddings=True)
    d = st.encode(DOCS, convert_to_tensor=True, normalize_embeddings=True)
    assert (minilm.pooling, minilm.similarity) == ("mean", "cosine")
    assert torch.allclose(minilm.score(QUERIES, DOCS), (q * d).sum(-1).cpu(), atol=1e-5)
    assert torch.allclose(
        minilm.score(QUERIES, DOCS),
        plain_bi_scores(default_model_path(), "mean", "cosine"),
        atol=1e-5,
    )


def test_roles_mark_injected_filler_and_specials(minilm):
    doc = "paris is the capital of france"
    perturbed = doc + " capital"
    baseline = doc + " a"
    batch = minilm.encode_side(
        ["capital of france"] * 2,
        [perturbed, baseline],
        injected=[[(len(doc) + 1, len(perturbed))], []],
        filler=[[], [(len(doc) + 1, len(baseline))]],
    )
    roles = batch.roles.tolist()
    tokens = minilm.tokenizer.convert_ids_to_tokens(batch.inputs["input_ids"][0])
    assert roles[0][0] == Role.CLS and roles[0][-1] == Role.SEP
    assert roles[0][tokens.index("capital")] == Role.QTERM
    assert roles[0][-2] == Role.INJECTED
    assert roles[1][-2] == Role.FILLER
    assert roles[0][tokens.index("paris")] == Role.DOC


def test_cross_encoder_roles(tiny_model_dir):
    retriever = load_retriever(str(tiny_model_dir("bert", "cross-encoder")))
    batch = retriever.encode_side(["capital of france"], ["paris is the capital"])
    roles = batch.roles[0].tolist()
    assert roles[0] == Role.CLS
    assert roles.count(Role.SEP) == 2
    assert Role.QUERY in roles and Role.QTERM in roles and Role.DOC in roles


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("site", ["resid", "attn", "mlp", "heads"])
def test_nnsight_components_equal_plain_hooks(tiny_model_dir, arch, site):
    """Each named component read through nnsight equals a plain forward hook's read."""
    retriever = load_retriever(str(tiny_model_dir(arch, "bi-encoder", st_pooling="cls")))
    batch = retriever.encode_side(QUERIES, DOCS)
    layer = retriever.n_layers - 1
    module, port = retriever.component_module(layer, site)
    captured = {}

    def hook(mod, args, output):
        value = args[0] if port == "input" else output
        captured["x"] = (value[0] if isinstance(value, tuple) else value).detach().clone()

    handle = module.register_forward_hook(hook)
    try:
        retriever.forward_hidden(batch)
    finally:
        handle.remove()
    envoy, port = retriever.site_envoy(layer, site)
    with retriever.nn.trace(**batch.inputs):
        saved = (envoy.input if port == "input" else envoy.output).save()
    saved = saved[0] if isinstance(saved, tuple) else saved
    assert torch.allclose(saved, captured["x"], atol=1e-6)
    assert saved.shape[-1] == retriever.hidden_size


def test_module_paths_are_the_models_own_names(minilm):
    names = dict(minilm.encoder.named_modules())
    for site in ("resid", "attn", "mlp", "heads"):
        path, _ = minilm.module_path(3, site)
        assert path in names
    assert minilm.module_path(3, "heads") == ("encoder.layer.3.attention.output.dense", "input")
    assert (
        submodule(minilm.encoder, "encoder.layer.3.output.dense")
        is names["encoder.layer.3.output.dense"]
    )
    assert len(minilm.components("heads")) == 72


def test_component_names_round_trip():
    for comp in (Component(1, "heads", 6), Component(3, "mlp"), Component(0, "resid")):
        assert Component.parse(comp.name) == comp
    with pytest.raises(ValueError, match="L<layer>.H<head>"):
        Component.parse("layer1-head6")


def test_unknown_id_offline_gives_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        RetrieverLoadError, match="could not load model 'no-such-org/no-such-model'.*offline"
    ):
        load_retriever("no-such-org/no-such-model")


def test_missing_path_gives_clear_error(tmp_path):
    with pytest.raises(RetrieverLoadError, match="does not exist"):
        load_retriever(str(tmp_path / "nowhere"))


def test_path_without_weights(tmp_path, tiny_model_dir):
    folder = tmp_path / "noweights"
    shutil.copytree(tiny_model_dir("bert"), folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(RetrieverLoadError, match="has no weights"):
        load_retriever(str(folder))


def test_unsupported_architecture(tmp_path):
    from transformers import GPT2Config

    GPT2Config(n_layer=1, n_head=2, n_embd=8).save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="unsupported architecture 'gpt2'.*bert"):
        load_retriever(str(tmp_path))


def test_pooling_without_sentence_transformers_config_warns(tiny_model_dir):
    with pytest.warns(UserWarning, match="no sentence-transformers pooling config"):
        retriever = load_retriever(str(tiny_model_dir("bert")))
    assert retriever.pooling == "cls"


def test_unsupported_pooling_mode(tmp_path, tiny_model_dir):
    folder = tmp_path / "maxpool"
    shutil.copytree(tiny_model_dir("bert", "bi-encoder", st_pooling="cls"), folder)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_max_tokens": True}))
    with pytest.raises(RetrieverLoadError, match="pooling_mode_max_tokens"):
        load_retriever(str(folder))
