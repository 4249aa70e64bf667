"""Circuit: which set of components together computes a behaviour?

Effects in bi-encoders are usually spread over several components; one head at a time then
answers "nothing". This tool tests a *set* patched jointly, on one split of the pairs:

1. **Ranking** (``members=None``, discovery split only): every component of the pool patched
   alone (``ranking="exact"``: the exact patching grid; ``"attribution"``: attribution patching,
   a fast first pass that only orders the candidates), ranked by the ratio of means over all
   pairs (sum of the score change each restores over the sum of Δ) — not a mean of per-query
   ratios, where one query with a tiny change can put an irrelevant head first. With
   ``members`` given (the ranking fixed on discovery), nothing is re-ranked.
2. **Faithfulness curve**: the top-k set patched jointly for k = 1 … ``max_k``, in both
   directions: sufficiency (denoising: the perturbed run's activations of the set into the
   baseline run) and necessity (noising: the baseline activations of the set into the perturbed
   run); per query a fraction of the behaviour's score change (ratio of means), CIs by a
   bootstrap over queries.
3. **Circuit size** ``k``: the given one, else the smallest k whose faithfulness reaches
   ``target`` on this split (``max_k`` when none does: ``smallest_k`` is then None).
4. **Random-set control**: ``n_random`` random sets of k components of the same pool (seeded)
   → their mean faithfulness, the circuit's percentile among them and the p-value
   ``(1 + #{random ≥ circuit}) / (1 + N)``; ``beats_random`` per query is the circuit's
   fraction minus the random sets' mean fraction. ``n_random=0`` runs no control (a claim
   whose control is a call of its own); otherwise at least 100 sets are drawn. The curve's
   5–95 % band at the other sizes uses ``n_random_curve`` sets per size.
5. **Minimality**: each member's leave-one-out drop in faithfulness.
6. **Stability** (identifiability): each member's selection frequency among the top k over
   ``n_stability`` bootstrap resamples of the queries (ranking runs only), and the best other
   set of the same size from the next-ranked components (the disjoint next-k set, or the top
   set with one member swapped for the next one): when its faithfulness comes within
   :data:`AS_FAITHFUL_MARGIN` of the circuit's, the summary says the circuit is one of several
   equally good explanations.
7. **All heads** patched jointly: the share no head carries is 1 − that (what flows through the
   MLPs or straight from the added token into the pooled vector).

Everything a verdict reads is exact (the cached patching engine); the attribution ranking only
chooses candidates.

Metrics (family ``patching_fraction``, null 0, per-query values stored for each estimate):
``faithfulness`` (joint sufficiency of the k-set), ``necessity`` (joint noising fraction),
``beats_random`` (faithfulness − mean random-set faithfulness), ``loo_drop[X]`` (per member);
descriptive: ``k``, ``smallest_k``, ``auc_sufficiency`` and ``auc_necessity`` (areas under the
curves over k/K in [0, 1] with 0 at k = 0; MIB's CPR is the area under the sufficiency curve,
and the area under the necessity curve is MIB's CMD of the complement, which restores
1 − necessity), ``random_mean``, ``random_percentile``, ``random_p_value``, ``stability[X]``,
``alternative_faithfulness``, ``all_heads_faithfulness``, ``n_pairs``, ``n_queries``.

``circuit.json`` (artifact), fields:

- ``schema``: ``"rankscope.circuit/1"``;
- ``behaviour``: ``axiom``, ``variant``, ``split``, ``n_pairs``, ``n_queries``, ``mean_delta``
  (mean Δ = s_pert − s_base, score units);
- ``model``: ``id`` and ``weights_hash`` of the retriever (None when it has none), ``kind``;
- ``pool``, ``ranking`` (``exact``, ``attribution`` or ``given``), ``k``, ``target``,
  ``smallest_k``;
- ``nodes``: one per member, in rank order: ``component``, ``rank`` (1 = first), ``layer``,
  ``site`` (``heads``, ``mlp``, ``attn``, ``resid``), ``head`` (None for a block),
  ``positions`` (``all`` or a role / index selector), ``fraction`` (its own fraction restored
  alone, ratio of means over all pairs; None when the ranking was given), ``loo_drop``
  (faithfulness lost without it) and ``stability`` (selection frequency; None when not ranked);
- ``edges``: ``[]`` (path patching between members is a separate step:
  ``path_patching``);
- ``scores``: ``faithfulness``, ``necessity``, ``beats_random`` (each ``value``, ``ci_low``,
  ``ci_high``, ``n_queries``), ``random_mean``, ``random_percentile``, ``random_p_value``,
  ``n_random``, ``auc_sufficiency``, ``auc_necessity``, ``all_heads_faithfulness``,
  ``alternative`` (``members``, ``faithfulness``, ``as_faithful``) or None;
- ``curve``: the rows of the ``curve`` table.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from rankscope.tools.catalog.common import PairArgs, load_pairs
from rankscope.tools.contract import ArtifactFile, Tool, ToolContext, ToolResult
from rankscope.tools.interventions.attribution import attribute_pairs
from rankscope.tools.interventions.circuits import (
    EMPTY,
    Pool,
    SetFractions,
    all_heads,
    alternatives,
    curve_area,
    difference_by_query,
    joint,
    mean_by_query,
    measure_sets,
    pool_components,
    random_sets,
    random_test,
    rank_components,
    selection_frequency,
    set_name,
)
from rankscope.tools.interventions.patching import check_patch, parse_target, patch_pairs
from rankscope.tools.metric_keys import (
    MetricCatalogue,
    MetricSpec,
    declare,
    estimate,
    metric_key,
    per_component,
    scalar,
)
from rankscope.tools.registry import register
from rankscope.tools.retrievers.base import Component
from rankscope.tools.stats import QueryValue, bootstrap_ci

AS_FAITHFUL_MARGIN = 0.05
"""An alternative set whose faithfulness comes within this of the circuit's is "as faithful"
(the default SESOI of the ``patching_fraction`` family)."""
MIN_RANDOM = 100
"""The fewest random sets a random-set control draws (p-values down to 1/101)."""
FAMILY = "patching_fraction"
UNIT = "fraction of the behaviour's score change (1 = all of it)"
SUMMARY_ROWS = 5
RANDOM_METRICS = ("beats_random", "random_mean", "random_percentile", "random_p_value")
"""The metrics of the random-set control (not produced with n_random=0)."""


def _fraction(meaning: str, spec: MetricSpec) -> MetricSpec:
    return estimate(spec, family=FAMILY, meaning=meaning, unit=UNIT)


CIRCUIT_METRICS: MetricCatalogue = declare(
    _fraction(
        "joint sufficiency of the k-set: the fraction of the behaviour's score change restored "
        "when the perturbed run's activations of all k members are patched together into the "
        "baseline run; per query a ratio of means over its pairs, the value the mean over queries",
        scalar("faithfulness", ci=True),
    ),
    _fraction(
        "joint necessity of the k-set: the fraction of the behaviour's score change removed "
        "when the baseline run's activations of all k members are patched together into the "
        "perturbed run; per query a ratio of means, the value the mean over queries",
        scalar("necessity", ci=True),
    ),
    _fraction(
        "the circuit's faithfulness minus the mean faithfulness of n_random random sets of the "
        "same size from the same pool, per query; the value the mean over queries",
        scalar("beats_random", ci=True),
    ),
    _fraction(
        "minimality: the faithfulness lost when the member is left out of the k-set (the "
        "circuit's per-query fraction minus that of the set without it)",
        per_component("loo_drop", ci=True),
    ),
    "k",
    "smallest_k",
    "auc_sufficiency",
    "auc_necessity",
    "random_mean",
    "random_percentile",
    "random_p_value",
    per_component("stability"),
    "alternative_faithfulness",
    "all_heads_faithfulness",
    "n_pairs",
    "n_queries",
).describe(
    k=("the circuit size tested (given, else smallest_k, else max_k)", "components"),
    smallest_k=(
        "the smallest k whose faithfulness reaches target on this split (None: none up to max_k)",
        "components",
    ),
    auc_sufficiency="area under the sufficiency curve over k/K in [0, 1], 0 at k = 0 (MIB's CPR)",
    auc_necessity="area under the necessity curve over k/K in [0, 1], 0 at k = 0 (MIB's CMD of "
    "the complement)",
    random_mean=("mean faithfulness of the random sets of size k", UNIT),
    random_percentile=("share of random sets of size k below the circuit's faithfulness", "%"),
    random_p_value="(1 + #random sets at least as faithful) / (1 + n_random): the tool's own "
    "p-value against random sets (for readers)",
    stability=(
        "share of bootstrap resamples of the discovery queries in which the member is ranked "
        "among the top k",
        "share of resamples",
    ),
    alternative_faithfulness=(
        "faithfulness of the best other set of size k from the next-ranked components",
        UNIT,
    ),
    all_heads_faithfulness=(
        "faithfulness of all attention heads patched jointly (1 − this: what no head carries)",
        UNIT,
    ),
    n_pairs=("pairs run", "pairs"),
    n_queries=("queries with a change (the unit of analysis)", "queries"),
)


class CircuitArgs(PairArgs):
    members: list[str] | None = Field(
        None,
        description="An ordered candidate ranking fixed in advance (best first), e.g. ['L5.H7', "
        "'L5.H3', 'L4.mlp', 'L3.resid@injected']; None = rank the pool on this run's split, "
        "allowed only on split='discovery' (the ranking must come from discovery queries).",
    )
    pool: Pool = Field(
        "heads",
        description="Components to rank and to draw random sets from: 'heads' (every attention "
        "head) or 'heads_mlp' (heads and MLP blocks).",
    )
    ranking: Literal["exact", "attribution"] = Field(
        "exact",
        description="How members=None ranks the pool: 'exact' (each component patched alone) "
        "or 'attribution' (attribution patching, a fast approximate first pass; only the order "
        "comes from it, every reported number is exact).",
    )
    max_k: int = Field(10, ge=1, le=128, description="Largest circuit size on the curve.")
    k: int | None = Field(
        None,
        ge=1,
        le=128,
        description="Circuit size under test; None = the smallest k whose faithfulness reaches "
        "target on this split (max_k when none does).",
    )
    target: float = Field(
        0.6, gt=0.0, le=1.0, description="Pre-registered faithfulness the circuit size aims at."
    )
    n_random: int = Field(
        100,
        ge=0,
        le=10_000,
        description="Random sets of size k (seeded) for the control, at least 100; 0 = no "
        "control (beats_random and random_* are then not produced).",
    )
    n_random_curve: int = Field(
        20,
        ge=0,
        le=1000,
        description="Random sets per other size for the curve's random band (0: band at k only).",
    )
    n_stability: int = Field(
        20, ge=0, le=1000, description="Bootstrap resamples of the queries for selection frequency."
    )
    batch_size: int = Field(16, ge=1, le=1024, description="Pairs per batch.")
    confidence: float = Field(0.95, gt=0.5, lt=1.0, description="Bootstrap CI level.")

    @model_validator(mode="after")
    def _check(self) -> CircuitArgs:
        if self.members is None and self.split != "discovery":
            raise ValueError(
                f"members=None ranks the pool on this run's split, which must be "
                f"'discovery', not {self.split!r}: the ranking must come from discovery "
                "queries; pass the ranking found there as members to run on "
                f"{self.split!r}"
            )
        if self.k is None and self.split != "discovery":
            raise ValueError(
                f"k=None chooses the circuit size on this run's split, which must be "
                f"'discovery', not {self.split!r}: a size chosen on held-out queries would be "
                "the one that reaches the target there; pass the k found on discovery"
            )
        if self.members is not None:
            if not self.members:
                raise ValueError("members is empty: name at least one component, or leave it out")
            for name in self.members:
                parse_target(name)
            repeated = sorted({m for m in self.members if self.members.count(m) > 1})
            if repeated:
                raise ValueError(f"members names a component twice: {repeated}")
            if self.k is not None and self.k > len(self.members):
                raise ValueError(f"k={self.k} is larger than the {len(self.members)} members")
        if 0 < self.n_random < MIN_RANDOM:
            raise ValueError(
                f"n_random={self.n_random}: a random-set control needs at least {MIN_RANDOM} "
                "sets (or 0 for none)"
            )
        if self.k is not None and self.k > self.max_k:
            raise ValueError(f"k={self.k} is larger than max_k={self.max_k}")
        if 0 < self.n_random < 100:
            raise ValueError(
                f"n_random={self.n_random}: a random-set control needs at least 100 sets (or 0 "
                "for none)"
            )
        return self


def _estimate(values: Sequence[QueryValue], confidence: float, seed: int) -> dict[str, Any]:
    data = [v.value for v in values]
    if not data:
        return {"value": None, "ci_low": None, "ci_high": None, "n_queries": 0}
    ci = bootstrap_ci(data, confidence=confidence, seed=seed)
    return {
        "value": float(np.mean(data)),
        "ci_low": _num(ci.ci_low),
        "ci_high": _num(ci.ci_high),
        "n_queries": len(data),
    }


def _num(x: float | None) -> float | None:
    return float(x) if x is not None and np.isfinite(x) else None


def _fmt(x: float | None, spec: str = ".3g") -> str:
    return "n/a" if x is None or not np.isfinite(x) else format(x, spec)


def _ci(est: dict[str, Any]) -> str:
    return f"{_fmt(est['value'])} [{_fmt(est['ci_low'])}, {_fmt(est['ci_high'])}]"


def node(component: str) -> dict[str, Any]:
    """The location fields of a member (``layer``, ``site``, ``head``, ``positions``)."""
    base, _, positions = component.partition("@")
    parsed = Component.parse(base)
    return {
        "component": component,
        "layer": parsed.layer,
        "site": parsed.site,
        "head": parsed.head,
        "positions": positions or "all",
    }


def curve_figure(path: Path, rows: list[dict[str, Any]], k: int, target: float, title: str) -> None:
    """The faithfulness curve: sufficiency and necessity with their CIs, the random sets' mean
    and 5–95 % band, the target and the chosen k."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = np.array([r["k"] for r in rows], dtype=float)

    def col(name: str) -> np.ndarray:
        return np.array([np.nan if r.get(name) is None else r[name] for r in rows], dtype=float)

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    band_low, band_high = col("random_p05"), col("random_p95")
    ok = np.isfinite(band_low) & np.isfinite(band_high)
    if ok.any():
        # a bar at each k with random sets (a band between them): one k alone stays visible
        ax.vlines(ks[ok], band_low[ok], band_high[ok], color="0.75", lw=8, zorder=0)
        ax.fill_between(
            ks[ok], band_low[ok], band_high[ok], color="0.85", label="random sets, 5–95 %"
        )
        ax.plot(
            ks[ok],
            col("random_mean")[ok],
            color="0.45",
            ls=":",
            marker="_",
            ms=10,
            label="random sets, mean",
        )
    for name, colour, label in (
        ("sufficiency", "tab:blue", "sufficiency (denoising)"),
        ("necessity", "tab:orange", "necessity (noising)"),
    ):
        y, low, high = col(name), col(f"{name}_ci_low"), col(f"{name}_ci_high")
        err = np.vstack([np.nan_to_num(y - low), np.nan_to_num(high - y)])
        ax.errorbar(ks, y, yerr=np.abs(err), color=colour, marker="o", ms=3, capsize=2, label=label)
    ax.axhline(target, color="tab:green", ls="--", lw=1, label=f"target {target:g}")
    ax.axvline(k, color="0.3", lw=0.8)
    ax.set_xlabel("circuit size k (top-k components)")
    ax.set_ylabel("fraction of the behaviour's score change")
    ax.set_title(title, fontsize=9)
    ax.set_xticks(ks)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def _mean(values: Sequence[QueryValue]) -> float | None:
    """The mean over queries (None when no query has a change)."""
    return float(np.mean([v.value for v in values])) if values else None


@dataclass
class Alternative:
    """Another set of the circuit's size, from the next-ranked components."""

    members: tuple[str, ...]
    values: list[QueryValue]

    @property
    def faithfulness(self) -> float | None:
        return _mean(self.values)


@dataclass
class Measured:
    """Everything one run measured (all exact but the attribution ranking's order)."""

    ranking: list[str]
    single: dict[str, float | None]
    """Each ranked component's own fraction (ratio of means over all pairs; None: given)."""
    singles: SetFractions | None
    prefixes: dict[int, tuple[str, ...]]
    k: int
    smallest_k: int | None
    suff: dict[int, list[QueryValue]]
    nec: dict[int, list[QueryValue]]
    randoms: dict[int, list[tuple[str, ...]]]
    random_values: dict[int, list[list[QueryValue]]]
    without: dict[str, list[QueryValue]]
    """Per member, the per-query faithfulness of the k-set without it."""
    alternatives: list[Alternative]
    all_heads: list[QueryValue]
    stability: dict[str, float]
    n_pairs: int
    mean_delta: float | None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def members(self) -> tuple[str, ...]:
        return self.prefixes[self.k]

    @property
    def big_k(self) -> int:
        return len(self.prefixes)


def _measure(ctx: ToolContext, args: CircuitArgs) -> Measured:
    retriever = ctx.retriever
    pairs = list(load_pairs(ctx, args))
    if not pairs:
        raise ValueError(f"no {args.axiom}/{args.variant} pairs on split {args.split!r}")
    pool = pool_components(retriever, args.pool)
    progress = ctx.progress
    patcher = ctx.patch_engine or patch_pairs
    timings: dict[str, float] = {}

    # the ranking: each pool component alone, by its ratio of means over all pairs
    started = time.perf_counter()
    singles: SetFractions | None = None
    if args.members is None:
        interventions = [joint((c,), c) for c in pool]
        if args.ranking == "attribution":
            scores = attribute_pairs(
                retriever, pairs, interventions, "denoising", args.batch_size, progress
            )
        else:
            scores = patcher(
                retriever,
                pairs,
                interventions,
                direction="denoising",
                engine="cached",
                batch_size=args.batch_size,
                progress=progress,
            )
        singles = SetFractions.from_scores(scores)
        ranked = rank_components(singles)
        ranking = [name for name, _ in ranked]
        single: dict[str, float | None] = {n: _num(v) for n, v in ranked}
    else:
        for name in args.members:
            check_patch(retriever, parse_target(name))
        ranking = list(args.members)
        single = dict.fromkeys(ranking)
    timings["rank_seconds"] = time.perf_counter() - started

    # the curve: the top-k sets jointly in both directions; all heads jointly
    started = time.perf_counter()
    big_k = min(args.max_k, len(ranking))
    prefixes = {k: tuple(ranking[:k]) for k in range(1, big_k + 1)}
    curve_sets = {set_name(m): m for m in prefixes.values()}
    heads = tuple(all_heads(retriever))
    all_name = "all heads: " + set_name(heads)
    suff = measure_sets(
        retriever,
        pairs,
        {**curve_sets, all_name: heads},
        "denoising",
        args.batch_size,
        progress,
        patcher,
    )
    nec = measure_sets(retriever, pairs, curve_sets, "noising", args.batch_size, progress, patcher)
    timings["curve_seconds"] = time.perf_counter() - started
    curve_suff = {k: suff.per_query(set_name(m)) for k, m in prefixes.items()}
    curve_nec = {k: nec.per_query(set_name(m)) for k, m in prefixes.items()}
    reached = [
        k
        for k, values in curve_suff.items()
        if (f := _mean(values)) is not None and f >= args.target
    ]
    smallest_k = min(reached) if reached else None
    k = min(args.k if args.k is not None else (smallest_k or big_k), big_k)
    members = prefixes[k]

    # the controls: random sets, leave-one-out, alternatives (denoising)
    started = time.perf_counter()
    randoms: dict[int, list[tuple[str, ...]]] = {}
    for size in prefixes:
        n = args.n_random if size == k else args.n_random_curve
        if n and size <= len(pool):
            randoms[size] = random_sets(pool, size, n, args.seed)
    loo = {m: tuple(x for x in members if x != m) for m in members}
    alts = alternatives(ranking, k)
    sets: dict[str, tuple[str, ...]] = {}
    for size, drawn in randoms.items():
        for i, chosen in enumerate(drawn):
            sets[f"random{size}.{i}: {set_name(chosen)}"] = chosen
    for m, rest in loo.items():
        sets[f"without {m}: {set_name(rest)}"] = rest
    for i, chosen in enumerate(alts):
        sets[f"alternative{i}: {set_name(chosen)}"] = chosen
    control = measure_sets(retriever, pairs, sets, "denoising", args.batch_size, progress, patcher)
    timings["control_seconds"] = time.perf_counter() - started

    stability: dict[str, float] = {}
    if singles is not None and args.n_stability:
        stability = selection_frequency(singles, k, args.n_stability, args.seed)
    return Measured(
        ranking=ranking,
        single=single,
        singles=singles,
        prefixes=prefixes,
        k=k,
        smallest_k=smallest_k,
        suff=curve_suff,
        nec=curve_nec,
        randoms=randoms,
        random_values={
            size: [control.per_query(f"random{size}.{i}: {set_name(c)}") for i, c in enumerate(d)]
            for size, d in randoms.items()
        },
        # a one-member circuit less its member is the empty set: it restores nothing
        without={
            m: control.per_query(f"without {m}: {set_name(rest)}" if rest else EMPTY)
            for m, rest in loo.items()
        },
        alternatives=[
            Alternative(c, control.per_query(f"alternative{i}: {set_name(c)}"))
            for i, c in enumerate(alts)
        ],
        all_heads=suff.per_query(all_name),
        stability=stability,
        n_pairs=len(pairs),
        mean_delta=float(np.mean(suff.deltas)) if len(suff.deltas) else None,
        timings=timings,
    )


@dataclass
class Estimates:
    """The numbers of one run (fractions; CIs by a bootstrap over queries)."""

    faithfulness: dict[str, Any]
    necessity: dict[str, Any]
    beats_random: dict[str, Any]
    beats_values: list[QueryValue]
    loo_values: dict[str, list[QueryValue]]
    loo: dict[str, dict[str, Any]]
    random_means: dict[int, list[float]]
    """Per size, each random set's faithfulness (mean over queries)."""
    random_mean: float | None
    percentile: float | None
    p_value: float | None
    n_random: int
    alternative: Alternative | None
    alternative_difference: dict[str, Any] | None
    as_faithful: bool | None
    all_heads: float | None
    curve: list[dict[str, Any]]
    auc_sufficiency: float | None
    auc_necessity: float | None


def _estimates(m: Measured, args: CircuitArgs) -> Estimates:
    level, seed = args.confidence, args.seed
    faith_q = m.suff[m.k]
    faith = _estimate(faith_q, level, seed)
    random_means = {
        size: [x for v in values if (x := _mean(v)) is not None]
        for size, values in m.random_values.items()
    }
    at_k = random_means.get(m.k, [])
    beats_q = difference_by_query(faith_q, mean_by_query(m.random_values.get(m.k, [])))
    percentile, p_value = random_test(
        faith["value"] if faith["value"] is not None else float("nan"), at_k
    )
    loo_values = {
        member: difference_by_query(faith_q, without) for member, without in m.without.items()
    }
    best = max(
        (a for a in m.alternatives if a.faithfulness is not None),
        key=lambda a: a.faithfulness or 0.0,
        default=None,
    )
    difference = as_faithful = None
    if best is not None and best.faithfulness is not None:
        difference = _estimate(difference_by_query(faith_q, best.values), level, seed)
        as_faithful = (
            faith["value"] is not None and best.faithfulness >= faith["value"] - AS_FAITHFUL_MARGIN
        )
    curve = []
    for size, chosen in m.prefixes.items():
        s_est, n_est = _estimate(m.suff[size], level, seed), _estimate(m.nec[size], level, seed)
        rand = random_means.get(size, [])
        curve.append(
            {
                "k": size,
                "members": set_name(chosen),
                "added": chosen[-1],
                "sufficiency": s_est["value"],
                "sufficiency_ci_low": s_est["ci_low"],
                "sufficiency_ci_high": s_est["ci_high"],
                "necessity": n_est["value"],
                "necessity_ci_low": n_est["ci_low"],
                "necessity_ci_high": n_est["ci_high"],
                "random_mean": float(np.mean(rand)) if rand else None,
                "random_p05": float(np.quantile(rand, 0.05)) if rand else None,
                "random_p95": float(np.quantile(rand, 0.95)) if rand else None,
                "n_random": len(rand),
            }
        )
    return Estimates(
        faithfulness=faith,
        necessity=_estimate(m.nec[m.k], level, seed),
        beats_random=_estimate(beats_q, level, seed),
        beats_values=beats_q,
        loo_values=loo_values,
        loo={member: _estimate(v, level, seed) for member, v in loo_values.items()},
        random_means=random_means,
        random_mean=float(np.mean(at_k)) if at_k else None,
        percentile=_num(percentile),
        p_value=_num(p_value),
        n_random=len(at_k),
        alternative=best,
        alternative_difference=difference,
        as_faithful=as_faithful,
        all_heads=_mean(m.all_heads),
        curve=curve,
        auc_sufficiency=_num(curve_area([_nan(r["sufficiency"]) for r in curve])),
        auc_necessity=_num(curve_area([_nan(r["necessity"]) for r in curve])),
    )


def _nan(x: float | None) -> float:
    return float("nan") if x is None else float(x)


def _metrics(
    m: Measured, e: Estimates, args: CircuitArgs
) -> tuple[dict[str, float | int | None], dict[str, list[QueryValue]]]:
    metrics: dict[str, float | int | None] = {}
    per_query: dict[str, list[QueryValue]] = {}
    for name, est, values in (
        ("faithfulness", e.faithfulness, m.suff[m.k]),
        ("necessity", e.necessity, m.nec[m.k]),
        ("beats_random", e.beats_random, e.beats_values),
    ):
        metrics[name] = est["value"]
        metrics[f"{name}_ci_low"] = est["ci_low"]
        metrics[f"{name}_ci_high"] = est["ci_high"]
        if values:
            per_query[name] = list(values)
    metrics.update(
        {
            "k": m.k,
            "smallest_k": m.smallest_k,
            "auc_sufficiency": e.auc_sufficiency,
            "auc_necessity": e.auc_necessity,
            "random_mean": e.random_mean,
            "random_percentile": e.percentile,
            "random_p_value": e.p_value,
            "alternative_faithfulness": e.alternative.faithfulness if e.alternative else None,
            "all_heads_faithfulness": e.all_heads,
            "n_pairs": m.n_pairs,
            "n_queries": e.faithfulness["n_queries"],
        }
    )
    for member, est in e.loo.items():
        if not e.loo_values[member]:
            continue
        metrics[metric_key("loo_drop", member)] = est["value"]
        metrics[metric_key("loo_drop", member, "ci_low")] = est["ci_low"]
        metrics[metric_key("loo_drop", member, "ci_high")] = est["ci_high"]
        per_query[metric_key("loo_drop", member)] = e.loo_values[member]
    for member in m.members:
        if member in m.stability:
            metrics[metric_key("stability", member)] = _num(m.stability[member])
    if not args.n_random:
        for name in RANDOM_METRICS:
            for key in (name, f"{name}_ci_low", f"{name}_ci_high"):
                metrics.pop(key, None)
                per_query.pop(key, None)
    return metrics, per_query


def _tables(m: Measured, e: Estimates, args: CircuitArgs) -> dict[str, list[dict[str, Any]]]:
    ranking_rows = []
    for i, name in enumerate(m.ranking):
        row: dict[str, Any] = {
            "rank": i + 1,
            "component": name,
            "fraction": m.single.get(name),
            "source": args.ranking if args.members is None else "given",
        }
        if m.singles is not None:
            row["score_restored"] = float(m.singles.numerators[:, m.singles.column(name)].mean())
        if name in m.stability:
            row["stability"] = m.stability[name]
        row["in_circuit"] = name in m.members
        ranking_rows.append(row)
    return {
        "curve": e.curve,
        "ranking": ranking_rows,
        "members": _nodes(m, e, with_ci=True),
        "random_sets": [
            {"set": i, "k": size, "members": set_name(chosen), "faithfulness": value}
            for size in sorted(m.randoms, key=lambda s: (s != m.k, s))
            for i, (chosen, value) in enumerate(
                zip(m.randoms[size], [_mean(v) for v in m.random_values[size]], strict=True)
            )
        ],
        "alternatives": [
            {"members": set_name(a.members), "faithfulness": a.faithfulness} for a in m.alternatives
        ],
    }


def _nodes(m: Measured, e: Estimates, with_ci: bool = False) -> list[dict[str, Any]]:
    out = []
    for member in m.members:
        row = {
            **node(member),
            "rank": m.ranking.index(member) + 1,
            "fraction": m.single.get(member),
            "loo_drop": e.loo[member]["value"],
        }
        if with_ci:
            row["loo_drop_ci_low"] = e.loo[member]["ci_low"]
            row["loo_drop_ci_high"] = e.loo[member]["ci_high"]
        row["stability"] = m.stability.get(member)
        out.append(row)
    return out


def _document(ctx: ToolContext, m: Measured, e: Estimates, args: CircuitArgs) -> dict[str, Any]:
    """The ``circuit.json`` export (fields in the module docstring)."""
    retriever = ctx.retriever
    alternative = None
    if e.alternative is not None:
        alternative = {
            "members": list(e.alternative.members),
            "faithfulness": e.alternative.faithfulness,
            "as_faithful": e.as_faithful,
        }
    return {
        "schema": "rankscope.circuit/1",
        "behaviour": {
            "axiom": args.axiom,
            "variant": args.variant,
            "split": args.split,
            "n_pairs": m.n_pairs,
            "n_queries": e.faithfulness["n_queries"],
            "mean_delta": m.mean_delta,
        },
        "model": {
            "id": getattr(retriever, "model_id", None),
            "weights_hash": getattr(retriever, "weights_hash", None),
            "kind": getattr(retriever, "kind", None),
        },
        "pool": args.pool,
        "ranking": args.ranking if args.members is None else "given",
        "k": m.k,
        "target": args.target,
        "smallest_k": m.smallest_k,
        "nodes": _nodes(m, e),
        "edges": [],
        "scores": {
            "faithfulness": e.faithfulness,
            "necessity": e.necessity,
            "beats_random": e.beats_random,
            "random_mean": e.random_mean,
            "random_percentile": e.percentile,
            "random_p_value": e.p_value,
            "n_random": e.n_random,
            "auc_sufficiency": e.auc_sufficiency,
            "auc_necessity": e.auc_necessity,
            "all_heads_faithfulness": e.all_heads,
            "alternative": alternative,
        },
        "curve": e.curve,
    }


@register
class Circuit(Tool[CircuitArgs]):
    name = "circuit"
    description = (
        "Circuit: the top-k components (ranked on discovery, or given) patched jointly; "
        "faithfulness curve k=1…max_k (sufficiency, necessity), smallest k reaching target, "
        "random sets of the same size (percentile, p), leave-one-out drops, stability. Exact."
    )
    version = "1"
    Args = CircuitArgs
    metrics = CIRCUIT_METRICS

    def metrics_for(self, args: CircuitArgs) -> MetricCatalogue:
        out = CIRCUIT_METRICS if args.members is None else CIRCUIT_METRICS.without("stability")
        return out if args.n_random else out.without(*RANDOM_METRICS)

    def run(self, ctx: ToolContext, args: CircuitArgs) -> ToolResult:
        measured = _measure(ctx, args)
        found = _estimates(measured, args)
        metrics, per_query = _metrics(measured, found, args)
        behaviour = f"{args.axiom}/{args.variant} [{args.split}]"
        png = ctx.artifact_path("circuit_curve.png")
        source = "given" if args.members is not None else args.ranking
        curve_figure(
            png,
            found.curve,
            measured.k,
            args.target,
            f"Circuit faithfulness, {behaviour}: top-k {args.pool} ({source} ranking)",
        )
        path = ctx.artifact_path("circuit.json")
        path.write_text(json.dumps(_document(ctx, measured, found, args), indent=2), "utf-8")
        return ToolResult(
            metrics=metrics,
            summary=_summary(measured, found, args, behaviour),
            tables=_tables(measured, found, args),
            artifacts=[
                ArtifactFile(
                    path=png,
                    media_type="image/png",
                    description="faithfulness curve (sufficiency, necessity) with the random "
                    "sets' mean and 5–95 % band",
                ),
                ArtifactFile(
                    path=path,
                    media_type="application/json",
                    description="the circuit: nodes with fractions, behaviour, model, k, scores",
                ),
            ],
            per_query=per_query,
            run_facts=dict(measured.timings),
        )


def _summary(m: Measured, e: Estimates, args: CircuitArgs, behaviour: str) -> str:
    """The planner's text: the answer first, then the top rows of the curve and the ranking."""
    source = "given" if args.members is not None else f"{args.ranking} ranking on this split"
    if args.k is not None:
        why = "given"
    elif m.smallest_k is not None:
        why = f"the smallest reaching {args.target:g}"
    else:
        why = f"max_k: no k up to {m.big_k} reached {args.target:g}"
    members = list(m.members)
    more = len(members) - SUMMARY_ROWS
    lines = [
        f"Circuit of {m.k} component(s) of the {args.pool} pool ({why}; {source}) for "
        f"{behaviour}: {', '.join(members)}. {m.n_pairs} pairs, "
        f"{e.faithfulness['n_queries']} queries, mean Δ = {_fmt(m.mean_delta, '.4g')}. "
        f"Fractions of the behaviour's score change, per query a ratio of means, "
        f"{args.confidence:.0%} CIs over queries.",
        f"  faithfulness (sufficiency) {_ci(e.faithfulness)}; necessity {_ci(e.necessity)}",
        (
            f"  random sets of {m.k} (N={e.n_random}): mean {_fmt(e.random_mean)}; the circuit's "
            f"percentile {_fmt(e.percentile, '.1f')}, p = {_fmt(e.p_value)}; beats_random "
            f"{_ci(e.beats_random)}"
            if args.n_random
            else "  no random-set control in this run (n_random=0)"
        ),
        "  leave-one-out drops: "
        + ", ".join(f"{x} {_fmt(e.loo[x]['value'])}" for x in members[:SUMMARY_ROWS])
        + (f" … {more} more in the members table" if more > 0 else ""),
    ]
    if m.stability:
        lines.append(
            f"  selection frequency over {args.n_stability} query resamples: "
            + ", ".join(f"{x} {m.stability[x]:.2f}" for x in members[:SUMMARY_ROWS])
        )
    if e.alternative is not None and e.alternative_difference is not None:
        verdict = (
            f"AS FAITHFUL (within {AS_FAITHFUL_MARGIN:g}): the circuit is one of several "
            "equally good explanations"
            if e.as_faithful
            else "less faithful"
        )
        lines.append(
            f"  best other set of {m.k} ({', '.join(e.alternative.members)}): "
            f"{_fmt(e.alternative.faithfulness)}, {verdict}; circuit − it "
            f"{_ci(e.alternative_difference)}"
        )
    if e.all_heads is not None:
        lines.append(
            f"  all heads jointly restore {_fmt(e.all_heads)}: {_fmt(1 - e.all_heads)} is "
            "carried by no head (MLPs, or the added token straight into the output)"
        )
    lines.append("  curve (k +added: sufficiency / necessity / random mean):")
    for row in e.curve[:SUMMARY_ROWS]:
        lines.append(
            f"    k={row['k']} +{row['added']}: {_fmt(row['sufficiency'])} / "
            f"{_fmt(row['necessity'])} / {_fmt(row['random_mean'])}"
        )
    if len(e.curve) > SUMMARY_ROWS:
        lines.append(f"    … {len(e.curve) - SUMMARY_ROWS} more rows in the curve table")
    if args.members is None:
        rest = len(m.ranking) - SUMMARY_ROWS
        lines.append(
            "  ranking (fraction alone, ratio of means over all pairs): "
            + ", ".join(f"{x} {_fmt(m.single.get(x))}" for x in m.ranking[:SUMMARY_ROWS])
            + (f" … {rest} more in the ranking table" if rest > 0 else "")
        )
    return "\n".join(lines)
