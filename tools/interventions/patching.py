"""Activation patching: replace activations of one run (the target) with those of another run
(the source), or with zeros or means, and read the target's score.

Two engines compute the same numbers:

- ``"nnsight"`` (:func:`run_nnsight`): the generic reference path. Each chunk of interventions is
  one nnsight trace of a full forward pass over the target batch repeated once per intervention,
  with the sites edited through the envoys (``model.encoder.layer[3].attention.output.dense``).
- ``"cached"`` (:func:`run_cached`): the fast exact path. The target run's layer inputs are cached
  (:mod:`rankscope.tools.interventions.cache`) and each patched run starts at the first patched layer; the
  interventions of a chunk run side by side as copies of the batch (one head patched per copy);
  the start layer's q/k/v projections, whose input is unchanged, are reused from the cache.

Sites (see ``rankscope.tools.retrievers.base.SITE_DOC``): ``resid`` (layer output), ``attn`` (attention
output projection's output), ``mlp`` (MLP's last linear's output), ``heads`` (the output
projection's input, a head being a slice of ``head_dim`` columns); in monoT5's decoder layers also
``cross`` and ``cross_heads``, the same two for the cross-attention. Positions are chosen per pair
with a selector (:func:`rankscope.tools.interventions.pairs.position_mask`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from rankscope.tools.data.types import Pair
from rankscope.tools.interventions.cache import (
    SITE_ORDER,
    RunCache,
    SiteKey,
    capture,
    fixed_outputs,
    layer_output,
    repeat_rows,
    repeat_side,
    run_from,
    site_module,
)
from rankscope.tools.interventions.pairs import (
    ALL_POSITIONS,
    PairBatch,
    pair_batches,
    position_mask,
    with_progress,
)
from rankscope.tools.retrievers.base import Component, Retriever, SideBatch, Site

Value = Literal["source", "zero", "mean"]
PatchDirection = Literal["denoising", "noising"]
"""Which run is patched: the baseline with perturbed activations (denoising), or the
perturbed run with baseline activations (noising)."""
Engine = Literal["cached", "nnsight"]

DEFAULT_MAX_TOKENS = 2048
"""Tokens (pairs × intervention copies × sequence length) per patched forward pass. Small passes
are the fastest on CPU (measured on MiniLM, 2 threads: 16 pairs × 1 copy per pass took 0.65× the
CPU time of 16 pairs × 12 copies; the attention tensors of big passes fall out of cache), and
they bound memory. At least one copy of the batch runs per pass."""


@dataclass(frozen=True)
class Patch:
    """Replace ``site`` of ``layer`` (one head's slice, or all of it) at the selected positions."""

    layer: int
    site: Site
    head: int | None = None
    positions: str = ALL_POSITIONS
    value: Value = "source"

    @property
    def entry_layer(self) -> int:
        """The first layer whose computation changes (a layer's output feeds the next layer)."""
        return self.layer + 1 if self.site == "resid" else self.layer


@dataclass(frozen=True)
class Intervention:
    """One patched run: its patches are applied together."""

    name: str
    patches: tuple[Patch, ...]

    def start(self, n_layers: int) -> int:
        return min((p.entry_layer for p in self.patches), default=n_layers)


def parse_target(name: str, value: Value = "source") -> Patch:
    """A patch from a component name with an optional position selector: ``L1.H6``,
    ``L2.mlp@injected``, ``L0.resid@p5`` (see :func:`rankscope.tools.interventions.pairs.position_mask`)."""
    base, _, positions = name.partition("@")
    comp = Component.parse(base)
    return Patch(comp.layer, comp.site, comp.head, positions or ALL_POSITIONS, value)


def check_patch(retriever: Retriever, patch: Patch) -> None:
    """Raise ValueError when the patch names a layer or head the model does not have."""
    if not 0 <= patch.layer < retriever.n_layers:
        raise ValueError(
            f"layer {patch.layer} does not exist: the model has layers 0…{retriever.n_layers - 1}"
        )
    if patch.layer not in retriever.site_layers(patch.site):
        raise ValueError(
            f"layer {patch.layer} of this {retriever.kind} model has no {patch.site!r} site "
            f"(layers with it: {retriever.site_layers(patch.site) or 'none'})"
        )
    if patch.head is not None and not 0 <= patch.head < retriever.n_heads:
        raise ValueError(
            f"head {patch.head} does not exist: the model has heads 0…{retriever.n_heads - 1}"
        )
    position_mask(torch.zeros(1, 1, dtype=torch.long), patch.positions)
    if patch.positions != ALL_POSITIONS and not retriever.layer_reads_tokens(patch.layer):
        raise ValueError(
            f"layer {patch.layer} of this {retriever.kind} model is a decoder block: its "
            "positions are decoder steps, not the input's tokens, so it is patched at all "
            f"positions only (not @{patch.positions})"
        )


def patch_name(patch: Patch) -> str:
    base = Component(patch.layer, patch.site, patch.head).name
    return base if patch.positions == ALL_POSITIONS else f"{base}@{patch.positions}"


def single(patch: Patch) -> Intervention:
    return Intervention(patch_name(patch), (patch,))


def heads_grid(n_layers: int, n_heads: int, selectors: Sequence[str] = (ALL_POSITIONS,)) -> list:
    """One intervention per (layer, head, position selector)."""
    return [
        single(Patch(layer, "heads", head, sel))
        for layer in range(n_layers)
        for head in range(n_heads)
        for sel in selectors
    ]


def block_grid(n_layers: int, sites: Sequence[Site], selectors: Sequence[str]) -> list:
    """One intervention per (site, layer, position selector)."""
    return [
        single(Patch(layer, site, None, sel))
        for site in sites
        for layer in range(n_layers)
        for sel in selectors
    ]


@dataclass
class Values:
    """Where patched values come from: the source run's activations and per-site constants."""

    source: Callable[[int, Site], torch.Tensor] | None = None
    means: dict[SiteKey, torch.Tensor] = field(default_factory=dict)

    def of(self, patch: Patch) -> torch.Tensor | float:
        if patch.value == "zero":
            return 0.0
        if patch.value == "mean":
            key = (patch.layer, patch.site)
            if key not in self.means:
                raise KeyError(f"no mean activation for site {patch.site!r} of layer {patch.layer}")
            return self.means[key]
        if self.source is None:
            raise ValueError("a source-valued patch needs a source run")
        return self.source(patch.layer, patch.site)


def apply_patches(
    x: torch.Tensor,
    items: Sequence[tuple[int, Patch]],
    copies: int,
    masks: dict[str, torch.Tensor],
    values: Values,
    head_dim: int,
) -> torch.Tensor:
    """``x`` (``[copies * B, S, W]``) with each ``(copy, patch)`` applied to its copy."""
    out = x.clone(memory_format=torch.contiguous_format)
    view = out.view(copies, -1, *x.shape[1:])
    for copy, patch in items:
        cols = (
            slice(patch.head * head_dim, (patch.head + 1) * head_dim)
            if patch.head is not None
            else slice(None)
        )
        value = values.of(patch)
        if isinstance(value, torch.Tensor):
            value = value[..., cols].to(out.dtype)
        if patch.positions == ALL_POSITIONS:
            view[copy, ..., cols] = value
        else:
            mask = masks[patch.positions].unsqueeze(-1)
            view[copy, ..., cols] = torch.where(mask, value, view[copy, ..., cols])
    return out


def _grouped(
    interventions: Sequence[Intervention], part: Sequence[int]
) -> dict[SiteKey, list[tuple[int, Patch]]]:
    items: dict[SiteKey, list[tuple[int, Patch]]] = defaultdict(list)
    for copy, index in enumerate(part):
        for patch in interventions[index].patches:
            items[(patch.layer, patch.site)].append((copy, patch))
    return items


def chunks(indices: Sequence[int], batch: SideBatch, max_tokens: int) -> Iterable[list[int]]:
    """``indices`` cut into chunks of copies of ``batch`` that fit in ``max_tokens`` tokens."""
    size = max(1, max_tokens // max(batch.inputs["input_ids"].numel(), 1))
    for start in range(0, len(indices), size):
        yield list(indices[start : start + size])


@torch.inference_mode()
def run_cached(
    retriever: Retriever,
    target: RunCache,
    interventions: Sequence[Intervention],
    masks: dict[str, torch.Tensor],
    values: Values,
    max_tokens: int = DEFAULT_MAX_TOKENS,
) -> torch.Tensor:
    """Scores ``[B, n]`` of the target batch under each intervention (the cached engine)."""
    rows = len(target.batch)
    n_layers = retriever.n_layers
    out = torch.empty(rows, len(interventions))
    by_start: dict[int, list[int]] = defaultdict(list)
    for index, intervention in enumerate(interventions):
        by_start[intervention.start(n_layers)].append(index)
    for start, indices in sorted(by_start.items()):
        for part in chunks(indices, target.batch, max_tokens):
            copies = len(part)
            grouped = _grouped(interventions, part)
            entry = grouped.pop((start - 1, "resid"), [])
            # A patched last layer of a stack enters the next stack through its output.
            entering = bool(entry) and start in retriever.stack_starts
            first = target.layer_out(start - 1) if entering else target.hidden[start]
            hidden = first.repeat(copies, 1, 1)
            if entry:
                hidden = apply_patches(hidden, entry, copies, masks, values, retriever.head_dim)
            hooks = []
            for (layer, site), items in grouped.items():
                module, port = site_module(retriever, layer, site)

                def fn(x: torch.Tensor, items: list = items, copies: int = copies) -> torch.Tensor:
                    return apply_patches(x, items, copies, masks, values, retriever.head_dim)

                hooks.append((module, port, fn))
            modules, cached = target.reuse.get(start, ([], [])) if not entry else ([], [])
            with fixed_outputs(modules, repeat_rows(cached, rows, copies)):
                final = run_from(retriever, target, start, hidden, copies, hooks, entering=entering)
            scores = retriever.readout(final, repeat_side(target.batch, copies))
            out[:, part] = scores.float().view(copies, rows).T.cpu()
    return out


def _ordered(grouped: dict[SiteKey, list]) -> list[tuple[SiteKey, list]]:
    return sorted(grouped.items(), key=lambda kv: (kv[0][0], SITE_ORDER[kv[0][1]]))


@torch.inference_mode()
def capture_nnsight(
    retriever: Retriever, batch: SideBatch, sites: Iterable[SiteKey]
) -> tuple[dict[SiteKey, torch.Tensor], torch.Tensor]:
    """The activations at ``sites`` and the last hidden state of one run, read with nnsight."""
    ordered = sorted(set(sites), key=lambda key: (key[0], SITE_ORDER[key[1]]))
    saved: dict[SiteKey, object] = {}
    with retriever.nn.trace(**batch.inputs):
        for layer, site in ordered:
            envoy, port = retriever.site_envoy(layer, site)
            saved[(layer, site)] = (envoy.input if port == "input" else envoy.output).save()
        final = retriever.nn.output[0].save()
    acts: dict[SiteKey, torch.Tensor] = {k: layer_output(v) for k, v in saved.items()}
    return acts, final


@torch.inference_mode()
def run_nnsight(
    retriever: Retriever,
    target: SideBatch,
    interventions: Sequence[Intervention],
    masks: dict[str, torch.Tensor],
    values: Values,
    max_tokens: int = DEFAULT_MAX_TOKENS,
) -> torch.Tensor:
    """Scores ``[B, n]`` of the target batch under each intervention (the nnsight engine)."""
    rows = len(target)
    head_dim = retriever.head_dim
    out = torch.empty(rows, len(interventions))
    for part in chunks(range(len(interventions)), target, max_tokens):
        copies = len(part)
        side = repeat_side(target, copies)
        ordered = _ordered(_grouped(interventions, part))
        with retriever.nn.trace(**side.inputs):
            for (layer, site), items in ordered:
                envoy, port = retriever.site_envoy(layer, site)
                if port == "input":
                    envoy.input = apply_patches(envoy.input, items, copies, masks, values, head_dim)
                elif isinstance(envoy.output, tuple):
                    first, *rest = envoy.output
                    patched = apply_patches(first, items, copies, masks, values, head_dim)
                    envoy.output = (patched, *rest)
                else:
                    envoy.output = apply_patches(
                        envoy.output, items, copies, masks, values, head_dim
                    )
            final = retriever.nn.output[0].save()
        scores = retriever.readout(final, side)
        out[:, part] = scores.float().view(copies, rows).T.cpu()
    return out


def on_token_layers(
    retriever: Retriever, interventions: Iterable[Intervention]
) -> list[Intervention]:
    """The interventions whose position selectors the model can honour: a patch at role or
    index positions needs a layer that runs over the input's tokens, so grids drop such patches
    of monoT5's decoder blocks (their positions are decoder steps); ``@all`` patches stay."""
    return [
        iv
        for iv in interventions
        if all(
            p.positions == ALL_POSITIONS or retriever.layer_reads_tokens(p.layer)
            for p in iv.patches
        )
    ]


def batch_masks(
    roles: torch.Tensor, interventions: Iterable[Intervention]
) -> dict[str, torch.Tensor]:
    """Position masks of every selector the interventions use."""
    selectors = {p.positions for iv in interventions for p in iv.patches} | {ALL_POSITIONS}
    return {sel: position_mask(roles, sel) for sel in selectors}


def applicable(
    masks: dict[str, torch.Tensor], interventions: Sequence[Intervention]
) -> torch.Tensor:
    """``[B, n]``: whether an intervention touches any position of each pair."""
    rows = next(iter(masks.values())).shape[0]
    out = torch.zeros(rows, len(interventions), dtype=torch.bool)
    for j, iv in enumerate(interventions):
        for patch in iv.patches:
            out[:, j] |= masks[patch.positions].any(dim=1).cpu()
    return out


def source_sites(interventions: Iterable[Intervention]) -> set[SiteKey]:
    """Sites whose source activations the interventions read (``resid`` is always cached)."""
    return {
        (p.layer, p.site)
        for iv in interventions
        for p in iv.patches
        if p.value == "source" and p.site != "resid"
    }


@dataclass
class PatchScores:
    """Per-pair scores of a patching run over a pair set (rows in pair-set order)."""

    names: list[str]
    s_base: np.ndarray
    s_pert: np.ndarray
    s_patched: np.ndarray
    """``[N, n]`` the target's score under each intervention."""
    applicable: np.ndarray
    """``[N, n]`` whether the intervention touched the pair (position groups can be empty)."""
    relevance: list[int | None]
    direction: PatchDirection
    qids: list[str]
    """The query id of each pair (the unit of analysis of the verdict rules)."""


def sides(batch: PairBatch, direction: PatchDirection) -> tuple[SideBatch, SideBatch]:
    """(target, source): denoising patches the perturbed run into the baseline run."""
    if direction == "denoising":
        return batch.base, batch.pert
    if direction == "noising":
        return batch.pert, batch.base
    raise ValueError(f"unknown direction {direction!r}; use 'denoising' or 'noising'")


def patch_batch(
    retriever: Retriever,
    batch: PairBatch,
    interventions: Sequence[Intervention],
    direction: PatchDirection,
    engine: Engine = "cached",
    max_tokens: int = DEFAULT_MAX_TOKENS,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(s_base [B], s_pert [B], s_patched [B, n], applicable [B, n]) for one batch of pairs."""
    target_side, source_side = sides(batch, direction)
    masks = batch_masks(batch.roles, interventions)
    needed = source_sites(interventions)
    if engine == "cached":
        starts = {iv.start(retriever.n_layers) for iv in interventions}
        source = capture(retriever, source_side, needed)
        target = capture(retriever, target_side, reuse_layers=starts - {retriever.n_layers})
        values = Values(source=source.site)
        patched = run_cached(retriever, target, interventions, masks, values, max_tokens)
        s_target, s_source = target.scores, source.scores
    elif engine == "nnsight":
        resid: set[SiteKey] = {(p.layer, "resid") for iv in interventions for p in iv.patches}
        acts, source_final = capture_nnsight(retriever, source_side, needed | resid)
        _, target_final = capture_nnsight(retriever, target_side, ())
        values = Values(source=lambda layer, site: acts[(layer, site)])
        patched = run_nnsight(retriever, target_side, interventions, masks, values, max_tokens)
        with torch.inference_mode():
            s_target = retriever.readout(target_final, target_side)
            s_source = retriever.readout(source_final, source_side)
    else:
        raise ValueError(f"unknown engine {engine!r}; use 'cached' or 'nnsight'")
    s_target, s_source = s_target.float().cpu(), s_source.float().cpu()
    s_base, s_pert = (s_target, s_source) if direction == "denoising" else (s_source, s_target)
    return s_base, s_pert, patched, applicable(masks, interventions)


def patch_pairs(
    retriever: Retriever,
    pairs: Sequence[Pair],
    interventions: Sequence[Intervention],
    direction: PatchDirection = "denoising",
    engine: Engine = "cached",
    batch_size: int = 16,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    progress: bool = False,
) -> PatchScores:
    """Patch every intervention on every pair, streaming the pairs in batches."""
    for iv in interventions:
        for patch in iv.patches:
            check_patch(retriever, patch)
    n, k = len(pairs), len(interventions)
    s_base, s_pert = np.zeros(n), np.zeros(n)
    s_patched, ok = np.zeros((n, k)), np.zeros((n, k), dtype=bool)
    batches = pair_batches(retriever, pairs, batch_size)
    for batch in with_progress(batches, n, "patching", progress):
        b, p, patched, applies = patch_batch(
            retriever, batch, interventions, direction, engine, max_tokens
        )
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
