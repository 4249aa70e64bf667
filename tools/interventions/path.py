"""Path patching (Wang et al. 2022; Goldowsky-Dill et al. 2023): the effect of sender heads on a
receiver through the residual stream only, with every other head frozen.

With target run T and source run S (T = baseline and S = perturbed for denoising):

1. Run T with the senders' outputs taken from S and every other head at every later layer frozen
   to its value in T (MLPs and norms recompute). For the receiver ``final``, the score of this run
   is the result. For a receiver head's ``q``, ``k`` or ``v``, record the receiver layer's
   projection output in this run.
2. Run T with only the receiver head's slice of that projection replaced by the recorded one.

Both steps run from the first sender layer on cached inputs (:mod:`rankscope.tools.interventions.cache`);
the senders of a chunk of sender sets run side by side as copies of the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from rankscope.tools.interventions.cache import RunCache, hooked, repeat_side, run_from
from rankscope.tools.interventions.patching import DEFAULT_MAX_TOKENS, chunks
from rankscope.tools.retrievers.architectures import submodule
from rankscope.tools.retrievers.base import Component, Retriever, SideBatch

QKV = Literal["q", "k", "v"]
QKV_PORTS: tuple[QKV, ...] = ("q", "k", "v")


@dataclass(frozen=True)
class Receiver:
    """``final`` (the final representation, i.e. the score) or one head's q, k or v input."""

    layer: int | None = None
    head: int | None = None
    port: QKV | None = None

    @property
    def name(self) -> str:
        """``final``, or the head's :class:`Component` name and the port: ``L2.H3.k``."""
        if self.layer is None:
            return "final"
        return f"{Component(self.layer, 'heads', self.head).name}.{self.port}"

    @staticmethod
    def parse(text: str) -> Receiver:
        """Inverse of ``name``; raises ValueError naming the accepted forms."""
        if text.strip() == "final":
            return Receiver()
        head, _, port = text.strip().rpartition(".")
        try:
            component = Component.parse(head)
        except ValueError:
            component = None
        if component is None or component.site != "heads" or port not in QKV_PORTS:
            raise ValueError(
                f"bad receiver {text!r}: use 'final' or L<layer>.H<head>.<q|k|v>, e.g. L2.H3.k"
            )
        return Receiver(component.layer, component.head, port)


def parse_senders(names: Sequence[str]) -> tuple[tuple[int, int], ...]:
    """(layer, head) of each sender name (heads only: ``L1.H6``)."""
    out = []
    for name in names:
        comp = Component.parse(name)
        if comp.site != "heads" or comp.head is None:
            raise ValueError(f"sender {name!r} is not a head: senders are heads, e.g. L1.H6")
        out.append((comp.layer, comp.head))
    return tuple(out)


def projection(retriever: Retriever, layer: int, port: QKV) -> tuple[nn.Module, slice]:
    """The module computing ``port`` at ``layer`` and the columns of head 0's slice offset
    (fused ModernBERT projections hold q, k, v one after the other)."""
    arch = retriever.arch
    prefix = retriever.layer_path(layer)
    if port != "q" and kv_heads(retriever) != retriever.n_heads:
        raise ValueError(
            f"receiver L{layer}.H*.{port}: this {retriever.kind} model shares keys and values "
            f"across query heads (grouped-query attention: {retriever.n_heads} query heads, "
            f"{kv_heads(retriever)} key/value heads), so a head's {port} is no slice of its own; "
            "use a q receiver or 'final'"
        )
    if arch.qkv_fused:
        offset = {"q": 0, "k": 1, "v": 2}[port] * retriever.hidden_size
        return submodule(retriever.encoder, f"{prefix}.{arch.qkv_fused}"), slice(offset, None)
    path = {"q": arch.q_proj, "k": arch.k_proj, "v": arch.v_proj}[port]
    return submodule(retriever.encoder, f"{prefix}.{path}"), slice(0, None)


def kv_heads(retriever: Retriever) -> int:
    """Key/value heads of the model (fewer than query heads under grouped-query attention)."""
    config = retriever.encoder.config
    return int(getattr(config, "num_key_value_heads", None) or retriever.n_heads)


def _head_cols(retriever: Retriever, base: slice, head: int) -> slice:
    start = (base.start or 0) + head * retriever.head_dim
    return slice(start, start + retriever.head_dim)


@torch.inference_mode()
def path_patch(
    retriever: Retriever,
    target: RunCache,
    source: RunCache,
    sender_sets: Sequence[tuple[tuple[int, int], ...]],
    receiver: Receiver,
    max_tokens: int = DEFAULT_MAX_TOKENS,
) -> torch.Tensor:
    """Scores ``[B, n]`` of the target under path patching of each sender set into ``receiver``.

    ``target`` and ``source`` must have recorded the ``heads`` site of every layer.
    """
    rows = len(target.batch)
    n_layers = retriever.n_layers
    head_dim = retriever.head_dim
    stop = n_layers if receiver.layer is None else receiver.layer
    for senders in sender_sets:
        if not senders:
            raise ValueError("a sender set is empty")
        for layer, head in senders:
            sender = Component(layer, "heads", head).name
            if not (0 <= layer < n_layers and 0 <= head < retriever.n_heads):
                raise ValueError(f"sender {sender} does not exist in this model")
            if layer >= stop:
                raise ValueError(
                    f"sender {sender} is not before the receiver {receiver.name}: a path "
                    "runs from an earlier layer to a later one"
                )
    if receiver.layer is not None and not (
        0 <= receiver.layer < n_layers and 0 <= (receiver.head or 0) < retriever.n_heads
    ):
        raise ValueError(f"receiver {receiver.name} does not exist in this model")
    out = torch.empty(rows, len(sender_sets))
    by_start: dict[int, list[int]] = {}
    for index, senders in enumerate(sender_sets):
        by_start.setdefault(min(layer for layer, _ in senders), []).append(index)
    for start, indices in sorted(by_start.items()):
        for part in chunks(indices, target.batch, max_tokens):
            copies = len(part)
            hooks = []
            for layer in range(start, stop):
                width = retriever.n_heads * head_dim
                keep = torch.zeros(copies, 1, 1, width, dtype=torch.bool)
                for copy, index in enumerate(part):
                    for s_layer, s_head in sender_sets[index]:
                        if s_layer == layer:
                            keep[copy, ..., s_head * head_dim : (s_head + 1) * head_dim] = True
                src = source.site(layer, "heads").unsqueeze(0)
                tgt = target.site(layer, "heads").unsqueeze(0)
                frozen = torch.where(keep, src, tgt).reshape(copies * rows, *tgt.shape[2:])
                module, _ = retriever.component_module(layer, "heads")
                hooks.append((module, "input", lambda _x, v=frozen: v))
            hidden = target.hidden[start].repeat(copies, 1, 1)
            side = repeat_side(target.batch, copies)
            if receiver.layer is None:
                final = run_from(retriever, target, start, hidden, copies, hooks)
                scores = retriever.readout(final, side)
            else:
                module, base = projection(retriever, receiver.layer, receiver.port or "q")
                recorded = _record_projection(
                    retriever, target, start, hidden, copies, hooks, module, receiver.layer
                )
                cols = _head_cols(retriever, base, receiver.head or 0)
                scores = _patch_projection(retriever, target, copies, module, cols, recorded, side)
            out[:, part] = scores.float().view(copies, rows).T.cpu()
    return out


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the wanted value is recorded."""


def _record_projection(
    retriever: Retriever,
    target: RunCache,
    start: int,
    hidden: torch.Tensor,
    copies: int,
    hooks: list,
    module: nn.Module,
    layer: int,
) -> torch.Tensor:
    box: dict[str, torch.Tensor] = {}

    def grab(_m: nn.Module, _a: tuple, out: torch.Tensor) -> None:
        box["value"] = out
        raise _Stop

    handle = module.register_forward_hook(grab)
    try:
        run_from(retriever, target, start, hidden, copies, hooks, stop=layer + 1)
    except _Stop:
        pass
    finally:
        handle.remove()
    return box["value"]


def _patch_projection(
    retriever: Retriever,
    target: RunCache,
    copies: int,
    module: nn.Module,
    cols: slice,
    recorded: torch.Tensor,
    side: SideBatch,
) -> torch.Tensor:
    def patch(x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        x[..., cols] = recorded[..., cols]
        return x

    layer = _layer_of(retriever, module)
    hidden = target.hidden[layer].repeat(copies, 1, 1)
    with hooked([(module, "output", patch)]):
        final = run_from(retriever, target, layer, hidden, copies)
    return retriever.readout(final, side)


def _layer_of(retriever: Retriever, module: nn.Module) -> int:
    for index, layer in enumerate(retriever.layer_modules):
        if any(m is module for m in layer.modules()):
            return index
    raise ValueError("module is not inside an encoder layer")
