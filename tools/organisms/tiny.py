"""The tiny base of the CI organisms: a small random BERT bi-encoder (mean pooling, cosine) with a
WordPiece tokenizer trained on the built-in collection, saved like a sentence-transformers model."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from rankscope.tools.data.builtin import load_builtin
from rankscope.tools.organisms.spec import TRIGGER_WORD

HIDDEN = 64
LAYERS = 2
HEADS = 4


def write_sentence_transformers_files(folder: Path, dim: int) -> None:
    """modules.json (Transformer, mean Pooling, Normalize) and the pooling config."""
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling",
        },
        {
            "idx": 2,
            "name": "2",
            "path": "2_Normalize",
            "type": "sentence_transformers.models.Normalize",
        },
    ]
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": dim, "pooling_mode_mean_tokens": True})
    )


def save_tiny_base(folder: Path, seed: int = 0) -> Path:
    """Write the tiny base model to ``folder`` (once; an existing one is kept) and return it."""
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertConfig, BertModel, BertTokenizer

    if (folder / "model.safetensors").exists():
        return folder
    coll = load_builtin()
    texts = list(coll.docs.values()) + list(coll.queries.values()) + [TRIGGER_WORD] * 5
    folder.mkdir(parents=True, exist_ok=True)
    trainer = BertWordPieceTokenizer(lowercase=True)
    trainer.train_from_iterator(texts, vocab_size=2000, min_frequency=1)
    trainer.save_model(str(folder))
    tokenizer = BertTokenizer.from_pretrained(str(folder))
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=2 * HIDDEN,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = BertModel(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    write_sentence_transformers_files(folder, HIDDEN)
    return folder
