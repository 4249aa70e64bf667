"""Attribution patching (Nanda 2023; Syed et al. 2023): a first-order estimate of activation
patching from one forward and one backward pass.

For a patch of site ``a`` (positions × columns) from the source run into the target run,
``s_patched − s_target ≈ Σ (a_source − a_target) · ∂s/∂a`` with the gradient taken in the target
run. All sites' gradients come from a single backward pass (parameters are frozen meanwhile, so
only activation gradients are computed). The estimate is exact where the score is linear in the
activation (e.g. the last layer's output under dot-product similarity) and approximate
elsewhere: attention and layer norms make it over- or under-estimate effects.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from rankscope.tools.data.types import Pair
from rankscope.tools.interventions.cache import SiteKey, capture, layer_output, site_module
from rankscope.tools.interventions.pairs import (
    ALL_POSITIONS,
    PairBatch,
    pair_batches,
    with_progress,
)
from rankscope.tools.interventions.patching import (
    Intervention,
    Patch,
    PatchDirection,
    PatchScores,
    applicable,
    batch_masks,
    check_patch,
    sides,
    source_sites,
)
from rankscope.tools.retrievers.base import Retriever, SideBatch


@contextlib.contextmanager
def frozen_parameters(module: nn.Module) -> Iterator[None]:
    """Turn off gradients of ``module``'s parameters for the block (restored afterwards)."""
    params = [p for p in module.parameters() if p.requires_grad]
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def gradients(
    retriever: Retriever, side: SideBatch, sites: Sequence[SiteKey]
) -> tuple[torch.Tensor, dict[SiteKey, torch.Tensor], dict[SiteKey, torch.Tensor]]:
    """(scores, activations, d score / d activation) of one run at ``sites``."""
    acts: dict[SiteKey, torch.Tensor] = {}
    handles = []

    def start(_m: nn.Module, args: tuple, kwargs: dict) -> tuple:
        return (args[0].detach().requires_grad_(True), *args[1:]), kwargs

    def record(key: SiteKey, port: str):  # noqa: ANN202
        if port == "input":
            return lambda _m, args: acts.__setitem__(key, args[0])
        return lambda _m, _a, out: acts.__setitem__(key, layer_output(out))

    context = {
        k: v.detach().clone() if isinstance(v, torch.Tensor) else v for k, v in side.context.items()
    }
    side = SideBatch(side.inputs, side.roles, context)
    with frozen_parameters(retriever.model), torch.enable_grad():
        try:
            # Every stack's first layer: a later stack (monoT5's decoder) starts from inputs of
            # its own, which its self-attention sites depend on alone.
            layers = retriever.layer_modules
            for first in (0, *retriever.stack_starts):
                handles.append(layers[first].register_forward_pre_hook(start, with_kwargs=True))
            for layer, site in sites:
                module, port = site_module(retriever, layer, site)
                if port == "input":
                    handles.append(module.register_forward_pre_hook(record((layer, site), port)))
                else:
                    handles.append(module.register_forward_hook(record((layer, site), port)))
            scores = retriever.readout(retriever.forward_hidden(side), side)
        finally:
            for handle in handles:
                handle.remove()
        keys = list(sites)
        grads = torch.autograd.grad(scores.sum(), [acts[k] for k in keys], allow_unused=True)
    grad_map = {
        k: (g if g is not None else torch.zeros_like(acts[k])).detach()
        for k, g in zip(keys, grads, strict=True)
    }
    return scores.detach(), {k: v.detach() for k, v in acts.items()}, grad_map


def attribute_batch(
    retriever: Retriever,
    batch: PairBatch,
    interventions: Sequence[Intervention],
    direction: PatchDirection,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(s_base, s_pert, estimated s_patched [B, n], applicable [B, n]) for one batch."""
    target_side, source_side = sides(batch, direction)
    masks = batch_masks(batch.roles, interventions)
    sites = sorted(source_sites(interventions) | _resid_sites(interventions))
    source = capture(retriever, source_side, [s for s in sites if s[1] != "resid"])
    s_target, acts, grads = gradients(retriever, target_side, sites)
    head_dim = retriever.head_dim
    # Sum (a_source - a_target) * grad over each selector's positions once per site: [B, W];
    # a head's estimate is then the sum of its columns.
    reduced: dict[tuple[int, str, str], torch.Tensor] = {}

    def by_position(patch: Patch) -> torch.Tensor:
        key = (patch.layer, patch.site, patch.positions)
        if key not in reduced:
            site = (patch.layer, patch.site)
            prod = (source.site(*site) - acts[site]) * grads[site]
            if patch.positions != ALL_POSITIONS:
                prod = prod * masks[patch.positions].unsqueeze(-1)
            reduced[key] = prod.sum(dim=1).float().cpu()
        return reduced[key]

    estimate = torch.zeros(len(batch), len(interventions))
    for j, iv in enumerate(interventions):
        for patch in iv.patches:
            summed = by_position(patch)
            if patch.head is not None:
                summed = summed[:, patch.head * head_dim : (patch.head + 1) * head_dim]
            estimate[:, j] += summed.sum(dim=1)
    s_target = s_target.float().cpu()
    s_source = source.scores.float().cpu()
    patched = s_target.unsqueeze(1) + estimate
    s_base, s_pert = (s_target, s_source) if direction == "denoising" else (s_source, s_target)
    return s_base, s_pert, patched, applicable(masks, interventions)


def _resid_sites(interventions: Sequence[Intervention]) -> set[SiteKey]:
    return {(p.layer, "resid") for iv in interventions for p in iv.patches if p.site == "resid"}


def attribute_pairs(
    retriever: Retriever,
    pairs: Sequence[Pair],
    interventions: Sequence[Intervention],
    direction: PatchDirection = "denoising",
    batch_size: int = 16,
    progress: bool = False,
) -> PatchScores:
    """Attribution-patching estimates of every intervention's patched score on every pair."""
    for iv in interventions:
        for patch in iv.patches:
            check_patch(retriever, patch)
            if patch.value != "source":
                raise ValueError("attribution patching estimates source-valued patches only")
    n, k = len(pairs), len(interventions)
    s_base, s_pert = np.zeros(n), np.zeros(n)
    s_patched, ok = np.zeros((n, k)), np.zeros((n, k), dtype=bool)
    batches = pair_batches(retriever, pairs, batch_size)
    for batch in with_progress(batches, n, "attribution", progress):
        b, p, patched, applies = attribute_batch(retriever, batch, interventions, direction)
        s_base[batch.index], s_pert[batch.index] = b.numpy(), p.numpy()
        s_patched[batch.index], ok[batch.index] = patched.numpy(), applies.numpy()
    return PatchScores(
        names=[iv.name for iv in interventions],
        s_base=s_base,
        s_pert=s_pert,
        s_patched=s_patched,
        applicable=ok,
        relevance=[p.relevance for p in pairs],
        direction=direction,
        qids=[p.qid for p in pairs],
    )
