"""Collect activations of documents, layer by layer, through nnsight.

Layers are named ``emb`` (the embedding output, the residual stream before layer 0) and ``L0`` …
``L{n-1}`` (the residual stream after that layer, the layer's output: ``Component``'s
``L{n-1}.resid``); :func:`layer_name` writes these names and :func:`parse_layer_name` reads them.
Two sites: ``resid`` (residual stream, ``[hidden]`` per token) and ``neurons`` (MLP neuron
activations: the input of the MLP's last linear, ``[intermediate]`` per token).

Rows are tokens (``pooling="tokens"``, optionally filtered by role and subsampled per document)
or documents (``cls`` / ``mean`` pooling over non-padding tokens). Documents are batched by length
to cut padding, and streamed with a tqdm bar.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from rankscope.tools.representations.corpus import Document
from rankscope.tools.retrievers.base import Retriever, Role, SideBatch

EMBEDDINGS = "emb"
ActivationSite = Literal["resid", "neurons"]
Pooling = Literal["tokens", "cls", "mean"]
DOC_ROLES: tuple[Role, ...] = (Role.DOC, Role.QTERM)


def layer_name(layer: int | None) -> str:
    """``emb`` for the embedding output (``None``), ``L3`` for the output of layer 3."""
    return EMBEDDINGS if layer is None else f"L{layer}"


def parse_layer_name(name: str) -> int | None:
    """The layer a whole-layer name ``L3`` names (3), else None: ``emb``, a component name
    (``L3.H5``, see :class:`~rankscope.tools.retrievers.base.Component`) or anything else."""
    digits = name[1:] if name.startswith("L") else ""
    return int(digits) if digits.isdecimal() else None


def layer_list(
    retriever: Retriever, layers: Sequence[int] | None, embeddings: bool
) -> list[int | None]:
    """Validated layers in forward order, ``None`` (the embeddings) first when asked for. By
    default the layers that run over the input's tokens (not monoT5's decoder blocks, whose
    positions are decoder steps); naming such a layer is an error."""
    tokens = [layer for layer in range(retriever.n_layers) if retriever.layer_reads_tokens(layer)]
    chosen = tokens if layers is None else sorted(set(layers))
    bad = [layer for layer in chosen if not 0 <= layer < retriever.n_layers]
    if bad:
        raise ValueError(
            f"layers {bad} do not exist: the model has layers 0..{retriever.n_layers - 1}"
        )
    steps = [layer for layer in chosen if layer not in tokens]
    if steps:
        raise ValueError(
            f"layers {steps} of this {retriever.kind} model are decoder blocks: their positions "
            f"are decoder steps, not the input's tokens; use layers {tokens}"
        )
    return ([None] if embeddings else []) + chosen


@dataclass
class ActivationTable:
    """Activations of a set of documents: one row per kept token, or per document when pooled.

    ``acts[name]`` is ``[n_rows, width]`` float32. ``doc``, ``position``, ``token_id`` and ``role``
    locate each row (pooled rows have position 0, token id -1 and role CLS). ``doc_ids`` and
    ``doc_roles`` hold every non-padding token of each document, for labels and context.
    """

    acts: dict[str, np.ndarray]
    doc: np.ndarray
    position: np.ndarray
    token_id: np.ndarray
    role: np.ndarray
    doc_ids: list[np.ndarray] = field(default_factory=list)
    doc_roles: list[np.ndarray] = field(default_factory=list)

    @property
    def layers(self) -> list[str]:
        return list(self.acts)

    def __len__(self) -> int:
        return int(self.doc.shape[0])

    def subset(self, keep: np.ndarray) -> ActivationTable:
        """Rows where ``keep`` (a boolean mask or indices) holds."""
        return ActivationTable(
            {k: v[keep] for k, v in self.acts.items()},
            self.doc[keep],
            self.position[keep],
            self.token_id[keep],
            self.role[keep],
            self.doc_ids,
            self.doc_roles,
        )


def read_layers(
    retriever: Retriever,
    batch: SideBatch,
    layers: Sequence[int | None],
    site: ActivationSite = "resid",
) -> dict[str, torch.Tensor]:
    """``[B, S, width]`` activations of ``layers`` for one batch, read in forward order."""
    saved: dict[str, torch.Tensor] = {}
    with torch.inference_mode(), retriever.nn.trace(**batch.inputs):
        for layer in layers:
            if layer is None:
                # The embedding output is the first layer's input (BERT-likes name the module).
                has_module = hasattr(retriever.encoder, "embeddings")
                envoy = retriever.envoy("embeddings" if has_module else retriever.layer_path(0))
                emb = envoy.output if has_module else envoy.input
                saved[EMBEDDINGS] = (emb[0] if isinstance(emb, tuple) else emb).save()
            elif site == "neurons":
                path, _ = retriever.module_path(layer, "mlp")
                saved[layer_name(layer)] = retriever.envoy(path).input.save()
            else:
                out = retriever.envoy(retriever.layer_path(layer)).output
                saved[layer_name(layer)] = (out[0] if isinstance(out, tuple) else out).save()
    return saved


def length_batches(docs: Sequence[Document], batch_size: int) -> list[np.ndarray]:
    """Document indices in batches of similar length (sorted by characters), stable order."""
    order = np.argsort([len(d.text) for d in docs], kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def collect_activations(
    retriever: Retriever,
    docs: Sequence[Document],
    layers: Sequence[int | None],
    site: ActivationSite = "resid",
    pooling: Pooling = "tokens",
    roles: Sequence[Role] = DOC_ROLES,
    vocab_mask: np.ndarray | None = None,
    max_tokens_per_doc: int | None = None,
    batch_size: int = 16,
    seed: int = 0,
    progress: bool = False,
) -> ActivationTable:
    """Activations of ``docs`` (each with its query, which sets the token roles) at ``layers``.

    Token rows keep positions whose role is in ``roles`` and whose token id is True in
    ``vocab_mask`` (a boolean array over the vocabulary; None keeps all); at most
    ``max_tokens_per_doc`` of them per document, drawn with ``seed``.
    """
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, 2**31 - 1, size=len(docs))
    names = [layer_name(layer) for layer in layers]
    role_codes = np.asarray([int(r) for r in roles])
    chunks: dict[str, list[np.ndarray]] = {n: [] for n in names}
    meta: list[tuple[np.ndarray, ...]] = []
    doc_ids: list[np.ndarray] = [np.empty(0, dtype=np.int64)] * len(docs)
    doc_roles: list[np.ndarray] = [np.empty(0, dtype=np.int64)] * len(docs)
    batches = length_batches(docs, batch_size)
    for idx in tqdm(batches, desc=f"activations ({site})", disable=not progress, leave=False):
        chosen = [docs[i] for i in idx]
        batch = retriever.encode_side([d.query for d in chosen], [d.text for d in chosen])
        acts = read_layers(retriever, batch, layers, site)
        mask = batch.attention_mask.bool().cpu().numpy()
        ids = batch.inputs["input_ids"].cpu().numpy()
        role_arr = batch.roles.cpu().numpy()
        for row, doc_index in enumerate(idx):
            doc_ids[doc_index] = ids[row][mask[row]]
            doc_roles[doc_index] = role_arr[row][mask[row]]
        if pooling == "tokens":
            keep = np.isin(role_arr, role_codes) & mask
            if vocab_mask is not None:
                keep &= vocab_mask[ids]
            rows, cols = [], []
            for row, doc_index in enumerate(idx):
                pos = np.flatnonzero(keep[row])
                if max_tokens_per_doc is not None and pos.size > max_tokens_per_doc:
                    pick = np.random.default_rng(draws[doc_index]).choice(
                        pos.size, max_tokens_per_doc, replace=False
                    )
                    pos = np.sort(pos[pick])
                rows.append(np.full(pos.size, row))
                cols.append(pos)
            r = np.concatenate(rows) if rows else np.empty(0, dtype=np.int64)
            c = np.concatenate(cols) if cols else np.empty(0, dtype=np.int64)
            for name in names:
                chunks[name].append(acts[name][r, c].float().cpu().numpy())
            meta.append((idx[r], c, ids[r, c], role_arr[r, c]))
        else:
            weights = batch.attention_mask.unsqueeze(-1).to(torch.float32)
            for name in names:
                h = acts[name].float()
                pooled = (
                    h[:, 0]
                    if pooling == "cls"
                    else (h * weights).sum(1) / weights.sum(1).clamp(min=1)
                )
                chunks[name].append(pooled.cpu().numpy())
            n = len(idx)
            meta.append(
                (np.asarray(idx), np.zeros(n, int), np.full(n, -1), np.full(n, int(Role.CLS)))
            )
    if not meta:
        raise ValueError("no documents to collect activations from")
    doc, position, token_id, role = (np.concatenate([part[j] for part in meta]) for j in range(4))
    acts_out = {n: np.concatenate(chunks[n]).astype(np.float32, copy=False) for n in names}
    order = np.lexsort((position, doc))
    table = ActivationTable(
        {n: a[order] for n, a in acts_out.items()},
        doc[order].astype(np.int64),
        position[order].astype(np.int64),
        token_id[order].astype(np.int64),
        role[order].astype(np.int64),
        doc_ids,
        doc_roles,
    )
    if len(table) == 0:
        raise ValueError(
            "no token matched the requested roles and filter; use more documents or other roles"
        )
    return table


def has_final_embedding(retriever: Retriever) -> bool:
    """Whether the model has a dense final document embedding of its hidden size (bi-encoders;
    not SPLADE, whose document vector is a sparse vocabulary-sized term-weight vector)."""
    return hasattr(retriever, "encode_texts") and retriever.kind != "splade"


def document_embeddings(
    retriever: Retriever, docs: Sequence[Document], batch_size: int = 32, progress: bool = False
) -> np.ndarray:
    """Final document embeddings of a bi-encoder, ``[n_docs, hidden]`` (input order)."""
    embed = getattr(retriever, "encode_texts", None)
    if embed is None or not has_final_embedding(retriever):
        raise ValueError(
            f"final embeddings exist for bi-encoders only; this model is a {retriever.kind}: "
            "give a layer to work on its residual stream instead"
        )
    out = np.zeros((len(docs), retriever.hidden_size), dtype=np.float32)
    batches = length_batches(docs, batch_size)
    for idx in tqdm(batches, desc="embeddings", disable=not progress, leave=False):
        out[idx] = embed([docs[i].text for i in idx]).float().cpu().numpy()
    return out
