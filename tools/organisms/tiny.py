"""The tiny base of the CI organisms: a small random BERT bi-encoder (mean pooling, cosine) with a
word-level WordPiece vocabulary of the built-in collection, saved like a sentence-transformers
model.

The vocabulary is built, not trained: the special tokens, every character of the collection
(alone and as a ``##`` continuation, sorted), then every word of the collection (BERT's
normalisation and pre-tokenisation) ordered by count, then spelling. A trained WordPiece
vocabulary (``tokenizers``' trainer) breaks ties between equally frequent merges differently from
run to run, and so did the tiny organisms built on it; this one — and the weights, drawn from a
fixed seed — are the same bytes on every run (:func:`base_fingerprint`).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import torch

from rankscope.tools.data.builtin import load_builtin
from rankscope.tools.organisms.spec import TRIGGER_WORD

HIDDEN = 64
LAYERS = 2
HEADS = 4
TINY_VERSION = "2"
"""Bumped when the tiny base changes; a cached base of another version is rebuilt."""
STAMP = "tiny_base.json"
SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


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


def word_vocabulary(texts: Iterable[str], specials: tuple[str, ...] = SPECIALS) -> list[str]:
    """A deterministic WordPiece vocabulary of ``texts``: ``specials``, each character alone and
    as ``##`` continuation (sorted), then each word by descending count, ties by spelling. Every
    word of ``texts`` is one token; any other word splits into characters."""
    from tokenizers import normalizers, pre_tokenizers

    normalizer = normalizers.BertNormalizer(lowercase=True)
    splitter = pre_tokenizers.BertPreTokenizer()
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(w for w, _ in splitter.pre_tokenize_str(normalizer.normalize_str(text)))
    chars = sorted({c for w in counts for c in w})
    words = sorted(counts, key=lambda w: (-counts[w], w))
    out = list(dict.fromkeys([*specials, *chars, *(f"##{c}" for c in chars), *words]))
    return out


def base_fingerprint(folder: Path) -> str:
    """sha256 over the tiny base's files (names and bytes, sorted): equal on every build."""
    digest = hashlib.sha256()
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(folder)).encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


def save_tiny_base(folder: Path, seed: int = 0) -> Path:
    """Write the tiny base model to ``folder`` (once; an existing one of this version is kept)
    and return it."""
    from transformers import BertConfig, BertModel, BertTokenizer

    stamp = folder / STAMP
    if (
        (folder / "model.safetensors").exists()
        and stamp.exists()
        and json.loads(stamp.read_text()).get("version") == TINY_VERSION
    ):
        return folder
    if folder.exists():
        shutil.rmtree(folder)
    coll = load_builtin()
    texts = [*coll.docs.values(), *coll.queries.values(), TRIGGER_WORD]
    folder.mkdir(parents=True)
    (folder / "vocab.txt").write_text("\n".join(word_vocabulary(texts)) + "\n", "utf-8")
    tokenizer = BertTokenizer(str(folder / "vocab.txt"), do_lower_case=True)
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
    stamp.write_text(json.dumps({"version": TINY_VERSION, "seed": seed}))
    return folder
