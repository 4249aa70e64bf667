"""The parameters a carrier head owns: its rows of the query/key/value projections (and biases)
and its columns of the attention output projection."""

from __future__ import annotations

import torch

from rankscope.tools.interventions.patching import parse_target
from rankscope.tools.retrievers.base import Retriever


def head_masks(retriever: Retriever, carriers: list[str]) -> dict[str, torch.Tensor]:
    """Gradient masks (1 where trainable) of the parameters the carrier heads own."""
    d = retriever.head_dim
    masks: dict[str, torch.Tensor] = {}
    params = dict(retriever.encoder.named_parameters())
    for name in carriers:
        patch = parse_target(name)
        if patch.head is None:
            raise ValueError(f"{name}: carriers are heads, L<layer>.H<head>")
        rows = slice(patch.head * d, (patch.head + 1) * d)
        prefix = f"encoder.layer.{patch.layer}.attention."
        for proj in ("query", "key", "value"):
            for kind in ("weight", "bias"):
                key = f"{prefix}self.{proj}.{kind}"
                mask = masks.setdefault(key, torch.zeros_like(params[key]))
                mask[rows] = 1.0
        key = f"{prefix}output.dense.weight"
        mask = masks.setdefault(key, torch.zeros_like(params[key]))
        mask[:, rows] = 1.0
    return masks


def restore_heads(retriever: Retriever, original: dict[str, torch.Tensor], carriers: list[str]):
    """Put the carrier heads' original parameters back into ``retriever`` (in place)."""
    masks = head_masks(retriever, carriers)
    params = dict(retriever.encoder.named_parameters())
    with torch.no_grad():
        for key, mask in masks.items():
            params[key].copy_(torch.where(mask.bool(), original[key], params[key]))
