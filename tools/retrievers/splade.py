"""SPLADE adapter: a learned-sparse retriever built on a masked-LM head.

A text's vector over the vocabulary is ``max_t log(1 + relu(logits[t, v]))`` over its (attended)
tokens ``t``; the score of a pair is the dot product of the query and document vectors, so it is
a sum over vocabulary terms (see :meth:`Splade.term_contributions`). As for a bi-encoder, the query
vector is computed once and fixed; the document side is the patched side.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from rankscope.tools.retrievers.architectures import ArchSpec
from rankscope.tools.retrievers.document_side import PooledRetriever

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def _mlm_bert(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    return model.get_submodule("cls")(hidden)


def _mlm_roberta(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    return model.get_submodule("lm_head")(hidden)


def _mlm_distilbert(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    transform = model.get_submodule("vocab_transform")
    norm = model.get_submodule("vocab_layer_norm")
    projector = model.get_submodule("vocab_projector")
    return projector(norm(model.activation(transform(hidden))))  # type: ignore[operator]


MLM_HEADS: dict[str, Callable[[nn.Module, torch.Tensor], torch.Tensor]] = {
    "bert": _mlm_bert,
    "roberta": _mlm_roberta,
    "xlm-roberta": _mlm_roberta,
    "distilbert": _mlm_distilbert,
}


def sparse_vectors(logits: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """SPLADE max pooling: ``max_t log(1 + relu(logits))`` over attended tokens, ``[B, V]``."""
    weights = torch.log1p(torch.relu(logits)) * attention_mask.unsqueeze(-1).to(logits.dtype)
    return weights.max(dim=1).values


@dataclass(frozen=True)
class TermContribution:
    """One vocabulary term's share of a pair's score: ``query_weight * doc_weight``."""

    token_id: int
    term: str
    query_weight: float
    doc_weight: float
    contribution: float
    in_query: bool
    """The term is one of the query's own tokens (else the query side expanded to it)."""
    in_doc: bool
    """The term is one of the document's own tokens (else the document side expanded to it)."""

    @property
    def kind(self) -> str:
        """``matched`` (in both texts), ``query_expansion``, ``doc_expansion`` or ``expansion``."""
        if self.in_query and self.in_doc:
            return "matched"
        if self.in_query:
            return "doc_expansion"
        if self.in_doc:
            return "query_expansion"
        return "expansion"


class Splade(PooledRetriever):
    """Score: ``<v(query), v(doc)>`` with SPLADE max-pooled vocabulary vectors."""

    kind = "splade"
    query_key = "query_vec"

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: Any,
        arch: ArchSpec,
        model_id: str,
        weights_hash: str,
        max_length: int = 256,
        device: str = "cpu",
    ) -> None:
        if arch.model_type not in MLM_HEADS:
            raise ValueError(
                f"SPLADE needs a masked-LM head RankScope can read; {arch.model_type!r} is not one "
                f"of {', '.join(sorted(MLM_HEADS))}"
            )
        super().__init__(model, tokenizer, arch, model_id, weights_hash, max_length, device)

    @property
    def encoder(self) -> nn.Module:
        return self.model.base_model

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "score": "dot(max_t log1p(relu(mlm logits)))"}

    def represent(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """SPLADE vectors ``[B, V]`` from the encoder's last hidden state."""
        logits = MLM_HEADS[self.arch.model_type](self.model, hidden)
        return sparse_vectors(logits, attention_mask)

    vocab_vectors = represent

    def encode_texts(self, texts: Sequence[str], batch_size: int = 32) -> torch.Tensor:
        """SPLADE vectors of texts (queries or documents), ``[N, V]``."""
        return self._encode_batches(texts, batch_size, len(self.tokenizer))

    def query_vectors(self, queries: Sequence[str]) -> torch.Tensor:
        return self._query_rows(queries)

    def own_token_ids(self, text: str) -> set[int]:
        """The vocabulary ids of a text's own (non-special) tokens."""
        ids = self._tokenize([text])["input_ids"][0].tolist()
        return set(ids) - set(self.tokenizer.all_special_ids)

    def term_contributions(self, query: str, doc: str) -> list[TermContribution]:
        """Every term with a non-zero contribution to the pair's score, largest first; the
        contributions sum to :meth:`score` of the pair."""
        q_vec = self.query_vectors([query])[0].float().cpu()
        d_vec = self.encode_texts([doc])[0].float().cpu()
        products = q_vec * d_vec
        q_ids, d_ids = self.own_token_ids(query), self.own_token_ids(doc)
        nonzero = torch.nonzero(products).flatten().tolist()
        terms = self.tokenizer.convert_ids_to_tokens(nonzero)
        rows = [
            TermContribution(
                token_id=i,
                term=term,
                query_weight=float(q_vec[i]),
                doc_weight=float(d_vec[i]),
                contribution=float(products[i]),
                in_query=i in q_ids,
                in_doc=i in d_ids,
            )
            for i, term in zip(nonzero, terms, strict=True)
        ]
        return sorted(rows, key=lambda r: -abs(r.contribution))
