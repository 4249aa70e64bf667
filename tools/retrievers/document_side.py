"""Retrievers whose query side is computed once and fixed and whose document side is patched:
bi-encoders, SPLADE and late interaction.

:class:`DocumentSideRetriever` tokenises documents and marks their roles; :class:`PooledRetriever`
adds what bi-encoders and SPLADE share beyond that — one vector per text (each kind supplies
:meth:`PooledRetriever.represent`), batched text encoding, a cache of query vectors, and a score
that is the dot product of the document's vector and the query's.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from functools import cached_property
from typing import Any

import torch

from rankscope.tools.retrievers.base import (
    Retriever,
    SideBatch,
    Spans,
    cached_rows,
    side_roles,
    tokenize_with_offsets,
)


class DocumentSideRetriever(Retriever):
    """A retriever whose patched side is the document alone (sequence 0 of its encoding)."""

    def _tokenize(self, texts: Sequence[str], *, max_length: int | None = None) -> Any:
        """A padded batch of ``texts``, truncated to ``max_length`` (default ``self.max_length``)."""
        return self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=max_length or self.max_length,
            return_tensors="pt",
        )

    def _document_side(
        self,
        queries: Sequence[str],
        docs: Sequence[str],
        injected: Spans | None,
        filler: Spans | None,
        prefix: str = "",
        max_length: int | None = None,
    ) -> tuple[Any, torch.Tensor, list[list[int]]]:
        """The tokenised documents (each after ``prefix``), their offsets and role codes (offsets
        document-relative: the prefix is subtracted)."""
        enc, offsets = tokenize_with_offsets(
            self.tokenizer, [prefix + d for d in docs], max_length=max_length or self.max_length
        )
        roles = side_roles(
            self.tokenizer,
            enc,
            offsets,
            queries,
            doc_sequence=0,
            cls_id=self.tokenizer.cls_token_id,
            injected=injected,
            filler=filler,
            shifts=[len(prefix)] * len(queries),
        )
        return enc, offsets, roles


class PooledRetriever(DocumentSideRetriever):
    """Score: ``<r(query), r(doc)>`` for one vector ``r`` per text (see the module docstring)."""

    query_key: str
    """The key of the query vectors in a :class:`SideBatch`'s context."""

    @cached_property
    def _query_cache(self) -> dict[str, torch.Tensor]:
        """Query vectors by query text (see :meth:`_query_rows`)."""
        return {}

    @abstractmethod
    def represent(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Vectors ``[B, width]`` of texts from the encoder's last hidden state."""

    @abstractmethod
    def encode_texts(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """Vectors of texts (queries or documents), ``[N, width]``."""

    def _hidden(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The encoder's last hidden state for tokenised ``inputs``."""
        return self.encoder(**inputs)[0]

    @torch.inference_mode()
    def _encode_batches(self, texts: Sequence[str], batch_size: int, width: int) -> torch.Tensor:
        """:meth:`represent` of ``texts``, ``batch_size`` at a time; ``[0, width]`` for none."""
        out = []
        for start in range(0, len(texts), batch_size):
            enc = self._tokenize(texts[start : start + batch_size]).to(self.device)
            out.append(self.represent(self._hidden(dict(enc)), enc["attention_mask"]))
        return torch.cat(out) if out else torch.empty(0, width)

    def _query_rows(self, queries: Sequence[str]) -> torch.Tensor:
        """The vectors of ``queries``, encoding only those not seen before."""
        return cached_rows(self._query_cache, queries, self.encode_texts)

    def encode_side(
        self,
        queries: Sequence[str],
        docs: Sequence[str],
        injected: Spans | None = None,
        filler: Spans | None = None,
    ) -> SideBatch:
        enc, _, roles = self._document_side(queries, docs, injected, filler)
        return self._side_batch(enc, roles, {self.query_key: self._query_rows(queries)})

    def readout(self, hidden: torch.Tensor, batch: SideBatch) -> torch.Tensor:
        doc = self.represent(hidden, batch.attention_mask)
        return (doc * batch.context[self.query_key].to(doc.dtype)).sum(-1)
