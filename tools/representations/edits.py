"""Edit a component's output inside the forward pass (through nnsight) and read the new scores.

``edit_scores`` runs one batch with a function applied to the output of a site (residual stream,
attention write or MLP write) at one layer; ``steer_scores`` adds ``scale · direction`` at chosen
token positions. ``mean_difference`` computes a steering direction from aligned pairs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from rankscope.tools.data.types import Pair
from rankscope.tools.representations.activations import layer_name, read_layers
from rankscope.tools.retrievers.base import Retriever, Role, SideBatch

EditSite = Literal["resid", "attn", "mlp"]
Positions = Literal["all", "doc", "cls", "qterm", "filler"]
POSITION_ROLES: dict[str, tuple[Role, ...]] = {
    "doc": (Role.DOC, Role.QTERM, Role.INJECTED, Role.FILLER),
    "cls": (Role.CLS,),
    "qterm": (Role.QTERM, Role.INJECTED),
    "filler": (Role.FILLER,),
}


def edit_scores(
    retriever: Retriever,
    batch: SideBatch,
    layer: int,
    edit: Callable[[torch.Tensor], torch.Tensor],
    site: EditSite = "resid",
) -> torch.Tensor:
    """Scores ``[B]`` of a batch whose ``site`` output at ``layer`` is replaced by
    ``edit(output)``."""
    envoy, port = retriever.site_envoy(layer, site)
    if port != "output":
        raise ValueError(f"site {site!r} cannot be edited here; use resid, attn or mlp")
    with torch.inference_mode(), retriever.nn.trace(**batch.inputs):
        out = envoy.output
        if isinstance(out, tuple):
            envoy.output = (edit(out[0]), *out[1:])
        else:
            envoy.output = edit(out)
        hidden = retriever.nn.output[0].save()
    with torch.inference_mode():
        return retriever.readout(hidden, batch).float().cpu()


def site_output_and_scores(
    retriever: Retriever, batch: SideBatch, layer: int, site: EditSite = "resid"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(``site`` output at ``layer`` ``[B, S, hidden]``, scores ``[B]``) of an unedited run."""
    envoy, port = retriever.site_envoy(layer, site)
    if port != "output":
        raise ValueError(f"site {site!r} cannot be read here; use resid, attn or mlp")
    with torch.inference_mode(), retriever.nn.trace(**batch.inputs):
        out = envoy.output
        activation = (out[0] if isinstance(out, tuple) else out).save()
        hidden = retriever.nn.output[0].save()
    with torch.inference_mode():
        return activation, retriever.readout(hidden, batch).float().cpu()


def position_mask(batch: SideBatch, positions: Positions) -> torch.Tensor:
    """``[B, S]`` float mask of the positions to steer (``all``: every non-padding token)."""
    if positions == "all":
        return batch.attention_mask.float()
    codes = torch.tensor([int(r) for r in POSITION_ROLES[positions]], device=batch.roles.device)
    return torch.isin(batch.roles, codes).float()


def steer_scores(
    retriever: Retriever,
    batch: SideBatch,
    layer: int,
    direction: torch.Tensor,
    scale: float,
    positions: Positions = "all",
    site: EditSite = "resid",
) -> torch.Tensor:
    """Scores with ``scale · direction`` added to ``site`` at ``layer`` on ``positions``."""
    mask = position_mask(batch, positions)
    delta = (mask.unsqueeze(-1) * direction.to(mask.device, torch.float32)) * scale

    def add(h: torch.Tensor) -> torch.Tensor:
        return h + delta.to(h.dtype)

    return edit_scores(retriever, batch, layer, add, site)


def mean_difference(
    retriever: Retriever,
    pairs: Sequence[Pair],
    layer: int,
    batch_size: int = 16,
    progress: bool = False,
) -> tuple[np.ndarray, int]:
    """(perturbed − baseline mean residual at injected positions, number of positions used).

    For each aligned pair the positions are those the perturbed text's injected tokens take; the
    baseline is read at the same positions (its filler tokens, for a length-aligned pair). Pairs
    whose two sides tokenise to different lengths are skipped.
    """
    total = np.zeros(retriever.hidden_size, dtype=np.float64)
    count = 0
    name = layer_name(layer)
    for start in tqdm(
        range(0, len(pairs), batch_size), desc="mean difference", disable=not progress, leave=False
    ):
        chunk = list(pairs[start : start + batch_size])
        queries = [p.query for p in chunk]
        base = retriever.encode_side(
            queries, [p.baseline for p in chunk], filler=[p.filler for p in chunk]
        )
        pert = retriever.encode_side(
            queries, [p.perturbed for p in chunk], injected=[p.injected for p in chunk]
        )
        hb = read_layers(retriever, base, [layer])[name].float()
        hp = read_layers(retriever, pert, [layer])[name].float()
        for row in range(len(chunk)):
            if int(base.attention_mask[row].sum()) != int(pert.attention_mask[row].sum()):
                continue
            pos = torch.nonzero(pert.roles[row] == int(Role.INJECTED)).flatten()
            if pos.numel() == 0:
                continue
            total += (hp[row, pos] - hb[row, pos]).sum(0).double().cpu().numpy()
            count += int(pos.numel())
    if count == 0:
        raise ValueError(
            "no aligned pair with injected tokens: a mean-difference direction needs pairs whose "
            "perturbation injects text (e.g. TFC1) with length-aligned baselines"
        )
    return (total / count).astype(np.float32), count
