"""Zero and mean ablation of heads and blocks on both sides of each pair, and what it does to the
score deltas and to rankings.

Zero ablation replaces a head's output slice (the output projection's input), or a block's write
(``attn``: the output projection's output; ``mlp``: the MLP's last linear's output, bias
included), by zeros. Mean ablation replaces it by its mean over every non-padding token of the
pair set's baseline documents (one vector per site, position-independent).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats

from rankscope.tools.data.types import Pair
from rankscope.tools.interventions.cache import SiteKey, capture
from rankscope.tools.interventions.pairs import pair_batches, with_progress
from rankscope.tools.interventions.patching import (
    DEFAULT_MAX_TOKENS,
    Intervention,
    Values,
    batch_masks,
    check_patch,
    run_cached,
)
from rankscope.tools.retrievers.base import Retriever, Role


@torch.inference_mode()
def site_means(
    retriever: Retriever,
    pairs: Sequence[Pair],
    sites: Iterable[SiteKey],
    batch_size: int = 16,
    progress: bool = False,
) -> dict[SiteKey, torch.Tensor]:
    """Mean activation of each site over all non-padding tokens of the pairs' baselines."""
    sites = sorted(set(sites))
    sums: dict[SiteKey, torch.Tensor] = {}
    count = 0
    batches = pair_batches(retriever, pairs, batch_size)
    for batch in with_progress(batches, len(pairs), "site means", progress):
        run = capture(retriever, batch.base, sites)
        keep = (batch.base.roles != Role.PAD).unsqueeze(-1)
        count += int(keep.sum())
        for key in sites:
            value = (run.site(*key).double() * keep).sum(dim=(0, 1))
            sums[key] = sums[key] + value if key in sums else value
    return {key: (total_ / max(count, 1)).float() for key, total_ in sums.items()}


@dataclass
class AblationScores:
    """Scores of both sides without and with each ablation (rows in pair order)."""

    names: list[str]
    s_base: np.ndarray
    s_pert: np.ndarray
    base_ablated: np.ndarray
    """``[N, n]``"""
    pert_ablated: np.ndarray
    """``[N, n]``"""
    qids: list[str]
    relevance: list[int | None]


def ablate_pairs(
    retriever: Retriever,
    pairs: Sequence[Pair],
    interventions: Sequence[Intervention],
    means: dict[SiteKey, torch.Tensor] | None = None,
    batch_size: int = 16,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    progress: bool = False,
) -> AblationScores:
    """Run every ablation (zero- or mean-valued interventions) on both sides of every pair."""
    for iv in interventions:
        for patch in iv.patches:
            check_patch(retriever, patch)
            if patch.value == "source":
                raise ValueError("ablation patches take the value 'zero' or 'mean'")
    n, k = len(pairs), len(interventions)
    s_base, s_pert = np.zeros(n), np.zeros(n)
    base_abl, pert_abl = np.zeros((n, k)), np.zeros((n, k))
    values = Values(means=means or {})
    starts = {iv.start(retriever.n_layers) for iv in interventions} - {retriever.n_layers}
    batches = pair_batches(retriever, pairs, batch_size)
    for batch in with_progress(batches, n, "ablation", progress):
        masks = batch_masks(batch.roles, interventions)
        for side, plain, ablated in (
            (batch.base, s_base, base_abl),
            (batch.pert, s_pert, pert_abl),
        ):
            run = capture(retriever, side, reuse_layers=starts)
            plain[batch.index] = run.scores.float().cpu().numpy()
            scores = run_cached(retriever, run, interventions, masks, values, max_tokens)
            ablated[batch.index] = scores.numpy()
    return AblationScores(
        names=[iv.name for iv in interventions],
        s_base=s_base,
        s_pert=s_pert,
        base_ablated=base_abl,
        pert_ablated=pert_abl,
        qids=[p.qid for p in pairs],
        relevance=[p.relevance for p in pairs],
    )


def rank_gains(qids: Sequence[str], s_base: np.ndarray, s_pert: np.ndarray) -> np.ndarray:
    """Per pair: how many places the perturbation moves its document up among the baseline
    documents of the same query in the pair set (NaN for queries with one document).

    Rank of the baseline document among the query's baselines minus the rank of the perturbed
    document among the other baselines (ties count as not outranking)."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, qid in enumerate(qids):
        groups[qid].append(i)
    gains = np.full(len(qids), np.nan)
    for members in groups.values():
        if len(members) < 2:
            continue
        idx = np.array(members)
        base = s_base[idx]
        for pos, i in enumerate(idx):
            others = np.delete(base, pos)
            rank_base = 1 + int((others > s_base[i]).sum())
            rank_pert = 1 + int((others > s_pert[i]).sum())
            gains[i] = rank_base - rank_pert
    return gains


def kendall_by_query(qids: Sequence[str], before: np.ndarray, after: np.ndarray) -> float | None:
    """Mean over queries with ≥3 documents of Kendall's tau between two scorings of them."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, qid in enumerate(qids):
        groups[qid].append(i)
    taus = []
    for members in groups.values():
        if len(members) < 3:
            continue
        tau = stats.kendalltau(before[members], after[members]).statistic
        if np.isfinite(tau):
            taus.append(float(tau))
    return float(np.mean(taus)) if taus else None
