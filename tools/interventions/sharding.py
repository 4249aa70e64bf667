"""Sharded exact patching grids on Ray: the interventions split across actors that each load the
model once; the per-pair scores merged on the driver equal the in-process run.

Each actor runs :func:`~rankscope.tools.interventions.patching.patch_pairs` — the same exact
engine, on the same pairs in the same batches — over its share of the interventions, and returns
plain arrays. The driver puts each shard's columns back in place: a column depends only on its own
intervention and pair batch, so the merged scores equal the in-process ones up to floating-point
reassociation (below 1e-6; a patched pass may hold a different number of intervention copies).
Interventions are dealt round-robin, so every shard gets heads of every layer and the same work
(a patched run starts at its layer: early layers cost more).

Actors never write to a database or to artifact files: the caller (the driver) gets a
:class:`~rankscope.tools.interventions.patching.PatchScores` and records it as it records an
in-process run. Ray is optional: it is imported when a :class:`ShardedPatcher` starts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from rankscope.tools.data.types import Pair
from rankscope.tools.interventions.patching import (
    DEFAULT_MAX_TOKENS,
    Engine,
    Intervention,
    PatchDirection,
    PatchScores,
    patch_pairs,
)
from rankscope.tools.retrievers.base import Retriever

RAY_MISSING = "sharded patching runs on Ray, which is not installed: pip install 'rankscope[ray]'"


def deal(n: int, shards: int) -> list[list[int]]:
    """Indices ``0..n-1`` dealt round-robin into at most ``shards`` non-empty shards."""
    if shards < 1:
        raise ValueError(f"shards must be at least 1, got {shards}")
    return [list(range(start, n, shards)) for start in range(min(shards, n))]


class PatchWorker:
    """The body of one Ray actor: a retriever loaded once, patching what it is sent."""

    def __init__(self, model: str | None, device: str, options: dict[str, Any]) -> None:
        import torch

        from rankscope.tools.retrievers import load_retriever

        torch.set_num_threads(1)
        self.retriever = load_retriever(model, device=device, **options)

    def patch(
        self,
        pairs: Sequence[Pair],
        interventions: Sequence[Intervention],
        direction: PatchDirection,
        engine: Engine,
        batch_size: int,
        max_tokens: int,
    ) -> PatchScores:
        return patch_pairs(
            self.retriever,
            pairs,
            interventions,
            direction=direction,
            engine=engine,
            batch_size=batch_size,
            max_tokens=max_tokens,
        )


def merge(
    parts: Sequence[PatchScores],
    shards: Sequence[Sequence[int]],
    interventions: Sequence[Intervention],
) -> PatchScores:
    """The shards' scores as one :class:`PatchScores`, columns in intervention order (the
    per-pair fields, the same in every shard, are the first shard's)."""
    n, k = len(parts[0].s_base), len(interventions)
    s_patched, ok = np.zeros((n, k)), np.zeros((n, k), dtype=bool)
    for part, columns in zip(parts, shards, strict=True):
        s_patched[:, list(columns)] = part.s_patched
        ok[:, list(columns)] = part.applicable
    return replace(
        parts[0], names=[iv.name for iv in interventions], s_patched=s_patched, applicable=ok
    )


class ShardedPatcher:
    """``shards`` Ray actors, each holding the model, for one or more patching grids.

    :meth:`patch_pairs` has the signature of the in-process
    :func:`~rankscope.tools.interventions.patching.patch_pairs` (the retriever argument is the
    driver's copy, used for nothing but the interface), so a tool can use either. Uses the
    running Ray if one is initialised, else starts a local one with ``shards`` CPUs (or connects
    to ``ray_address``); :meth:`close` ends the actors (and a Ray started here)."""

    def __init__(
        self,
        model: str | None,
        shards: int,
        *,
        device: str = "cpu",
        model_options: dict[str, Any] | None = None,
        ray_address: str | None = None,
    ) -> None:
        try:
            import ray
        except ImportError as err:
            raise RuntimeError(RAY_MISSING) from err
        if shards < 1:
            raise ValueError(f"shards must be at least 1, got {shards}")
        self._ray = ray
        self.actors: list[Any] = []
        self._started = not ray.is_initialized()
        if self._started:
            if ray_address:
                ray.init(address=ray_address, log_to_driver=False)
            else:
                ray.init(num_cpus=shards, include_dashboard=False, log_to_driver=False)
        cpus = int(ray.cluster_resources().get("CPU", 0))
        if shards > cpus:
            self.close()
            raise ValueError(
                f"{shards} shards need {shards} CPUs but the Ray cluster has {cpus}: the extra "
                f"actors would wait forever; use --shards {max(cpus, 1)} or fewer"
            )
        actor = ray.remote(num_cpus=1)(PatchWorker)
        self.actors = [
            actor.remote(model, device, dict(model_options or {})) for _ in range(shards)
        ]

    def __enter__(self) -> ShardedPatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ready(self) -> None:
        """Wait until every actor has loaded the model."""
        self._ray.get([a.__ray_ready__.remote() for a in self.actors])

    def patch_pairs(
        self,
        retriever: Retriever | None,
        pairs: Sequence[Pair],
        interventions: Sequence[Intervention],
        direction: PatchDirection = "denoising",
        engine: Engine = "cached",
        batch_size: int = 16,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        progress: bool = False,
    ) -> PatchScores:
        """Every intervention on every pair, the interventions split across the actors."""
        if not interventions:
            raise ValueError("no interventions to patch")
        shards = deal(len(interventions), len(self.actors))
        pairs = list(pairs)
        refs = [
            actor.patch.remote(
                pairs,
                [interventions[i] for i in columns],
                direction,
                engine,
                batch_size,
                max_tokens,
            )
            for actor, columns in zip(self.actors, shards, strict=False)
        ]
        parts = self._ray.get(refs)
        return merge(parts, shards, interventions)

    def close(self) -> None:
        for actor in self.actors:
            self._ray.kill(actor)
        self.actors = []
        if self._started:
            self._ray.shutdown()
            self._started = False
