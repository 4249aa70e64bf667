"""The retriever adapter contract: one view of a model for every experiment.

An adapter tokenises the *patched side* of a (query, document) pair — the document for a
bi-encoder (its query embedding stays fixed), the joint ``[CLS] q [SEP] d [SEP]`` sequence for a
cross-encoder — runs the base encoder, and turns its output (``encoder(**inputs)[0]``, which
``forward_hidden`` returns) into a relevance score (``readout``). Experiments read and patch the
encoder's components through nnsight (``self.nn``) or plain modules (``component_module``), named
as the model names them.

The layers form one stack, or several run one after another (monoT5: encoder blocks, then decoder
blocks). Patching engines that replay layers themselves need two more steps per kind:
``after_layers`` maps the last layer's output to what ``readout`` takes (a final norm, a head),
and ``enter_stack`` says how a stack's output feeds the next stack (its cross-attention memory).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal

import torch
from nnsight import NNsight
from torch import nn
from tqdm import tqdm

from rankscope.tools.retrievers.architectures import ArchSpec, model_dims, submodule

if TYPE_CHECKING:
    from transformers import PreTrainedModel

Site = Literal["resid", "attn", "mlp", "heads", "cross", "cross_heads"]
SITES: tuple[Site, ...] = ("resid", "attn", "mlp", "heads")
"""The sites every layer of every kind has."""
CROSS_SITES: tuple[Site, ...] = ("cross", "cross_heads")
"""The cross-attention sites of an encoder–decoder model's decoder layers (monoT5)."""
SITE_DOC = {
    "resid": "residual stream after the layer (the layer's output)",
    "attn": "attention write: output of the attention output projection, before the residual add",
    "mlp": "MLP write: output of the MLP's last linear, before the residual add",
    "heads": "per-head attention outputs: the input of the attention output projection",
    "cross": "cross-attention write (decoder layers of encoder–decoder models): output of the "
    "cross-attention output projection, before the residual add",
    "cross_heads": "per-head cross-attention outputs: the input of the cross-attention output "
    "projection",
}


class Role(IntEnum):
    """The role of a token position in the patched side."""

    PAD = 0
    CLS = 1
    SEP = 2
    QUERY = 3
    DOC = 4
    QTERM = 5
    """A document token that also occurs in the query (not injected)."""
    INJECTED = 6
    """A token the perturbation added to the document."""
    FILLER = 7
    """A filler token added to the baseline for length alignment."""


ROLE_NAMES = {role: role.name.lower() for role in Role}


@dataclass(frozen=True)
class Component:
    """A named, patchable piece of the encoder: ``L3.H5``, ``L3.attn``, ``L3.mlp``, ``L3.resid``;
    in a decoder layer of an encoder–decoder model also ``L3.cross`` and ``L3.cross.H5``."""

    layer: int
    site: Site
    head: int | None = None

    @property
    def name(self) -> str:
        if self.head is None:
            return f"L{self.layer}.{self.site}"
        return f"L{self.layer}.{'cross.' if self.site == 'cross_heads' else ''}H{self.head}"

    @staticmethod
    def parse(name: str) -> Component:
        """Inverse of ``name``; raises ValueError naming the accepted forms."""
        match = re.fullmatch(
            r"L(\d+)\.(?:H(\d+)|cross\.H(\d+)|(resid|attn|mlp|cross))", name.strip()
        )
        if not match:
            raise ValueError(
                f"bad component name {name!r}: use L<layer>.H<head> (a head) or "
                "L<layer>.resid / L<layer>.attn / L<layer>.mlp, or in a decoder layer of an "
                "encoder–decoder model L<layer>.cross / L<layer>.cross.H<head>"
            )
        layer = int(match.group(1))
        if match.group(2) is not None:
            return Component(layer, "heads", int(match.group(2)))
        if match.group(3) is not None:
            return Component(layer, "cross_heads", int(match.group(3)))
        return Component(layer, match.group(4))  # type: ignore[arg-type]


@dataclass
class SideBatch:
    """A tokenised batch of the patched side, with role codes and what the readout needs."""

    inputs: dict[str, torch.Tensor]
    roles: torch.Tensor
    context: dict[str, Any] = field(default_factory=dict)

    @property
    def attention_mask(self) -> torch.Tensor:
        return self.inputs["attention_mask"]

    def __len__(self) -> int:
        return int(self.inputs["input_ids"].shape[0])

    def select(self, index: slice | torch.Tensor) -> SideBatch:
        """Rows ``index`` of the batch (inputs, roles and row-aligned context tensors)."""
        context = {
            k: v[index]
            if isinstance(v, torch.Tensor) and v.shape[:1] == self.roles.shape[:1]
            else v
            for k, v in self.context.items()
        }
        return SideBatch({k: v[index] for k, v in self.inputs.items()}, self.roles[index], context)


def token_roles(
    offsets: Sequence[tuple[int, int]],
    sequence_ids: Sequence[int | None],
    input_ids: Sequence[int],
    attention: Sequence[int],
    doc_sequence: int,
    cls_id: int | None,
    query_token_ids: set[int],
    injected: Sequence[tuple[int, int]] = (),
    filler: Sequence[tuple[int, int]] = (),
) -> list[int]:
    """Role codes for one tokenised sequence (offsets of document tokens are document-relative)."""
    roles: list[int] = []
    seen_cls = False
    for (start, end), seq, tok, att in zip(
        offsets, sequence_ids, input_ids, attention, strict=True
    ):
        if not att:
            roles.append(Role.PAD)
        elif seq is None:
            is_cls = not seen_cls and (cls_id is None or tok == cls_id)
            seen_cls = True
            roles.append(Role.CLS if is_cls else Role.SEP)
        elif seq != doc_sequence:
            roles.append(Role.QUERY)
        elif any(start < e and end > s for s, e in injected):
            roles.append(Role.INJECTED)
        elif any(start < e and end > s for s, e in filler):
            roles.append(Role.FILLER)
        elif tok in query_token_ids:
            roles.append(Role.QTERM)
        else:
            roles.append(Role.DOC)
    return roles


Spans = Sequence[Sequence[tuple[int, int]]]

StackEdit = Callable[[tuple, dict], tuple[tuple, dict]]
"""Edits a layer's (positional, keyword) arguments (see :meth:`Retriever.enter_stack`)."""


def without_kv_cache(model: nn.Module) -> None:
    """Turn off the key/value cache in the config of ``model`` and of its submodules (a
    seq2seq decoder keeps its own config). Cached runs replay layers on their recorded
    arguments: a key/value cache there would grow, and a cached cross-attention would ignore a
    patched encoder output."""
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "use_cache"):
            config.use_cache = False


def cached_rows(
    cache: dict[str, torch.Tensor],
    texts: Sequence[str],
    encode: Callable[[Sequence[str]], torch.Tensor],
) -> torch.Tensor:
    """The rows of ``texts`` stacked, encoding (in one call) only those ``cache`` lacks."""
    missing = sorted({t for t in texts if t not in cache})
    if missing:
        for text, row in zip(missing, encode(missing), strict=True):
            cache[text] = row
    return torch.stack([cache[t] for t in texts])


def tokenize_with_offsets(
    tokenizer: Any,
    texts: Sequence[str],
    pairs: Sequence[str] | None = None,
    *,
    max_length: int,
    truncation: bool | str = True,
) -> tuple[Any, torch.Tensor]:
    """A padded batch of ``texts`` (with ``pairs`` as their second sequences) and its character
    offsets, popped from the encoding."""
    sequences = [list(texts)] if pairs is None else [list(texts), list(pairs)]
    enc = tokenizer(
        *sequences,
        padding=True,
        truncation=truncation,
        max_length=max_length,
        return_tensors="pt",
        return_offsets_mapping=True,
    )
    return enc, enc.pop("offset_mapping")


def side_roles(
    tokenizer: Any,
    enc: Any,
    offsets: torch.Tensor,
    queries: Sequence[str],
    *,
    doc_sequence: int,
    cls_id: int | None,
    injected: Spans | None = None,
    filler: Spans | None = None,
    shifts: Sequence[int] | None = None,
    sequence_ids: Sequence[Sequence[int | None]] | None = None,
) -> list[list[int]]:
    """:func:`token_roles` of every row of a tokenised batch: ``shifts[i]`` is subtracted from
    row ``i``'s offsets (text before the document), ``sequence_ids`` default to the encoding's."""
    roles = []
    for i, query in enumerate(queries):
        shift = shifts[i] if shifts is not None else 0
        roles.append(
            token_roles(
                [(s - shift, e - shift) for s, e in offsets[i].tolist()],
                sequence_ids[i] if sequence_ids is not None else enc.sequence_ids(i),
                enc["input_ids"][i].tolist(),
                enc["attention_mask"][i].tolist(),
                doc_sequence=doc_sequence,
                cls_id=cls_id,
                query_token_ids=set(tokenizer(query, add_special_tokens=False)["input_ids"]),
                injected=injected[i] if injected else (),
                filler=filler[i] if filler else (),
            )
        )
    return roles


class Retriever(ABC):
    """A retrieval model seen through one interface (see the module docstring)."""

    kind: str
    random_weights: tuple[str, ...] = ()
    """Weights the score depends on that were randomly initialised (allowed explicitly)."""
    attention_probs_index: int = 1
    """Where in the output tuple of ``arch.attention`` the attention probabilities are (T5's
    attention returns its position bias before them)."""
    stack_starts: tuple[int, ...] = ()
    """Layers, besides 0, that begin a new stack: their input is not the previous layer's output
    (monoT5's first decoder block); see :meth:`enter_stack`."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: Any,
        arch: ArchSpec,
        model_id: str,
        weights_hash: str,
        max_length: int = 256,
        device: str = "cpu",
    ) -> None:
        self.model = model.eval().to(device)
        self.tokenizer = tokenizer
        self.arch = arch
        self.model_id = model_id
        self.weights_hash = weights_hash
        self.max_length = max_length
        self.device = device
        self.n_layers, self.n_heads, self.hidden_size = model_dims(self.encoder.config)
        self.head_dim = self.hidden_size // self.n_heads

    @property
    @abstractmethod
    def encoder(self) -> nn.Module:
        """The base transformer (``BertModel`` …) whose components experiments touch."""

    @abstractmethod
    def encode_side(
        self,
        queries: Sequence[str],
        docs: Sequence[str],
        injected: Sequence[Sequence[tuple[int, int]]] | None = None,
        filler: Sequence[Sequence[tuple[int, int]]] | None = None,
    ) -> SideBatch:
        """Tokenise the patched side of (query, doc) pairs, with role codes."""

    @abstractmethod
    def readout(self, hidden: torch.Tensor, batch: SideBatch) -> torch.Tensor:
        """Scores ``[B]`` from the encoder's last hidden state ``[B, S, hidden]``."""

    def describe(self) -> dict[str, Any]:
        return {
            "model_id": self.model_id,
            "kind": self.kind,
            "architecture": self.arch.model_type,
            "layers": self.n_layers,
            "heads": self.n_heads,
            "hidden_size": self.hidden_size,
            "weights_hash": self.weights_hash,
            "device": self.device,
        }

    def forward_hidden(self, batch: SideBatch) -> torch.Tensor:
        """What ``readout`` takes: the encoder's first output for a batch (plain torch)."""
        return self.encoder(**batch.inputs)[0]

    def after_layers(self, hidden: torch.Tensor) -> torch.Tensor:
        """What the encoder computes from its last layer's output up to what ``forward_hidden``
        returns, so that ``readout(after_layers(h), batch)`` scores a replayed last layer's
        output ``h``. Default: the architecture's final norm, if it has one."""
        if self.arch.final_norm is None:
            return hidden
        return submodule(self.encoder, self.arch.final_norm)(hidden)

    def enter_stack(self, layer: int, previous: torch.Tensor) -> StackEdit:
        """How the layers of the stack that starts at ``layer`` (one of ``stack_starts``) take the
        previous stack's last output ``previous``: an edit of each such layer's (positional,
        keyword) arguments, as recorded in a clean run."""
        raise NotImplementedError(f"{type(self).__name__} has a single stack of layers")

    def _side_batch(
        self, enc: Any, roles: list[list[int]], context: dict[str, Any] | None = None
    ) -> SideBatch:
        """A tokenised batch and its role codes as a :class:`SideBatch` on ``self.device``."""
        inputs = {k: v.to(self.device) for k, v in enc.items()}
        roles_tensor = torch.tensor(roles, dtype=torch.long, device=self.device)
        return SideBatch(inputs, roles_tensor, context if context is not None else {})

    @torch.inference_mode()
    def score_side(self, batch: SideBatch) -> torch.Tensor:
        return self.readout(self.forward_hidden(batch), batch)

    def score(
        self,
        queries: Sequence[str],
        docs: Sequence[str],
        batch_size: int = 32,
        progress: bool = False,
    ) -> torch.Tensor:
        """Relevance scores of (queries[i], docs[i]) pairs, as a float tensor on the CPU."""
        if len(queries) != len(docs):
            raise ValueError(f"got {len(queries)} queries but {len(docs)} documents")
        # Batches of similar length waste little compute on padding; scores return in input order.
        order = sorted(range(len(docs)), key=lambda i: len(queries[i]) + len(docs[i]))
        scores = torch.empty(len(docs))
        starts = range(0, len(order), batch_size)
        for start in tqdm(starts, desc="scoring", disable=not progress, leave=False):
            rows = order[start : start + batch_size]
            batch = self.encode_side([queries[i] for i in rows], [docs[i] for i in rows])
            scores[rows] = self.score_side(batch).float().cpu()
        return scores

    def as_pyterrier_transformer(self, batch_size: int = 32, text_field: str = "text") -> Any:
        """This model as a PyTerrier re-ranker (a ``pt.Transformer``; the ``rankscope[pyterrier]``
        extra): it scores the ``text_field`` of (qid, query, docno) rows and ranks them per query
        (:mod:`rankscope.tools.retrievers.pyterrier`)."""
        from rankscope.tools.retrievers.pyterrier import RetrieverTransformer

        return RetrieverTransformer(self, batch_size, text_field)

    @property
    def layer_modules(self) -> nn.ModuleList:
        """Every layer in forward order (all stacks)."""
        layers = submodule(self.encoder, self.arch.layers)
        if not isinstance(layers, nn.ModuleList):
            raise TypeError(f"{self.arch.model_type}'s {self.arch.layers!r} is not a ModuleList")
        return layers

    def layer_reads_tokens(self, layer: int) -> bool:
        """Whether layer ``layer`` runs over the side's tokens, so that role positions select
        its positions (False for monoT5's decoder blocks, which run over decoder steps)."""
        return True

    def layer_path(self, layer: int) -> str:
        """The model's own path of layer ``layer`` (relative to ``encoder``)."""
        return f"{self.arch.layers}.{layer}"

    def site_layers(self, site: Site) -> list[int]:
        """The layers that have ``site`` (every layer for :data:`SITES`; for the cross-attention
        sites, the decoder layers of an encoder–decoder model)."""
        return list(range(self.n_layers)) if site in SITES else []

    def components(self, site: Site) -> list[Component]:
        if site in ("heads", "cross_heads"):
            return [
                Component(layer, site, head)
                for layer in self.site_layers(site)
                for head in range(self.n_heads)
            ]
        return [Component(layer, site) for layer in self.site_layers(site)]

    def module_path(self, layer: int, site: Site) -> tuple[str, Literal["input", "output"]]:
        """The model's own path of the module that carries ``site`` at ``layer``, and its port."""
        prefix = self.layer_path(layer)
        if site == "resid":
            return prefix, "output"
        if site == "attn":
            return f"{prefix}.{self.arch.out_proj}", "output"
        if site == "mlp":
            return f"{prefix}.{self.arch.mlp_out}", "output"
        if site == "heads":
            return f"{prefix}.{self.arch.out_proj}", "input"
        if site in CROSS_SITES:
            raise ValueError(
                f"site {site!r} is the cross-attention of an encoder–decoder model's decoder "
                f"layers; layer {layer} of this {self.kind} model has none"
            )
        raise ValueError(f"unknown site {site!r}; use one of {', '.join(SITES)}")

    def component_module(
        self, layer: int, site: Site
    ) -> tuple[nn.Module, Literal["input", "output"]]:
        path, port = self.module_path(layer, site)
        return submodule(self.encoder, path), port

    @cached_property
    def nn(self) -> NNsight:
        """The base encoder wrapped by nnsight (built on first use)."""
        import warnings

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*nnsight already serves.*")
            return NNsight(self.encoder)

    def envoy(self, path: str) -> Any:
        """The nnsight envoy at a model path (nnsight serves submodules named ``output`` as
        ``E_output``, since ``.output`` is every envoy's output)."""
        env: Any = self.nn
        for part in path.split("."):
            if part.isdigit():
                env = env[int(part)]
            elif part == "output":
                env = env.E_output
            else:
                env = getattr(env, part)
        return env

    def site_envoy(self, layer: int, site: Site) -> tuple[Any, Literal["input", "output"]]:
        path, port = self.module_path(layer, site)
        return self.envoy(path), port
