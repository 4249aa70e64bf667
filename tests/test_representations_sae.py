"""Sparse autoencoders: planted-feature recovery, the sae-lens format, faithfulness, the tools."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from scipy import stats

from rankscope.tools.catalog.feature_inspection import _correlations
from rankscope.tools.registry import get_tool, validate_args
from rankscope.tools.representations.corpus import sample_documents
from rankscope.tools.representations.properties import Labels
from rankscope.tools.representations.ranking import ranking_agreement, solo_rank_change
from rankscope.tools.representations.sae import (
    SAEFormatError,
    SparseAutoencoder,
    load_sae,
    max_cosine,
    reconstruction_stats,
    train_topk_sae,
)
from rankscope.tools.representations.sae_eval import faithfulness, hook_name, sae_layer
from rankscope.tools.retrievers import load_retriever
from tests.representations_support import (
    ENGLISH_WORDS,
    collection_source,
    make_context,
    synthetic_collection,
)

torch.set_num_threads(1)
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_retriever(
            str(tiny_model_dir("bert")), kind="bi-encoder", pooling="mean", similarity="cosine"
        )


@pytest.fixture(scope="module")
def source():
    return collection_source(synthetic_collection(n_queries=8, docs_per_query=8, seed=1))


def planted_data(n: int = 5000, d: int = 32, n_features: int = 48, k: int = 3, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    features = torch.nn.functional.normalize(torch.randn(n_features, d, generator=gen), dim=-1)
    idx = torch.stack([torch.randperm(n_features, generator=gen)[:k] for _ in range(n)])
    magnitude = torch.rand(n, k, generator=gen) + 0.5
    z = torch.zeros(n, n_features).scatter(1, idx, magnitude)
    return z @ features + 0.3, features


def test_topk_sae_recovers_planted_sparse_features():
    x, features = planted_data()
    sae, log = train_topk_sae(x, d_sae=96, k=3, epochs=15, batch_size=128, lr=3e-3, seed=0)
    recovered = max_cosine(sae.W_dec.detach(), features)
    assert (recovered > 0.9).float().mean() > 0.9
    assert torch.allclose(sae.W_dec.norm(dim=-1), torch.ones(96), atol=1e-5)
    stats_, recon = reconstruction_stats(sae, x)
    hand_fvu = ((x - recon) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    assert stats_.fvu == pytest.approx(float(hand_fvu), rel=1e-5)
    assert stats_.fvu < 0.1
    assert stats_.l0 <= 3
    assert log.losses[-1] < log.losses[0]
    scaled, _ = train_topk_sae(x * 50, d_sae=96, k=3, epochs=15, batch_size=128, lr=3e-3, seed=0)
    stats_scaled, _ = reconstruction_stats(scaled, x * 50)
    assert stats_scaled.fvu == pytest.approx(stats_.fvu, abs=0.02)


def test_training_is_deterministic_given_the_seed():
    x, _ = planted_data(n=600)
    a, _ = train_topk_sae(x, 32, 3, epochs=2, batch_size=64, seed=5)
    b, _ = train_topk_sae(x, 32, 3, epochs=2, batch_size=64, seed=5)
    assert torch.equal(a.W_dec, b.W_dec) and torch.equal(a.b_enc, b.b_enc)


def test_sae_lens_round_trip(tmp_path):
    x, _ = planted_data(n=400)
    sae, _ = train_topk_sae(x, 64, 4, epochs=2, seed=0, metadata={"hook_name": "encoder.layer.1"})
    weights, cfg_path = sae.save(tmp_path / "sae")
    assert weights.name == "sae_weights.safetensors" and cfg_path.name == "cfg.json"
    cfg = json.loads(cfg_path.read_text())
    assert cfg["architecture"] == "topk" and cfg["k"] == 4
    assert (cfg["d_in"], cfg["d_sae"]) == (32, 64)
    assert cfg["metadata"]["hook_name"] == "encoder.layer.1"
    loaded = load_sae(tmp_path / "sae")
    assert loaded.W_enc.shape == (32, 64) and loaded.W_dec.shape == (64, 32)
    with torch.no_grad():
        assert torch.equal(loaded.encode(x), sae.encode(x))
        assert torch.allclose(loaded(x), sae(x))


def test_sae_lens_variants_load(tmp_path):
    d, m = 4, 6
    gen = torch.Generator().manual_seed(0)
    tensors = {
        "W_enc": torch.randn(d, m, generator=gen),
        "b_enc": torch.randn(m, generator=gen),
        "W_dec": torch.randn(m, d, generator=gen),
        "b_dec": torch.randn(d, generator=gen),
    }
    x = torch.randn(5, d, generator=gen)
    pre = (x - tensors["b_dec"]) @ tensors["W_enc"] + tensors["b_enc"]

    def write(name: str, cfg: dict, extra: dict | None = None):
        folder = tmp_path / name
        folder.mkdir()
        save_file({**tensors, **(extra or {})}, str(folder / "sae_weights.safetensors"))
        (folder / "cfg.json").write_text(json.dumps({"d_in": d, "d_sae": m, **cfg}))
        return load_sae(folder)

    old_topk = write(
        "old", {"activation_fn_str": "topk", "activation_fn_kwargs": {"k": 2}, "hook_name": "x"}
    )
    assert old_topk.architecture == "topk" and old_topk.k == 2 and old_topk.hook_name == "x"
    z = old_topk.encode(x)
    top = torch.topk(pre, 2, dim=-1)
    ref = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
    assert torch.allclose(z, ref)
    standard = write("std", {"architecture": "standard"})
    assert torch.allclose(standard.encode(x), torch.relu(pre))
    threshold = torch.full((m,), 0.3)
    jump = write("jump", {"architecture": "jumprelu"}, {"threshold": threshold})
    assert torch.allclose(jump.encode(x), torch.relu(pre) * (pre > 0.3))
    no_bdec = write("nob", {"architecture": "standard", "apply_b_dec_to_input": False})
    assert torch.allclose(no_bdec.encode(x), torch.relu(x @ tensors["W_enc"] + tensors["b_enc"]))
    with pytest.raises(SAEFormatError, match="normalize_activations"):
        write("norm", {"architecture": "standard", "normalize_activations": "layer_norm"})
    with pytest.raises(SAEFormatError, match="sae-lens format"):
        load_sae(tmp_path / "missing")


def test_ranking_agreement_and_rank_changes_by_hand():
    groups = [np.array([0, 1, 2, 3]), np.array([4, 5])]
    base = np.array([0.9, 0.5, 0.1, 0.3, 0.2, 0.4])
    new = np.array([0.2, 0.6, 0.1, 0.3, 0.3, 0.1])
    agree = ranking_agreement(groups, base, new, top_n=2)
    rho = (stats.spearmanr(base[:4], new[:4]).statistic + -1.0) / 2
    assert agree["spearman"] == pytest.approx(rho)
    assert agree["top1_agreement"] == 0.0
    assert agree["top2_overlap"] == pytest.approx((1 / 2 + 1.0) / 2)
    # doc 0 alone at 0.2 among (0.5, 0.1, 0.3): rank 1 -> 3; doc 5 at 0.1 below 0.2: rank 1 -> 2
    assert solo_rank_change(groups, base, new).tolist() == [-2, 0, 0, 0, 0, -1]


def test_correlations_match_scipy():
    rng = np.random.default_rng(0)
    acts = rng.normal(size=(200, 5))
    binary = (acts[:, 0] + rng.normal(size=200) > 0).astype(int)
    r, p = _correlations(acts, Labels(binary, ["a", "b"], binary.astype(float), False))
    for j in range(5):
        ref = stats.pointbiserialr(binary, acts[:, j])
        assert r[j] == pytest.approx(ref.statistic, abs=1e-9)
        assert p[j] == pytest.approx(ref.pvalue, rel=1e-6)
    values = rng.poisson(3, size=200).astype(float)
    r, _ = _correlations(
        acts, Labels(np.minimum(values, 3).astype(int), list("0123"), values, True)
    )
    for j in range(5):
        assert r[j] == pytest.approx(stats.spearmanr(values, acts[:, j]).statistic, abs=1e-9)


def identity_sae(d: int, hook: str) -> SparseAutoencoder:
    """relu(x) − relu(−x) = x: an exact SAE, to test the splicing path."""
    sae = SparseAutoencoder(d, 2 * d, "standard", metadata={"hook_name": hook})
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(torch.cat([eye, -eye], 0))
    return sae


def test_faithfulness_of_an_exact_sae_is_perfect(tiny, source):
    docs = sample_documents(source, 24, seed=0, per_query=6)
    for layer in (None, 1):
        sae = identity_sae(tiny.hidden_size, hook_name(tiny, layer))
        assert sae_layer(tiny, sae, None) == layer
        result = faithfulness(tiny, sae, docs, layer, batch_size=5)
        assert np.allclose(result.base, result.new, atol=1e-5)
        assert result.agreement["top1_agreement"] == 1.0
        assert result.agreement["spearman"] == pytest.approx(1.0)
    direct = tiny.score([d.query for d in docs], [d.text for d in docs]).numpy()
    assert np.allclose(result.base, direct, atol=1e-5)


def test_train_sae_and_feature_inspection_tools(tiny, source, tmp_path):
    ctx = make_context(tiny, source, tmp_path)
    train = get_tool("train_sae")
    final = train.run(
        ctx,
        validate_args(train, {"n_docs": 64, "docs_per_query": 8, "width": 64, "k": 4, "epochs": 5}),
    )
    m = final.metrics
    assert 0 <= m["fvu"] < 1.5 and m["explained_variance"] == pytest.approx(1 - m["fvu"])
    assert 0 <= m["top1_agreement"] <= 1 and -1 <= m["spearman"] <= 1
    assert m["width"] == 64 and m["n_eval_queries"] >= 1
    assert final.artifacts[0].path.read_bytes()[:8] == PNG
    folder = final.artifacts[1].path.parent
    assert load_sae(folder).hook_name == "sentence_embedding"
    layer = train.run(
        ctx,
        validate_args(
            train, {"layer": 1, "n_docs": 48, "docs_per_query": 8, "width": 64, "k": 4, "epochs": 3}
        ),
    )
    layer_folder = layer.artifacts[1].path.parent
    assert load_sae(layer_folder).hook_name == "encoder.layer.1"

    inspect = get_tool("feature_inspection")
    neurons = inspect.run(ctx, validate_args(inspect, {"n_docs": 24, "n_units": 4, "top_k": 3}))
    rows = neurons.tables["units"]
    assert len(rows) == 4 and neurons.metrics["n_units_total"] == 64
    assert abs(rows[0]["correlation"]) >= abs(rows[-1]["correlation"])
    assert (
        len(neurons.tables["top_tokens"]) == 12
        and "[[" in neurons.tables["top_tokens"][0]["context"]
    )
    by_unit = [r for r in neurons.tables["top_tokens"] if r["unit"] == rows[0]["unit"]]
    assert by_unit[0]["activation"] >= by_unit[-1]["activation"]
    latents = inspect.run(
        ctx,
        validate_args(
            inspect,
            {"unit_type": "sae", "sae": str(layer_folder), "n_docs": 24, "property": "idf"},
        ),
    )
    assert latents.metrics["n_units_total"] == 64
    assert all(r["active_frac"] <= 1 for r in latents.tables["units"])
    docs_level = inspect.run(
        ctx,
        validate_args(
            inspect,
            {
                "unit_type": "sae",
                "sae": str(folder),
                "n_docs": 24,
                "property": "tf",
                "units": [0, 1],
            },
        ),
    )
    assert [r["unit"] for r in docs_level.tables["units"]] == [0, 1]
    assert docs_level.tables["top_documents"] and not docs_level.tables["top_tokens"]


@pytest.mark.slow
def test_train_sae_on_minilm_final_embeddings(minilm, tmp_path):
    data = collection_source(
        synthetic_collection(n_queries=12, docs_per_query=10, seed=2, words=ENGLISH_WORDS)
    )
    train = get_tool("train_sae")
    result = train.run(
        make_context(minilm, data, tmp_path),
        validate_args(
            train,
            {
                "split": "all",
                "n_docs": 120,
                "docs_per_query": 10,
                "width": 256,
                "k": 8,
                "epochs": 40,
            },
        ),
    )
    m = result.metrics
    assert m["n_train_rows"] == 90 and m["n_eval_rows"] == 30
    assert m["train_fvu"] < 0.3
    assert m["explained_variance"] > 0.1
    assert m["spearman"] > 0.5


def test_sae_layer_reads_the_hook_names_of_a_layer(tiny):
    d = tiny.hidden_size
    for hook in (hook_name(tiny, 1), "L1", "L1.resid"):
        assert sae_layer(tiny, identity_sae(d, hook), None) == 1
    for hook in ("L1.mlp", "L1.H0", "blocks.1"):
        with pytest.raises(ValueError, match="not a residual stream"):
            sae_layer(tiny, identity_sae(d, hook), None)
