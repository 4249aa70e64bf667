"""Attention by token role, read through nnsight from the eager attention probabilities.

The attention module of each layer (``attention.self`` for BERT-likes, ``attention`` for
DistilBERT, ``attn`` for ModernBERT: ``ArchSpec.attention``) returns ``(output, probabilities)``;
the probabilities ``[B, heads, S, S]`` are reduced inside the trace, so only ``[B, heads, F, T]``
leaves it: for each head, the attention mass a token of role group F gives to all tokens of group
T, averaged over the F tokens of the pair. The pseudo-group ``same_token`` is, for each token,
the OTHER positions holding the same token id: the mass an injected term gives to earlier
occurrences of itself is ``injected -> same_token`` (duplicate-token heads).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import nnsight
import numpy as np
import torch

from rankscope.tools.data.types import Pair
from rankscope.tools.interventions.pairs import (
    POSITION_GROUPS,
    pair_batches,
    position_mask,
    with_progress,
)
from rankscope.tools.retrievers.base import Retriever, Role

SAME_TOKEN = "same_token"
EAGER_NEEDED = (
    "the attention module returned no attention probabilities: load the model with "
    "attn_implementation='eager' (load_retriever does)"
)


def same_token_mask(input_ids: torch.Tensor, roles: torch.Tensor) -> torch.Tensor:
    """``[B, S, S]``: position j holds the same token id as position i (j ≠ i, no padding)."""
    real = roles != Role.PAD
    same = input_ids.unsqueeze(2) == input_ids.unsqueeze(1)
    same &= real.unsqueeze(2) & real.unsqueeze(1)
    eye = torch.eye(input_ids.shape[1], dtype=torch.bool, device=input_ids.device)
    return same & ~eye


def role_masses(
    probs: torch.Tensor,
    from_masks: torch.Tensor,
    to_masks: torch.Tensor,
    same: torch.Tensor | None,
) -> torch.Tensor:
    """``[B, H, F, T(+1)]`` mean attention mass from each F group to each T group (and to
    ``same_token`` when ``same`` is given); NaN where a pair has no F token."""
    probs = probs.float()
    mass = torch.einsum("bhij,btj->bhit", probs, to_masks.float())
    if same is not None:
        mass = torch.cat([mass, (probs * same.unsqueeze(1).float()).sum(-1, keepdim=True)], -1)
    counts = from_masks.float().sum(-1)
    summed = torch.einsum("bhit,bfi->bhft", mass, from_masks.float())
    return (
        summed / counts.clamp(min=1)[:, None, :, None]
        + torch.where(counts == 0, torch.nan, 0.0)[:, None, :, None]
    )


def uniform_masses(
    from_masks: torch.Tensor, to_masks: torch.Tensor, same: torch.Tensor | None, real: torch.Tensor
) -> torch.Tensor:
    """``[B, F, T(+1)]`` the masses uniform attention over the non-padding tokens would give."""
    n_real = real.float().sum(-1).clamp(min=1)
    per_to = to_masks.float().sum(-1) / n_real[:, None]
    per_pos = per_to.unsqueeze(1).expand(-1, from_masks.shape[2], -1)
    if same is not None:
        per_pos = torch.cat([per_pos, (same.float().sum(-1) / n_real[:, None]).unsqueeze(-1)], -1)
    counts = from_masks.float().sum(-1)
    summed = torch.einsum("bit,bfi->bft", per_pos, from_masks.float())
    return (
        summed / counts.clamp(min=1)[:, :, None]
        + torch.where(counts == 0, torch.nan, 0.0)[:, :, None]
    )


def token_layers(retriever: Retriever) -> list[int]:
    """The layers that run over the input's tokens (all but monoT5's decoder blocks)."""
    return [layer for layer in range(retriever.n_layers) if retriever.layer_reads_tokens(layer)]


@dataclass
class RoleAttention:
    """Per-pair attention masses: ``values[N, layers, heads, F, T]``, ``uniform[N, F, T]``."""

    layers: list[int]
    from_groups: list[str]
    to_groups: list[str]
    values: np.ndarray
    uniform: np.ndarray
    relevance: list[int | None]


@torch.inference_mode()
def attention_by_role(
    retriever: Retriever,
    pairs: Sequence[Pair],
    layers: Sequence[int],
    from_groups: Sequence[str],
    to_groups: Sequence[str],
    side: str = "perturbed",
    batch_size: int = 16,
    progress: bool = False,
) -> RoleAttention:
    """Attention masses between role groups for every head of ``layers`` (via nnsight)."""
    for group in [*from_groups, *to_groups]:
        if group not in POSITION_GROUPS and group != SAME_TOKEN:
            raise ValueError(
                f"unknown role group {group!r}: use {', '.join(POSITION_GROUPS)} or {SAME_TOKEN}"
            )
    if SAME_TOKEN in from_groups:
        raise ValueError(f"{SAME_TOKEN} is a target group only (to_roles)")
    layers = sorted(set(layers))
    for layer in layers:
        if not 0 <= layer < retriever.n_layers:
            raise ValueError(f"layer {layer} does not exist (0…{retriever.n_layers - 1})")
        if not retriever.layer_reads_tokens(layer):
            raise ValueError(
                f"layer {layer} of this {retriever.kind} model is a decoder block: it attends "
                "over decoder steps, not the input's tokens, so it has no attention by token "
                f"role; use layers that read the input ({token_layers(retriever)})"
            )
    plain_to = [g for g in to_groups if g != SAME_TOKEN]
    want_same = SAME_TOKEN in to_groups
    order = plain_to + ([SAME_TOKEN] if want_same else [])
    columns = [order.index(g) for g in to_groups]
    arch = retriever.arch
    envoys = [
        retriever.envoy(f"{retriever.layer_path(layer)}.{arch.attention}") for layer in layers
    ]
    n = len(pairs)
    values = np.full((n, len(layers), retriever.n_heads, len(from_groups), len(to_groups)), np.nan)
    uniform = np.full((n, len(from_groups), len(to_groups)), np.nan)
    batches = pair_batches(retriever, pairs, batch_size)
    for batch in with_progress(batches, n, "attention", progress):
        run = batch.side(side)
        roles = batch.roles
        from_masks = torch.stack([position_mask(roles, g) for g in from_groups], 1)
        to_masks = (
            torch.stack([position_mask(roles, g) for g in plain_to], 1)
            if plain_to
            else (torch.zeros(roles.shape[0], 0, roles.shape[1], dtype=torch.bool))
        )
        same = same_token_mask(run.inputs["input_ids"], roles) if want_same else None
        saved = []
        with retriever.nn.trace(**run.inputs):
            for envoy in envoys:
                probs = envoy.output[retriever.attention_probs_index]
                if probs is None:
                    raise RuntimeError(EAGER_NEEDED)
                saved.append(nnsight.save(role_masses(probs, from_masks, to_masks, same)))
        stacked = torch.stack(saved, 1)[..., columns]
        values[batch.index] = stacked.cpu().numpy()
        flat = uniform_masses(from_masks, to_masks, same, roles != Role.PAD)[..., columns]
        uniform[batch.index] = flat.cpu().numpy()
    return RoleAttention(
        layers=layers,
        from_groups=list(from_groups),
        to_groups=list(to_groups),
        values=values,
        uniform=uniform,
        relevance=[p.relevance for p in pairs],
    )
