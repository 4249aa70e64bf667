"""Bi-encoder adapter: the query is embedded once and fixed; the document side is patched."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from rankscope.tools.retrievers.architectures import ArchSpec
from rankscope.tools.retrievers.base import Retriever, SideBatch, cached_rows, side_roles

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


class BiEncoder(Retriever):
    kind = "bi-encoder"

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
        self._query_cache: dict[str, torch.Tensor] = {}

    @property
    def encoder(self) -> nn.Module:
        return self.model

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "pooling": self.pooling, "similarity": self.similarity}

    def _tokenize(self, texts: Sequence[str], offsets: bool = False) -> Any:
        return self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
            return_offsets_mapping=offsets,
        )

    def embed(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        emb = pool(hidden, attention_mask, self.pooling)
        return F.normalize(emb, p=2, dim=-1) if self.similarity == "cosine" else emb

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """Embeddings of texts (queries or documents), ``[N, hidden]``."""
        out = []
        for start in range(0, len(texts), batch_size):
            enc = self._tokenize(texts[start : start + batch_size]).to(self.device)
            out.append(self.embed(self.encoder(**enc)[0], enc["attention_mask"]))
        return torch.cat(out) if out else torch.empty(0, self.hidden_size)

    def query_embeddings(self, queries: Sequence[str]) -> torch.Tensor:
        return cached_rows(self._query_cache, queries, self.encode_texts)

    def encode_side(
        self,
        queries: Sequence[str],
        docs: Sequence[str],
        injected: Sequence[Sequence[tuple[int, int]]] | None = None,
        filler: Sequence[Sequence[tuple[int, int]]] | None = None,
    ) -> SideBatch:
        enc = self._tokenize(docs, offsets=True)
        offsets = enc.pop("offset_mapping")
        roles = side_roles(
            self.tokenizer,
            enc,
            offsets,
            queries,
            doc_sequence=0,
            cls_id=self.tokenizer.cls_token_id,
            injected=injected,
            filler=filler,
        )
        inputs = {k: v.to(self.device) for k, v in enc.items()}
        return SideBatch(
            inputs,
            torch.tensor(roles, dtype=torch.long, device=self.device),
            {"query_emb": self.query_embeddings(queries)},
        )

    def readout(self, hidden: torch.Tensor, batch: SideBatch) -> torch.Tensor:
        doc_emb = self.embed(hidden, batch.attention_mask)
        return (doc_emb * batch.context["query_emb"].to(doc_emb.dtype)).sum(-1)
