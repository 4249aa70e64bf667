"""Argument pieces and helpers shared by the experiment tools."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from rankscope.tools.contract import ToolArgs, ToolContext
from rankscope.tools.data.types import PairSet

Split = Literal["all", "discovery", "holdout"]


class PairArgs(ToolArgs):
    """Which (baseline, perturbed) pairs a tool runs on."""

    axiom: str = Field("TFC1", description="Axiom or manipulation, e.g. TFC1, TFC2, TDC, LNC1.")
    variant: str = Field("append", description="Variant of the axiom, e.g. append, prepend.")
    split: Split = Field(
        "discovery",
        description="Queries to use: 'discovery' for a first test, 'holdout' (disjoint queries) to "
        "replicate, 'all' for both.",
    )
    n_pairs: int | None = Field(64, ge=1, le=100_000, description="Pairs sampled with the seed.")
    holdout_fraction: float = Field(0.5, gt=0.0, lt=1.0)
    split_seed: int = Field(0, description="Seed of the query split (keep it fixed to replicate).")


def load_pairs(ctx: ToolContext, args: PairArgs, aligned: bool = True) -> PairSet:
    """The pairs a tool runs on: built from the context's data, split by query, sampled, aligned."""
    return ctx.data.pairs(
        args.axiom,
        args.variant,
        tokenizer=ctx.retriever.tokenizer if aligned else None,
        split=args.split,
        n=args.n_pairs,
        seed=args.seed,
        split_seed=args.split_seed,
        holdout_fraction=args.holdout_fraction,
        max_length=ctx.retriever.max_length,
    )
