"""Circuits: sets of components patched jointly, and what a circuit's claims rest on.

A circuit is a set of components (heads ``L5.H7``, blocks ``L3.mlp`` / ``L3.attn``, positions
``L3.resid@injected``) patched *together* in one run: one
:class:`~rankscope.tools.interventions.patching.Intervention` holding one
:class:`~rankscope.tools.interventions.patching.Patch` per member, computed exactly by the cached
engine (:func:`~rankscope.tools.interventions.patching.patch_pairs`).

Its faithfulness is the fraction of the behaviour's score change the set restores
(sufficiency: denoising, the perturbed run's activations of the set patched into the baseline
run) or removes (necessity: noising, the baseline activations of the set patched into the
perturbed run), per query as a ratio of means (:func:`~rankscope.tools.interventions.metrics.
fraction_by_query`): ``(m(circuit) − m(base)) / (m(pert) − m(base))`` summed over the query's
pairs. Everything here is exact except the optional attribution ranking, which only orders the
candidates (nothing a verdict reads comes from it).

This module holds the pieces the ``circuit`` tool composes: the component pool
(:func:`pool_components`), joint patching of named sets (:func:`measure_sets`), the ranking as a
ratio of means over all pairs (:func:`rank_components`) and its stability over resampled queries
(:func:`selection_frequency`), seeded random sets of the same size (:func:`random_sets`) and the
circuit's percentile and p-value among them (:func:`random_test`), per-query differences
(:func:`difference_by_query`, :func:`mean_by_query`), the alternatives of the same size
(:func:`alternatives`) and the area under a curve over circuit sizes (:func:`curve_area`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from rankscope.tools.data.types import Pair
from rankscope.tools.interventions.metrics import fraction_by_query, pooled_fraction, restored
from rankscope.tools.interventions.patching import (
    Intervention,
    PatchDirection,
    PatchScores,
    parse_target,
    patch_pairs,
)
from rankscope.tools.retrievers.base import Component, Retriever
from rankscope.tools.stats import QueryValue

Pool = Literal["heads", "heads_mlp"]
EMPTY = "(empty set)"
"""The name of the empty set (a one-member circuit less its member: the baseline run)."""


def pool_components(retriever: Retriever, pool: Pool) -> list[str]:
    """The candidate components: every attention head (``L{l}.H{h}``) of the model's layers
    with self-attention heads, and with ``heads_mlp`` every MLP block (``L{l}.mlp``) too."""
    out = [
        Component(layer, "heads", head).name
        for layer in retriever.site_layers("heads")
        for head in range(retriever.n_heads)
    ]
    if pool == "heads_mlp":
        out += [Component(layer, "mlp").name for layer in retriever.site_layers("mlp")]
    return out


def all_heads(retriever: Retriever) -> list[str]:
    """Every self-attention head of the model."""
    return pool_components(retriever, "heads")


def set_name(members: Sequence[str]) -> str:
    """``L1.H1+L1.H2`` (the members in the order given); :data:`EMPTY` for none."""
    return "+".join(members) if members else EMPTY


def joint(members: Sequence[str], name: str | None = None) -> Intervention:
    """One intervention patching every member together (source values)."""
    if not members:
        raise ValueError("a joint intervention needs at least one member")
    return Intervention(name or set_name(members), tuple(parse_target(m) for m in members))


@dataclass
class SetFractions:
    """The score change each named set restores (denoising) or removes (noising) on each pair,
    and the behaviour's change ``Δ = s_pert − s_base`` of each pair."""

    names: list[str]
    numerators: np.ndarray
    """``[N, n]`` signed like Δ (see :func:`~rankscope.tools.interventions.metrics.restored`)."""
    deltas: np.ndarray
    qids: list[str]
    s_base: np.ndarray
    s_pert: np.ndarray

    @classmethod
    def from_scores(cls, scores: PatchScores) -> SetFractions:
        return cls(
            names=list(scores.names),
            numerators=restored(scores.s_base, scores.s_pert, scores.s_patched, scores.direction),
            deltas=np.asarray(scores.s_pert - scores.s_base, dtype=float),
            qids=list(scores.qids),
            s_base=np.asarray(scores.s_base, dtype=float),
            s_pert=np.asarray(scores.s_pert, dtype=float),
        )

    def column(self, name: str) -> int:
        return self.names.index(name)

    def per_query(self, name: str) -> list[QueryValue]:
        """The per-query fraction of set ``name`` (ratio of means over the query's pairs); the
        empty set restores nothing (0 for every query with a change)."""
        if name == EMPTY:
            return [
                QueryValue(qid=v.qid, n_pairs=v.n_pairs, value=0.0)
                for v in fraction_by_query(self.qids, [0.0] * len(self.qids), self.deltas.tolist())
            ]
        j = self.column(name)
        return fraction_by_query(self.qids, self.numerators[:, j].tolist(), self.deltas.tolist())

    def mean(self, name: str) -> float:
        """The mean over queries of :meth:`per_query` (NaN when no query has a change)."""
        values = [v.value for v in self.per_query(name)]
        return float(np.mean(values)) if values else float("nan")

    def pooled(self) -> np.ndarray:
        """``[n]`` the ratio of means over every pair (used to rank)."""
        return pooled_fraction(self.numerators, self.deltas)


def measure_sets(
    retriever: Retriever,
    pairs: Sequence[Pair],
    sets: Mapping[str, Sequence[str]],
    direction: PatchDirection,
    batch_size: int = 16,
    progress: bool = False,
    patcher: Callable[..., Any] | None = None,
) -> SetFractions:
    """Patch each named set of components jointly on every pair (exact, cached engine;
    ``patcher`` replaces :func:`patch_pairs`, same signature, e.g. a sharded engine). The
    empty set is not run (it restores nothing by definition)."""
    interventions = [joint(members, name) for name, members in sets.items() if members]
    scores = (patcher or patch_pairs)(
        retriever,
        list(pairs),
        interventions,
        direction=direction,
        engine="cached",
        batch_size=batch_size,
        progress=progress,
    )
    return SetFractions.from_scores(scores)


def rank_components(fractions: SetFractions) -> list[tuple[str, float]]:
    """The single components best first by their ratio of means over all pairs (the sum of the
    score change each restores over the sum of Δ: one query with a tiny change cannot put an
    irrelevant component first); components without a value last."""
    pooled = fractions.pooled()
    order = sorted(
        range(len(fractions.names)),
        key=lambda j: (not np.isfinite(pooled[j]), -pooled[j] if np.isfinite(pooled[j]) else 0.0),
    )
    return [(fractions.names[j], float(pooled[j])) for j in order]


def selection_frequency(
    fractions: SetFractions, k: int, n_resamples: int, seed: int = 0
) -> dict[str, float]:
    """How often each component is among the top ``k`` of :func:`rank_components` when the
    queries are resampled with replacement (a cluster bootstrap: a query's pairs move together),
    over ``n_resamples`` resamples drawn with ``numpy.random.default_rng(seed)``."""
    names = fractions.names
    counts = dict.fromkeys(names, 0)
    if n_resamples <= 0 or k <= 0:
        return {name: float("nan") for name in names}
    queries = list(dict.fromkeys(fractions.qids))
    index = {q: i for i, q in enumerate(queries)}
    of_pair = np.array([index[q] for q in fractions.qids])
    rng = np.random.default_rng(seed)
    for _ in range(n_resamples):
        drawn = rng.integers(0, len(queries), size=len(queries))
        weights = np.bincount(drawn, minlength=len(queries))[of_pair].astype(float)
        den = float(weights @ fractions.deltas)
        if den == 0.0:
            continue
        values = (weights @ fractions.numerators) / den
        values = np.where(np.isfinite(values), values, -np.inf)
        for j in np.argsort(-values, kind="stable")[:k]:
            counts[names[j]] += 1
    return {name: counts[name] / n_resamples for name in names}


def random_sets(pool: Sequence[str], k: int, n: int, seed: int) -> list[tuple[str, ...]]:
    """``n`` random sets of ``k`` distinct components of ``pool`` (each drawn uniformly, members
    in pool order), from ``numpy.random.default_rng([seed, k])``: the same sets for the same
    seed and size, whatever else the run does."""
    if not 1 <= k <= len(pool):
        raise ValueError(f"a random set of {k} components needs a pool of at least {k}")
    rng = np.random.default_rng([seed, k])
    out = []
    for _ in range(n):
        chosen = np.sort(rng.choice(len(pool), size=k, replace=False))
        out.append(tuple(pool[i] for i in chosen))
    return out


def random_test(value: float, random_values: Sequence[float]) -> tuple[float, float]:
    """(percentile, p-value) of ``value`` among the random sets' values: the percentile is the
    share (in %) of random sets strictly below it; the p-value ``(1 + #{random ≥ value}) /
    (1 + N)`` is the permutation-style one-sided p-value of "no better than a random set"."""
    rand = np.asarray(random_values, dtype=float)
    if rand.size == 0 or not np.isfinite(value):
        return float("nan"), float("nan")
    below = float(np.mean(rand < value)) * 100.0
    p = (1.0 + float(np.sum(rand >= value))) / (1.0 + rand.size)
    return below, p


def difference_by_query(a: Sequence[QueryValue], b: Sequence[QueryValue]) -> list[QueryValue]:
    """``a − b`` per query, on the queries both have (``n_pairs`` from ``a``), in ``a``'s order."""
    other = {v.qid: v.value for v in b}
    return [
        QueryValue(qid=v.qid, n_pairs=v.n_pairs, value=v.value - other[v.qid])
        for v in a
        if v.qid in other
    ]


def mean_by_query(sets: Sequence[Sequence[QueryValue]]) -> list[QueryValue]:
    """Per query, the mean of its values over the sets that have it (order of first appearance;
    ``n_pairs`` from the first set that has the query)."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    pairs: dict[str, int] = {}
    for values in sets:
        for v in values:
            sums[v.qid] = sums.get(v.qid, 0.0) + v.value
            counts[v.qid] = counts.get(v.qid, 0) + 1
            pairs.setdefault(v.qid, v.n_pairs)
    return [QueryValue(qid=q, n_pairs=pairs[q], value=sums[q] / counts[q]) for q in sums]


def alternatives(ranking: Sequence[str], k: int) -> list[tuple[str, ...]]:
    """Sets of ``k`` components other than the top ``k`` of ``ranking``, from the next-ranked:
    the disjoint set of ranks ``k+1 … 2k`` (when the ranking is long enough), else the top
    ``k − m`` less their last members with the ``m`` next-ranked in their place; and each top-k
    set with one member swapped for the ``(k+1)``-th component. Empty when nothing is ranked
    after the top ``k``."""
    top, rest = list(ranking[:k]), list(ranking[k:])
    if not rest or k < 1:
        return []
    nxt = rest[:k]
    out: list[tuple[str, ...]] = [tuple(top[: k - len(nxt)] + nxt)]
    for i in range(k):
        swapped = tuple(top[:i] + top[i + 1 :] + [rest[0]])
        if set(swapped) != set(out[0]):
            out.append(swapped)
    return out


def curve_area(values: Sequence[float]) -> float:
    """The area under a curve over circuit sizes k = 0 … K (``values[k-1]`` at k; 0 at k = 0)
    with sizes rescaled to [0, 1] (x = k / K), by the trapezoid rule (MIB's CPR reads the same
    area on the sufficiency curve). NaN when a value is missing."""
    y = np.array([0.0, *values], dtype=float)
    if y.size < 2 or not np.all(np.isfinite(y)):
        return float("nan")
    x = np.linspace(0.0, 1.0, y.size)
    return float(np.sum((y[1:] + y[:-1]) / 2.0 * np.diff(x)))
