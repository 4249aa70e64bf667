"""Late-interaction adapter (ColBERT / PyLate layouts): MaxSim over projected token vectors.

Each token's last hidden state goes through a linear projection and is L2-normalised; the score of
a pair is ``sum_i max_j <q_i, d_j>`` over query tokens ``i`` and attended document tokens ``j``.
The query side is computed once and fixed; the document side is patched.

The projection is read from the folder: a PyLate / sentence-transformers ``Dense`` module
(``<n>_Dense/config.json`` + ``linear.weight`` in its weight file) or a ColBERT checkpoint's
top-level ``linear.weight``. Prefixes and query expansion follow ``config_sentence_transformers.json``
(PyLate's ``query_prefix``, ``document_prefix``, ``query_length``, ``document_length``,
``do_query_expansion``, ``attend_to_expansion_tokens``). PyLate's document skiplist (punctuation
dropped from the document side) is not applied.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from rankscope.tools.retrievers.architectures import ArchSpec
from rankscope.tools.retrievers.base import Role, SideBatch
from rankscope.tools.retrievers.document_side import DocumentSideRetriever

if TYPE_CHECKING:
    from transformers import PreTrainedModel


@dataclass(frozen=True)
class LateInteractionSettings:
    """How texts are prepared for the encoder (PyLate's names)."""

    query_prefix: str = ""
    document_prefix: str = ""
    query_length: int | None = None
    document_length: int | None = None
    do_query_expansion: bool = False
    attend_to_expansion_tokens: bool = False

    @staticmethod
    def from_folder(path: Path) -> LateInteractionSettings:
        file = path / "config_sentence_transformers.json"
        if not file.exists():
            return LateInteractionSettings()
        raw = json.loads(file.read_text())
        names = LateInteractionSettings.__dataclass_fields__
        return LateInteractionSettings(**{k: v for k, v in raw.items() if k in names})


def _read_weights(file: Path) -> dict[str, torch.Tensor]:
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(file))
    return torch.load(file, map_location="cpu", weights_only=True)


def load_projection(path: Path) -> nn.Linear:
    """The linear projection of a PyLate/sentence-transformers ``Dense`` module or of a ColBERT
    checkpoint (``linear.weight``); ValueError naming the layouts when the folder has neither."""
    modules_file = path / "modules.json"
    if modules_file.exists():
        for module in json.loads(modules_file.read_text()):
            if str(module.get("type", "")).endswith("Dense"):
                folder = path / module["path"]
                config = json.loads((folder / "config.json").read_text())
                activation = str(config.get("activation_function", "Identity"))
                if not activation.endswith("Identity"):
                    raise ValueError(
                        f"{folder}: Dense activation {activation} is not supported (Identity only)"
                    )
                files = [folder / n for n in ("model.safetensors", "pytorch_model.bin")]
                weights = _read_weights(next(f for f in files if f.exists()))
                return _linear(weights, "linear.")
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (path / name).exists():
            weights = _read_weights(path / name)
            if "linear.weight" in weights:
                return _linear(weights, "linear.")
    raise ValueError(
        f"{path} has no late-interaction projection: expected a sentence-transformers/PyLate Dense "
        "module (modules.json + <n>_Dense/) or a ColBERT checkpoint with a 'linear.weight'"
    )


def _linear(weights: dict[str, torch.Tensor], prefix: str) -> nn.Linear:
    weight = weights[f"{prefix}weight"]
    bias = weights.get(f"{prefix}bias")
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias)
    return layer


@dataclass(frozen=True)
class TokenMatch:
    """The document token a query token matched, and its share of the score (the similarity)."""

    query_position: int
    query_token: str
    doc_position: int
    doc_token: str
    contribution: float


class LateInteraction(DocumentSideRetriever):
    """Score: ``sum_i max_j <q_i, d_j>`` over normalised projected token vectors."""

    kind = "late-interaction"

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: Any,
        arch: ArchSpec,
        model_id: str,
        weights_hash: str,
        projection: nn.Linear,
        settings: LateInteractionSettings | None = None,
        max_length: int = 256,
        device: str = "cpu",
    ) -> None:
        super().__init__(model, tokenizer, arch, model_id, weights_hash, max_length, device)
        self.projection = projection.eval().to(device)
        self.settings = settings or LateInteractionSettings()
        self._query_cache: dict[str, tuple[torch.Tensor, list[str]]] = {}

    @property
    def encoder(self) -> nn.Module:
        return self.model

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "score": "sum over query tokens of max cosine to document tokens",
            "dim": self.projection.out_features,
        }

    def token_vectors(self, hidden: torch.Tensor) -> torch.Tensor:
        """Normalised projected token vectors ``[B, S, dim]``."""
        return F.normalize(self.projection(hidden), p=2, dim=-1)

    def _tokenize_queries(self, queries: Sequence[str]) -> Any:
        s = self.settings
        texts = [s.query_prefix + q for q in queries]
        if not s.do_query_expansion or s.query_length is None:
            return self._tokenize(texts, max_length=s.query_length)
        enc = self.tokenizer(
            texts,
            padding="max_length",
            truncation=True,
            max_length=s.query_length,
            return_tensors="pt",
        )
        expansion = enc["attention_mask"] == 0
        enc["input_ids"][expansion] = self.tokenizer.mask_token_id
        if s.attend_to_expansion_tokens:
            enc["attention_mask"][expansion] = 1
        enc["query_token_mask"] = torch.ones_like(enc["attention_mask"])
        return enc

    @torch.inference_mode()
    def query_vectors(self, query: str) -> tuple[torch.Tensor, list[str]]:
        """A query's scored token vectors ``[n, dim]`` and their tokens (expansions included)."""
        if query not in self._query_cache:
            enc = self._tokenize_queries([query]).to(self.device)
            keep = enc.pop("query_token_mask", enc["attention_mask"])[0].bool()
            vectors = self.token_vectors(self.encoder(**enc)[0])[0][keep]
            tokens = self.tokenizer.convert_ids_to_tokens(enc["input_ids"][0][keep])
            self._query_cache[query] = (vectors, tokens)
        return self._query_cache[query]

    def encode_side(
        self,
        queries: Sequence[str],
        docs: Sequence[str],
        injected: Sequence[Sequence[tuple[int, int]]] | None = None,
        filler: Sequence[Sequence[tuple[int, int]]] | None = None,
    ) -> SideBatch:
        prefix = self.settings.document_prefix
        enc, offsets, rows = self._document_side(
            queries, docs, injected, filler, prefix, self.settings.document_length
        )
        roles = [
            [
                Role.SEP if seq is not None and end <= len(prefix) and role != Role.PAD else role
                for role, seq, (_, end) in zip(
                    row, enc.sequence_ids(i), offsets[i].tolist(), strict=True
                )
            ]
            for i, row in enumerate(rows)
        ]
        query_vecs = [self.query_vectors(q)[0] for q in queries]
        width = max(v.shape[0] for v in query_vecs)
        padded = torch.zeros(len(queries), width, query_vecs[0].shape[-1], device=self.device)
        q_mask = torch.zeros(len(queries), width, device=self.device)
        for i, vec in enumerate(query_vecs):
            padded[i, : vec.shape[0]] = vec
            q_mask[i, : vec.shape[0]] = 1
        return self._side_batch(enc, roles, {"query_vecs": padded, "query_mask": q_mask})

    def similarities(self, hidden: torch.Tensor, batch: SideBatch) -> torch.Tensor:
        """Query-by-document token similarities ``[B, Q, S]``; padded document tokens ``-inf``."""
        docs = self.token_vectors(hidden)
        sims = torch.einsum("bqd,bsd->bqs", batch.context["query_vecs"].to(docs.dtype), docs)
        return sims.masked_fill(~batch.attention_mask.bool().unsqueeze(1), float("-inf"))

    def readout(self, hidden: torch.Tensor, batch: SideBatch) -> torch.Tensor:
        best = self.similarities(hidden, batch).max(dim=-1).values
        return (best * batch.context["query_mask"].to(best.dtype)).sum(-1)

    @torch.inference_mode()
    def token_matches(self, query: str, doc: str) -> list[TokenMatch]:
        """For each scored query token: the document token it matched and its contribution (the
        contributions sum to the pair's score)."""
        batch = self.encode_side([query], [doc])
        sims = self.similarities(self.forward_hidden(batch), batch)[0]
        best, where = sims.max(dim=-1)
        _, q_tokens = self.query_vectors(query)
        d_tokens = self.tokenizer.convert_ids_to_tokens(batch.inputs["input_ids"][0])
        return [
            TokenMatch(i, q_tokens[i], int(where[i]), d_tokens[int(where[i])], float(best[i]))
            for i in range(len(q_tokens))
        ]
