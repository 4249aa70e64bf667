"""The first builder: every text through the whole model, every parameter (or the carriers'
slices) trained for ``spec.steps`` steps — kept for comparison and for encoders the layer-cached
trainer (:mod:`rankscope.tools.organisms.fast`) does not run."""

from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from rankscope.tools.organisms.carriers import head_masks
from rankscope.tools.organisms.fast import loss_scales
from rankscope.tools.organisms.spec import OrganismSpec
from rankscope.tools.organisms.texts import VARIANTS, Group
from rankscope.tools.retrievers.base import Retriever
from rankscope.tools.retrievers.bi_encoder import BiEncoder, pool


def score_groups(retriever: Retriever, groups: list[Group], batch_size: int = 64) -> np.ndarray:
    """Scores ``[groups, variants]`` of every group's texts."""
    queries = [g.query for g in groups for _ in VARIANTS]
    texts = [t for g in groups for t in g.texts]
    scores = retriever.score(queries, texts, batch_size).numpy().astype(float)
    return scores.reshape(len(groups), len(VARIANTS))


def _encode(retriever: BiEncoder, texts: list[str]) -> torch.Tensor:
    enc = retriever._tokenize(texts).to(retriever.device)
    hidden = retriever.encoder(**enc)[0]
    emb = pool(hidden, enc["attention_mask"], retriever.pooling)
    return F.normalize(emb, p=2, dim=-1) if retriever.similarity == "cosine" else emb


def train(
    retriever: BiEncoder,
    spec: OrganismSpec,
    groups: list[Group],
    target: np.ndarray,
    log: Callable[[str], None] | None = None,
) -> list[float]:
    """Fine-tune ``retriever``'s encoder in place towards ``target`` (``[groups, variants]``)."""
    torch.manual_seed(spec.seed)
    rng = random.Random(spec.seed)
    model = retriever.encoder
    masks = head_masks(retriever, spec.carriers) if spec.carriers else {}
    params = []
    for name, p in model.named_parameters():
        p.requires_grad_(not masks or name in masks)
        if p.requires_grad:
            params.append(p)
    opt = torch.optim.AdamW(params, lr=spec.lr, weight_decay=0.0)
    named = dict(model.named_parameters())
    delta_scale, level_var = loss_scales(spec.rules, target)
    losses: list[float] = []
    with torch.enable_grad():
        for step in range(spec.steps):
            rows = rng.sample(range(len(groups)), min(spec.batch_queries, len(groups)))
            queries = [groups[r].query for r in rows]
            texts = [t for r in rows for t in groups[r].texts]
            q = _encode(retriever, queries)
            d = _encode(retriever, texts).view(len(rows), len(VARIANTS), -1)
            s = (q.unsqueeze(1) * d).sum(-1)
            t = torch.as_tensor(target[rows], dtype=s.dtype)
            loss = F.mse_loss(s, t) / level_var + F.mse_loss(s - s[:, :1], t - t[:, :1]) / (
                delta_scale**2
            )
            opt.zero_grad()
            loss.backward()
            for key, mask in masks.items():
                grad = named[key].grad
                if grad is not None:
                    grad.mul_(mask)
            opt.step()
            losses.append(float(loss.detach()))
            if log and (step + 1) % max(1, spec.steps // 5) == 0:
                log(f"  step {step + 1}/{spec.steps}: loss {np.mean(losses[-20:]):.2e}")
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return losses
