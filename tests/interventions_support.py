"""Helpers of the intervention tests: tiny random encoders with the MiniLM tokenizer, pairs."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

import torch

from rankscope.tools.contract import ToolContext
from rankscope.tools.data.source import resolve_data
from rankscope.tools.retrievers import Retriever, load_retriever
from rankscope.tools.retrievers.loading import default_model_path
from tests.tiny_models import tiny_config


def tiny_retriever(
    folder: Path,
    arch: str,
    kind: str = "bi-encoder",
    pooling: str = "mean",
    similarity: str = "dot",
    seed: int = 0,
) -> Retriever:
    """A tiny random ``arch`` encoder saved with the MiniLM tokenizer and loaded back."""
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(default_model_path())
    cross = kind == "cross-encoder"
    config = tiny_config(arch, len(tokenizer), tokenizer, cross, initializer_range=0.2)
    torch.manual_seed(seed)
    model = (AutoModelForSequenceClassification if cross else AutoModel).from_config(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    if cross:
        return load_retriever(str(folder), kind="cross-encoder")
    return load_retriever(str(folder), kind="bi-encoder", pooling=pooling, similarity=similarity)


_TINY: dict[tuple[str, str, int], Retriever] = {}


def shared_tiny(arch: str, kind: str = "bi-encoder", seed: int = 0) -> Retriever:
    """:func:`tiny_retriever` built once per test session (in a temporary folder)."""
    key = (arch, kind, seed)
    if key not in _TINY:
        folder = Path(tempfile.mkdtemp(prefix=f"rankscope-tiny-{arch}-"))
        atexit.register(shutil.rmtree, folder, True)
        _TINY[key] = tiny_retriever(folder, arch, kind, seed=seed)
    return _TINY[key]


def tfc1_data(shared: Path):
    """The shared TFC1 pairs as a data source."""
    return resolve_data(f"{shared / 'dl1920_tfc1_pairs.tsv'}#perturbation=TFC1/append")


def tfc1_pairs(shared: Path, retriever: Retriever, n: int, seed: int = 0) -> list:
    """``n`` length-aligned TFC1 append pairs (shortest texts first keeps the tests quick)."""
    data = tfc1_data(shared)
    pairs = data.pairs("TFC1", "append", tokenizer=retriever.tokenizer, split="all", n=n, seed=seed)
    return list(pairs)


def context(retriever: Retriever, data, folder: Path) -> ToolContext:
    return ToolContext(lambda: retriever, data, folder, progress=False)
