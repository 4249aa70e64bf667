"""Retriever adapters: one view of bi-encoders and cross-encoders for every experiment."""

from rankscope.tools.retrievers.base import SITES, Component, Retriever, Role, SideBatch
from rankscope.tools.retrievers.bi_encoder import BiEncoder
from rankscope.tools.retrievers.cross_encoder import CrossEncoder
from rankscope.tools.retrievers.loading import DEFAULT_MODEL, RetrieverLoadError, load_retriever

__all__ = [
    "DEFAULT_MODEL",
    "SITES",
    "BiEncoder",
    "Component",
    "CrossEncoder",
    "Retriever",
    "RetrieverLoadError",
    "Role",
    "SideBatch",
    "load_retriever",
]
