"""Loading checks of the new kinds (issue 16): weights the score depends on that a checkpoint
lacks are an error unless allowed (then listed), and a multi-label RankLLaMA head needs --label."""

from __future__ import annotations

from pathlib import Path

import pytest
import safetensors.torch as st

from rankscope.tools.retrievers import RetrieverLoadError, load_retriever
from tests import tiny_models

BUILDERS = {
    "splade": (tiny_models.save_tiny_splade, "encoder.layer.0.attention.self.key"),
    "late-interaction": (tiny_models.save_tiny_late_interaction, "layer.1.output.dense"),
    "mono-t5": (tiny_models.save_tiny_mono_t5, "encoder.block.1.layer.0.SelfAttention.q"),
    "qwen3-reranker": (
        lambda f: tiny_models.save_tiny_decoder_reranker(f, "qwen3"),
        "layers.0.mlp.down_proj",
    ),
    "rankllama": (lambda f: tiny_models.save_tiny_decoder_reranker(f, "rankllama"), "score."),
}


def drop_weights(folder: Path, fragment: str) -> None:
    weights = st.load_file(folder / "model.safetensors")
    kept = {k: v for k, v in weights.items() if fragment not in k}
    assert len(kept) < len(weights)
    st.save_file(kept, folder / "model.safetensors", metadata={"format": "pt"})


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_missing_weights_are_an_error_unless_allowed(kind, tmp_path):
    build, fragment = BUILDERS[kind]
    folder = build(tmp_path / kind)
    assert load_retriever(str(folder)).random_weights == ()
    drop_weights(folder, fragment)
    with pytest.raises(RetrieverLoadError, match="--allow-random-weights"):
        load_retriever(str(folder))
    allowed = load_retriever(str(folder), allow_random_weights=True)
    assert allowed.kind == kind
    assert allowed.random_weights and all(fragment in n for n in allowed.random_weights)


def test_two_label_rankllama_head_needs_the_label_named(tmp_path):
    from transformers import AutoConfig, AutoModelForSequenceClassification

    folder = tiny_models.save_tiny_decoder_reranker(tmp_path / "rankllama", "rankllama")
    config = AutoConfig.from_pretrained(folder)
    config.num_labels = 2
    config.id2label = {0: "irrelevant", 1: "relevant"}
    config.label2id = {"irrelevant": 0, "relevant": 1}
    AutoModelForSequenceClassification.from_config(config).save_pretrained(folder)
    with pytest.raises(RetrieverLoadError, match="--label"):
        load_retriever(str(folder))
    with pytest.raises(RetrieverLoadError, match="label 1"):
        load_retriever(str(folder), label="irrelevant")
    scored = load_retriever(str(folder), label="relevant")
    assert scored.kind == "rankllama"
    batch = scored.encode_side(["bread"], ["a good loaf of bread"])
    logits = scored.model(**batch.inputs).logits
    assert scored.score_side(batch).item() == pytest.approx(
        (logits[0, 1] - logits[0, 0]).item(), abs=1e-5
    )
