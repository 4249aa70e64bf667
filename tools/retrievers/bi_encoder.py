"""Bi-encoder adapter: the query is embedded once and fixed; the document side is patched."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from rankscope.tools.retrievers.architectures import ArchSpec
from rankscope.tools.retrievers.document_side import PooledRetriever

if TYPE_CHECKING:
    from transformers import PreTrainedModel

Pooling = Literal["cls", "mean"]
Similarity = Literal["dot", "cosine"]


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: Pooling) -> torch.Tensor:
    """CLS or mean pooling as sentence-transformers computes them."""
    if pooling == "cls":
        return hidden[:, 0]
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


class BiEncoder(PooledRetriever):
    kind = "bi-encoder"
    query_key = "query_emb"

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: Any,
        arch: ArchSpec,
        model_id: str,
        weights_hash: str,
        pooling: Pooling = "mean",
        similarity: Similarity = "cosine",
        max_length: int = 256,
        device: str = "cpu",
    ) -> None:
        super().__init__(model, tokenizer, arch, model_id, weights_hash, max_length, device)
        self.pooling = pooling
        self.similarity = similarity

    @property
    def encoder(self) -> nn.Module:
        return self.model

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "pooling": self.pooling, "similarity": self.similarity}

    def represent(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Pooled embeddings, L2-normalised for cosine similarity."""
        emb = pool(hidden, attention_mask, self.pooling)
        return F.normalize(emb, p=2, dim=-1) if self.similarity == "cosine" else emb

    embed = represent

    def encode_texts(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """Embeddings of texts (queries or documents), ``[N, hidden]``."""
        return self._encode_batches(texts, batch_size, self.hidden_size)

    def query_embeddings(self, queries: Sequence[str]) -> torch.Tensor:
        return self._query_rows(queries)
