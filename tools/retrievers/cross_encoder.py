"""Cross-encoder adapter: ``[CLS] query [SEP] doc [SEP]`` through a sequence-classification head."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from rankscope.tools.retrievers.base import (
    Retriever,
    SideBatch,
    side_roles,
    tokenize_with_offsets,
)

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def _parts(model: nn.Module, *paths: str) -> list[nn.Module]:
    """The submodules of a classification head at dotted ``paths`` (``bert.pooler``)."""
    return [model.get_submodule(path) for path in paths]


def _logits_bert(model: PreTrainedModel, hidden: torch.Tensor, batch: SideBatch) -> torch.Tensor:
    pooler, dropout, classifier = _parts(model, "bert.pooler", "dropout", "classifier")
    return classifier(dropout(pooler(hidden)))


def _logits_classification_head(
    model: PreTrainedModel, hidden: torch.Tensor, batch: SideBatch
) -> torch.Tensor:
    (classifier,) = _parts(model, "classifier")
    return classifier(hidden)


def _logits_distilbert(
    model: PreTrainedModel, hidden: torch.Tensor, batch: SideBatch
) -> torch.Tensor:
    pre_classifier, dropout, classifier = _parts(model, "pre_classifier", "dropout", "classifier")
    pooled = torch.relu(pre_classifier(hidden[:, 0]))
    return classifier(dropout(pooled))


def _logits_modernbert(
    model: PreTrainedModel, hidden: torch.Tensor, batch: SideBatch
) -> torch.Tensor:
    if model.config.classifier_pooling == "cls":
        pooled = hidden[:, 0]
    else:
        mask = batch.attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1)
    head, drop, classifier = _parts(model, "head", "drop", "classifier")
    return classifier(drop(head(pooled)))


HEADS = {
    "bert": _logits_bert,
    "roberta": _logits_classification_head,
    "xlm-roberta": _logits_classification_head,
    "electra": _logits_classification_head,
    "distilbert": _logits_distilbert,
    "modernbert": _logits_modernbert,
}


class CrossEncoder(Retriever):
    """Score: the logit of a one-label head, or ``logit[1] - logit[0]`` of a two-label head."""

    kind = "cross-encoder"

    @property
    def encoder(self) -> nn.Module:
        return self.model.base_model

    def describe(self) -> dict[str, Any]:
        head = "logit" if self.model.config.num_labels == 1 else "logit[1] - logit[0]"
        return {**super().describe(), "score": head}

    def encode_side(
        self,
        queries: Sequence[str],
        docs: Sequence[str],
        injected: Sequence[Sequence[tuple[int, int]]] | None = None,
        filler: Sequence[Sequence[tuple[int, int]]] | None = None,
    ) -> SideBatch:
        enc, offsets = tokenize_with_offsets(
            self.tokenizer,
            queries,
            docs,
            max_length=self.max_length,
            truncation="only_second",
        )
        roles = side_roles(
            self.tokenizer,
            enc,
            offsets,
            queries,
            doc_sequence=1,
            cls_id=self.tokenizer.cls_token_id,
            injected=injected,
            filler=filler,
        )
        return self._side_batch(enc, roles)

    def readout(self, hidden: torch.Tensor, batch: SideBatch) -> torch.Tensor:
        logits = HEADS[self.arch.model_type](self.model, hidden, batch)
        return logits[:, 0] if logits.shape[-1] == 1 else logits[:, 1] - logits[:, 0]
