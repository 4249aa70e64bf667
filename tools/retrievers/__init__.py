"""Retriever adapters: one view of bi-encoders, cross-encoders, SPLADE, late interaction, monoT5
and decoder LLM rerankers for every experiment."""

from rankscope.tools.retrievers.base import SITES, Component, Retriever, Role, SideBatch
from rankscope.tools.retrievers.bi_encoder import BiEncoder
from rankscope.tools.retrievers.cross_encoder import CrossEncoder
from rankscope.tools.retrievers.decoder_reranker import Qwen3Reranker, RankLlama
from rankscope.tools.retrievers.late_interaction import LateInteraction
from rankscope.tools.retrievers.loading import DEFAULT_MODEL, RetrieverLoadError, load_retriever
from rankscope.tools.retrievers.mono_t5 import MonoT5
from rankscope.tools.retrievers.splade import Splade

__all__ = [
    "DEFAULT_MODEL",
    "SITES",
    "BiEncoder",
    "Component",
    "CrossEncoder",
    "LateInteraction",
    "MonoT5",
    "Qwen3Reranker",
    "RankLlama",
    "Retriever",
    "RetrieverLoadError",
    "Role",
    "SideBatch",
    "Splade",
    "load_retriever",
]
