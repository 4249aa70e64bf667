"""Attention masking between segments of a cross-encoder's joint sequence.

A block ``doc->query`` at layer ``l`` stops every document token (doc, qterm, injected and filler
positions) from attending to query tokens at that layer: the attention mask the layer receives is
set to the mask value at those (from, to) entries, so the softmax gives them zero weight. The
patched runs start at the first masked layer from cached inputs; each block configuration runs
as one copy of the batch.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from rankscope.tools.interventions.cache import RunCache, repeat_side, run_from
from rankscope.tools.interventions.patching import DEFAULT_MAX_TOKENS, chunks
from rankscope.tools.retrievers.base import Retriever, Role

Segment = Literal["cls", "query", "doc", "sep"]
SEGMENTS: dict[str, tuple[Role, ...]] = {
    "cls": (Role.CLS,),
    "query": (Role.QUERY,),
    "doc": (Role.DOC, Role.QTERM, Role.INJECTED, Role.FILLER),
    "sep": (Role.SEP,),
}


class SingleSegmentError(ValueError):
    """Attention masking between segments asked of a model that encodes one segment."""


@dataclass(frozen=True)
class Block:
    """Stop ``source`` tokens attending to ``dest`` tokens at ``layers``."""

    source: Segment
    dest: Segment
    layers: tuple[int, ...]

    @property
    def name(self) -> str:
        return f"{self.source}->{self.dest}@L{','.join(map(str, self.layers))}"

    @staticmethod
    def parse(text: str, layers: Sequence[int]) -> Block:
        source, sep, dest = text.partition("->")
        source, dest = source.strip(), dest.strip()
        if not sep or source not in SEGMENTS or dest not in SEGMENTS:
            raise ValueError(
                f"bad block {text!r}: use '<from>-><to>' with segments {', '.join(SEGMENTS)}, "
                "e.g. 'doc->query'"
            )
        return Block(source, dest, tuple(sorted(set(layers))))  # type: ignore[arg-type]


JOINT_UNSUPPORTED = {
    "mono-t5": "its encoder reads query and document jointly, but its blocks take T5's relative "
    "position bias with the mask folded in, which this tool does not edit",
    "qwen3-reranker": "it reads query and document in one causal sequence, whose causal mask "
    "this tool does not edit (the query cannot attend to the later document anyway)",
    "rankllama": "it reads query and document in one causal sequence, whose causal mask this "
    "tool does not edit (the query cannot attend to the later document anyway)",
}
"""Kinds that read the query and the document together but whose masks the tool leaves alone."""


def require_cross_encoder(retriever: Retriever) -> None:
    """Raise :class:`SingleSegmentError`, with the reason, unless the model is a BERT-style
    cross-encoder (whose padding mask is edited per layer)."""
    if retriever.kind == "cross-encoder":
        return
    if retriever.kind in JOINT_UNSUPPORTED:
        reason = JOINT_UNSUPPORTED[retriever.kind]
    else:
        reason = "it encodes the document alone (one segment, no query tokens to mask)"
    raise SingleSegmentError(
        f"attention masking between segments needs a cross-encoder; {retriever.model_id!r} is "
        f"a {retriever.kind}: {reason}. Use ablation, activation patching or attention_by_role "
        "to study its attention instead."
    )


def segment_mask(roles: torch.Tensor, segment: str) -> torch.Tensor:
    codes = torch.tensor([int(r) for r in SEGMENTS[segment]], device=roles.device)
    return torch.isin(roles, codes)


def _mask_slot(layer: torch.nn.Module) -> tuple[list[str], str]:
    params = list(inspect.signature(type(layer).forward).parameters)
    if "attention_mask" not in params:
        raise NotImplementedError(f"{type(layer).__name__} takes no attention_mask argument")
    return params[2:], "attention_mask"


def _edited_mask(mask: Any, blocked: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``mask`` with ``blocked`` ``[R, S, S]`` (from, to) entries disallowed."""
    rows, seq = blocked.shape[0], blocked.shape[-1]
    if mask is None:
        mask = torch.zeros(rows, 1, seq, seq, dtype=dtype, device=blocked.device)
    mask = mask.expand(rows, mask.shape[1], seq, seq)
    if mask.dtype == torch.bool:
        return mask & ~blocked.unsqueeze(1)
    low = torch.finfo(mask.dtype).min
    return torch.where(blocked.unsqueeze(1), torch.tensor(low, dtype=mask.dtype), mask)


def config_name(config: Sequence[Block]) -> str:
    return "+".join(block.name for block in config)


@torch.inference_mode()
def masked_scores(
    retriever: Retriever,
    target: RunCache,
    configs: Sequence[Sequence[Block]],
    max_tokens: int = DEFAULT_MAX_TOKENS,
) -> torch.Tensor:
    """Scores ``[B, n]`` of a cached run under each configuration (its blocks applied together)."""
    require_cross_encoder(retriever)
    rows = len(target.batch)
    roles = target.batch.roles
    out = torch.empty(rows, len(configs))
    params, slot = _mask_slot(retriever.layer_modules[0])
    index = params.index(slot)
    for config in configs:
        if not config:
            raise ValueError("a masking configuration has no block")
        for block in config:
            if not block.layers or not all(0 <= i < retriever.n_layers for i in block.layers):
                raise ValueError(
                    f"block {block.name}: layers must lie in 0…{retriever.n_layers - 1}"
                )
    segments = {name: segment_mask(roles, name) for name in SEGMENTS}

    def blocked_at(config: Sequence[Block], layer: int) -> torch.Tensor:
        out = torch.zeros(rows, roles.shape[1], roles.shape[1], dtype=torch.bool)
        for block in config:
            if layer in block.layers:
                out |= segments[block.source].unsqueeze(2) & segments[block.dest].unsqueeze(1)
        return out

    by_start: dict[int, list[int]] = {}
    for i, config in enumerate(configs):
        by_start.setdefault(min(min(b.layers) for b in config), []).append(i)
    for start, indices in sorted(by_start.items()):
        for part in chunks(indices, target.batch, max_tokens):
            copies = len(part)
            per_layer = {
                layer: torch.cat([blocked_at(configs[i], layer) for i in part])
                for layer in range(start, retriever.n_layers)
            }

            def edit(layer: int, args: tuple, kwargs: dict, per_layer: dict = per_layer) -> Any:
                blocked = per_layer[layer]
                if not blocked.any():
                    return args, kwargs
                dtype = target.hidden[0].dtype
                if slot in kwargs:
                    kwargs = {**kwargs, slot: _edited_mask(kwargs[slot], blocked, dtype)}
                elif index < len(args):
                    edited = _edited_mask(args[index], blocked, dtype)
                    args = (*args[:index], edited, *args[index + 1 :])
                else:
                    kwargs = {**kwargs, slot: _edited_mask(None, blocked, dtype)}
                return args, kwargs

            hidden = target.hidden[start].repeat(copies, 1, 1)
            final = run_from(retriever, target, start, hidden, copies, edit_args=edit)
            scores = retriever.readout(final, repeat_side(target.batch, copies))
            out[:, part] = scores.float().view(copies, rows).T.cpu()
    return out
