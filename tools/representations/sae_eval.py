"""SAEs on a retriever: where they read, their training data, and their retrieval faithfulness.

An SAE reads either the residual stream after a layer (``hook_name`` is the layer's module path,
e.g. ``encoder.layer.3``, or its name ``L3`` or ``L3.resid``; rows are the non-padding tokens of
documents) or, for a bi-encoder, the final document embeddings (``hook_name``
``sentence_embedding``; one row per document).

Faithfulness: replace what the SAE reads by its reconstruction and compare the retrieval scores.
For final embeddings the document embeddings are replaced (and renormalised for cosine
similarity); for a layer, every non-padding token's residual stream at that layer is replaced
inside the forward pass (through nnsight).
"""

from __future__ import annotations

import copy
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from rankscope.tools.representations.activations import (
    ActivationTable,
    collect_activations,
    document_embeddings,
    layer_name,
    length_batches,
    parse_layer_name,
)
from rankscope.tools.representations.corpus import Document, query_groups, split_documents
from rankscope.tools.representations.edits import edit_scores
from rankscope.tools.representations.ranking import ranking_agreement
from rankscope.tools.representations.sae import (
    FINAL_EMBEDDING_HOOK,
    ReconstructionStats,
    SparseAutoencoder,
    reconstruction_stats,
    train_topk_sae,
)
from rankscope.tools.retrievers.base import Component, Retriever, Role

TOKEN_ROLES: tuple[Role, ...] = (Role.CLS, Role.SEP, Role.QUERY, Role.DOC, Role.QTERM)


def hook_name(retriever: Retriever, layer: int | None) -> str:
    """The model path an SAE at ``layer`` reads (``None``: the final embeddings)."""
    return FINAL_EMBEDDING_HOOK if layer is None else f"{retriever.arch.layers}.{layer}"


def sae_layer(retriever: Retriever, sae: SparseAutoencoder, layer: int | None) -> int | None:
    """The layer an SAE reads: ``layer`` when given, else what its ``hook_name`` says."""
    if layer is not None:
        return layer
    hook = sae.hook_name
    if hook is None or hook == FINAL_EMBEDDING_HOOK:
        if hook is None and sae.d_in != retriever.hidden_size:
            raise ValueError("the SAE names no hook and does not fit this model; give its layer")
        return None
    path = re.fullmatch(re.escape(retriever.arch.layers) + r"\.(\d+)", hook)
    if path is not None:
        return int(path.group(1))
    layer = parse_layer_name(hook)
    if layer is not None:
        return layer
    try:
        component = Component.parse(hook)
    except ValueError:
        component = None
    if component is None or component.site != "resid":
        raise ValueError(
            f"the SAE reads {hook!r}, which is not a residual stream of this model "
            f"({retriever.arch.layers}.N); give the layer it reads"
        )
    return component.layer


def check_fits(retriever: Retriever, sae: SparseAutoencoder) -> None:
    if sae.d_in != retriever.hidden_size:
        raise ValueError(
            f"the SAE reads {sae.d_in}-dimensional inputs but the model's hidden size is "
            f"{retriever.hidden_size}"
        )


def sae_inputs(
    retriever: Retriever,
    docs: Sequence[Document],
    layer: int | None,
    max_tokens_per_doc: int | None,
    batch_size: int,
    seed: int,
    progress: bool,
    roles: Sequence[Role] = TOKEN_ROLES,
) -> tuple[torch.Tensor, ActivationTable | None]:
    """Rows an SAE at ``layer`` reads for ``docs``: token rows (with their table), or one final
    embedding per document (table None)."""
    if layer is None:
        return torch.from_numpy(document_embeddings(retriever, docs, batch_size, progress)), None
    table = collect_activations(
        retriever,
        docs,
        [layer],
        roles=roles,
        max_tokens_per_doc=max_tokens_per_doc,
        batch_size=batch_size,
        seed=seed,
        progress=progress,
    )
    return torch.from_numpy(table.acts[layer_name(layer)]), table


@dataclass
class Faithfulness:
    """Scores with and without the SAE's reconstruction, and how the rankings agree."""

    base: np.ndarray
    new: np.ndarray
    agreement: dict[str, float]
    per_query_spearman: list[float] = field(default_factory=list)

    @property
    def mean_abs_delta(self) -> float:
        return float(np.mean(np.abs(self.new - self.base)))


def faithfulness(
    retriever: Retriever,
    sae: SparseAutoencoder,
    docs: Sequence[Document],
    layer: int | None,
    batch_size: int = 16,
    progress: bool = False,
) -> Faithfulness:
    """Score every (query, document) with the original representation and with the SAE's."""
    base = np.zeros(len(docs))
    new = np.zeros(len(docs))
    if layer is None:
        emb = torch.from_numpy(document_embeddings(retriever, docs, batch_size, progress))
        with torch.no_grad():
            recon = sae(emb)
        if getattr(retriever, "similarity", "dot") == "cosine":
            recon = F.normalize(recon, dim=-1)
        query_embeddings = retriever.query_embeddings  # type: ignore[attr-defined]
        q = query_embeddings([d.query for d in docs]).float().cpu()
        base = (q * emb).sum(-1).numpy()
        new = (q * recon).sum(-1).numpy()
    else:
        on_device = copy.deepcopy(sae).to(retriever.device)

        def splice(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                r = on_device(h.float()).to(h.dtype)
            return torch.where(mask.unsqueeze(-1), r, h)

        for idx in tqdm(
            length_batches(docs, batch_size), desc="faithfulness", disable=not progress, leave=False
        ):
            chosen = [docs[i] for i in idx]
            batch = retriever.encode_side([d.query for d in chosen], [d.text for d in chosen])
            mask = batch.attention_mask.bool()
            base[idx] = retriever.score_side(batch).float().cpu().numpy()
            new[idx] = edit_scores(retriever, batch, layer, partial(splice, mask=mask)).numpy()
    groups = query_groups(list(docs))
    agreement = ranking_agreement(groups, base, new)
    per_query = [ranking_agreement([g], base, new)["spearman"] for g in groups if len(g) >= 2]
    return Faithfulness(base, new, agreement, [v for v in per_query if np.isfinite(v)])


@dataclass
class SAEReport:
    """A trained SAE with its reconstruction quality on held-out queries and its faithfulness."""

    sae: SparseAutoencoder
    layer: int | None
    train_stats: ReconstructionStats
    eval_stats: ReconstructionStats
    faithfulness: Faithfulness
    n_train: int
    n_eval: int
    seconds: dict[str, float]
    losses: list[float]

    @property
    def dead(self) -> int:
        return int(((self.train_stats.frequency == 0) & (self.eval_stats.frequency == 0)).sum())


def train_and_evaluate(
    retriever: Retriever,
    docs: Sequence[Document],
    layer: int | None,
    width: int,
    k: int,
    epochs: int,
    batch_size: int,
    lr: float,
    holdout_fraction: float,
    max_tokens_per_doc: int | None,
    model_batch_size: int,
    seed: int,
    progress: bool,
) -> SAEReport:
    """Train a TopK SAE on the documents of some queries; evaluate it on the other queries'."""
    train_docs, eval_docs = split_documents(list(docs), holdout_fraction, seed)
    t0 = time.perf_counter()
    x_train, _ = sae_inputs(
        retriever, train_docs, layer, max_tokens_per_doc, model_batch_size, seed, progress
    )
    x_eval, _ = sae_inputs(
        retriever, eval_docs, layer, max_tokens_per_doc, model_batch_size, seed + 1, progress
    )
    t1 = time.perf_counter()
    metadata = {
        "model_name": retriever.model_id,
        "hook_name": hook_name(retriever, layer),
        "hook_layer": -1 if layer is None else layer,
        "trained_by": "rankscope train_sae",
        "n_train_rows": int(x_train.shape[0]),
        "seed": seed,
    }
    sae, log = train_topk_sae(
        x_train, width, k, epochs, batch_size, lr, seed, metadata=metadata, progress=progress
    )
    t2 = time.perf_counter()
    train_stats, _ = reconstruction_stats(sae, x_train)
    eval_stats, _ = reconstruction_stats(sae, x_eval)
    faith = faithfulness(retriever, sae, eval_docs, layer, model_batch_size, progress)
    t3 = time.perf_counter()
    return SAEReport(
        sae,
        layer,
        train_stats,
        eval_stats,
        faith,
        int(x_train.shape[0]),
        int(x_eval.shape[0]),
        {"collect": t1 - t0, "train": t2 - t1, "evaluate": t3 - t2},
        log.losses,
    )
