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
   fraction minus the random sets' mean fraction. The curve's 5–95 % band at the other sizes
   uses ``n_random_curve`` sets per size.
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
FAMILY = "patching_fraction"
UNIT = "fraction of the behaviour's score change (1 = all of it)"
SUMMARY_ROWS = 5


def _fraction(meaning: str, spec: Any) -> Any:
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
        100, ge=100, le=10_000, description="Random sets of size k (seeded) for the control."
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
        if self.members is None:
            if self.split != "discovery":
                raise ValueError(
                    f"members=None ranks the pool on this run's split, which must be "
                    f"'discovery', not {self.split!r}: the ranking must come from discovery "
                    "queries; pass the ranking found there as members to run on "
                    f"{self.split!r}"
                )
        else:
            if not self.members:
                raise ValueError("members is empty: name at least one component, or leave it out")
            for name in self.members:
                parse_target(name)
            repeated = sorted({m for m in self.members if self.members.count(m) > 1})
            if repeated:
                raise ValueError(f"members names a component twice: {repeated}")
            if self.k is not None and self.k > len(self.members):
                raise ValueError(f"k={self.k} is larger than the {len(self.members)} members")
        if self.k is not None and self.k > self.max_k:
            raise ValueError(f"k={self.k} is larger than max_k={self.max_k}")
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


def curve_figure(path: Any, rows: list[dict[str, Any]], k: int, target: float, title: str) -> None:
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
        ax.fill_between(
            ks[ok], band_low[ok], band_high[ok], color="0.8", label="random sets, 5–95 %"
        )
        ax.plot(ks[ok], col("random_mean")[ok], color="0.45", ls=":", label="random sets, mean")
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
        return CIRCUIT_METRICS if args.members is None else CIRCUIT_METRICS.without("stability")

    def run(self, ctx: ToolContext, args: CircuitArgs) -> ToolResult:
        retriever = ctx.retriever
        pairs = list(load_pairs(ctx, args))
        if not pairs:
            raise ValueError(f"no {args.axiom}/{args.variant} pairs on split {args.split!r}")
        pool = pool_components(retriever, args.pool)
        timings: dict[str, float] = {}
        progress = ctx.progress
        patcher = ctx.patch_engine or patch_pairs

        # 1. the ranking
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
            single_value: dict[str, float | None] = {n: _num(v) for n, v in ranked}
        else:
            for name in args.members:
                check_patch(retriever, parse_target(name))
            ranking = list(args.members)
            single_value = dict.fromkeys(ranking)
        timings["rank_seconds"] = time.perf_counter() - started
        big_k = min(args.max_k, len(ranking))
        prefixes = {k: tuple(ranking[:k]) for k in range(1, big_k + 1)}

        # 2. the curve, both directions, and all heads jointly
        started = time.perf_counter()
        heads = all_heads(retriever)
        denoise_sets = {set_name(m): m for m in prefixes.values()}
        all_name = "all heads: " + set_name(heads)
        denoise_sets[all_name] = tuple(heads)
        suff = measure_sets(
            retriever, pairs, denoise_sets, "denoising", args.batch_size, progress, patcher
        )
        nec = measure_sets(
            retriever,
            pairs,
            {set_name(m): m for m in prefixes.values()},
            "noising",
            args.batch_size,
            progress,
            patcher,
        )
        timings["curve_seconds"] = time.perf_counter() - started
        curve_suff = {k: suff.per_query(set_name(m)) for k, m in prefixes.items()}
        curve_nec = {k: nec.per_query(set_name(m)) for k, m in prefixes.items()}
        means = {k: _mean(v) for k, v in curve_suff.items()}
        reached = [k for k in prefixes if means[k] is not None and means[k] >= args.target]
        smallest_k = min(reached) if reached else None
        k = args.k if args.k is not None else (smallest_k or big_k)
        k = min(k, big_k)
        members = prefixes[k]

        # 3. random sets, leave-one-out, alternatives (denoising)
        started = time.perf_counter()
        randoms: dict[int, list[tuple[str, ...]]] = {}
        for size in prefixes:
            n = args.n_random if size == k else args.n_random_curve
            if n and size <= len(pool):
                randoms[size] = random_sets(pool, size, n, args.seed)
        loo = {m: tuple(x for x in members if x != m) for m in members}
        alts = alternatives(ranking, k)
        extra: dict[str, tuple[str, ...]] = {}
        for size, sets in randoms.items():
            for i, s in enumerate(sets):
                extra[f"random{size}.{i}: {set_name(s)}"] = s
        for m, rest in loo.items():
            if rest:
                extra[f"without {m}: {set_name(rest)}"] = rest
        for i, s in enumerate(alts):
            extra[f"alternative{i}: {set_name(s)}"] = s
        control = measure_sets(
            retriever, pairs, extra, "denoising", args.batch_size, progress, patcher
        )
        timings["control_seconds"] = time.perf_counter() - started

        # 4. estimates
        faith_q = curve_suff[k]
        nec_q = curve_nec[k]
        random_q: dict[int, list[list[QueryValue]]] = {
            size: [
                control.per_query(f"random{size}.{i}: {set_name(s)}") for i, s in enumerate(sets)
            ]
            for size, sets in randoms.items()
        }
        random_means = {size: [_mean(v) for v in qs] for size, qs in random_q.items()}
        at_k = [x for x in random_means.get(k, []) if x is not None]
        faith = _estimate(faith_q, args.confidence, args.seed)
        necessity = _estimate(nec_q, args.confidence, args.seed)
        beats_q = difference_by_query(faith_q, mean_by_query(random_q.get(k, [])))
        beats = _estimate(beats_q, args.confidence, args.seed)
        random_mean = float(np.mean(at_k)) if at_k else None
        percentile, p_value = random_test(
            faith["value"] if faith["value"] is not None else float("nan"), at_k
        )
        loo_q: dict[str, list[QueryValue]] = {}
        for m, rest in loo.items():
            without = (
                control.per_query(f"without {m}: {set_name(rest)}")
                if rest
                else (suff.per_query(EMPTY))
            )
            loo_q[m] = difference_by_query(faith_q, without)
        loo_est = {m: _estimate(v, args.confidence, args.seed) for m, v in loo_q.items()}
        stability: dict[str, float] = {}
        if singles is not None and args.n_stability:
            freq = selection_frequency(singles, k, args.n_stability, args.seed)
            stability = {m: freq[m] for m in ranking}
        alt_rows = []
        for i, s in enumerate(alts):
            values = control.per_query(f"alternative{i}: {set_name(s)}")
            alt_rows.append({"members": list(s), "faithfulness": _mean(values), "values": values})
        best_alt = max(
            (r for r in alt_rows if r["faithfulness"] is not None),
            key=lambda r: r["faithfulness"],
            default=None,
        )
        alternative: dict[str, Any] | None = None
        if best_alt is not None:
            diff = _estimate(
                difference_by_query(faith_q, best_alt["values"]), args.confidence, args.seed
            )
            as_faithful = (
                faith["value"] is not None
                and best_alt["faithfulness"] >= faith["value"] - AS_FAITHFUL_MARGIN
            )
            alternative = {
                "members": best_alt["members"],
                "faithfulness": best_alt["faithfulness"],
                "difference": diff,
                "as_faithful": bool(as_faithful),
            }
        all_heads_value = _mean(suff.per_query(all_name))
        curve_rows = []
        for size, m in prefixes.items():
            s_est = _estimate(curve_suff[size], args.confidence, args.seed)
            n_est = _estimate(curve_nec[size], args.confidence, args.seed)
            rand = [x for x in random_means.get(size, []) if x is not None]
            curve_rows.append(
                {
                    "k": size,
                    "members": set_name(m),
                    "added": m[-1],
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
        auc_suff = curve_area([r["sufficiency"] for r in curve_rows])
        auc_nec = curve_area([r["necessity"] for r in curve_rows])

        # 5. metrics and per-query values
        metrics: dict[str, float | int | None] = {
            "faithfulness": faith["value"],
            "faithfulness_ci_low": faith["ci_low"],
            "faithfulness_ci_high": faith["ci_high"],
            "necessity": necessity["value"],
            "necessity_ci_low": necessity["ci_low"],
            "necessity_ci_high": necessity["ci_high"],
            "beats_random": beats["value"],
            "beats_random_ci_low": beats["ci_low"],
            "beats_random_ci_high": beats["ci_high"],
            "k": k,
            "smallest_k": smallest_k,
            "auc_sufficiency": _num(auc_suff),
            "auc_necessity": _num(auc_nec),
            "random_mean": random_mean,
            "random_percentile": _num(percentile),
            "random_p_value": _num(p_value),
            "alternative_faithfulness": alternative["faithfulness"] if alternative else None,
            "all_heads_faithfulness": all_heads_value,
            "n_pairs": len(pairs),
            "n_queries": faith["n_queries"],
        }
        per_query: dict[str, list[QueryValue]] = {}
        for key, values in (
            ("faithfulness", faith_q),
            ("necessity", nec_q),
            ("beats_random", beats_q),
        ):
            if values:
                per_query[key] = list(values)
            else:
                metrics[key] = None
        for m, est in loo_est.items():
            if not loo_q[m]:
                continue
            metrics[metric_key("loo_drop", m)] = est["value"]
            metrics[metric_key("loo_drop", m, "ci_low")] = est["ci_low"]
            metrics[metric_key("loo_drop", m, "ci_high")] = est["ci_high"]
            per_query[metric_key("loo_drop", m)] = loo_q[m]
        for m in members:
            if m in stability:
                metrics[metric_key("stability", m)] = _num(stability[m])

        # 6. tables
        rank_rows = []
        for i, name in enumerate(ranking):
            row: dict[str, Any] = {
                "rank": i + 1,
                "component": name,
                "fraction": single_value.get(name),
                "source": args.ranking if args.members is None else "given",
            }
            if singles is not None:
                row["score_restored"] = float(singles.numerators[:, singles.column(name)].mean())
            if name in stability:
                row["stability"] = stability[name]
            row["in_circuit"] = name in members
            rank_rows.append(row)
        member_rows = [
            {
                **node(m),
                "rank": ranking.index(m) + 1,
                "fraction": single_value.get(m),
                "loo_drop": loo_est[m]["value"],
                "loo_drop_ci_low": loo_est[m]["ci_low"],
                "loo_drop_ci_high": loo_est[m]["ci_high"],
                "stability": stability.get(m),
            }
            for m in members
        ]
        random_rows = [
            {"set": i, "k": size, "members": set_name(s), "faithfulness": random_means[size][i]}
            for size, sets in sorted(randoms.items(), key=lambda kv: (kv[0] != k, kv[0]))
            for i, s in enumerate(sets)
        ]
        tables = {
            "curve": curve_rows,
            "ranking": rank_rows,
            "members": member_rows,
            "random_sets": random_rows,
            "alternatives": [
                {"members": set_name(r["members"]), "faithfulness": r["faithfulness"]}
                for r in alt_rows
            ],
        }

        # 7. artifacts
        behaviour = f"{args.axiom}/{args.variant} [{args.split}]"
        png = ctx.artifact_path("circuit_curve.png")
        curve_figure(
            png,
            curve_rows,
            k,
            args.target,
            f"Circuit faithfulness, {behaviour}: top-k {args.pool} "
            f"({'given' if args.members else args.ranking} ranking)",
        )
        mean_delta = float(np.mean(suff.deltas)) if len(suff.deltas) else None
        document = {
            "schema": "rankscope.circuit/1",
            "behaviour": {
                "axiom": args.axiom,
                "variant": args.variant,
                "split": args.split,
                "n_pairs": len(pairs),
                "n_queries": faith["n_queries"],
                "mean_delta": mean_delta,
            },
            "model": {
                "id": getattr(retriever, "model_id", None),
                "weights_hash": getattr(retriever, "weights_hash", None),
                "kind": getattr(retriever, "kind", None),
            },
            "pool": args.pool,
            "ranking": args.ranking if args.members is None else "given",
            "k": k,
            "target": args.target,
            "smallest_k": smallest_k,
            "nodes": [
                {
                    **node(m),
                    "rank": ranking.index(m) + 1,
                    "fraction": single_value.get(m),
                    "loo_drop": loo_est[m]["value"],
                    "stability": stability.get(m),
                }
                for m in members
            ],
            "edges": [],
            "scores": {
                "faithfulness": faith,
                "necessity": necessity,
                "beats_random": beats,
                "random_mean": random_mean,
                "random_percentile": _num(percentile),
                "random_p_value": _num(p_value),
                "n_random": len(at_k),
                "auc_sufficiency": _num(auc_suff),
                "auc_necessity": _num(auc_nec),
                "all_heads_faithfulness": all_heads_value,
                "alternative": (
                    {k2: v for k2, v in alternative.items() if k2 != "difference"}
                    if alternative
                    else None
                ),
            },
            "curve": curve_rows,
        }
        path = ctx.artifact_path("circuit.json")
        path.write_text(json.dumps(document, indent=2), "utf-8")
        artifacts = [
            ArtifactFile(
                path=png,
                media_type="image/png",
                description="faithfulness curve (sufficiency, necessity) with the random-set band",
            ),
            ArtifactFile(
                path=path,
                media_type="application/json",
                description="the circuit: nodes with fractions, behaviour, model, k, scores",
            ),
        ]

        # 8. summary
        summary = _summary(
            args,
            behaviour,
            members,
            k,
            smallest_k,
            big_k,
            faith,
            necessity,
            beats,
            random_mean,
            percentile,
            p_value,
            len(at_k),
            loo_est,
            stability,
            alternative,
            all_heads_value,
            curve_rows,
            rank_rows,
            len(pairs),
            mean_delta,
        )
        return ToolResult(
            metrics=metrics,
            summary=summary,
            tables=tables,
            artifacts=artifacts,
            per_query=per_query,
            run_facts={k2: float(v) for k2, v in timings.items()},
        )


def _mean(values: Sequence[QueryValue]) -> float | None:
    """The mean over queries (None when no query has a change)."""
    return float(np.mean([v.value for v in values])) if values else None


def _summary(
    args: CircuitArgs,
    behaviour: str,
    members: Sequence[str],
    k: int,
    smallest_k: int | None,
    big_k: int,
    faith: dict[str, Any],
    necessity: dict[str, Any],
    beats: dict[str, Any],
    random_mean: float | None,
    percentile: float,
    p_value: float,
    n_random: int,
    loo: dict[str, dict[str, Any]],
    stability: dict[str, float],
    alternative: dict[str, Any] | None,
    all_heads_value: float | None,
    curve_rows: list[dict[str, Any]],
    rank_rows: list[dict[str, Any]],
    n_pairs: int,
    mean_delta: float | None,
) -> str:
    """The planner's text: the answer first, then the top rows of the curve and ranking."""
    source = "given" if args.members is not None else f"{args.ranking} ranking on this split"
    why = (
        "given"
        if args.k is not None
        else f"the smallest reaching {args.target:g}"
        if smallest_k is not None
        else f"max_k: no k up to {big_k} reached {args.target:g}"
    )
    lines = [
        f"Circuit of {k} {args.pool} component(s) ({why}; {source}) for {behaviour}: "
        f"{', '.join(members)}. {n_pairs} pairs, {faith['n_queries']} queries, mean Δ = "
        f"{_fmt(mean_delta, '.4g')}. Fractions of the behaviour's score change, per query a "
        f"ratio of means, {args.confidence:.0%} CIs over queries.",
        f"  faithfulness (sufficiency) {_ci(faith)}; necessity {_ci(necessity)}",
        f"  random sets of {k} (N={n_random}): mean {_fmt(random_mean)}; the circuit's "
        f"percentile {_fmt(percentile, '.1f')}, p = {_fmt(p_value, '.3g')}; beats_random "
        f"{_ci(beats)}",
        "  leave-one-out drops: "
        + ", ".join(f"{m} {_fmt(loo[m]['value'])}" for m in list(members)[:SUMMARY_ROWS])
        + (f" … {len(members) - SUMMARY_ROWS} more" if len(members) > SUMMARY_ROWS else ""),
    ]
    if stability:
        lines.append(
            f"  selection frequency over {args.n_stability} query resamples: "
            + ", ".join(f"{m} {stability[m]:.2f}" for m in list(members)[:SUMMARY_ROWS])
        )
    if alternative is not None:
        verdict = (
            "AS FAITHFUL (within 0.05): the circuit is one of several equally good explanations"
            if alternative["as_faithful"]
            else "less faithful"
        )
        lines.append(
            f"  best other set of {k} ({', '.join(alternative['members'])}): "
            f"{_fmt(alternative['faithfulness'])}, {verdict}; circuit − it "
            f"{_ci(alternative['difference'])}"
        )
    if all_heads_value is not None:
        lines.append(
            f"  all heads jointly restore {_fmt(all_heads_value)}: {_fmt(1 - all_heads_value)} "
            "is carried by no head (MLPs, or the added token straight into the output)"
        )
    lines.append("  curve (k: sufficiency / necessity / random mean):")
    for row in curve_rows[:SUMMARY_ROWS]:
        lines.append(
            f"    k={row['k']} +{row['added']}: {_fmt(row['sufficiency'])} / "
            f"{_fmt(row['necessity'])} / {_fmt(row['random_mean'])}"
        )
    if len(curve_rows) > SUMMARY_ROWS:
        lines.append(f"    … {len(curve_rows) - SUMMARY_ROWS} more rows in the curve table")
    if args.members is None:
        lines.append(
            "  ranking (fraction alone, ratio of means): "
            + ", ".join(f"{r['component']} {_fmt(r['fraction'])}" for r in rank_rows[:SUMMARY_ROWS])
            + (f" … {len(rank_rows) - SUMMARY_ROWS} more" if len(rank_rows) > SUMMARY_ROWS else "")
        )
    return "\n".join(lines)
