"""(baseline, perturbed) pairs as aligned model inputs, streamed in length-sorted batches.

Patching copies activations position by position between the baseline run and the perturbed run,
so both sides of a pair must tokenise to the same positions: :func:`pair_batches` checks it and
raises :class:`~rankscope.tools.data.errors.AlignmentError` naming the pair otherwise.

Token positions are grouped by role (:data:`POSITION_GROUPS`). A position's role is the perturbed
side's role, except that a position holding filler in the baseline is ``filler`` unless the
perturbed side injected a token there: for an append perturbation the appended term's positions
are ``injected`` (the baseline holds filler there).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from rankscope.tools.data.errors import AlignmentError
from rankscope.tools.data.types import Pair
from rankscope.tools.retrievers.base import Retriever, Role, SideBatch

POSITION_GROUPS: dict[str, tuple[Role, ...]] = {
    "cls": (Role.CLS,),
    "query": (Role.QUERY,),
    "doc": (Role.DOC,),
    "qterm": (Role.QTERM,),
    "injected": (Role.INJECTED,),
    "filler": (Role.FILLER,),
    "sep": (Role.SEP,),
}
"""Named groups of token positions (by role) that patching and attention tools select."""

ALL_POSITIONS = "all"


@dataclass
class PairBatch:
    """One batch of pairs: both sides tokenised to the same positions, and what they came from."""

    index: np.ndarray
    """Positions of these pairs in the pair sequence the batch was cut from."""
    base: SideBatch
    pert: SideBatch
    roles: torch.Tensor
    """``[B, S]`` role code of each position (see the module docstring)."""
    relevance: list[int | None]

    def __len__(self) -> int:
        return len(self.index)

    def side(self, name: str) -> SideBatch:
        """The ``"baseline"`` or ``"perturbed"`` side."""
        if name == "baseline":
            return self.base
        if name == "perturbed":
            return self.pert
        raise ValueError(f"unknown side {name!r}; use 'baseline' or 'perturbed'")


def merged_roles(base_roles: torch.Tensor, pert_roles: torch.Tensor) -> torch.Tensor:
    """Role of each position of an aligned pair (the module docstring gives the rule)."""
    filler = (base_roles == Role.FILLER) & (pert_roles != Role.INJECTED)
    return torch.where(filler, torch.full_like(pert_roles, int(Role.FILLER)), pert_roles)


def position_mask(roles: torch.Tensor, selector: str) -> torch.Tensor:
    """``[B, S]`` bool mask of the positions ``selector`` names.

    ``selector`` is ``"all"`` (every position, padding included, so that patching the whole
    residual stream reproduces the source run exactly), a group of :data:`POSITION_GROUPS`, or
    ``"p<i>"`` (the token at index ``i``; empty where the sequence is shorter).
    """
    if selector == ALL_POSITIONS:
        return torch.ones_like(roles, dtype=torch.bool)
    if selector in POSITION_GROUPS:
        codes = torch.tensor([int(r) for r in POSITION_GROUPS[selector]], device=roles.device)
        return torch.isin(roles, codes)
    if selector.startswith("p") and selector[1:].isdigit():
        mask = torch.zeros_like(roles, dtype=torch.bool)
        index = int(selector[1:])
        if index < roles.shape[1]:
            mask[:, index] = roles[:, index] != Role.PAD
        return mask
    raise ValueError(
        f"unknown position selector {selector!r}: use 'all', one of "
        f"{', '.join(POSITION_GROUPS)}, or p<index>"
    )


def token_lengths(retriever: Retriever, pairs: Sequence[Pair]) -> np.ndarray:
    """Token count of each pair's perturbed text (for sorting pairs into batches)."""
    if not pairs:
        return np.zeros(0, dtype=int)
    ids = retriever.tokenizer(
        [p.perturbed for p in pairs], add_special_tokens=False, verbose=False
    )["input_ids"]
    return np.array([len(x) for x in ids], dtype=int)


def encode_pairs(retriever: Retriever, pairs: Sequence[Pair], index: np.ndarray) -> PairBatch:
    """Tokenise both sides of ``pairs``; raise AlignmentError when their positions differ."""
    queries = [p.query for p in pairs]
    base = retriever.encode_side(
        queries, [p.baseline for p in pairs], filler=[list(p.filler) for p in pairs]
    )
    pert = retriever.encode_side(
        queries,
        [p.perturbed for p in pairs],
        injected=[list(p.injected) for p in pairs],
        filler=[list(p.perturbed_filler) for p in pairs],
    )
    b_ids, p_ids = base.inputs["input_ids"], pert.inputs["input_ids"]
    same_shape = b_ids.shape == p_ids.shape
    if not same_shape or not torch.equal(base.attention_mask, pert.attention_mask):
        bad = [
            f"{p.qid}/{p.docno}"
            for i, p in enumerate(pairs)
            if not same_shape or not torch.equal(base.attention_mask[i], pert.attention_mask[i])
        ]
        raise AlignmentError(
            f"{len(bad)} pair(s) tokenise to different lengths on the baseline and perturbed side "
            f"(first: {bad[0] if bad else '?'}); patching needs length-aligned pairs: build them "
            "with tools.data.alignment.align_pairs"
        )
    return PairBatch(
        index=index,
        base=base,
        pert=pert,
        roles=merged_roles(base.roles, pert.roles),
        relevance=[p.relevance for p in pairs],
    )


def pair_batches(
    retriever: Retriever,
    pairs: Sequence[Pair],
    batch_size: int,
    sort: bool = True,
    max_tokens: int | None = None,
) -> Iterator[PairBatch]:
    """Batches of at most ``batch_size`` pairs (and, with ``max_tokens``, at most that many
    padded tokens, one pair at least); sorted by token length so that little padding is run."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    lengths = token_lengths(retriever, pairs) + 2
    order = np.argsort(lengths, kind="stable") if sort else np.arange(len(pairs))
    start = 0
    while start < len(order):
        stop = start + 1
        longest = lengths[order[start]]
        while stop < len(order) and stop - start < batch_size:
            longest = max(longest, lengths[order[stop]])
            if max_tokens is not None and (stop - start + 1) * longest > max_tokens:
                break
            stop += 1
        index = order[start:stop]
        yield encode_pairs(retriever, [pairs[i] for i in index], index)
        start = stop


def with_progress(
    batches: Iterable[PairBatch], n_pairs: int, desc: str, progress: bool
) -> Iterator[PairBatch]:
    """``batches`` with a progress bar counting pairs (shown when ``progress``)."""
    with tqdm(total=n_pairs, desc=desc, unit="pair", disable=not progress) as bar:
        for batch in batches:
            yield batch
            bar.update(len(batch))
