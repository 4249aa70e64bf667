"""Cached runs: every layer's inputs and chosen activations of one forward pass, and running the
encoder again from any layer on those cached inputs.

A patched run only differs from the clean run from the patched layer on, so it need not start at
the embeddings: :func:`run_from` starts at layer ``l`` with the cached hidden state and the extra
arguments the layer was called with (attention mask, position embeddings …, captured by forward
pre-hooks with ``with_kwargs=True`` so that every architecture works), repeated ``k`` times along
the batch for ``k`` interventions at once (copy-major: row ``c * B + b`` is copy ``c`` of pair ``b``).
After the last layer the adapter's ``after_layers`` gives what its ``readout`` takes; where a new
stack of layers begins (monoT5's decoder), the stack starts from its own cached input and the
adapter's ``enter_stack`` feeds it the previous stack's (possibly patched) output.

Plain torch hooks are used here (no nnsight): this is the fast exact path. The generic path in
:mod:`rankscope.tools.interventions.patching` goes through nnsight.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from rankscope.tools.retrievers.architectures import submodule
from rankscope.tools.retrievers.base import Retriever, SideBatch, Site

SITE_ORDER: dict[str, int] = {
    "heads": 0,
    "attn": 1,
    "cross_heads": 2,
    "cross": 3,
    "mlp": 4,
    "resid": 5,
}
"""Forward order of the sites inside one layer."""

SiteKey = tuple[int, Site]
Hook = tuple[nn.Module, str, Callable[[torch.Tensor], torch.Tensor]]
"""(module, port "input" or "output", function from the activation to its replacement)."""


class UnsupportedEncoderError(RuntimeError):
    """The encoder does something the cached runs cannot reproduce."""


def layer_output(out: Any) -> torch.Tensor:
    """The hidden state a layer returns (a tensor, or the first element of a tuple)."""
    return out[0] if isinstance(out, tuple) else out


def qkv_modules(retriever: Retriever, layer: int) -> list[nn.Module]:
    """The query/key/value projections of a layer (one fused module for ModernBERT)."""
    arch = retriever.arch
    prefix = retriever.layer_path(layer)
    paths = [arch.qkv_fused] if arch.qkv_fused else [arch.q_proj, arch.k_proj, arch.v_proj]
    return [submodule(retriever.encoder, f"{prefix}.{p}") for p in paths if p]


def attention_module(retriever: Retriever, layer: int) -> nn.Module:
    """The module returning ``(output, attention probabilities)`` at ``layer``."""
    return submodule(retriever.encoder, f"{retriever.layer_path(layer)}.{retriever.arch.attention}")


def reusable(
    retriever: Retriever, layer: int, seen: dict[tuple[int, str, int], Any]
) -> tuple[list[nn.Module], list[Any]]:
    """What a run starting at ``layer`` on the cached input can replay instead of computing:
    the whole attention core when its output IS the output projection's input (BERT-likes:
    ``attention.self``), else the q/k/v projections (DistilBERT, ModernBERT)."""
    first, length = seen[(layer, "attn", 0)]
    if length and first is seen[(layer, "proj", 0)]:
        return [attention_module(retriever, layer)], [(first, *([None] * (length - 1)))]
    modules = qkv_modules(retriever, layer)
    return modules, [seen[(layer, "qkv", slot)] for slot in range(len(modules))]


def site_module(retriever: Retriever, layer: int, site: Site) -> tuple[nn.Module, str]:
    """The module carrying ``site`` at ``layer`` and its port; ``resid`` is the layer's output."""
    if site == "resid":
        return retriever.layer_modules[layer], "output"
    return retriever.component_module(layer, site)


@contextlib.contextmanager
def hooked(hooks: Iterable[Hook]) -> Iterator[None]:
    """Register replacement hooks for the duration of the block."""
    handles = []
    try:
        for module, port, fn in hooks:
            if port == "input":

                def pre(_m: nn.Module, args: tuple, kwargs: dict, fn: Any = fn) -> Any:
                    return (fn(args[0]), *args[1:]), kwargs

                handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
            else:

                def post(_m: nn.Module, _args: tuple, out: Any, fn: Any = fn) -> Any:
                    if isinstance(out, tuple):
                        return (fn(out[0]), *out[1:])
                    return fn(out)

                handles.append(module.register_forward_hook(post))
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def fixed_outputs(modules: list[nn.Module], outputs: list[torch.Tensor]) -> Iterator[None]:
    """Make ``modules`` return ``outputs`` instead of computing them (restored afterwards).

    Used to skip the q/k/v projections of a layer whose input is unchanged. The instance
    ``forward`` is swapped; whatever was there (e.g. nnsight's controller) is put back.
    """
    saved = [m.__dict__.get("forward") for m in modules]
    try:
        for module, value in zip(modules, outputs, strict=True):
            module.forward = lambda *_a, _v=value, **_k: _v
        yield
    finally:
        for module, old in zip(modules, saved, strict=True):
            if old is None:
                del module.forward
            else:
                module.forward = old


@dataclass
class RunCache:
    """One clean forward pass of a side batch, cached for patched runs."""

    batch: SideBatch
    layer_args: list[tuple[tuple, dict]]
    """The positional (without the hidden state) and keyword arguments each layer got."""
    hidden: list[torch.Tensor]
    """``hidden[l]``: the input of layer ``l``; ``hidden[n_layers]``: the last layer's output."""
    acts: dict[SiteKey, torch.Tensor]
    final: torch.Tensor
    """What the encoder returned (what the adapter's ``readout`` takes)."""
    scores: torch.Tensor
    reuse: dict[int, tuple[list[nn.Module], list[Any]]] = field(default_factory=dict)
    """For some layers: modules whose outputs can be replayed when that layer's input is the
    cached one (see :func:`reusable`)."""
    stack_outputs: dict[int, torch.Tensor] = field(default_factory=dict)
    """The output of each layer that ends a stack before the last (its next layer's input is
    the next stack's own)."""

    def layer_out(self, layer: int) -> torch.Tensor:
        """The output of layer ``layer``."""
        return self.stack_outputs.get(layer, self.hidden[layer + 1])

    def site(self, layer: int, site: Site) -> torch.Tensor:
        """The activation at ``site`` of ``layer`` (``resid`` is read from the hidden states)."""
        if site == "resid":
            return self.layer_out(layer)
        if (layer, site) not in self.acts:
            raise KeyError(f"the cached run did not record site {site!r} of layer {layer}")
        return self.acts[(layer, site)]


@torch.inference_mode()
def capture(
    retriever: Retriever,
    batch: SideBatch,
    sites: Iterable[SiteKey] = (),
    reuse_layers: Iterable[int] = (),
) -> RunCache:
    """Run ``batch`` once, caching every layer's inputs, the ``sites`` and, for ``reuse_layers``,
    what :func:`reusable` needs; check that the cached layers reproduce the encoder's output."""
    layers = retriever.layer_modules
    n_layers = len(layers)
    layer_args: list[Any] = [None] * n_layers
    hidden: list[Any] = [None] * (n_layers + 1)
    acts: dict[SiteKey, torch.Tensor] = {}
    stack_outputs: dict[int, torch.Tensor] = {}
    seen: dict[tuple[int, str, int], Any] = {}
    handles = []

    def layer_pre(index: int) -> Callable:
        def fn(_m: nn.Module, args: tuple, kwargs: dict) -> None:
            hidden[index] = args[0]
            layer_args[index] = (args[1:], dict(kwargs))

        return fn

    def last_out(_m: nn.Module, _a: tuple, out: Any) -> None:
        hidden[n_layers] = layer_output(out)

    def stack_out(index: int) -> Callable:
        return lambda _m, _a, out: stack_outputs.__setitem__(index, layer_output(out))

    def record(key: SiteKey, port: str) -> Callable:
        if port == "input":
            return lambda _m, args: acts.__setitem__(key, args[0])
        return lambda _m, _a, out: acts.__setitem__(key, layer_output(out))

    def remember_attention(index: int) -> Callable:
        def fn(_m: nn.Module, _a: tuple, out: Any) -> None:
            first, length = (out[0], len(out)) if isinstance(out, tuple) else (out, 0)
            seen[(index, "attn", 0)] = (first, length)

        return fn

    def remember(key: tuple[int, str, int], port: str) -> Callable:
        if port == "input":
            return lambda _m, args: seen.__setitem__(key, args[0])
        return lambda _m, _a, out: seen.__setitem__(key, out)

    try:
        for i, block in enumerate(layers):
            handles.append(block.register_forward_pre_hook(layer_pre(i), with_kwargs=True))
        handles.append(layers[n_layers - 1].register_forward_hook(last_out))
        for start in retriever.stack_starts:
            handles.append(layers[start - 1].register_forward_hook(stack_out(start - 1)))
        for layer, site in sorted(set(sites)):
            if site == "resid":
                continue
            module, port = site_module(retriever, layer, site)
            if port == "input":
                handles.append(module.register_forward_pre_hook(record((layer, site), port)))
            else:
                handles.append(module.register_forward_hook(record((layer, site), port)))
        reuse_layers = sorted(set(reuse_layers))
        for layer in reuse_layers:
            attention = attention_module(retriever, layer)
            out_proj, _ = retriever.component_module(layer, "heads")
            handles.append(attention.register_forward_hook(remember_attention(layer)))
            handles.append(
                out_proj.register_forward_pre_hook(remember((layer, "proj", 0), "input"))
            )
            for slot, module in enumerate(qkv_modules(retriever, layer)):
                handles.append(
                    module.register_forward_hook(remember((layer, "qkv", slot), "output"))
                )
        final = retriever.forward_hidden(batch)
    finally:
        for handle in handles:
            handle.remove()
    rebuilt = retriever.after_layers(hidden[n_layers])
    if rebuilt.shape != final.shape or not torch.allclose(rebuilt, final, atol=1e-5, rtol=1e-4):
        raise UnsupportedEncoderError(
            f"the {retriever.arch.model_type} encoder transforms its last layer's output in a way "
            f"RankScope does not know; {type(retriever).__name__}.after_layers must compute it "
            "(for an encoder architecture: set final_norm in its ArchSpec)"
        )
    return RunCache(
        batch=batch,
        layer_args=layer_args,
        hidden=hidden,
        acts=acts,
        reuse={layer: reusable(retriever, layer, seen) for layer in reuse_layers},
        final=final,
        scores=retriever.readout(final, batch),
        stack_outputs=stack_outputs,
    )


def repeat_rows(obj: Any, rows: int, k: int, memo: dict[int, Any] | None = None) -> Any:
    """``obj`` with every tensor whose first dimension is ``rows`` repeated ``k`` times along it
    (copy-major), recursing into tuples, lists and dicts; other values are kept."""
    if k == 1:
        return obj
    memo = {} if memo is None else memo
    key = id(obj)
    if key in memo:
        return memo[key]
    out: Any
    if isinstance(obj, torch.Tensor):
        out = obj.repeat(k, *([1] * (obj.dim() - 1))) if obj.dim() and obj.shape[0] == rows else obj
    elif isinstance(obj, tuple):
        out = tuple(repeat_rows(x, rows, k, memo) for x in obj)
    elif isinstance(obj, list):
        out = [repeat_rows(x, rows, k, memo) for x in obj]
    elif isinstance(obj, dict):
        out = {name: repeat_rows(x, rows, k, memo) for name, x in obj.items()}
    else:
        out = obj
    memo[key] = out
    return out


def repeat_side(batch: SideBatch, k: int) -> SideBatch:
    """A side batch with every pair repeated ``k`` times (copy-major)."""
    rows = len(batch)
    return SideBatch(
        inputs=repeat_rows(batch.inputs, rows, k),
        roles=repeat_rows(batch.roles, rows, k),
        context=repeat_rows(batch.context, rows, k),
    )


LayerArgsEdit = Callable[[int, tuple, dict], tuple[tuple, dict]]
"""Edits the (positional, keyword) arguments of layer ``l`` before it runs (attention masks)."""


def run_from(
    retriever: Retriever,
    cache: RunCache,
    start: int,
    hidden: torch.Tensor,
    k: int = 1,
    hooks: Iterable[Hook] = (),
    edit_args: LayerArgsEdit | None = None,
    stop: int | None = None,
    entering: bool = False,
) -> torch.Tensor:
    """Run layers ``start`` … ``stop - 1`` (default: to the end, then the adapter's
    ``after_layers``) on ``hidden`` (``[k * B, S, hidden]``) with the cached layer arguments
    repeated ``k`` times. ``hidden`` is layer ``start``'s input, or with ``entering`` (``start``
    begins a stack) the previous stack's output. The returned value is what the layer before
    ``stop`` outputs, or what the adapter's ``readout`` takes."""
    layers = retriever.layer_modules
    rows = len(cache.batch)
    memo: dict[int, Any] = {}
    end = len(layers) if stop is None else stop
    stack_edit = None
    with hooked(hooks):
        for index in range(start, end):
            args, kwargs = cache.layer_args[index]
            args, kwargs = repeat_rows(args, rows, k, memo), repeat_rows(kwargs, rows, k, memo)
            if index in retriever.stack_starts and (index > start or entering):
                stack_edit = retriever.enter_stack(index, hidden)
                hidden = repeat_rows(cache.hidden[index], rows, k, memo)
            if stack_edit is not None:
                args, kwargs = stack_edit(args, kwargs)
            if edit_args is not None:
                args, kwargs = edit_args(index, args, kwargs)
            hidden = layer_output(layers[index](hidden, *args, **kwargs))
    return retriever.after_layers(hidden) if stop is None else hidden
