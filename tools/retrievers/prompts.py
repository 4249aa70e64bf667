"""Role codes of prompted rerankers (monoT5, the decoder LLM rerankers): the query and the document
sit inside one templated text, so their tokens are found by character spans, not by the
tokenizer's sequence ids, and there is no CLS token."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from rankscope.tools.retrievers.base import Spans, side_roles, tokenize_with_offsets

Span = tuple[int, int]


@dataclass(frozen=True)
class PromptTemplate:
    """The text ``{before}{query}{between}{doc}{after}`` of a (query, document) pair."""

    before: str
    between: str
    after: str

    def fill(
        self, queries: Sequence[str], docs: Sequence[str]
    ) -> tuple[list[str], list[Span], list[Span]]:
        """The texts of the pairs, and the character spans of their queries and documents."""
        texts, query_spans, doc_spans = [], [], []
        for query, doc in zip(queries, docs, strict=True):
            q_start = len(self.before)
            d_start = q_start + len(query) + len(self.between)
            texts.append(f"{self.before}{query}{self.between}{doc}{self.after}")
            query_spans.append((q_start, q_start + len(query)))
            doc_spans.append((d_start, d_start + len(doc)))
        return texts, query_spans, doc_spans


def span_sequence_ids(
    offsets: torch.Tensor, query_spans: Sequence[Span], doc_spans: Sequence[Span]
) -> list[list[int | None]]:
    """Sequence ids from character spans: 0 for a token inside its row's query span, 1 inside
    its document span, None elsewhere (template text, tokens without characters)."""
    return [
        [
            None
            if e <= s
            else 0
            if q_start <= s and e <= q_end
            else 1
            if d_start <= s and e <= d_end
            else None
            for s, e in row.tolist()
        ]
        for row, (q_start, q_end), (d_start, d_end) in zip(
            offsets, query_spans, doc_spans, strict=True
        )
    ]


def prompt_roles(
    tokenizer: Any,
    enc: Any,
    offsets: torch.Tensor,
    queries: Sequence[str],
    sequence_ids: Sequence[Sequence[int | None]],
    doc_starts: Sequence[int],
    injected: Spans | None,
    filler: Spans | None,
) -> list[list[int]]:
    """:func:`side_roles` of a prompted batch: the document is sequence 1 of ``sequence_ids``,
    its offsets start at ``doc_starts``, and no token is a CLS token."""
    return side_roles(
        tokenizer,
        enc,
        offsets,
        queries,
        doc_sequence=1,
        cls_id=-1,
        injected=injected,
        filler=filler,
        shifts=doc_starts,
        sequence_ids=sequence_ids,
    )


def encode_prompts(
    tokenizer: Any,
    template: PromptTemplate,
    queries: Sequence[str],
    docs: Sequence[str],
    max_length: int,
    injected: Spans | None,
    filler: Spans | None,
) -> tuple[Any, list[list[int]]]:
    """The tokenised texts of ``template`` filled with the pairs, and their role codes."""
    texts, query_spans, doc_spans = template.fill(queries, docs)
    enc, offsets = tokenize_with_offsets(tokenizer, texts, max_length=max_length)
    sequence_ids = span_sequence_ids(offsets, query_spans, doc_spans)
    doc_starts = [start for start, _ in doc_spans]
    roles = prompt_roles(
        tokenizer, enc, offsets, queries, sequence_ids, doc_starts, injected, filler
    )
    return enc, roles
