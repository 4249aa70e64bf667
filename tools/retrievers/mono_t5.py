"""monoT5 adapter: an encoder–decoder reranker read at its first decoder step.

The input is ``Query: {q} Document: {d} Relevant:``; the score is ``logit("true") - logit("false")``
at the first decoder step (linear in the logits). ``forward_hidden`` returns those first-step
logits ``[B, 1, V]`` (the model's own output), and ``readout`` takes their difference.

Layers are numbered through the encoder and then the decoder: ``L0 … L{E-1}`` are encoder blocks,
``L{E} …`` decoder blocks, two stacks: the decoder blocks start from the decoder's own input and
read the encoder's output (after its final norm) through cross-attention (:meth:`enter_stack`).
``attn`` / ``heads`` are each block's self-attention; the decoder blocks' cross-attention is the
sites ``cross`` / ``cross_heads`` (components ``L{E}.cross``, ``L{E}.cross.H0`` …).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from rankscope.tools.retrievers.architectures import ArchSpec
from rankscope.tools.retrievers.base import (
    CROSS_SITES,
    Retriever,
    SideBatch,
    Site,
    StackEdit,
    without_kv_cache,
)
from rankscope.tools.retrievers.prompts import PromptTemplate, encode_prompts

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
MONO_T5_TEMPLATE = PromptTemplate("Query: ", " Document: ", " Relevant:")
"""monoT5's input, ``Query: {q} Document: {d} Relevant:``."""


class MonoT5(Retriever):
    """Score: ``logit("true") - logit("false")`` at the first decoder step."""

    kind = "mono-t5"
    attention_probs_index = 2

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
        without_kv_cache(model)
        super().__init__(model, tokenizer, arch, model_id, weights_hash, max_length, device)
        config = model.config
        self.n_encoder_layers = int(config.num_layers)
        self.n_layers = self.n_encoder_layers + int(config.num_decoder_layers or config.num_layers)
        self.stack_starts = (self.n_encoder_layers,)
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
        enc, roles = encode_prompts(
            self.tokenizer, MONO_T5_TEMPLATE, queries, docs, self.max_length, injected, filler
        )
        batch = self._side_batch(enc, roles)
        start_id = self.model.config.decoder_start_token_id
        batch.inputs["decoder_input_ids"] = torch.full(
            (len(queries), 1), int(start_id), dtype=torch.long, device=self.device
        )
        return batch

    def readout(self, hidden: torch.Tensor, batch: SideBatch) -> torch.Tensor:
        """``hidden`` is the model's first-step logits ``[B, 1, V]``."""
        last = hidden[:, -1]
        return last[:, self.true_id] - last[:, self.false_id]

    def after_layers(self, hidden: torch.Tensor) -> torch.Tensor:
        """The LM logits from the last decoder block's output, as T5ForConditionalGeneration
        computes them: the decoder's final norm, the ``d_model ** -0.5`` scaling of tied
        embeddings, the LM head."""
        decoder = self.model.get_submodule("decoder")
        out = decoder.get_submodule("dropout")(decoder.get_submodule("final_layer_norm")(hidden))
        config = self.model.config
        if getattr(config, "scale_decoder_outputs", config.tie_word_embeddings):
            out = out * (int(config.d_model) ** -0.5)
        return self.model.get_submodule("lm_head")(out)

    def enter_stack(self, layer: int, previous: torch.Tensor) -> StackEdit:
        """The decoder blocks read ``previous`` (the last encoder block's output) after the
        encoder's final norm as their ``encoder_hidden_states``."""
        if layer != self.n_encoder_layers:
            raise ValueError(f"layer {layer} does not start a stack")
        encoder = self.model.get_submodule("encoder")
        memory = encoder.get_submodule("dropout")(
            encoder.get_submodule("final_layer_norm")(previous)
        )
        # The class's forward: nnsight swaps the instance's for one of another signature.
        names = list(inspect.signature(type(self.layer_modules[layer]).forward).parameters)
        slot = names.index("encoder_hidden_states") - 2  # after self and the hidden state

        def edit(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            if "encoder_hidden_states" in kwargs or len(args) <= slot:
                return args, {**kwargs, "encoder_hidden_states": memory}
            return (*args[:slot], memory, *args[slot + 1 :]), kwargs

        return edit

    @property
    def layer_modules(self) -> nn.ModuleList:
        return nn.ModuleList([*self.model.encoder.block, *self.model.decoder.block])

    def layer_reads_tokens(self, layer: int) -> bool:
        return layer < self.n_encoder_layers

    def layer_path(self, layer: int) -> str:
        if not 0 <= layer < self.n_layers:
            raise ValueError(f"layer {layer} out of range 0..{self.n_layers - 1}")
        if layer >= self.n_encoder_layers:
            return f"decoder.block.{layer - self.n_encoder_layers}"
        return f"encoder.block.{layer}"

    def site_layers(self, site: Site) -> list[int]:
        if site in CROSS_SITES:
            return list(range(self.n_encoder_layers, self.n_layers))
        return super().site_layers(site)

    def module_path(self, layer: int, site: Site) -> tuple[str, Literal["input", "output"]]:
        if site in CROSS_SITES and layer >= self.n_encoder_layers:
            return self.cross_attention_path(layer, per_head=site == "cross_heads")
        if site == "mlp" and layer >= self.n_encoder_layers:
            return f"{self.layer_path(layer)}.layer.2.DenseReluDense.wo", "output"
        return super().module_path(layer, site)

    def cross_attention_path(
        self, layer: int, per_head: bool = False
    ) -> tuple[str, Literal["input", "output"]]:
        """The cross-attention output projection of decoder layer ``layer`` (a combined index,
        ``>= n_encoder_layers``): its input holds per-head outputs, its output the write."""
        if not self.n_encoder_layers <= layer < self.n_layers:
            raise ValueError(f"layer {layer} is not a decoder layer")
        path = f"decoder.block.{layer - self.n_encoder_layers}.layer.1.EncDecAttention.o"
        return path, "input" if per_head else "output"
