"""monoT5 adapter: an encoder–decoder reranker read at its first decoder step.

The input is ``Query: {q} Document: {d} Relevant:``; the score is ``logit("true") - logit("false")``
at the first decoder step (linear in the logits). ``forward_hidden`` returns those first-step
logits ``[B, 1, V]`` (the model's own output), and ``readout`` takes their difference.

Layers are numbered through the encoder and then the decoder: ``L0 … L{E-1}`` are encoder blocks,
``L{E} …`` decoder blocks. ``attn`` / ``heads`` are each block's self-attention; the decoder's
cross-attention is read with :meth:`MonoT5.cross_attention_path`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from rankscope.tools.retrievers.architectures import ArchSpec
from rankscope.tools.retrievers.base import Retriever, SideBatch, Site, side_roles

if TYPE_CHECKING:
    from transformers import PreTrainedModel

T5_ARCH = ArchSpec(
    "t5",
    layers="encoder.block",
    out_proj="layer.0.SelfAttention.o",
    mlp_out="layer.1.DenseReluDense.wo",
    q_proj="layer.0.SelfAttention.q",
    k_proj="layer.0.SelfAttention.k",
    v_proj="layer.0.SelfAttention.v",
    attention="layer.0.SelfAttention",
)
"""Paths of an encoder block; decoder blocks are mapped in :meth:`MonoT5.module_path`."""


class MonoT5(Retriever):
    """Score: ``logit("true") - logit("false")`` at the first decoder step."""

    kind = "mono-t5"

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: Any,
        arch: ArchSpec,
        model_id: str,
        weights_hash: str,
        max_length: int = 512,
        device: str = "cpu",
        true_token: str = "true",
        false_token: str = "false",
    ) -> None:
        super().__init__(model, tokenizer, arch, model_id, weights_hash, max_length, device)
        config = model.config
        self.n_encoder_layers = int(config.num_layers)
        self.n_layers = self.n_encoder_layers + int(config.num_decoder_layers or config.num_layers)
        self.head_dim = int(config.d_kv)
        self.true_id = self._first_id(true_token)
        self.false_id = self._first_id(false_token)

    def _first_id(self, word: str) -> int:
        ids = self.tokenizer(word, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ValueError(f"the tokenizer has no token for {word!r}")
        return int(ids[0])

    @property
    def encoder(self) -> nn.Module:
        return self.model

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "encoder_layers": self.n_encoder_layers,
            "score": 'logit("true") - logit("false") at the first decoder step',
        }

    def encode_side(
        self,
        queries: Sequence[str],
        docs: Sequence[str],
        injected: Sequence[Sequence[tuple[int, int]]] | None = None,
        filler: Sequence[Sequence[tuple[int, int]]] | None = None,
    ) -> SideBatch:
        texts, doc_starts, query_spans = [], [], []
        for query, doc in zip(queries, docs, strict=True):
            head = f"Query: {query} Document: "
            texts.append(f"{head}{doc} Relevant:")
            query_spans.append((len("Query: "), len("Query: ") + len(query)))
            doc_starts.append(len(head))
        enc = self.tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
            return_offsets_mapping=True,
        )
        offsets = enc.pop("offset_mapping")
        seq_ids: list[list[int | None]] = []
        for i in range(len(queries)):
            start, (q_start, q_end) = doc_starts[i], query_spans[i]
            doc_end = start + len(docs[i])
            seq_ids.append(
                [
                    0
                    if q_start <= s and e <= q_end and e > s
                    else 1
                    if start <= s and e <= doc_end and e > s
                    else None
                    for s, e in offsets[i].tolist()
                ]
            )
        roles = side_roles(
            self.tokenizer,
            enc,
            offsets,
            queries,
            doc_sequence=1,
            cls_id=-1,
            injected=injected,
            filler=filler,
            shifts=doc_starts,
            sequence_ids=seq_ids,
        )
        inputs = {k: v.to(self.device) for k, v in enc.items()}
        start_id = self.model.config.decoder_start_token_id
        inputs["decoder_input_ids"] = torch.full(
            (len(texts), 1), int(start_id), dtype=torch.long, device=self.device
        )
        return SideBatch(inputs, torch.tensor(roles, dtype=torch.long, device=self.device))

    def readout(self, hidden: torch.Tensor, batch: SideBatch) -> torch.Tensor:
        """``hidden`` is the model's first-step logits ``[B, 1, V]``."""
        last = hidden[:, -1]
        return last[:, self.true_id] - last[:, self.false_id]

    @property
    def layer_modules(self) -> nn.ModuleList:
        return nn.ModuleList([*self.model.encoder.block, *self.model.decoder.block])

    def module_path(self, layer: int, site: Site) -> tuple[str, Literal["input", "output"]]:
        if not 0 <= layer < self.n_layers:
            raise ValueError(f"layer {layer} out of range 0..{self.n_layers - 1}")
        decoder = layer >= self.n_encoder_layers
        prefix = (
            f"decoder.block.{layer - self.n_encoder_layers}"
            if decoder
            else f"encoder.block.{layer}"
        )
        if site == "resid":
            return prefix, "output"
        if site in ("attn", "heads"):
            return f"{prefix}.layer.0.SelfAttention.o", "output" if site == "attn" else "input"
        if site == "mlp":
            return f"{prefix}.layer.{2 if decoder else 1}.DenseReluDense.wo", "output"
        raise ValueError(f"unknown site {site!r}")

    def cross_attention_path(
        self, layer: int, per_head: bool = False
    ) -> tuple[str, Literal["input", "output"]]:
        """The cross-attention output projection of decoder layer ``layer`` (a combined index,
        ``>= n_encoder_layers``): its input holds per-head outputs, its output the write."""
        if not self.n_encoder_layers <= layer < self.n_layers:
            raise ValueError(f"layer {layer} is not a decoder layer")
        path = f"decoder.block.{layer - self.n_encoder_layers}.layer.1.EncDecAttention.o"
        return path, "input" if per_head else "output"
