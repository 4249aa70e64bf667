"""Decoder-only LLM rerankers: Qwen3-Reranker style (yes − no logit) and RankLLaMA style (a
sequence-classification head), both read at the last token of a left-padded batch.

Both are causal: every position sees only its left context, so a perturbation changes the hidden
states from its first token on. Inputs are left-padded, which puts the scored last token at the
same position in every row. As for the encoder kinds, ``encoder`` is the base transformer
(``model.model``, a ``LlamaModel`` / ``Qwen3Model``): ``forward_hidden`` returns its final hidden
state (after its final norm) and ``readout`` applies the model's head — the LM head's yes and no
rows, or the classification head — at the scored token, a linear function of the hidden state.
Components are named as in the base transformer (``layers.{i}.self_attn.o_proj`` …).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from rankscope.tools.retrievers.architectures import ArchSpec
from rankscope.tools.retrievers.base import (
    Retriever,
    SideBatch,
    tokenize_with_offsets,
    without_kv_cache,
)
from rankscope.tools.retrievers.prompts import PromptTemplate, encode_prompts, prompt_roles

if TYPE_CHECKING:
    from transformers import PreTrainedModel

DECODER_ARCH = {
    "layers": "layers",
    "out_proj": "self_attn.o_proj",
    "mlp_out": "mlp.down_proj",
    "q_proj": "self_attn.q_proj",
    "k_proj": "self_attn.k_proj",
    "v_proj": "self_attn.v_proj",
    "attention": "self_attn",
    "final_norm": "norm",
}
DECODER_TYPES = ("llama", "qwen2", "qwen3", "mistral")


def decoder_arch(model_type: str) -> ArchSpec:
    if model_type not in DECODER_TYPES:
        raise ValueError(
            f"decoder rerankers cover {', '.join(DECODER_TYPES)}; {model_type!r} is not one of them"
        )
    return ArchSpec(model_type, **DECODER_ARCH)


QWEN3_PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and "
    'the Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n'
    "<|im_start|>user\n"
)
QWEN3_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
QWEN3_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"


class _DecoderReranker(Retriever):
    """Shared pieces: left padding, the base transformer as the traced module, per-layer dims."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: Any,
        arch: ArchSpec,
        model_id: str,
        weights_hash: str,
        max_length: int = 512,
        device: str = "cpu",
    ) -> None:
        tokenizer.padding_side = "left"
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        without_kv_cache(model)
        super().__init__(model, tokenizer, arch, model_id, weights_hash, max_length, device)
        self.head_dim = int(getattr(model.config, "head_dim", None) or self.head_dim)

    @property
    def encoder(self) -> nn.Module:
        return self.model.base_model

    def head_rows(
        self, head: nn.Module, rows: Sequence[int]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The weight rows (and bias entries) of a linear head for the output units ``rows``."""
        if not isinstance(head, nn.Linear):
            raise TypeError(f"{type(self.model).__name__}'s head is not a linear layer")
        index = torch.tensor(list(rows), device=head.weight.device)
        bias = head.bias[index] if head.bias is not None else None
        return head.weight[index], bias


class Qwen3Reranker(_DecoderReranker):
    """Score: ``logit("yes") - logit("no")`` at the last token of Qwen3-Reranker's template."""

    kind = "qwen3-reranker"

    def __init__(self, *args: Any, instruction: str = QWEN3_INSTRUCTION, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.instruction = instruction
        self.yes_id = int(self.tokenizer.convert_tokens_to_ids("yes"))
        self.no_id = int(self.tokenizer.convert_tokens_to_ids("no"))
        if self.tokenizer.unk_token_id in (self.yes_id, self.no_id):
            raise ValueError("the tokenizer has no single 'yes' and 'no' tokens")

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "score": 'logit("yes") - logit("no") at the last token'}

    def encode_side(
        self,
        queries: Sequence[str],
        docs: Sequence[str],
        injected: Sequence[Sequence[tuple[int, int]]] | None = None,
        filler: Sequence[Sequence[tuple[int, int]]] | None = None,
    ) -> SideBatch:
        template = PromptTemplate(
            f"{QWEN3_PREFIX}<Instruct>: {self.instruction}\n<Query>: ",
            "\n<Document>: ",
            QWEN3_SUFFIX,
        )
        enc, roles = encode_prompts(
            self.tokenizer, template, queries, docs, self.max_length, injected, filler
        )
        return self._side_batch(enc, roles)

    def readout(self, hidden: torch.Tensor, batch: SideBatch) -> torch.Tensor:
        """The LM head's yes and no logits at the last position of the final hidden state
        ``[B, S, hidden]`` (left padded: the last token is scored), and their difference."""
        weight, bias = self.head_rows(self.model.get_output_embeddings(), (self.yes_id, self.no_id))
        logits = nn.functional.linear(hidden[:, -1], weight, bias)
        return logits[:, 0] - logits[:, 1]


class RankLlama(_DecoderReranker):
    """Score: the one-label classification head on the last token of ``query: q`` / ``document: d``
    (RankLLaMA's input pair)."""

    kind = "rankllama"

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "score": "classification logit at the last token"}

    def encode_side(
        self,
        queries: Sequence[str],
        docs: Sequence[str],
        injected: Sequence[Sequence[tuple[int, int]]] | None = None,
        filler: Sequence[Sequence[tuple[int, int]]] | None = None,
    ) -> SideBatch:
        enc, offsets = tokenize_with_offsets(
            self.tokenizer,
            [f"query: {q}" for q in queries],
            [f"document: {d}" for d in docs],
            max_length=self.max_length,
            truncation="only_second",
        )
        shift = len("document: ")
        seq_ids = []
        for i in range(len(queries)):
            row = enc.sequence_ids(i)
            seq_ids.append(
                [
                    None if (seq == 1 and e <= shift) or (seq == 0 and e <= len("query: ")) else seq
                    for seq, (_, e) in zip(row, offsets[i].tolist(), strict=True)
                ]
            )
        shifts = [shift] * len(queries)
        roles = prompt_roles(
            self.tokenizer, enc, offsets, queries, seq_ids, shifts, injected, filler
        )
        return self._side_batch(enc, roles)

    def readout(self, hidden: torch.Tensor, batch: SideBatch) -> torch.Tensor:
        """The classification head at the last token that is not padding (as the model pools),
        from the final hidden state ``[B, S, hidden]``: its logit, or with two labels the second
        minus the first."""
        ids = batch.inputs["input_ids"]
        pad = self.model.config.pad_token_id
        if pad is None:
            last = torch.full((ids.shape[0],), ids.shape[1] - 1, device=ids.device)
        else:
            positions = torch.arange(ids.shape[1], device=ids.device)
            last = (positions * (ids != pad).to(torch.long)).argmax(-1)
        head = self.model.get_submodule("score")
        n_labels = int(getattr(head, "out_features", 1))
        weight, bias = self.head_rows(head, (0,) if n_labels == 1 else (1, 0))
        logits = nn.functional.linear(hidden[torch.arange(ids.shape[0]), last], weight, bias)
        return logits[:, 0] if n_labels == 1 else logits[:, 0] - logits[:, 1]
